/*
 * test_business_gauges.c - the business gauges of tally-alerts from a known
 * database: MRR/ARR in cents from the finance views (plans plus this
 * month's usage, rounded exactly), paying tenants, tenants by status (zero
 * series present), open alerts by kind (delivered and last month's not
 * counted); and the refresh thread filling them and stopping promptly.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_support.h"
#include "check_main.h"
#include "tally/business_gauges.h"

#include <stdlib.h>
#include <string.h>

static char db[64], dsn[512];

/* two paying tenants (starter 99.00, professional 299.00) since last
 * month, one in a trial past this month, one suspended without a
 * subscription; usage this month 1.2345 -> MRR 399.2345 -> 39923 cents */
static const char *fixture =
	"INSERT INTO tenants (id, name, slug, domain, subscription_plan, status)"
	" VALUES"
	" ('11111111-1111-1111-1111-111111111111','A','a','a.test','starter','active'),"
	" ('22222222-2222-2222-2222-222222222222','B','b','b.test','professional','past_due'),"
	" ('33333333-3333-3333-3333-333333333333','C','c','c.test','enterprise','trialing'),"
	" ('44444444-4444-4444-4444-444444444444','D','d','d.test','starter','suspended');"
	"INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, status,"
	" plan, stripe_created, as_of, trial_end) VALUES"
	" ('11111111-1111-1111-1111-111111111111','sub_a','cus_a','active','starter',"
	"  now() - interval '40 days', now(), NULL),"
	" ('22222222-2222-2222-2222-222222222222','sub_b','cus_b','past_due',"
	"  'professional', now() - interval '40 days', now(), NULL),"
	" ('33333333-3333-3333-3333-333333333333','sub_c','cus_c','trialing',"
	"  'enterprise', now() - interval '1 day', now(), now() + interval '60 days');"
	/* a euro customer: 2 x 49.00 a month, in its own gauge */
	"INSERT INTO tenants (id, name, slug, domain, status, currency) VALUES"
	" ('55555555-5555-5555-5555-555555555555','E','e','e.test','active',"
	"  'EUR');"
	"INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, status,"
	" plan, currency, stripe_created, as_of) VALUES"
	" ('55555555-5555-5555-5555-555555555555','sub_e','cus_e','active',"
	"  'starter','EUR', now() - interval '40 days', now());"
	"INSERT INTO subscription_versions (tenant_id, subscription_id, as_of,"
	" as_of_rank, status, currency) VALUES"
	" ('55555555-5555-5555-5555-555555555555','sub_e',"
	"  now() - interval '40 days', 0, 'active', 'EUR');"
	"INSERT INTO subscription_version_items (tenant_id, subscription_id,"
	" as_of, as_of_rank, item_id, quantity, unit_amount, currency,"
	" recurring_interval, interval_count) SELECT tenant_id, subscription_id,"
	" as_of, as_of_rank, 'si_e', 2, 4900, 'EUR', 'month', 1"
	" FROM subscription_versions;"
	"INSERT INTO usage_hourly (tenant_id, hour, meter, provider, model, events,"
	" input_tokens, output_tokens, cost) VALUES"
	" ('11111111-1111-1111-1111-111111111111',"
	"  date_trunc('hour', now()), 'ai.tokens','openai','gpt-4o',1,1,1,1.2345);"
	"INSERT INTO alerts (id, tenant_id, kind, period_start, threshold,"
	" raised_at, delivered_at) VALUES"
	" (gen_random_uuid(),'11111111-1111-1111-1111-111111111111','budget',"
	"  now(), 80, now(), NULL),"
	" (gen_random_uuid(),'11111111-1111-1111-1111-111111111111','budget',"
	"  now(), 100, now(), NULL),"
	" (gen_random_uuid(),'22222222-2222-2222-2222-222222222222','payment_failed',"
	"  now(), 0, now(), now()),"
	" (gen_random_uuid(),'22222222-2222-2222-2222-222222222222','dunning',"
	"  now() - interval '45 days', 0, now() - interval '45 days', NULL);";

static void setup(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_unique(db, sizeof(db), "t_bizg");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	tally_test_exec(dsn, fixture);
}

static void teardown(void)
{
	tally_test_db_drop(db);
}

static void expect(const char *text, const char *line)
{
	ck_assert_msg(strstr(text, line) != NULL, "missing \"%s\" in:\n%s",
		      line, text);
}

START_TEST(test_business_gauges_refresh)
{
	tally_metrics *m = tally_metrics_new();
	tally_pg *pg = NULL;
	tally_error err;
	char *t = NULL;

	ck_assert_msg(tally_pg_connect(&pg, dsn, 5000, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(tally_business_gauges_refresh(pg, m, &err) == 0, "%s",
		      err.msg);
	tally_metrics_render(&t, NULL, m);
	expect(t, "tally_business_mrr_cents{currency=\"USD\"} 39923\n");
	/* 12 x 399.2345 */
	expect(t, "tally_business_arr_cents{currency=\"USD\"} 479081\n");
	expect(t, "tally_business_mrr_cents{currency=\"EUR\"} 9800\n");
	expect(t, "tally_business_arr_cents{currency=\"EUR\"} 117600\n");
	expect(t, "tally_business_paying_tenants 3\n");
	expect(t, "tally_business_tenants{status=\"past_due\"} 1\n");
	expect(t, "tally_business_tenants{status=\"suspended\"} 1\n");
	expect(t, "tally_business_tenants{status=\"cancelled\"} 0\n");
	expect(t, "tally_business_alerts_open{kind=\"budget\"} 2\n");
	expect(t, "tally_business_alerts_open{kind=\"payment_failed\"} 0\n");
	expect(t, "tally_business_alerts_open{kind=\"dunning\"} 0\n");
	free(t);
	/* a status that empties goes back to 0 on the next refresh */
	tally_test_exec(dsn, "UPDATE tenants SET status = 'active'"
			     " WHERE status = 'suspended'");
	ck_assert(tally_business_gauges_refresh(pg, m, &err) == 0);
	tally_metrics_render(&t, NULL, m);
	expect(t, "tally_business_tenants{status=\"suspended\"} 0\n");
	expect(t, "tally_business_tenants{status=\"active\"} 3\n");
	free(t);
	tally_pg_free(pg);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_business_gauges_thread)
{
	tally_metrics *m = tally_metrics_new();
	tally_business_gauges *bg = NULL;
	tally_gauge *mrr = tally_metrics_gauge(m, "tally_business_mrr_cents",
					       "currency=\"USD\"", NULL);
	tally_error err;
	int64_t t0;
	int i;

	ck_assert(tally_business_gauges_start(&bg, dsn, 5000, m, 60000,
					      &err) == 0);
	for (i = 0; i < 100 && tally_gauge_get(mrr) == 0; i++)
		tally_sleep_ms(50);
	ck_assert_int_eq(tally_gauge_get(mrr), 39923);
	t0 = tally_now_ms();
	tally_business_gauges_stop(bg); /* mid-wait: must not sit out 60 s */
	ck_assert_int_lt(tally_now_ms() - t0, 1000);
	tally_metrics_free(m);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("business_gauges");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_business_gauges_refresh);
	tcase_add_test(tc, test_business_gauges_thread);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
