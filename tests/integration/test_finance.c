/*
 * test_finance.c - the finance views on a known set of subscriptions and
 * usage: MRR (plan-only and usage-inclusive), ARR, churn, revenue by plan,
 * daily usage cost; exact numerics; independent of the session TimeZone;
 * and `tally report` printing the same figures as CSV.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/log.h"

static char db[64], dsn[512];

static const char *fixture =
	"INSERT INTO tenants (id, name, slug, domain, subscription_plan) VALUES"
	" ('11111111-1111-1111-1111-111111111111','One','one','one.test','starter'),"
	" ('22222222-2222-2222-2222-222222222222','Two','two','two.test','professional'),"
	" ('33333333-3333-3333-3333-333333333333','Three','three','three.test','enterprise');"
	"INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, status,"
	" plan, stripe_created, as_of, trial_end, ended_at, canceled_at) VALUES"
	" ('11111111-1111-1111-1111-111111111111','sub_1','cus_1','active','starter',"
	"  '2026-01-10T00:00:00Z','2026-01-10T00:00:00Z',NULL,NULL,NULL),"
	" ('22222222-2222-2222-2222-222222222222','sub_2','cus_2','canceled','professional',"
	"  '2026-01-05T00:00:00Z','2026-02-15T00:00:00Z',NULL,'2026-02-15T00:00:00Z',"
	"  '2026-02-15T00:00:00Z'),"
	" ('33333333-3333-3333-3333-333333333333','sub_3','cus_3','active','enterprise',"
	"  '2026-02-20T00:00:00Z','2026-02-20T00:00:00Z','2026-03-05T00:00:00Z',NULL,NULL);"
	"INSERT INTO usage_hourly (tenant_id, hour, meter, provider, model, events,"
	" input_tokens, output_tokens, cost) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-01-31T23:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',3,300,30,1.25),"
	" ('11111111-1111-1111-1111-111111111111','2026-02-01T00:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',1,1,0,0.000000000001),"
	" ('22222222-2222-2222-2222-222222222222','2026-02-10T05:00:00Z','ai.tokens',"
	"  'anthropic','claude-3-5-haiku',2,10,10,2.5),"
	/* a late event of January's closed period: at its own hour, as
	 * tally-aggregate writes it, and as the adjustment below */
	" ('11111111-1111-1111-1111-111111111111','2026-01-20T10:00:00Z','ai.tokens',"
	"  'openai','gpt-4o',1,100,10,0.75);"
	/* storage is charged per period, not in usage_hourly */
	"INSERT INTO tenant_period_usage (tenant_id, period_start, period_end,"
	" storage_cost, cost) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-02-01T00:00:00Z',"
	"  '2026-03-01T00:00:00Z',0.5,0.5);"
	"INSERT INTO usage_adjustments (tenant_id, period_start, period_end, kind,"
	" meter, cost, created_at) VALUES"
	" ('11111111-1111-1111-1111-111111111111','2026-01-01T00:00:00Z',"
	"  '2026-02-01T00:00:00Z','late_usage','ai.tokens',0.75,'2026-03-02T00:00:00Z'),"
	" ('11111111-1111-1111-1111-111111111111','2026-01-01T00:00:00Z',"
	"  '2026-02-01T00:00:00Z','storage','storage.snapshot',0.1,"
	"  '2026-03-03T00:00:00Z');";

static void setup(void)
{
	tally_test_unique(db, sizeof(db), "t_fin");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	tally_test_exec(dsn, fixture);
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
	/* + February's storage 0.5 */
	ck_assert_str_eq(got, "398.00|3.000000000001|401.000000000001|2");
	row(got, sizeof(got), c, "SELECT plan_mrr, usage_revenue, mrr,"
	    " paying_subscriptions FROM finance_mrr WHERE month ="
	    " '2026-03-01T00:00:00Z'");
	/* the adjustments created in March are not revenue again */
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
	ck_assert_str_eq(got, "1|299.00|2.5");
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

START_TEST(test_report_cli_csv)
{
	char cmd[1024], line[512];
	const char *bin = getenv("TALLY_BIN_DIR");
	FILE *fp;
	int found = 0;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally report mrr"
		 " --format csv --from 2026-02-01T00:00:00Z --to"
		 " 2026-03-01T00:00:00Z", dsn, bin ? bin : TALLY_BINARY_DIR);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), fp));
	ck_assert_str_eq(line, "month,plan_mrr,usage_revenue,mrr,"
			       "paying_subscriptions\n");
	while (fgets(line, sizeof(line), fp) != NULL) {
		ck_assert_str_eq(line, "2026-02,398.00,3.000000000001,"
				       "401.000000000001,2\n");
		found++;
	}
	ck_assert_int_eq(pclose(fp), 0);
	ck_assert_msg(found == 1, "[from, to) must select exactly February");
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally report mrr"
		 " --format xml >/dev/null 2>&1", dsn, bin ? bin : TALLY_BINARY_DIR);
	ck_assert_msg(system(cmd) != 0, "an unknown format must fail");
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
	tcase_add_test(tc, test_report_cli_csv);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(finance_suite)
