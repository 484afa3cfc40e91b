/*
 * test_stripe_meters.c - usage_hourly to Stripe meter events (stripe-mock
 * validates each POST /v1/billing/meter_events): closed hours only, within
 * Stripe's 35-day window, once per (tenant, meter, hour) with late usage as
 * a delta revision; and `reconcile` finding and fixing differences.
 */
#include "stripe_testdb.h"
#include "tally/stripe_sync.h"

#include <string.h>

#define T1 "abcdefab-0000-4000-8000-000000000001"
/* the customer of stripe-mock's fixture subscription and invoice */
#define FIXTURE_CUS "cus_QXg1o8vcGmoR32"

static int64_t fake_now_ms;

static int64_t fake_clock(void *payload)
{
	(void)payload;
	return fake_now_ms;
}

static void check(tally_pg *pg, const char *sql, const char *want)
{
	char got[256];

	testdb_get(pg, got, sizeof(got), sql, NULL);
	ck_assert_msg(strcmp(got, want) == 0, "%s: want '%s', got '%s'", sql,
		      want, got);
}

START_TEST(test_stripe_meters_and_reconcile)
{
	tally_pg *pg = testdb_create("tally_stripe_meter");
	tally_config *cfg = testdb_config();
	tally_stripe_opts o = { 0 };

	tally_config_set(cfg, "stripe.usage_billing", "meters");
	tally_stripe_sync_opts so = { 0 };
	tally_stripe *stripe = NULL;
	tally_stripe_sync *ss = NULL;
	tally_error err;
	FILE *out = tmpfile();
	int n = -1;

	testdb_tenant(pg, T1, "meter-tenant", FIXTURE_CUS);
	o.api_base = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	o.secret_key = "sk_test_123";
	o.timeout_ms = 10000;
	ck_assert_int_eq(tally_stripe_new(&stripe, &o, &err), 0);
	so.pg = pg;
	so.cfg = cfg;
	so.stripe = stripe;
	so.clock = fake_clock;
	so.meter_rate_per_s = 1000;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &so, &err), 0);
	fake_now_ms = 1767229200000LL; /* 2026-01-01T01:00:00Z */
	testdb_sql(pg, "INSERT INTO usage_hourly (tenant_id, hour, meter, "
		   "provider, model, events, input_tokens, output_tokens) VALUES"
		   " ('" T1 "', '2025-12-31T23:00:00Z', 'ai.tokens', 'openai', "
		   "'gpt-4o', 3, 1000, 200),"
		   " ('" T1 "', '2025-12-31T23:00:00Z', 'ai.tokens', "
		   "'anthropic', 'claude', 1, 300, 50),"
		   " ('" T1 "', '2026-01-01T01:00:00Z', 'ai.tokens', 'openai', "
		   "'gpt-4o', 1, 10, 10),"   /* open hour: not yet */
		   " ('" T1 "', '2025-11-20T00:00:00Z', 'ai.tokens', 'openai', "
		   "'gpt-4o', 1, 10, 10)");  /* older than 35 days */
	ck_assert_msg(tally_stripe_sync_report_meters(ss, &n, &err) == 0,
		      "meters: %s", err.msg);
	ck_assert_int_eq(n, 1);
	check(pg, "SELECT value || ',' || revision || ',' || status FROM "
	      "stripe_meter_reports", "1550,0,reported");
	ck_assert_int_eq(tally_stripe_sync_report_meters(ss, &n, &err), 0);
	ck_assert_msg(n == 0, "a reported hour is not sent again");
	/* late usage for the reported hour goes out as a delta */
	testdb_sql(pg, "UPDATE usage_hourly SET output_tokens = "
		   "output_tokens + 25 WHERE model = 'claude'");
	ck_assert_int_eq(tally_stripe_sync_report_meters(ss, &n, &err), 0);
	ck_assert_int_eq(n, 1);
	check(pg, "SELECT string_agg(value || '@r' || revision, ' ' ORDER BY "
	      "revision) FROM stripe_meter_reports", "1550@r0 25@r1");
	check(pg, "SELECT count(DISTINCT identifier) FROM "
	      "stripe_meter_reports", "2");

	/* reconcile: stripe-mock's subscription and invoice are missing */
	ck_assert_int_eq(tally_stripe_sync_reconcile(ss, false, out, &n, &err),
			 0);
	ck_assert_msg(n >= 2, "missing subscription and invoice, got %d", n);
	check(pg, "SELECT count(*) FROM subscriptions", "0");
	ck_assert_msg(tally_stripe_sync_reconcile(ss, true, out, &n, &err) ==
		      0, "reconcile --apply: %s", err.msg);
	check(pg, "SELECT count(*) FROM subscriptions", "1");
	check(pg, "SELECT count(*) FROM invoices", "1");
	ck_assert_int_eq(tally_stripe_sync_reconcile(ss, false, out, &n, &err),
			 0);
	ck_assert_msg(n == 0, "after --apply nothing differs, got %d", n);
	fclose(out);
	tally_stripe_sync_free(ss);
	tally_stripe_free(stripe);
	tally_config_free(cfg);
	tally_pg_free(pg);
}
END_TEST

static Suite *tally_stripe_meters_suite(void)
{
	Suite *s = suite_create("stripe_meters");
	TCase *tc = tcase_create("StripeMock");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_stripe_meters_and_reconcile);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_meters_suite)
