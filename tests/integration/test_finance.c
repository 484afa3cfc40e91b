/*
 * test_finance.c - the finance views on a known set of subscriptions and
 * usage: MRR (plan-only and usage-inclusive), ARR, churn, revenue by plan,
 * daily usage cost; exact numerics; independent of the session TimeZone.
 * No subscription version was mirrored here: a subscription's MRR is its
 * plan's price (test_finance_stripe.c has Stripe's prices and discounts).
 * `tally report` is tested in test_report_cli.c on the same fixture.
 */
#include "test_support.h"
#include "check_main.h"

#include "finance_fixture.h"
#include "tally/log.h"

#include <jansson.h>

static char db[64], dsn[512];
static void setup(void)
{
	tally_test_unique(db, sizeof(db), "t_fin");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	tally_test_exec(dsn, finance_fixture);
}

static void teardown(void)
{
	tally_test_db_drop(db);
}

/* One row of `sql` as "a|b|c" (NULL as empty). */
static void row(char *out, size_t n, PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	size_t len = 0;
	int f;

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
		      PQerrorMessage(c));
	ck_assert_msg(PQntuples(r) == 1, "%s: %d rows", sql, PQntuples(r));
	out[0] = '\0';
	for (f = 0; f < PQnfields(r); f++)
		len += (size_t)snprintf(out + len, n - len, "%s%s", f ? "|" : "",
					PQgetvalue(r, 0, f));
	PQclear(r);
}

static void check_months(PGconn *c)
{
	char got[512];

	row(got, sizeof(got), c, "SELECT plan_mrr, usage_revenue, mrr,"
	    " paying_subscriptions FROM finance_mrr WHERE month ="
	    " '2026-01-01T00:00:00Z'");
	/* 1.25 + the late 0.75 once + January's storage adjustment 0.1 */
	ck_assert_str_eq(got, "398.00|2.10|400.10|2");
	row(got, sizeof(got), c, "SELECT plan_mrr, usage_revenue, mrr,"
	    " paying_subscriptions FROM finance_mrr WHERE month ="
	    " '2026-02-01T00:00:00Z'");
	/* + February's storage 0.5; MRR is the state at the end of the
	 * month: sub_2 ended on 15 February, sub_3 is in its trial */
	ck_assert_str_eq(got, "99.00|3.000000000001|102.000000000001|1");
	row(got, sizeof(got), c, "SELECT plan_mrr, usage_revenue, mrr,"
	    " paying_subscriptions FROM finance_mrr WHERE month ="
	    " '2026-03-01T00:00:00Z'");
	/* the adjustments created in March are not revenue again; sub_3's
	 * trial ended on 5 March */
	ck_assert_str_eq(got, "1098.00|0|1098.00|2");
	row(got, sizeof(got), c, "SELECT arr FROM finance_arr WHERE month ="
	    " '2026-03-01T00:00:00Z'");
	ck_assert_str_eq(got, "13176.00");
	row(got, sizeof(got), c, "SELECT subscriptions_at_start,"
	    " churned_subscriptions, logo_churn_rate, plan_mrr_at_start,"
	    " churned_plan_mrr, revenue_churn_rate FROM finance_churn"
	    " WHERE month = '2026-02-01T00:00:00Z'");
	ck_assert_str_eq(got, "2|1|0.500000|398.00|299.00|0.751256");
	row(got, sizeof(got), c, "SELECT count(*) FROM finance_churn WHERE month"
	    " = '2026-01-01T00:00:00Z' AND logo_churn_rate IS NULL");
	ck_assert_str_eq(got, "1");
	row(got, sizeof(got), c, "SELECT paying_subscriptions, plan_revenue,"
	    " usage_revenue FROM finance_revenue_by_plan WHERE month ="
	    " '2026-02-01T00:00:00Z' AND plan = 'professional'");
	/* sub_2 pays no more at the end of February; its usage is revenue */
	ck_assert_str_eq(got, "0|0.00|2.5");
	row(got, sizeof(got), c, "SELECT day, tenant, events, cost FROM"
	    " finance_usage_cost_daily WHERE tenant = 'one' AND day ="
	    " '2026-01-31'");
	ck_assert_str_eq(got, "2026-01-31|one|3|1.25");
}

START_TEST(test_finance_views_exact)
{
	PGconn *c = PQconnectdb(dsn);

	ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
	check_months(c);
	PQfinish(c);
}
END_TEST

START_TEST(test_finance_views_ignore_session_timezone)
{
	PGconn *c = PQconnectdb(dsn);

	ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
	PQclear(PQexec(c, "SET TimeZone = 'Pacific/Auckland'"));
	check_months(c);
	PQclear(PQexec(c, "SET TimeZone = 'America/Los_Angeles'"));
	check_months(c);
	PQfinish(c);
}
END_TEST

/* The views' estimated cost stays under PostgreSQL's jit_above_cost
 * (100000): a plan above it is JIT-compiled, seconds for every query. */
START_TEST(test_finance_views_plans_skip_jit)
{
	static const char *const views[] = {
		"finance_months", "finance_subscription_months",
		"finance_tenant_mrr", "finance_mrr", "finance_arr",
		"finance_churn", "finance_revenue_by_plan",
		"finance_mrr_movements", "finance_nrr", "finance_clv",
		"finance_usage_monthly", "finance_invoices",
	};
	PGconn *c = PQconnectdb(dsn);
	char sql[128];
	size_t i;

	ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
	for (i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
		PGresult *r;
		json_t *plan;
		double cost;

		snprintf(sql, sizeof(sql), "EXPLAIN (FORMAT JSON) SELECT * "
			 "FROM %s", views[i]);
		r = PQexec(c, sql);
		ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s",
			      sql, PQerrorMessage(c));
		plan = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
		cost = json_real_value(json_object_get(json_object_get(
			json_array_get(plan, 0), "Plan"), "Total Cost"));
		ck_assert_msg(cost > 0 && cost < 100000, "%s: cost %.0f",
			      views[i], cost);
		json_decref(plan);
		PQclear(r);
	}
	PQfinish(c);
}
END_TEST

static Suite *finance_suite(void)
{
	Suite *s = suite_create("finance");
	TCase *tc = tcase_create("Views");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test_finance", TALLY_WARN);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_finance_views_exact);
	tcase_add_test(tc, test_finance_views_ignore_session_timezone);
	tcase_add_test(tc, test_finance_views_plans_skip_jit);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(finance_suite)
