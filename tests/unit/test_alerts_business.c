/*
 * test_alerts_business.c - the revenue rules on the business: company MRR
 * month over month (more than T %: exactly T % raises nothing, one
 * pico-unit more does), both directions, several thresholds, no base
 * month; a plan's revenue drop keyed by the plan (its own id); usage
 * revenue over a factor of the plan price; amounts past int64 pico-units;
 * the payloads' exact figures.
 */
#include "check_main.h"
#include "tally/alerts_rules.h"
#include "tally/event.h"

#include <stdlib.h>
#include <string.h>

#define NOV_2026 INT64_C(1793491200000)
#define TENANT "4d7f3a52-2b1c-4c8e-9f0a-1b2c3d4e5f60"

static tally_money128 amt(const char *s)
{
	tally_money128 v = 0;

	ck_assert_int_eq(tally_money_parse128(&v, s, strlen(s)), 0);
	return v;
}

static tally_alert_thresholds th(const char *s)
{
	tally_alert_thresholds t;
	tally_error err;

	ck_assert_int_eq(tally_alert_thresholds_parse(&t, s, &err), 0);
	return t;
}

static const struct {
	const char *prev, *cur, *ths;
	int n;
	tally_alert_kind kind; /* of the first alert */
} mrr_cases[] = {
	{ "1000", "1100", "10", 0, TALLY_ALERT_MRR_RISE },  /* exactly 10 % */
	{ "1000", "1100.000000000001", "10", 1, TALLY_ALERT_MRR_RISE },
	{ "1000", "900", "10", 0, TALLY_ALERT_MRR_DROP },   /* exactly -10 % */
	{ "1000", "899.999999999999", "10", 1, TALLY_ALERT_MRR_DROP },
	{ "1000", "1300", "10,25", 2, TALLY_ALERT_MRR_RISE },
	{ "1000", "1000", "10", 0, TALLY_ALERT_MRR_RISE },
	{ "0", "500", "10", 0, TALLY_ALERT_MRR_RISE },      /* no base */
	/* past int64 pico-units (9.2 million units) */
	{ "20000000", "17999999.999999999999", "10", 1, TALLY_ALERT_MRR_DROP },
	{ "20000000", "18000000", "10", 0, TALLY_ALERT_MRR_DROP },
};

START_TEST(test_mrr_table)
{
	tally_alert_list l;
	tally_alert_thresholds t = th(mrr_cases[_i].ths);
	int n;

	tally_alert_list_init(&l);
	n = tally_alerts_eval_mrr(&l, NOV_2026, "USD", amt(mrr_cases[_i].prev),
				  amt(mrr_cases[_i].cur), &t);
	ck_assert_msg(n == mrr_cases[_i].n && l.n == (size_t)n,
		      "case %d: want %d, got %d", _i, mrr_cases[_i].n, n);
	if (n > 0) {
		uint8_t nil[16] = { 0 };

		ck_assert_int_eq(l.v[0].kind, mrr_cases[_i].kind);
		ck_assert_int_eq(memcmp(l.v[0].tenant_id, nil, 16), 0);
		ck_assert_int_eq(l.v[0].period_start_ms, NOV_2026);
		ck_assert_int_eq(l.v[0].threshold, t.pct[0]);
		ck_assert_str_eq(l.v[0].subject, "USD");
	}
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_mrr_payload)
{
	tally_alert_list l;
	tally_alert_thresholds t = th("10");

	tally_alert_list_init(&l);
	ck_assert_int_eq(tally_alerts_eval_mrr(&l, NOV_2026, "EUR", amt("1000"),
					       amt("850.5"), &t), 1);
	ck_assert_str_eq(l.v[0].payload,
			 "{\"change_pct\":\"-14.95\",\"currency\":\"EUR\","
			 "\"month\":\"2026-11\","
			 "\"mrr\":\"850.5\",\"previous_mrr\":\"1000\"}");
	/* the currency is the subject: USD and EUR alerts are distinct */
	ck_assert_int_eq(tally_alerts_eval_mrr(&l, NOV_2026, "USD", amt("1000"),
					       amt("850.5"), &t), 1);
	ck_assert_int_ne(memcmp(l.v[0].id, l.v[1].id, 16), 0);
	/* no currency, no alert (amounts of different currencies never mix) */
	ck_assert_int_eq(tally_alerts_eval_mrr(&l, NOV_2026, "", amt("1000"),
					       amt("1"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_mrr(&l, NOV_2026, "usd", amt("1000"),
					       amt("1"), &t), 0);
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_plan_revenue_drop)
{
	tally_alert_list l;
	tally_alert_thresholds t = th("20");
	uint8_t id_a[16];

	tally_alert_list_init(&l);
	/* exactly 20 % down: nothing; rises never raise */
	ck_assert_int_eq(tally_alerts_eval_plan_revenue(&l, NOV_2026, "pro",
		"USD", amt("500"), amt("400"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_plan_revenue(&l, NOV_2026, "pro",
		"USD", amt("500"), amt("900"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_plan_revenue(&l, NOV_2026, "pro",
		"USD", amt("0"), amt("0"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_plan_revenue(&l, NOV_2026, "pro",
		"USD", amt("500"), amt("399.999999999999"), &t), 1);
	ck_assert_int_eq(tally_alerts_eval_plan_revenue(&l, NOV_2026,
		"starter", "USD", amt("500"), amt("0"), &t), 1);
	ck_assert_int_eq(l.v[0].kind, TALLY_ALERT_PLAN_REVENUE_DROP);
	ck_assert_str_eq(l.v[0].subject, "pro/USD");
	ck_assert_str_eq(l.v[1].subject, "starter/USD");
	/* the plan is part of the key: two plans, two ids */
	ck_assert_int_ne(memcmp(l.v[0].id, l.v[1].id, 16), 0);
	tally_alert_id(id_a, l.v[0].tenant_id, l.v[0].kind, NOV_2026, 20);
	ck_assert_int_ne(memcmp(l.v[0].id, id_a, 16), 0);
	ck_assert_str_eq(l.v[1].payload,
			 "{\"change_pct\":\"-100.00\",\"currency\":\"USD\","
			 "\"month\":\"2026-11\","
			 "\"plan\":\"starter\",\"previous_revenue\":\"500\","
			 "\"revenue\":\"0\"}");
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_usage_over_plan)
{
	tally_alert_list l;
	tally_alert_thresholds t = th("200,300");
	uint8_t tid[16];

	ck_assert_int_eq(tally_uuid_parse(tid, TENANT, 36), 0);
	tally_alert_list_init(&l);
	ck_assert_int_eq(tally_alerts_eval_usage_over_plan(&l, tid, NOV_2026,
		"pro", amt("200"), amt("100"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_usage_over_plan(&l, tid, NOV_2026,
		"pro", amt("900"), amt("0"), &t), 0);
	ck_assert_int_eq(tally_alerts_eval_usage_over_plan(&l, tid, NOV_2026,
		"pro", amt("200.000000000001"), amt("100"), &t), 1);
	ck_assert_int_eq(tally_alerts_eval_usage_over_plan(&l, tid, NOV_2026,
		"pro", amt("301"), amt("100"), &t), 2);
	ck_assert_int_eq(l.v[0].kind, TALLY_ALERT_USAGE_OVER_PLAN);
	ck_assert_int_eq(memcmp(l.v[0].tenant_id, tid, 16), 0);
	ck_assert_int_eq(l.v[2].threshold, 300);
	ck_assert_str_eq(l.v[2].payload,
			 "{\"month\":\"2026-11\",\"plan\":\"pro\","
			 "\"plan_price\":\"100\",\"usage_pct_of_price\":"
			 "\"301.00\",\"usage_revenue\":\"301\"}");
	tally_alert_list_dispose(&l);
}
END_TEST

static Suite *tally_alerts_business_suite(void)
{
	Suite *s = suite_create("alerts_business");
	TCase *tc = tcase_create("Revenue");

	tcase_add_loop_test(tc, test_mrr_table, 0,
			    (int)(sizeof(mrr_cases) / sizeof(mrr_cases[0])));
	tcase_add_test(tc, test_mrr_payload);
	tcase_add_test(tc, test_plan_revenue_drop);
	tcase_add_test(tc, test_usage_over_plan);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_business_suite)
