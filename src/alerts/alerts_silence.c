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

int tally_alerts_scan_silence(tally_alerts *a, const tally_silence_rule *r,
			      int64_t now_ms, int *raised, tally_error *err)
{
	int rc;

	tally_alerts__clear_batch(a);
	rc = scan(a, r, now_ms, err);
	if (rc == 0)
		rc = tally_alerts__raise_list(a, "silence", raised, err);
	tally_alerts__clear_batch(a);
	return rc;
}

int tally_alerts_silence_tick(tally_alerts *a, const tally_silence_rule *r,
			      int64_t every_ms, tally_error *err)
{
	int raised = 0, rc;

	if (!tally_alerts__due(&a->silence_timer, every_ms))
		return 0;
	rc = tally_alerts_scan_silence(a, r, tally_now_ms(), &raised, err);
	if (rc == 0 && raised > 0)
		tally_log(TALLY_INFO, "alerts.silence_scan",
			  TALLY_KV_INT("raised", raised));
	return rc;
}
