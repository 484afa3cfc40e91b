/*
 * alerts_deliveries.c - the per-target delivery rows in PostgreSQL
 * (migrations/0018): routing alerts to the targets that receive their
 * kind, claiming due rows under a lease, recording each POST's outcome
 * with backoff and give-up, the alerts' summary columns, and putting
 * deliveries back to pending (tally alerts redeliver).
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_deliveries.h"
#include "base/strbuf.h"
#include "tally/event.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The alert JSON of a (as on billing.alerts; ALERT_JSON of alerts_int.h
 * with the table alias). */
#define ALERT_JSON_A                                                       \
	"json_build_object('id', a.id, 'tenant_id', a.tenant_id, 'kind',"   \
	" a.kind, 'period_start', to_char(a.period_start AT TIME ZONE"      \
	" 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'threshold',"        \
	" a.threshold, 'payload', a.payload, 'raised_at', to_char("         \
	"a.raised_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS"     \
	"\"Z\"'))::text"

/* {name,...} of the targets with a URL (and their kinds, "" = all) */
static size_t target_arrays(const tally_alerts_delivery *d,
			    tally_strbuf *names, tally_strbuf *kinds)
{
	size_t i, n = 0;

	tally_strbuf_puts(names, "{");
	tally_strbuf_puts(kinds, "{");
	for (i = 0; i < d->ntargets; i++) {
		const tally_alerts_target *t = &d->targets[i];
		const char *k = t->kinds ? t->kinds : "";

		if (t->url == NULL || t->url[0] == '\0')
			continue;
		if (n++ > 0) {
			tally_strbuf_puts(names, ",");
			tally_strbuf_puts(kinds, ",");
		}
		tally_strbuf_pg_array_elem(names, t->name, strlen(t->name));
		tally_strbuf_pg_array_elem(kinds, k, strlen(k));
	}
	tally_strbuf_puts(names, "}");
	tally_strbuf_puts(kinds, "}");
	return n;
}

/* Alerts raised more than max_age_s ago are marked routed without
 * deliveries: a target added later (or the first one) does not receive a
 * backlog that is past its delivery age. Logged once per round. */
static int route_stale(tally_pg *pg, const tally_alerts_delivery *d,
		       tally_error *err)
{
	char maxs[24];
	const char *params[1] = { maxs };
	PGresult *res = NULL;
	int64_t n;
	int rc;

	snprintf(maxs, sizeof(maxs), "%" PRId64, d->max_age_s);
	rc = tally_pg_exec(pg, &res,
		"UPDATE alerts SET routed_at = now() WHERE routed_at IS NULL"
		" AND raised_at < now() - $1::bigint * interval '1 s'",
		1, params, err);
	if (rc != 0)
		return rc;
	n = strtoll(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	if (n > 0)
		tally_log(TALLY_WARN, "alerts.stale_not_delivered",
			  TALLY_KV_INT("alerts", n),
			  TALLY_KV_INT("max_age_s", d->max_age_s));
	return 0;
}

int tally_alerts__route(tally_pg *pg, const tally_alerts_delivery *d,
			tally_error *err)
{
	tally_strbuf names = TALLY_STRBUF_INIT, kinds = TALLY_STRBUF_INIT;
	const char *params[2];
	int rc = 0;

	if (target_arrays(d, &names, &kinds) > 0 &&
	    (rc = route_stale(pg, d, err)) == 0) {
		params[0] = names.p;
		params[1] = kinds.p;
		rc = tally_pg_exec(pg, NULL,
			"WITH r AS (UPDATE alerts a SET routed_at = now() FROM"
			" (SELECT tenant_id, id FROM alerts WHERE routed_at IS"
			" NULL ORDER BY raised_at LIMIT 1000 FOR UPDATE SKIP"
			" LOCKED) u WHERE a.tenant_id = u.tenant_id AND a.id ="
			" u.id RETURNING a.tenant_id, a.id, a.kind)"
			" INSERT INTO alert_deliveries (tenant_id, alert_id,"
			" target) SELECT r.tenant_id, r.id, t.name FROM r JOIN"
			" unnest($1::text[], $2::text[]) t(name, kinds) ON"
			" t.kinds = '' OR r.kind = ANY(string_to_array(t.kinds,"
			" ',')) ON CONFLICT DO NOTHING", 2, params, err);
	}
	tally_strbuf_free(&names);
	tally_strbuf_free(&kinds);
	return rc;
}

int tally_alerts__claim(tally_pg *pg, const tally_alerts_delivery *d,
			int limit, PGresult **res, tally_error *err)
{
	tally_strbuf names = TALLY_STRBUF_INIT, kinds = TALLY_STRBUF_INIT;
	char lim[16], lease[16];
	const char *params[3] = { lim, lease, NULL };
	int rc;

	(void)target_arrays(d, &names, &kinds);
	snprintf(lim, sizeof(lim), "%d", limit);
	snprintf(lease, sizeof(lease), "%d",
		 (int)((int64_t)limit * d->timeout_ms / 1000 + 60));
	params[2] = names.p;
	rc = tally_pg_exec(pg, res,
		"UPDATE alert_deliveries d SET next_attempt_at = now() +"
		" $2::int * interval '1 s', started_at = coalesce("
		"d.started_at, now()) FROM (SELECT tenant_id, alert_id, target"
		" FROM alert_deliveries WHERE delivered_at IS NULL AND"
		" failed_at IS NULL AND next_attempt_at <= now() AND target ="
		" ANY($3::text[]) ORDER BY next_attempt_at LIMIT $1::int FOR"
		" UPDATE SKIP LOCKED) c, alerts a WHERE d.tenant_id ="
		" c.tenant_id AND d.alert_id = c.alert_id AND d.target ="
		" c.target AND a.tenant_id = d.tenant_id AND a.id = d.alert_id"
		" RETURNING d.tenant_id::text, d.alert_id::text, d.target, "
		ALERT_JSON_A ", d.attempts, (SELECT t.name FROM tenants t"
		" WHERE t.id = d.tenant_id)", 3, params, err);
	tally_strbuf_free(&names);
	tally_strbuf_free(&kinds);
	return rc;
}

/* The alerts' delivery columns from their rows: delivered when every row
 * is, failed when one gave up, the most attempts, the latest error. */
static const char SUMMARY_SQL[] =
	"UPDATE alerts a SET delivered_at = s.delivered,"
	" delivery_failed_at = s.failed, delivery_attempts = s.attempts,"
	" last_delivery_error = s.error, delivery_started_at = s.started,"
	" next_delivery_at = coalesce(s.next, a.next_delivery_at)"
	" FROM (SELECT tenant_id, alert_id, CASE WHEN bool_and(delivered_at"
	"  IS NOT NULL) THEN max(delivered_at) END AS delivered,"
	"  max(failed_at) AS failed, max(attempts) AS attempts,"
	"  (array_agg(last_error ORDER BY updated_at DESC) FILTER (WHERE"
	"  last_error IS NOT NULL))[1] AS error, min(started_at) AS started,"
	"  min(next_attempt_at) FILTER (WHERE delivered_at IS NULL AND"
	"  failed_at IS NULL) AS next FROM alert_deliveries WHERE %s"
	"  GROUP BY 1, 2) s WHERE a.tenant_id = s.tenant_id AND"
	" a.id = s.alert_id";

static int summarise_one(tally_pg *pg, const char *tid, const char *id,
			 tally_error *err)
{
	const char *params[2] = { tid, id };
	char q[sizeof(SUMMARY_SQL) + 64];

	snprintf(q, sizeof(q), SUMMARY_SQL,
		 "tenant_id = $1::uuid AND alert_id = $2::uuid");
	return tally_pg_exec(pg, NULL, q, 2, params, err);
}

int tally_alerts__record(tally_pg *pg, const char *tid, const char *id,
			 const char *target, const char *why,
			 const tally_alerts_delivery *d, bool *gave_up,
			 char attempts[16], tally_error *err)
{
	char maxa[16], maxs[24];
	const char *up[6] = { tid, id, target, why, maxa, maxs };
	PGresult *res = NULL;
	int rc;

	snprintf(maxa, sizeof(maxa), "%d", d->max_attempts);
	snprintf(maxs, sizeof(maxs), "%" PRId64, d->max_age_s);
	if (why == NULL)
		rc = tally_pg_exec(pg, &res,
			"UPDATE alert_deliveries SET delivered_at = now(),"
			" attempts = attempts + 1, last_error = NULL,"
			" updated_at = now() WHERE tenant_id = $1::uuid AND"
			" alert_id = $2::uuid AND target = $3 RETURNING false,"
			" attempts", 3, up, err);
	else
		rc = tally_pg_exec(pg, &res,
			"UPDATE alert_deliveries SET attempts = attempts + 1,"
			" last_error = $4, updated_at = now(), next_attempt_at ="
			" now() + least(power(2, least(attempts, 9)), 300) *"
			" interval '1 s', failed_at = CASE WHEN attempts + 1 >="
			" $5::int OR started_at <= now() - $6::bigint * interval"
			" '1 s' THEN now() END WHERE tenant_id = $1::uuid AND"
			" alert_id = $2::uuid AND target = $3 RETURNING"
			" failed_at IS NOT NULL, attempts", 6, up, err);
	*gave_up = false;
	snprintf(attempts, 16, "?");
	if (rc == 0 && PQntuples(res) == 1) {
		*gave_up = PQgetvalue(res, 0, 0)[0] == 't';
		snprintf(attempts, 16, "%s", PQgetvalue(res, 0, 1));
	}
	PQclear(res);
	if (rc == 0)
		rc = summarise_one(pg, tid, id, err);
	return rc;
}

int tally_alerts_redeliver_target(tally_pg *pg, const char *id,
				  const char *target, int64_t *n,
				  tally_error *err)
{
	const char *params[2] = { id, target };
	char q[sizeof(SUMMARY_SQL) + 256];
	uint8_t u[16];
	PGresult *res = NULL;
	int rc;

	*n = 0;
	if (id != NULL && tally_uuid_parse(u, id, (uint32_t)strlen(id)) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "alert id is not a uuid");
	/* the put-back rows, then the summaries of their alerts */
	snprintf(q, sizeof(q), "WITH p AS (UPDATE alert_deliveries SET"
		 " delivered_at = NULL, failed_at = NULL, started_at = NULL,"
		 " attempts = 0, next_attempt_at = now(), updated_at = now()"
		 " WHERE CASE WHEN $1::uuid IS NULL THEN failed_at IS NOT NULL"
		 " ELSE alert_id = $1::uuid END AND ($2::text IS NULL OR"
		 " target = $2) RETURNING tenant_id, alert_id) SELECT"
		 " count(*) FROM p");
	rc = tally_pg_exec(pg, &res, q, 2, params, err);
	if (rc == 0 && tally_parse_i64(n, PQgetvalue(res, 0, 0)) != 0)
		*n = 0;
	PQclear(res);
	if (rc != 0 || *n == 0)
		return rc;
	snprintf(q, sizeof(q), SUMMARY_SQL,
		 "(tenant_id, alert_id) IN (SELECT tenant_id, alert_id FROM"
		 " alert_deliveries WHERE attempts = 0 AND started_at IS NULL"
		 " AND delivered_at IS NULL AND failed_at IS NULL)");
	return tally_pg_exec(pg, NULL, q, 0, NULL, err);
}

int tally_alerts_redeliver(tally_pg *pg, const char *id, int64_t *n,
			   tally_error *err)
{
	return tally_alerts_redeliver_target(pg, id, NULL, n, err);
}
