/*
 * test_alerts_revenue.c - revenue alerts on the business against
 * PostgreSQL and the finance views: two months of subscriptions and usage
 * (the two months before the current one) raise exactly company MRR down
 * more than 10 % (not 20 %), the enterprise plan's revenue gone (20 %),
 * one tenant's usage over 200 % of its plan price (not 300 %); a plan
 * down exactly 20 % and a tenant at exactly 200 % raise nothing; a rescan
 * raises nothing new. Business alerts carry the nil tenant.
 */
#include "alerts_webhook_support.h"

#include "tally/alerts.h"
#include "tally/alerts_slack.h"
#include "tally/event.h"
#include "tally/log.h"

#define TA "7b2e1d3c-4a5f-4b6c-8d7e-9f0a1b2c3d41" /* professional */
#define TB "7b2e1d3c-4a5f-4b6c-8d7e-9f0a1b2c3d42" /* starter */
#define TC "7b2e1d3c-4a5f-4b6c-8d7e-9f0a1b2c3d43" /* enterprise, ends */
#define TD "7b2e1d3c-4a5f-4b6c-8d7e-9f0a1b2c3d44" /* starter, no sub */

/* the current month C, and the two complete months before: M, P */
#define C_SQL "(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
#define M_SQL "(" C_SQL " - interval '1 month')"
#define P_SQL "(" C_SQL " - interval '2 months')"

static char db[64], dsn[512];
static tally_pg *pg;
static tally_alerts *al;

static void run(const char *sql)
{
	tally_error err;

	ck_assert_msg(tally_pg_exec(pg, NULL, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
}

static int64_t q_int(const char *sql)
{
	return aw_q_int(pg, sql);
}

static void tenant(const char *id, const char *slug, const char *plan)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " subscription_plan) VALUES ('%s', '%s', '%s', '%s.example',"
		 " '%s')", id, slug, slug, slug, plan);
	run(sql);
}

/* A subscription to plan from before P, ended at `ended` (SQL) or not. */
static void sub(const char *id, const char *plan, const char *ended)
{
	char sql[1024];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO subscriptions (tenant_id, subscription_id,"
		 " customer_id, status, plan, stripe_created, as_of, ended_at)"
		 " VALUES ('%s', 'sub_%s', 'cus_%s', '%s', '%s', " P_SQL
		 " - interval '1 day', now(), %s)", id, plan, plan,
		 ended ? "canceled" : "active", plan, ended ? ended : "NULL");
	run(sql);
}

/* Usage costing cost in the month starting at month (SQL). */
static void usage(const char *id, const char *month, const char *cost)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO usage_hourly (tenant_id, hour, meter, events,"
		 " cost) VALUES ('%s', %s + interval '1 day', 'ai_requests', 1,"
		 " %s)", id, month, cost);
	run(sql);
}

static void setup(void)
{
	tally_alerts_opts o = { 0 };
	tally_error err;

	/* with the tenant AW_TENANT: no subscription, no usage */
	pg = aw_db_open(db, sizeof(db), dsn, sizeof(dsn), "t_revenue");
	o.group = "g";
	o.totals_topic = "billing.totals";
	o.signals_topic = "billing.signals";
	ck_assert_int_eq(tally_alerts_new(&al, pg, &o, &err), 0);
	tenant(TA, "alpha", "professional");
	tenant(TB, "beta", "starter");
	tenant(TC, "gamma", "enterprise");
	tenant(TD, "delta", "starter");
	sub(TA, "professional", NULL);
	sub(TB, "starter", NULL);
	sub(TC, "enterprise", M_SQL " + interval '1 day'");
	/*
	 * P: plans 299 + 99 + 999, usage 100 + 151: MRR 1648
	 * M: plans 299 + 99, usage 700 + 101 + 198: MRR 1397 (-15.23 %)
	 * starter 250 -> 200 (exactly -20 %), enterprise 999 -> 0,
	 * professional 399 -> 999; A's usage 700 > 2 x 299 (234 %),
	 * D's 198 = 2 x 99 (exactly 200 %)
	 */
	usage(TA, P_SQL, "100");
	usage(TB, P_SQL, "151");
	usage(TA, M_SQL, "700");
	usage(TB, M_SQL, "101");
	usage(TD, M_SQL, "198");
}

static void teardown(void)
{
	tally_alerts_free(al);
	al = NULL;
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

static int scan(const tally_revenue_rule *r)
{
	tally_error err;
	int raised = -1;

	ck_assert_msg(tally_alerts_scan_revenue(al, r, tally_now_ms(),
						&raised, &err) == 0, "%s",
		      err.msg);
	return raised;
}

static tally_alert_thresholds th(const char *s)
{
	tally_alert_thresholds t;
	tally_error err;

	ck_assert_int_eq(tally_alert_thresholds_parse(&t, s, &err), 0);
	return t;
}

START_TEST(test_revenue_alerts_once_each)
{
	tally_revenue_rule r;

	r.mrr_change = th("10,20");
	r.plan_drop = th("20");
	r.usage_over_plan = th("200,300");
	/* the seed is what the views say */
	ck_assert_int_eq(q_int("SELECT (mrr * 100)::bigint FROM finance_mrr WHERE"
			       " month = " P_SQL), 164800);
	ck_assert_int_eq(q_int("SELECT (mrr * 100)::bigint FROM finance_mrr WHERE"
			       " month = " M_SQL), 139700);
	ck_assert_int_eq(scan(&r), 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE tenant_id"
			       " = '" TALLY_ALERTS_BUSINESS_TENANT "' AND kind"
			       " = 'mrr_drop' AND threshold = 10 AND subject = 'USD' AND"
			       " period_start = " M_SQL " AND"
			       " payload->>'change_pct' = '-15.23' AND"
			       " payload->>'mrr' = '1397' AND"
			       " payload->>'previous_mrr' = '1648'"), 1);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE tenant_id"
			       " = '" TALLY_ALERTS_BUSINESS_TENANT "' AND kind"
			       " = 'plan_revenue_drop' AND threshold = 20 AND"
			       " subject = 'enterprise/USD' AND period_start = "
			       M_SQL " AND payload->>'revenue' = '0'"), 1);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE tenant_id"
			       " = '" TA "' AND kind = 'usage_over_plan' AND"
			       " threshold = 200 AND period_start = " M_SQL
			       " AND payload->>'usage_revenue' = '700' AND"
			       " payload->>'plan_price' = '299'"), 1);
	/* rescans: nothing new */
	ck_assert_int_eq(scan(&r), 0);
	ck_assert_int_eq(scan(&r), 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 3);
	/* like any alert: waiting to be produced and routed */
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " produced_at IS NULL AND routed_at IS NULL"),
			 3);
}
END_TEST

START_TEST(test_revenue_rules_off_and_business_tenant_guarded)
{
	tally_revenue_rule r;
	tally_error err;

	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(scan(&r), 0);
	/* a business kind needs the nil tenant, a tenant's kind a tenant */
	ck_assert_int_ne(tally_pg_exec(pg, NULL,
		"INSERT INTO alerts (id, tenant_id, kind, period_start)"
		" VALUES (gen_random_uuid(), '" TA "', 'mrr_drop', now())",
		0, NULL, &err), 0);
	ck_assert_int_ne(tally_pg_exec(pg, NULL,
		"INSERT INTO alerts (id, tenant_id, kind, period_start)"
		" VALUES (gen_random_uuid(), '" TALLY_ALERTS_BUSINESS_TENANT
		"', 'budget', now())", 0, NULL, &err), 0);
	ck_assert_int_ne(tally_pg_exec(pg, NULL,
		"INSERT INTO tenants (id, name, slug, domain) VALUES ('"
		TALLY_ALERTS_BUSINESS_TENANT "', 'x', 'x', 'x.example')",
		0, NULL, &err), 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 0);
}
END_TEST

static Suite *tally_alerts_revenue_suite(void)
{
	Suite *s = suite_create("alerts_revenue");
	TCase *tc = tcase_create("Postgres");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_revenue_alerts_once_each);
	tcase_add_test(tc, test_revenue_rules_off_and_business_tenant_guarded);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_revenue_suite)
