/*
 * sync_meters.c - usage reported to Stripe meters: one meter event per
 * closed hour and revision, with a stable identifier so a resend after a
 * crash is deduplicated by Stripe; rate-limited.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/invoice_sync.h"
#include "stripe/sync_int.h"

#include <openssl/sha.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void sha_hex(char *out, size_t hexlen, const char *s)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t i;

	SHA256((const unsigned char *)s, strlen(s), md);
	for (i = 0; i < hexlen / 2 && i < SHA256_DIGEST_LENGTH; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[hexlen] = '\0';
}

static void rate_wait(tally_stripe_sync *ss)
{
	int64_t now = tally_mono_ns();
	int64_t gap = 1000000000LL / ss->meter_rate_per_s;

	if (ss->next_meter_ns > now)
		tally_sleep_ms((ss->next_meter_ns - now) / 1000000 + 1);
	now = tally_mono_ns();
	ss->next_meter_ns = (ss->next_meter_ns > now ? ss->next_meter_ns
						     : now) + gap;
}

static int send_meter(tally_stripe_sync *ss, const char *tenant_id,
		      const char *meter, const char *hour_s,
		      const char *rev, const char *identifier,
		      const char *customer, const char *value, bool *stop,
		      tally_error *err)
{
	tally_stripe_error se;
	char key[256];
	json_t *p;
	int64_t ts = 0;
	int rc;

	*stop = false;
	ts = tally_ss__to_i64(hour_s);
	p = json_pack("{s:s, s:s, s:I, s:{s:s, s:s}}", "event_name",
		      tally_config_str(ss->cfg, "stripe.meter_event_name"),
		      "identifier", identifier, "timestamp", (json_int_t)ts,
		      "payload", "stripe_customer_id", customer, "value",
		      value);
	tally_stripe_idempotency_key(key, "meter", identifier, "v1");
	rate_wait(ss);
	rc = tally_stripe_request(ss->stripe, NULL, "POST",
				  "/v1/billing/meter_events", p, key, &se,
				  err);
	json_decref(p);
	if (rc == TALLY_ETRANSIENT || rc == TALLY_ERROR) {
		*stop = true; /* stays pending; resent with the same id */
		return rc;
	}
	return tally_ss__ex(ss, NULL, err,
		  "UPDATE stripe_meter_reports SET status = $5, "
		  "error_code = nullif($6, ''), error_message = nullif($7, ''),"
		  " reported_at = CASE WHEN $5 = 'reported' THEN now() END "
		  "WHERE tenant_id = $1 AND meter = $2 AND "
		  "hour = to_timestamp($3::bigint) AND revision = $4::integer",
		  7, tenant_id, meter, hour_s, rev,
		  rc == 0 ? "reported" : "failed", rc == 0 ? "" : se.code,
		  rc == 0 ? "" : se.message);
}

/* Resend what a crash left pending, with the same identifier. */
static int resend_pending(tally_stripe_sync *ss, int *sent, bool *stop,
			  tally_error *err)
{
	PGresult *res = NULL;
	int rc, i;

	rc = tally_ss__ex(ss, &res, err,
		"SELECT r.tenant_id::text, r.meter, "
		"extract(epoch FROM r.hour)::bigint, r.revision, r.identifier,"
		" r.customer_id, r.value::text FROM stripe_meter_reports r "
		"WHERE r.status = 'pending' ORDER BY r.hour", 0);
	for (i = 0; rc == 0 && i < PQntuples(res) && !*stop; i++) {
		rc = send_meter(ss, PQgetvalue(res, i, 0),
				PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
				PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
				PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
				stop, err);
		*sent += rc == 0;
	}
	PQclear(res);
	return rc;
}

/* Closed hours whose usage exceeds what was reported: a new revision each,
 * recorded pending before it is sent. */
static int report_new(tally_stripe_sync *ss, const char *now, int *sent,
		      bool *stop, tally_error *err)
{
	PGresult *res = NULL;
	int rc, i;

	rc = tally_ss__ex(ss, &res, err,
		"WITH u AS (SELECT u.tenant_id, u.meter, u.hour, "
		"  sum(u.input_tokens + u.output_tokens) AS total "
		"  FROM usage_hourly u WHERE u.meter = 'ai.tokens' "
		"  AND u.hour >= to_timestamp($1::bigint) - interval '35 days'"
		"      + interval '1 hour' "
		"  AND u.hour + interval '1 hour' <= to_timestamp($1::bigint) "
		"  GROUP BY u.tenant_id, u.meter, u.hour), "
		"r AS (SELECT tenant_id, meter, hour, "
		"  coalesce(sum(value) FILTER (WHERE status IN "
		"    ('reported', 'pending')), 0) AS done, "
		"  max(revision) + 1 AS next_rev FROM stripe_meter_reports "
		"  GROUP BY tenant_id, meter, hour) "
		"SELECT u.tenant_id::text, u.meter, "
		"extract(epoch FROM u.hour)::bigint, "
		"coalesce(r.next_rev, 0), t.stripe_customer_id, "
		"(u.total - coalesce(r.done, 0))::text, u.total::text "
		"FROM u JOIN tenants t ON t.id = u.tenant_id "
		"LEFT JOIN r USING (tenant_id, meter, hour) "
		"WHERE t.stripe_customer_id IS NOT NULL "
		"AND u.total > coalesce(r.done, 0) ORDER BY u.hour", 1, now);
	for (i = 0; rc == 0 && i < PQntuples(res) && !*stop; i++) {
		const char *tid = PQgetvalue(res, i, 0);
		const char *meter = PQgetvalue(res, i, 1);
		const char *hour = PQgetvalue(res, i, 2);
		const char *rev = PQgetvalue(res, i, 3);
		char seed[256], hex[33], ident[64];

		snprintf(seed, sizeof(seed), "%s|%s|%s", tid, meter, hour);
		sha_hex(hex, 32, seed);
		snprintf(ident, sizeof(ident), "tly-%s-r%s", hex, rev);
		rc = tally_ss__ex(ss, NULL, err,
			"INSERT INTO stripe_meter_reports (tenant_id, meter, "
			"hour, revision, event_name, identifier, customer_id, "
			"value, cumulative, status) VALUES ($1, $2, "
			"to_timestamp($3::bigint), $4::integer, $5, $6, $7, "
			"$8::numeric, $9::numeric, 'pending')", 9, tid, meter,
			hour, rev,
			tally_config_str(ss->cfg, "stripe.meter_event_name"),
			ident, PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
			PQgetvalue(res, i, 6));
		if (rc == 0)
			rc = send_meter(ss, tid, meter, hour, rev, ident,
					PQgetvalue(res, i, 4),
					PQgetvalue(res, i, 5), stop, err);
		*sent += rc == 0;
	}
	PQclear(res);
	return rc;
}

int tally_stripe_sync_report_meters(tally_stripe_sync *ss, int *n,
				    tally_error *err)
{
	ss_numbuf now;
	bool stop = false;
	int rc, sent = 0;

	if (n)
		*n = 0;
	if (ss->stripe == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "meters: no Stripe client");
	/* usage reaches Stripe as meter events only when so configured */
	if (tally_usage_billing_of(ss->cfg) != TALLY_USAGE_BILLING_METERS)
		return 0;
	tally_ss__i64s(now, tally_ss__now_ms(ss) / 1000);
	/* Stripe accepts timestamps up to 35 days back: keep an hour of
	 * margin, give up on older pending reports */
	rc = tally_ss__ex(ss, NULL, err,
		"UPDATE stripe_meter_reports SET status = 'outside_window' "
		"WHERE status = 'pending' AND hour < to_timestamp($1::bigint) "
		"- interval '35 days' + interval '1 hour'", 1, now);
	if (rc == 0)
		rc = resend_pending(ss, &sent, &stop, err);
	if (rc != 0)
		return rc;
	rc = report_new(ss, now, &sent, &stop, err);
	if (n)
		*n = sent;
	return rc;
}
