/*
 * alerts_revenue.c - revenue alerts on the business: a periodic scan of
 * the finance views (finance_mrr, finance_revenue_by_plan,
 * finance_usage_monthly, read by their column names) through the rules of
 * alerts_revenue_rules.c. Company MRR and plan revenue compare the last
 * complete month with the one before; usage over the plan price is looked
 * at in the last complete month and the current one. New alerts go the
 * way of the others (alerts table, billing.alerts, delivery targets).
 * docs/alerts.md "Revenue alerts".
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "base/calendar.h"
#include "tally/event.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define MS_TS(p) "(timestamptz 'epoch' + " p "::bigint * interval '1 ms')"

/* The first millisecond of the month before the one holding t. */
static int64_t month_before(int64_t t_ms)
{
	return tally_month_start_ms(tally_month_start_ms(t_ms) - 1);
}

static bool amount(tally_money128 *v, const char *s)
{
	return tally_money_parse128(v, s, strlen(s)) == 0;
}

/* Applies a comparison rule to one row: its key columns come first. */
typedef void (*compare_fn)(tally_alerts *a, const PGresult *res, int row,
			   tally_money128 prev, tally_money128 cur,
			   const tally_alert_thresholds *th, int64_t cur_ms);

/* Runs sql (parameters: the months prev and cur as epoch ms) whose rows
 * hold nkey key columns, then the amounts of prev and cur; fn judges each
 * row whose amounts parse. */
static int scan_compare(tally_alerts *a, const char *sql, int nkey,
			compare_fn fn, const tally_alert_thresholds *th,
			const char *prev, const char *cur, int64_t cur_ms,
			tally_error *err)
{
	const char *params[2] = { prev, cur };
	PGresult *res = NULL;
	int rc, i;

	rc = tally_pg_exec(a->pg, &res, sql, 2, params, err);
	for (i = 0; rc == 0 && i < PQntuples(res); i++) {
		tally_money128 p, c;

		if (amount(&p, PQgetvalue(res, i, nkey)) &&
		    amount(&c, PQgetvalue(res, i, nkey + 1)))
			fn(a, res, i, p, c, th, cur_ms);
	}
	PQclear(res);
	return rc;
}

static void eval_mrr(tally_alerts *a, const PGresult *res, int row,
		     tally_money128 p, tally_money128 c,
		     const tally_alert_thresholds *th, int64_t cur_ms)
{
	(void)tally_alerts_eval_mrr(&a->list, cur_ms, PQgetvalue(res, row, 0),
				    p, c, th);
}

static void eval_plan(tally_alerts *a, const PGresult *res, int row,
		      tally_money128 p, tally_money128 c,
		      const tally_alert_thresholds *th, int64_t cur_ms)
{
	(void)tally_alerts_eval_plan_revenue(&a->list, cur_ms,
		PQgetvalue(res, row, 0), PQgetvalue(res, row, 1), p, c, th);
}

/* Company MRR of month cur against prev, per currency (finance_mrr has a
 * row per month and currency; amounts are never added across them). */
static int scan_mrr(tally_alerts *a, const tally_alert_thresholds *th,
		    const char *prev, const char *cur, int64_t cur_ms,
		    tally_error *err)
{
	return scan_compare(a,
		"SELECT p.currency, p.mrr::text, coalesce(c.mrr, 0)::text FROM"
		" (SELECT currency, sum(mrr) AS mrr FROM finance_mrr WHERE"
		"  month = " MS_TS("$1") " GROUP BY currency) p LEFT JOIN"
		" (SELECT currency, sum(mrr) AS mrr FROM finance_mrr WHERE"
		"  month = " MS_TS("$2") " GROUP BY currency) c"
		" ON c.currency = p.currency ORDER BY p.currency",
		1, eval_mrr, th, prev, cur, cur_ms, err);
}

/* Each plan's revenue (plan_revenue + usage_revenue) of cur against prev,
 * per currency; a plan with nothing in cur has revenue 0 there. */
static int scan_plans(tally_alerts *a, const tally_alert_thresholds *th,
		      const char *prev, const char *cur, int64_t cur_ms,
		      tally_error *err)
{
	return scan_compare(a,
		"SELECT p.plan, p.currency, p.rev::text, coalesce(c.rev, 0)::text"
		" FROM (SELECT plan, currency, sum(plan_revenue + usage_revenue)"
		"  AS rev FROM finance_revenue_by_plan WHERE month = "
		MS_TS("$1") "  AND plan IS NOT NULL GROUP BY plan, currency) p"
		" LEFT JOIN (SELECT plan, currency, sum(plan_revenue +"
		"  usage_revenue) AS rev FROM finance_revenue_by_plan WHERE"
		"  month = " MS_TS("$2") " GROUP BY plan, currency) c"
		" ON c.plan = p.plan AND c.currency = p.currency"
		" ORDER BY p.plan, p.currency",
		2, eval_plan, th, prev, cur, cur_ms, err);
}

/* Each tenant's usage revenue of the months from..to against the monthly
 * price of its plan (tenants.subscription_plan). */
static int scan_usage(tally_alerts *a, const tally_alert_thresholds *th,
		      const char *from, const char *to, tally_error *err)
{
	const char *params[2] = { from, to };
	PGresult *res = NULL;
	int rc, i;

	rc = tally_pg_exec(a->pg, &res,
		"SELECT u.tenant_id::text, (extract(epoch FROM u.month) *"
		" 1000)::bigint, sum(u.usage_revenue)::text,"
		" p.monthly_price::text, p.id FROM finance_usage_monthly u"
		" JOIN tenants t ON t.id = u.tenant_id JOIN plans p ON p.id ="
		" t.subscription_plan WHERE u.month >= " MS_TS("$1") " AND"
		" u.month <= " MS_TS("$2") " AND p.monthly_price > 0"
		" GROUP BY u.tenant_id, u.month, p.monthly_price, p.id",
		2, params, err);
	for (i = 0; rc == 0 && i < PQntuples(res); i++) {
		const char *tid = PQgetvalue(res, i, 0);
		uint8_t t[16];
		int64_t month;
		tally_money128 u, p;

		if (tally_uuid_parse(t, tid, (uint32_t)strlen(tid)) == 0 &&
		    tally_parse_i64(&month, PQgetvalue(res, i, 1)) == 0 &&
		    amount(&u, PQgetvalue(res, i, 2)) &&
		    amount(&p, PQgetvalue(res, i, 3)))
			(void)tally_alerts_eval_usage_over_plan(&a->list, t,
				month, PQgetvalue(res, i, 4), u, p, th);
	}
	PQclear(res);
	return rc;
}

int tally_alerts_scan_revenue(tally_alerts *a, const tally_revenue_rule *r,
			      int64_t now_ms, int *raised, tally_error *err)
{
	int64_t now_m = tally_month_start_ms(now_ms);
	int64_t cur = month_before(now_ms), prev = month_before(cur);
	char s_prev[24], s_cur[24], s_now[24];
	int rc = 0;

	if (raised != NULL)
		*raised = 0;
	snprintf(s_prev, sizeof(s_prev), "%" PRId64, prev);
	snprintf(s_cur, sizeof(s_cur), "%" PRId64, cur);
	snprintf(s_now, sizeof(s_now), "%" PRId64, now_m);
	tally_alerts__clear_batch(a);
	if (r->mrr_change.n > 0)
		rc = scan_mrr(a, &r->mrr_change, s_prev, s_cur, cur, err);
	if (rc == 0 && r->plan_drop.n > 0)
		rc = scan_plans(a, &r->plan_drop, s_prev, s_cur, cur, err);
	if (rc == 0 && r->usage_over_plan.n > 0)
		rc = scan_usage(a, &r->usage_over_plan, s_cur, s_now, err);
	if (rc == 0)
		rc = tally_alerts__raise_list(a, "revenue", raised, err);
	tally_alerts__clear_batch(a);
	return rc;
}

int tally_alerts_revenue_tick(tally_alerts *a, const tally_revenue_rule *r,
			      int64_t every_ms, tally_error *err)
{
	int raised = 0, rc;

	if (!tally_alerts__due(&a->revenue_timer, every_ms))
		return 0;
	rc = tally_alerts_scan_revenue(a, r, tally_now_ms(), &raised, err);
	if (rc == 0 && raised > 0)
		tally_log(TALLY_INFO, "alerts.revenue_scan",
			  TALLY_KV_INT("raised", raised));
	return rc;
}
