/*
 * alerts_silence.c - churn from silence: a periodic scan of usage_hourly
 * for tenants with a live subscription whose usage stopped entirely (a
 * silent tenant sends nothing, so no batch ever sees it). One SELECT per
 * scan finds the candidates; the rule (tally_alerts_eval_silence) decides;
 * new alerts go the way of the others: alerts table, billing.alerts, then
 * the webhook thread. docs/alerts.md "Churn from silence".
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/event.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define MS_TS(p) "(timestamptz 'epoch' + " p "::bigint * interval '1 ms')"

/*
 * Per tenant with a live subscription: its last hour with usage and the
 * UTC days with usage in the 28 days up to it. Both laterals walk the
 * usage_hourly primary key (tenant_id, hour, ...) of one tenant, and only
 * tenants silent for $2 days, and for less than $2 + 28 (older episodes
 * were raised by an earlier scan), are counted.
 */
static const char SCAN_SQL[] =
	"SELECT t.id::text, (extract(epoch FROM l.last) * 1000)::bigint,"
	" d.days FROM tenants t"
	" CROSS JOIN LATERAL (SELECT max(u.hour) AS last FROM usage_hourly u"
	"  WHERE u.tenant_id = t.id) l"
	" CROSS JOIN LATERAL (SELECT count(DISTINCT date_trunc('day',"
	"  u.hour AT TIME ZONE 'UTC'))::int AS days FROM usage_hourly u"
	"  WHERE u.tenant_id = t.id AND u.hour > l.last - interval '28 days'"
	"  AND u.hour <= l.last) d"
	" WHERE t.status IN ('active', 'trialing', 'past_due')"
	" AND l.last < " MS_TS("$1") " - $2::int * interval '1 day'"
	" AND l.last >= " MS_TS("$1") " - ($2::int + 28) * interval '1 day'";

/* The scan's candidates through the rule, into a->list. */
static int scan(tally_alerts *a, const tally_silence_rule *r, int64_t now_ms,
		tally_error *err)
{
	PGresult *res = NULL;
	char now[24], days[16];
	const char *params[2] = { now, days };
	int i, rc;

	snprintf(now, sizeof(now), "%" PRId64, now_ms);
	snprintf(days, sizeof(days), "%d", r->silence_days);
	rc = tally_pg_exec(a->pg, &res, SCAN_SQL, 2, params, err);
	for (i = 0; rc == 0 && i < PQntuples(res); i++) {
		tally_silence_facts f;
		const char *tid = PQgetvalue(res, i, 0);
		int64_t nd;

		if (tally_uuid_parse(f.tenant_id, tid,
				     (uint32_t)strlen(tid)) != 0 ||
		    tally_parse_i64(&f.last_hour_ms,
				    PQgetvalue(res, i, 1)) != 0 ||
		    tally_parse_i64(&nd, PQgetvalue(res, i, 2)) != 0)
			continue; /* cannot happen: typed columns */
		f.active_days = (int)nd;
		(void)tally_alerts_eval_silence(&a->list, &f, r, now_ms);
	}
	PQclear(res);
	return rc;
}

/* The transaction: insert a->list, keep the rows actually inserted. */
static int insert_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_alerts *a = payload;
	size_t i;
	int rc = 0;

	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	for (i = 0; i < a->list.n && rc == 0; i++) {
		const tally_alert *al = &a->list.v[i];
		PGresult *res = NULL;
		char id[37], tid[37], ps[24], th[16];
		const char *params[6] = { id, tid, "churn_risk", ps, th,
					  al->payload };

		tally_uuid_fmt(id, al->id);
		tally_uuid_fmt(tid, al->tenant_id);
		snprintf(ps, sizeof(ps), "%" PRId64, al->period_start_ms);
		snprintf(th, sizeof(th), "%d", al->threshold);
		rc = tally_pg_exec(pg, &res,
			"INSERT INTO alerts (id, tenant_id, kind, period_start,"
			" threshold, payload) VALUES ($1::uuid, $2::uuid, $3, "
			MS_TS("$4") ", $5::int, $6::jsonb) ON CONFLICT DO"
			" NOTHING RETURNING " ALERT_JSON, 6, params, err);
		if (rc == 0 && PQntuples(res) == 1)
			tally_alerts__out_push(a, tid, id,
					       PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	return rc;
}

int tally_alerts_scan_silence(tally_alerts *a, const tally_silence_rule *r,
			      int64_t now_ms, int *raised, tally_error *err)
{
	size_t k, produced = 0;
	int rc;

	tally_alerts__clear_batch(a);
	rc = scan(a, r, now_ms, err);
	if (rc == 0 && a->list.n > 0)
		rc = tally_pg_txn(a->pg, insert_txn, a, 0, err);
	if (rc == 0) {
		for (k = 0; k < a->nout; k++) {
			tally_alerts__count(a, "tally_alerts_raised_total",
					    "kind=\"churn_risk\"",
					    "alerts raised (inserted), by kind");
			tally_log(TALLY_INFO, "alerts.raised",
				  TALLY_KV_STR("alert_id", a->out[k].id),
				  TALLY_KV_STR("tenant_id", a->out[k].tenant),
				  TALLY_KV_STR("kind", "churn_risk"),
				  TALLY_KV_STR("reason", "silence"));
		}
		if (raised != NULL)
			*raised = (int)a->nout;
		/* a failed produce is not a failed scan: the sweep redoes it */
		if (tally_alerts__produce_rows(a, &produced, err) != 0) {
			tally_log(TALLY_WARN, "alerts.mark_produced_failed",
				  TALLY_KV_STR("error", err->msg));
			tally_error_clear(err);
		}
	}
	tally_alerts__clear_batch(a);
	return rc;
}

int tally_alerts_silence_tick(tally_alerts *a, const tally_silence_rule *r,
			      int64_t every_ms, tally_error *err)
{
	int64_t t = tally_mono_ns();
	int raised = 0, rc;

	if (every_ms <= 0 || (a->silence_scanned &&
			      (t - a->silence_last_ns) / 1000000 < every_ms))
		return 0;
	a->silence_scanned = true;
	a->silence_last_ns = t;
	rc = tally_alerts_scan_silence(a, r, tally_now_ms(), &raised, err);
	if (rc == 0 && raised > 0)
		tally_log(TALLY_INFO, "alerts.silence_scan",
			  TALLY_KV_INT("raised", raised));
	return rc;
}
