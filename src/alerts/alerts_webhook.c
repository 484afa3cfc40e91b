/*
 * alerts_webhook.c - webhook delivery of alerts (libcurl): claim due rows
 * under a lease, POST each signed (Tally-Signature: Stripe's v1 scheme,
 * tally/webhook.h), record the result with exponential backoff.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts.h"
#include "tally/event.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* "Tally-Signature: t=<t>,v1=<hex>" and one more ",v1=<hex>" a secret */
#define SIG_HEADER_MAX (32 + 20 + TALLY_ALERTS_WEBHOOK_MAX_SECRETS * 68)

/* The Tally-Signature header of body at time t, one v1 per secret. */
static void sign_header(char *out, size_t outlen, const char *body,
			const tally_alerts_webhook *wh, int64_t t)
{
	size_t i, n;

	n = (size_t)snprintf(out, outlen, "Tally-Signature: t=%" PRId64, t);
	for (i = 0; i < wh->nsecrets && n < outlen; i++) {
		char hex[65];

		if (wh->secrets[i] == NULL || wh->secrets[i][0] == '\0')
			continue;
		tally_webhook_signature_hex(hex, body, strlen(body),
					    wh->secrets[i], t);
		n += (size_t)snprintf(out + n, outlen - n, ",v1=%s", hex);
	}
}

static size_t discard_cb(char *p, size_t size, size_t nmemb, void *u)
{
	(void)p;
	(void)u;
	return size * nmemb;
}

/* POST one body; returns the HTTP status, or 0 with errbuf on a failure */
static long post_json(CURL *c, const tally_alerts_webhook *wh,
		      const char *alert_id, const char *body, char *errbuf)
{
	struct curl_slist *h = NULL;
	char idh[80], did[80], sig[SIG_HEADER_MAX];
	long status = 0;
	CURLcode cc;
	int timeout_ms = wh->timeout_ms;

	snprintf(idh, sizeof(idh), "X-Tally-Alert-Id: %s", alert_id);
	snprintf(did, sizeof(did), "Tally-Delivery-Id: %s", alert_id);
	sign_header(sig, sizeof(sig), body, wh, (int64_t)time(NULL));
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, idh);
	h = curl_slist_append(h, did);
	h = curl_slist_append(h, sig);
	h = curl_slist_append(h, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, wh->url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tally-alerts/1");
	errbuf[0] = '\0';
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	else if (errbuf[0] == '\0')
		snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(cc));
	curl_slist_free_all(h);
	return status;
}

/* Claim up to limit due rows under a lease: no other worker POSTs them
 * until it ends. Rows: tenant_id, id, the alert JSON, attempts. */
static int claim_due(tally_pg *pg, int limit, int timeout_ms,
		     PGresult **res, tally_error *err)
{
	char lim[16], lease[16];
	const char *params[2];

	snprintf(lim, sizeof(lim), "%d", limit);
	snprintf(lease, sizeof(lease), "%d",
		 (int)((int64_t)limit * timeout_ms / 1000 + 60));
	params[0] = lim;
	params[1] = lease;
	return tally_pg_exec(pg, res,
		"UPDATE alerts a SET next_delivery_at = now() +"
		" $2::int * interval '1 s', delivery_started_at ="
		" coalesce(a.delivery_started_at, now()) FROM (SELECT"
		" tenant_id, id FROM alerts WHERE delivered_at IS NULL AND"
		" delivery_failed_at IS NULL AND next_delivery_at <="
		" now() ORDER BY next_delivery_at LIMIT $1::int FOR UPDATE"
		" SKIP LOCKED) c WHERE a.tenant_id = c.tenant_id AND"
		" a.id = c.id RETURNING a.tenant_id::text, a.id::text, "
		"json_build_object('id', a.id, 'tenant_id', a.tenant_id,"
		" 'kind', a.kind, 'period_start', to_char(a.period_start AT"
		" TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
		" 'threshold', a.threshold, 'payload', a.payload,"
		" 'raised_at', to_char(a.raised_at AT TIME ZONE 'UTC',"
		" 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text,"
		" a.delivery_attempts", 2, params, err);
}

/* The outcome of one POST, as counted. */
static void count_outcome(tally_metrics *metrics, const char *outcome)
{
	char labels[32];

	if (metrics == NULL)
		return;
	snprintf(labels, sizeof(labels), "outcome=\"%s\"", outcome);
	tally_counter_add(tally_metrics_counter(metrics,
		"tally_alerts_deliveries_total", labels,
		"webhook POSTs: delivered, retry (scheduled again), failed"
		" (gave up)"), 1);
}

/* A failed POST: the next attempt scheduled (backoff 1, 2, 4 ... 300 s
 * after the n-th failure), or given up for good once the attempts or the
 * age since the first attempt reach wh's limits. */
static int record_failure(tally_pg *pg, const char *tid, const char *id,
			  const char *why, const tally_alerts_webhook *wh,
			  tally_metrics *metrics, tally_error *err)
{
	char maxa[16], maxs[24];
	const char *up[5] = { tid, id, why, maxa, maxs };
	PGresult *res = NULL;
	bool gave_up;
	int rc;

	snprintf(maxa, sizeof(maxa), "%d", wh->max_attempts);
	snprintf(maxs, sizeof(maxs), "%" PRId64, wh->max_age_s);
	rc = tally_pg_exec(pg, &res,
		"UPDATE alerts SET delivery_attempts = delivery_attempts + 1,"
		" last_delivery_error = $3, next_delivery_at = now() +"
		" least(power(2, least(delivery_attempts, 9)), 300) *"
		" interval '1 s', delivery_failed_at = CASE WHEN"
		" delivery_attempts + 1 >= $4::int OR delivery_started_at <="
		" now() - $5::bigint * interval '1 s' THEN now() END WHERE"
		" tenant_id = $1::uuid AND id = $2::uuid RETURNING"
		" delivery_failed_at IS NOT NULL, delivery_attempts",
		5, up, err);
	if (rc != 0)
		return rc;
	gave_up = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	tally_log(gave_up ? TALLY_ERR : TALLY_WARN,
		  gave_up ? "alerts.webhook_gave_up" : "alerts.webhook_failed",
		  TALLY_KV_STR("alert_id", id), TALLY_KV_STR("error", why),
		  TALLY_KV_STR("attempts", PQntuples(res) == 1 ?
			       PQgetvalue(res, 0, 1) : "?"));
	PQclear(res);
	count_outcome(metrics, gave_up ? "failed" : "retry");
	return 0;
}

/* A 2xx: delivered. */
static int record_delivered(tally_pg *pg, const char *tid, const char *id,
			    tally_metrics *metrics, tally_error *err)
{
	const char *up[2] = { tid, id };

	count_outcome(metrics, "delivered");
	return tally_pg_exec(pg, NULL,
		"UPDATE alerts SET delivered_at = now(),"
		" delivery_attempts = delivery_attempts + 1,"
		" last_delivery_error = NULL WHERE"
		" tenant_id = $1::uuid AND id = $2::uuid", 2, up, err);
}

/* Whether wh has a URL and at least one non-empty secret. */
static bool can_sign(const tally_alerts_webhook *wh)
{
	size_t i;

	for (i = 0; i < wh->nsecrets; i++)
		if (wh->secrets[i] != NULL && wh->secrets[i][0] != '\0')
			return true;
	return false;
}

int tally_alerts_deliver(tally_pg *pg, const tally_alerts_webhook *wh,
			 int limit, tally_metrics *metrics, int *delivered,
			 int *failed, tally_error *err)
{
	PGresult *res = NULL;
	CURL *c = NULL;
	int rc, r, nd = 0, nf = 0;

	if (delivered != NULL)
		*delivered = 0;
	if (failed != NULL)
		*failed = 0;
	if (wh->url == NULL || wh->url[0] == '\0')
		return 0;
	if (wh->max_attempts < 1 || wh->max_age_s < 1)
		return tally_error_set(err, TALLY_EINVALID,
			"alerts: webhook delivery limits must be >= 1");
	if (wh->nsecrets > TALLY_ALERTS_WEBHOOK_MAX_SECRETS || !can_sign(wh))
		return tally_error_set(err, TALLY_EINVALID,
			"alerts: webhook deliveries need a signing secret"
			" ($TALLY_ALERTS_WEBHOOK_SECRET)");
	rc = claim_due(pg, limit, wh->timeout_ms, &res, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) > 0) {
		c = curl_easy_init();
		if (c == NULL) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "curl_easy_init failed");
			goto cleanup;
		}
	}
	for (r = 0; r < PQntuples(res) && rc == 0; r++) {
		const char *id = PQgetvalue(res, r, 1);
		char errbuf[CURL_ERROR_SIZE], why[CURL_ERROR_SIZE + 32];
		long status = post_json(c, wh, id, PQgetvalue(res, r, 2),
					errbuf);
		bool ok = status >= 200 && status < 300;

		if (status > 0)
			snprintf(why, sizeof(why), "HTTP %ld", status);
		else
			snprintf(why, sizeof(why), "%s", errbuf);
		rc = ok ? record_delivered(pg, PQgetvalue(res, r, 0), id,
					   metrics, err)
			: record_failure(pg, PQgetvalue(res, r, 0), id, why,
					 wh, metrics, err);
		if (ok)
			nd++;
		else
			nf++;
	}
cleanup:
	if (c != NULL)
		curl_easy_cleanup(c);
	PQclear(res);
	if (delivered != NULL)
		*delivered = nd;
	if (failed != NULL)
		*failed = nf;
	return rc;
}

int tally_alerts_redeliver(tally_pg *pg, const char *id, int64_t *n,
			   tally_error *err)
{
	const char *params[1] = { id };
	uint8_t u[16];
	PGresult *res = NULL;
	int rc;

	*n = 0;
	if (id != NULL && tally_uuid_parse(u, id, (uint32_t)strlen(id)) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "alert id is not a uuid");
	rc = tally_pg_exec(pg, &res,
		"UPDATE alerts SET delivered_at = NULL, delivery_failed_at ="
		" NULL, delivery_started_at = NULL, delivery_attempts = 0,"
		" next_delivery_at = now() WHERE CASE WHEN $1::uuid IS NULL"
		" THEN delivery_failed_at IS NOT NULL ELSE id = $1::uuid END",
		1, params, err);
	if (rc == 0 && tally_parse_i64(n, PQcmdTuples(res)) != 0)
		*n = 0;
	PQclear(res);
	return rc;
}
