/*
 * test_finance_stripe.c - finance figures that match Stripe: the
 * subscription events of a fixture month (tests/fixtures/stripe/
 * finance_month.json, real Stripe object shapes; the story is in
 * make_finance_month.py) go through tally-stripe's sync, newest first,
 * and MRR per currency, its movements, NRR, churn, revenue by plan and
 * CLV are compared with figures worked out by hand below.
 *
 * MRR of a month is the state at its end. Per customer, in minor units:
 *
 *   A usd  5 x 2000 = 10000, 25.5% off forever: 10000 - 2550 = 7450
 *          from March 8 seats: 16000 - 4080 = 11920
 *   B usd  299000/year - 50000 once on the first (annual) invoice
 *          = 249000 / 12 = 20750 every month of its first year
 *   C eur  2 x 4900 = 9800, 50% off for invoices of [5 Jan, 5 Mar):
 *          periods 5 Jan, 5 Feb -> 4900; period 5 Mar -> 9800;
 *          ended 20 April -> 0
 *   D usd  trial to 15 March: 0 in February, 5000 from March
 *   E usd  9900; 20% once applied 25 Feb: only the invoice of the period
 *          starting 20 Mar: 9900 - 1980 = 7920 at the end of March,
 *          9900 again at the end of April
 *   F usd  3000 in January, ended 10 Feb, 3000 again from 2 April
 *   G usd  4 x 1000 + (2500 - 500 item discount) = 6000 from March
 *          (the metered item is usage, not MRR)
 *   H eur  30000 every 3 months = 10000 from February
 *
 *           Jan     Feb     Mar     Apr
 *   USD   41100   38100   51590   56570
 *     A    7450    7450   11920   11920
 *     B   20750   20750   20750   20750
 *     D       0       0    5000    5000
 *     E    9900    9900    7920    9900
 *     F    3000       0       0    3000
 *     G       0       0    6000    6000
 *   EUR    4900   14900   19800   10000
 *     C    4900    4900    9800       0
 *     H       0   10000   10000   10000
 */
#include "stripe_testdb.h"
#include "scripted_stripe_support.h"
#include "tally/command.h"
#include "tally/event.h"
#include "tally/stripe.h"
#include "tally/stripe_sync.h"
#include "tally/webhook.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>

#define SECRET "whsec_test_finance"

static tally_pg *pg;
static tally_config *cfg;

static const char *const tenants[][3] = {
	{ "a0000000-0000-4000-8000-00000000000a", "fin-a", "cus_FIN_A" },
	{ "a0000000-0000-4000-8000-00000000000b", "fin-b", "cus_FIN_B" },
	{ "a0000000-0000-4000-8000-00000000000c", "fin-c", "cus_FIN_C" },
	{ "a0000000-0000-4000-8000-00000000000d", "fin-d", "cus_FIN_D" },
	{ "a0000000-0000-4000-8000-00000000000e", "fin-e", "cus_FIN_E" },
	{ "a0000000-0000-4000-8000-00000000000f", "fin-f", "cus_FIN_F" },
	{ "a0000000-0000-4000-8000-000000000010", "fin-g", "cus_FIN_G" },
	{ "a0000000-0000-4000-8000-000000000011", "fin-h", "cus_FIN_H" },
};

static void deliver(tally_stripe_sync *ss, const json_t *ev)
{
	char *body = json_dumps(ev, JSON_COMPACT);
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	const char *outcome = NULL;
	tally_error err;
	int rc;

	tally_webhook_sign(sig, sizeof(sig), body, strlen(body), SECRET,
			   json_integer_value(json_object_get(ev, "created")));
	rc = tally_stripe_sync_event(ss, body, strlen(body), sig, &outcome,
				     &err);
	ck_assert_msg(rc == 0, "event %s: %s",
		      json_string_value(json_object_get(ev, "id")), err.msg);
	free(body);
}

static tally_stripe_sync *new_sync_with(tally_stripe *stripe)
{
	static const char *const secrets[] = { SECRET };
	tally_stripe_sync_opts o = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_error err;

	o.pg = pg;
	o.cfg = cfg;
	o.stripe = stripe;
	o.webhook_secrets = secrets;
	o.nsecrets = 1;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &o, &err), 0);
	return ss;
}

static tally_stripe_sync *new_sync(void)
{
	return new_sync_with(NULL);
}

/* The fixture's events, newest first: a version that arrives after a
 * newer one is still history. */
static void setup(void)
{
	tally_stripe_sync *ss;
	json_error_t je;
	json_t *events;
	size_t i;

	pg = testdb_create("tally_fin_stripe");
	cfg = testdb_config();
	for (i = 0; i < sizeof(tenants) / sizeof(tenants[0]); i++)
		testdb_tenant(pg, tenants[i][0], tenants[i][1], tenants[i][2]);
	events = json_load_file(TALLY_SOURCE_DIR
				"/tests/fixtures/stripe/finance_month.json", 0,
				&je);
	ck_assert_msg(events != NULL, "fixtures: %s", je.text);
	ss = new_sync();
	for (i = json_array_size(events); i > 0; i--)
		deliver(ss, json_array_get(events, i - 1));
	tally_stripe_sync_free(ss);
	json_decref(events);
}

static void teardown(void)
{
	tally_config_free(cfg);
	tally_pg_free(pg);
}

/* Every row of sql as "a|b|c" lines joined by ";". */
static void check(const char *sql, const char *want)
{
	PGresult *res = NULL;
	tally_error err;
	char got[2048];
	size_t len = 0;
	int r, f;

	ck_assert_msg(tally_pg_exec(pg, &res, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
	got[0] = '\0';
	for (r = 0; r < PQntuples(res); r++)
		for (f = 0; f < PQnfields(res); f++)
			len += (size_t)snprintf(got + len, sizeof(got) - len,
				"%s%s", f ? "|" : (r ? ";" : ""),
				PQgetisnull(res, r, f) ? "" :
				PQgetvalue(res, r, f));
	PQclear(res);
	ck_assert_msg(strcmp(got, want) == 0, "%s:\n want %s\n got  %s", sql,
		      want, got);
}

START_TEST(test_finance_stripe_mirror)
{
	char n[32];

	/* 14 versions: one item each, G's three */
	testdb_get(pg, n, sizeof(n), "SELECT count(*) FROM "
		   "subscription_version_items", NULL);
	ck_assert_str_eq(n, "16");
	/* one version per event, whatever the order they came in */
	check("SELECT subscription_id, count(*) FROM subscription_versions "
	      "GROUP BY 1 ORDER BY 1",
	      "sub_A|2;sub_B|1;sub_C|2;sub_D|2;sub_E|2;sub_F1|2;sub_F2|1;"
	      "sub_G|1;sub_H|1");
	/* the newest version is the subscription's state */
	check("SELECT status, quantity, currency FROM subscriptions WHERE "
	      "subscription_id IN ('sub_A', 'sub_C') ORDER BY 1",
	      "active|8|USD;canceled|2|EUR");
	check("SELECT item_id, price_id, quantity, unit_amount, currency, "
	      "recurring_interval, interval_count, usage_type FROM "
	      "subscription_version_items WHERE subscription_id = 'sub_G' "
	      "ORDER BY 1",
	      "si_G1|price_seat|4|1000|USD|month|1|licensed;"
	      "si_G2|price_addon|1|2500|USD|month|1|licensed;"
	      "si_G3|price_tokens|1|3|USD|month|1|metered");
	check("SELECT recurring_interval, interval_count FROM "
	      "subscription_version_items WHERE item_id IN ('si_B', 'si_H') "
	      "ORDER BY item_id", "year|1;month|3");
	/* percent_off 25.5 exactly (a JSON real), both discount shapes,
	 * Stripe's end of a repeating discount, an item's discount */
	check("SELECT DISTINCT discount_id, coalesce(item_id, '-'), coupon_id,"
	      " percent_off, amount_off, currency, duration, duration_in_months,"
	      " to_char(starts_at AT TIME ZONE 'UTC', 'MM-DD'),"
	      " to_char(ends_at AT TIME ZONE 'UTC', 'MM-DD') FROM "
	      "subscription_version_discounts ORDER BY 1",
	      "di_A|-|TEAM255|25.5|||forever||01-10|;"
	      "di_B|-|WELCOME500||50000|USD|once||01-15|;"
	      "di_C|-|HALF2|50|||repeating|2|01-05|03-05;"
	      "di_E|-|ONCE20|20|||once||02-25|;"
	      "di_G2|si_G2|ADDON5||500|USD|forever||03-12|");
	check("SELECT count(*) FROM subscription_version_discounts WHERE "
	      "subscription_id = 'sub_E' AND as_of < '2026-02-25'", "0");
}
END_TEST

/* A subscription with a malformed item and discounts keeps its version and
 * its good entries; the bad ones are left out, nothing fails. */
START_TEST(test_finance_stripe_hostile_entries)
{
	tally_stripe_sync *ss = new_sync();
	json_error_t je;
	json_t *ev = json_loads(
		"{\"id\":\"evt_bad\",\"object\":\"event\","
		"\"type\":\"customer.subscription.updated\",\"created\":"
		"1775000000,\"api_version\":\"2025-03-31.basil\",\"data\":{"
		"\"object\":{\"id\":\"sub_H\",\"object\":\"subscription\","
		"\"customer\":\"cus_FIN_H\",\"status\":\"active\",\"currency\":"
		"\"eur\",\"created\":1769990400,\"metadata\":{},"
		"\"items\":{\"data\":["
		"{\"id\":\"si_ok\",\"quantity\":2,\"price\":{\"id\":\"p\","
		"\"currency\":\"euros\","
		"\"unit_amount\":100,\"unit_amount_decimal\":\"100.5\","
		"\"recurring\":{\"interval\":\"month\","
		"\"interval_count\":1,\"usage_type\":\"licensed\"}}},"
		"{\"id\":\"si_neg\",\"quantity\":-3,\"price\":{\"id\":\"p\"}},"
		"{\"id\":\"si_cnt\",\"quantity\":1,\"price\":{\"id\":\"p\","
		"\"unit_amount\":1,\"recurring\":{\"interval\":\"month\","
		"\"interval_count\":0}}}]},"
		"\"discounts\":[\"di_only_an_id\","
		"{\"id\":\"di_150\",\"start\":1775000000,\"source\":{\"coupon\":"
		"{\"id\":\"X\",\"duration\":\"forever\",\"percent_off\":150}}},"
		"{\"id\":\"di_time\",\"start\":99999999999999,\"coupon\":"
		"{\"id\":\"T\",\"duration\":\"forever\",\"amount_off\":1}},"
		"{\"id\":\"di_rep\",\"start\":1775000000,\"coupon\":"
		"{\"id\":\"Y\",\"duration\":\"repeating\",\"percent_off\":5}},"
		"{\"id\":\"di_ok\",\"start\":1775000000,\"coupon\":"
		"{\"id\":\"Z\",\"duration\":\"forever\",\"percent_off\":"
		"33.33}}]}}}",
		0, &je);

	ck_assert_msg(ev != NULL, "%s", je.text);
	deliver(ss, ev);
	json_decref(ev);
	tally_stripe_sync_free(ss);
	check("SELECT item_id, unit_amount, quantity, currency IS NULL FROM "
	      "subscription_version_items WHERE as_of = to_timestamp("
	      "1775000000)", "si_ok|100.5|2|t");
	check("SELECT discount_id, percent_off FROM "
	      "subscription_version_discounts WHERE as_of = to_timestamp("
	      "1775000000)", "di_ok|33.33");
	/* 2 x 100.5 = 201 minor units, 33.33% off: 201 - round(66.9933) =
	 * 134 */
	check("SELECT tally_subscription_mrr_minor(tenant_id, subscription_id,"
	      " '2026-05-01') FROM subscriptions WHERE subscription_id = "
	      "'sub_H'", "134");
}
END_TEST

START_TEST(test_finance_stripe_mrr)
{
	/* the table above, in currency units; ARR is 12 x MRR */
	check("SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM'), currency,"
	      " plan_mrr, usage_revenue, mrr, paying_subscriptions FROM "
	      "finance_mrr WHERE month < '2026-05-01' ORDER BY 1, 2",
	      "2026-01|EUR|49.00|0|49.00|1;2026-01|USD|411.00|0|411.00|4;"
	      "2026-02|EUR|149.00|0|149.00|2;2026-02|USD|381.00|0|381.00|3;"
	      "2026-03|EUR|198.00|0|198.00|2;2026-03|USD|515.90|0|515.90|5;"
	      "2026-04|EUR|100.00|0|100.00|1;2026-04|USD|565.70|0|565.70|6");
	/* 515.90 x 12 = 6190.80 */
	check("SELECT plan_arr, arr FROM finance_arr WHERE month = "
	      "'2026-03-01' AND currency = 'USD'", "6190.80|6190.80");
	/* B's whole first year carries the once discount: 249000 / 12 */
	check("SELECT mrr_minor FROM finance_subscription_months WHERE "
	      "subscription_id = 'sub_B' AND month = '2026-12-01'", "20750");
	/* the views' join for versions without discounts gives what the
	 * period-aware function gives */
	check("SELECT count(*) FILTER (WHERE mrr_minor <> "
	      "tally_subscription_mrr_minor(tenant_id, subscription_id, "
	      "((month AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE "
	      "'UTC')), count(*) FROM finance_subscription_months WHERE paying"
	      " AND month < '2026-05-01'", "0|24");
	/* in another session time zone, the same months */
	testdb_sql(pg, "SET TimeZone = 'Pacific/Auckland'");
	check("SELECT plan_mrr FROM finance_mrr WHERE month = "
	      "'2026-03-01T00:00:00Z' AND currency = 'USD'", "515.90");
	testdb_sql(pg, "RESET TimeZone");
}
END_TEST

START_TEST(test_finance_stripe_movements)
{
	/*
	 * USD  Jan: new A 74.50 + B 207.50 + E 99 + F 30 = 411.00
	 *      Feb: churned F 30.00                        -> 381.00
	 *      Mar: new D 50 + G 60 = 110.00; expansion A 119.20 - 74.50 =
	 *           44.70; contraction E 99 - 79.20 = 19.80
	 *           381 + 110 + 44.70 - 19.80 = 515.90
	 *      Apr: expansion E 19.80; reactivation F 30 (MRR in January,
	 *           none in March): 515.90 + 49.80 = 565.70
	 * EUR  Jan: new C 49; Feb: new H 100; Mar: expansion C 49 (its
	 *      discount ended); Apr: churned C 98.00 -> 100.00
	 */
	check("SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM'), currency,"
	      " start_mrr, new_mrr, expansion_mrr, contraction_mrr,"
	      " churned_mrr, reactivation_mrr, net_new_mrr, end_mrr,"
	      " customers_at_start, customers_at_end FROM finance_mrr_movements"
	      " WHERE month < '2026-05-01' ORDER BY 1, 2",
	      "2026-01|EUR|0.00|49.00|0.00|0.00|0.00|0.00|49.00|49.00|0|1;"
	      "2026-01|USD|0.00|411.00|0.00|0.00|0.00|0.00|411.00|411.00|0|4;"
	      "2026-02|EUR|49.00|100.00|0.00|0.00|0.00|0.00|100.00|149.00|1|2;"
	      "2026-02|USD|411.00|0.00|0.00|0.00|30.00|0.00|-30.00|381.00|4|3;"
	      "2026-03|EUR|149.00|0.00|49.00|0.00|0.00|0.00|49.00|198.00|2|2;"
	      "2026-03|USD|381.00|110.00|44.70|19.80|0.00|0.00|134.90|515.90|"
	      "3|5;"
	      "2026-04|EUR|198.00|0.00|0.00|0.00|98.00|0.00|-98.00|100.00|2|1;"
	      "2026-04|USD|515.90|0.00|19.80|0.00|0.00|30.00|49.80|565.70|5|6");
	/*
	 * NRR = (start + expansion - contraction - churned) / start:
	 * USD Feb (411 - 30) / 411 = 0.9270072..; Mar (381 + 44.70 - 19.80)
	 * / 381 = 405.90 / 381 = 1.0653543..; Apr (515.90 + 19.80) / 515.90
	 * = 1.0383795..; EUR Feb 49 / 49 = 1; Mar 198 / 149 = 1.3288590..;
	 * Apr (198 - 98) / 198 = 0.5050505..; January has no start: NULL
	 */
	check("SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM'), currency,"
	      " retained_mrr, nrr FROM finance_nrr WHERE month < '2026-05-01'"
	      " ORDER BY 1, 2",
	      "2026-01|EUR|0.00|;2026-01|USD|0.00|;"
	      "2026-02|EUR|49.00|1.000000;2026-02|USD|381.00|0.927007;"
	      "2026-03|EUR|198.00|1.328859;2026-03|USD|405.90|1.065354;"
	      "2026-04|EUR|100.00|0.505051;2026-04|USD|535.70|1.038380");
}
END_TEST

START_TEST(test_finance_stripe_churn_revenue_clv)
{
	/* USD February: A, B, E, F1 live at its start, F1 ended: 1/4; its
	 * MRR at the start 30.00 of 411.00 = 0.0729927.. */
	check("SELECT subscriptions_at_start, churned_subscriptions, "
	      "logo_churn_rate, plan_mrr_at_start, churned_plan_mrr, "
	      "revenue_churn_rate FROM finance_churn WHERE month = "
	      "'2026-02-01' AND currency = 'USD'",
	      "4|1|0.250000|411.00|30.00|0.072993");
	/* starter, USD, March: D 50 + E 79.20 */
	check("SELECT plan, paying_subscriptions, plan_revenue, usage_revenue "
	      "FROM finance_revenue_by_plan WHERE month = '2026-03-01' ORDER "
	      "BY currency, plan",
	      "professional|1|100.00|0;starter|1|98.00|0;"
	      "enterprise|1|207.50|0;professional|2|179.20|0;"
	      "starter|2|129.20|0");
	/*
	 * CLV of starter in USD over January-April (the 12 months before
	 * May 2026; no month before January has a subscription):
	 *   revenue per paying account: Jan (99 + 30) / 2 = 64.50, Feb 99,
	 *   Mar (50 + 79.20) / 2 = 64.60, Apr (50 + 99 + 30) / 3 = 59.666..
	 *   average (64.50 + 99 + 64.60 + 59.666..) / 4 = 71.941666..
	 *   logo churn: Feb 1 of 2 (E, F1 live at its start), Mar 0 of 2,
	 *   Apr 0 of 2 (January had none live at its start: no rate)
	 *   average 0.5 / 3 = 0.166666..; CLV 71.941666.. / 0.166666.. =
	 *   431.65
	 * professional: A 74.50 in Jan and Feb, (A 119.20 + G 60) / 2 =
	 *   89.60 in Mar and Apr: 328.20 / 4 = 82.05
	 * enterprise and professional: no churn, an unbounded lifetime: NULL
	 */
	check("SELECT plan, currency, arpa_monthly, monthly_logo_churn, "
	      "coalesce(clv::text, 'null') FROM tally_finance_clv("
	      "'2026-05-01') WHERE currency = 'USD' ORDER BY plan",
	      "enterprise|USD|207.50|0.000000|null;"
	      "professional|USD|82.05|0.000000|null;"
	      "starter|USD|71.94|0.166667|431.65");
}
END_TEST

/* A copy of the fixture's event id. */
static json_t *fixture_event(const char *id)
{
	json_error_t je;
	json_t *events, *e, *ev = NULL;
	size_t i;

	events = json_load_file(TALLY_SOURCE_DIR
				"/tests/fixtures/stripe/finance_month.json", 0,
				&je);
	ck_assert_ptr_nonnull(events);
	json_array_foreach(events, i, e)
		if (strcmp(json_string_value(json_object_get(e, "id")),
			   id) == 0)
			ev = json_deep_copy(e);
	json_decref(events);
	ck_assert_ptr_nonnull(ev);
	return ev;
}

/* A webhook names sub_H's discounts by id only (Stripe's webhooks do):
 * tally-stripe reads them expanded from Stripe before recording, also
 * when the event was left before for an unknown tenant. */
static void discount_ids_expanded(const char *event_id, bool left_unknown)
{
	tally_stripe *stripe = NULL;
	struct MHD_Daemon *d = scripted_stripe(&stripe);
	tally_stripe_sync *ss;
	json_t *ev, *sub;
	tally_error err;

	if (left_unknown) {
		char sql[400];

		snprintf(sql, sizeof(sql), "INSERT INTO stripe_events "
			 "(event_id, type, object_id, event_created, outcome) "
			 "VALUES ('%s', 'customer.subscription.updated', "
			 "'sub_H', to_timestamp(1775000000), "
			 "'unknown_tenant')", event_id);
		testdb_sql(pg, sql);
	}
	ev = fixture_event("evt_H_created");
	json_object_set_new(ev, "id", json_string(event_id));
	json_object_set_new(ev, "type",
			    json_string("customer.subscription.updated"));
	json_object_set_new(ev, "created", json_integer(1775000000));
	sub = json_object_get(json_object_get(ev, "data"), "object");
	json_object_set_new(sub, "discounts",
			    json_pack("[s,s]", "di_bare", "di_gone"));
	json_object_set_new(json_array_get(json_object_get(json_object_get(
		sub, "items"), "data"), 0), "discounts",
		json_pack("[s]", "di_item_bare"));
	ss = new_sync_with(stripe);
	deliver(ss, ev);
	/* delivered again: a duplicate, Stripe is not asked again */
	{
		char *body = json_dumps(ev, JSON_COMPACT);
		char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
		const char *outcome = NULL;

		tally_webhook_sign(sig, sizeof(sig), body, strlen(body),
				   SECRET, 1775000000);
		ck_assert_int_eq(tally_stripe_sync_event(ss, body,
			strlen(body), sig, &outcome, &err), TALLY_EDUPLICATE);
		free(body);
	}
	tally_stripe_sync_free(ss);
	json_decref(ev);
	tally_stripe_free(stripe);
	MHD_stop_daemon(d);
	ck_assert_int_eq(gets, 1);
	ck_assert_int_eq(expand_asked, 1);
	/* di_gone is no longer on Stripe: skipped */
	check("SELECT discount_id, coalesce(item_id, '-'), percent_off, "
	      "amount_off FROM subscription_version_discounts WHERE as_of = "
	      "to_timestamp(1775000000) ORDER BY 1",
	      "di_bare|-|10|;di_item_bare|si_H||100");
	/* quarterly from 2 Feb: the period of 2 Feb was charged before the
	 * discounts; from 2 May, (30000 - 100) - 10% = 26910 a quarter,
	 * 8970 a month */
	check("SELECT tally_subscription_mrr_minor(tenant_id, subscription_id,"
	      " '2026-05-01'), tally_subscription_mrr_minor(tenant_id, "
	      "subscription_id, '2026-06-01') FROM subscriptions WHERE "
	      "subscription_id = 'sub_H'", "10000|8970");
}

START_TEST(test_finance_stripe_discount_ids_expanded)
{
	discount_ids_expanded("evt_H_ids", false);
}
END_TEST

START_TEST(test_finance_stripe_unknown_tenant_expanded)
{
	discount_ids_expanded("evt_H_unknown_before", true);
}
END_TEST

/* sync_tenant for H: sub_H read from the scripted Stripe, its 20% forever
 * discount by id, expanded as asked unless stripe_expands is false. */
static void sync_h(bool stripe_expands)
{
	tally_stripe *stripe = NULL;
	struct MHD_Daemon *d = scripted_stripe(&stripe);
	json_t *ev = fixture_event("evt_H_created"), *sub;
	const char *tenant = tenants[7][0];
	tally_stripe_sync *ss;
	tally_command c;
	tally_error err;

	sub = json_object_get(json_object_get(ev, "data"), "object");
	json_object_set_new(sub, "discounts", json_pack("[s]", "di_api"));
	bare_body = json_dumps(sub, JSON_COMPACT);
	json_object_set_new(sub, "discounts", json_pack(
		"[{s:s, s:s, s:I, s:n, s:{s:s, s:s, s:i}}]", "id", "di_api",
		"object", "discount", "start", (json_int_t)1775000000, "end",
		"coupon", "id", "TWENTY", "duration", "forever",
		"percent_off", 20));
	expanded_body = stripe_expands ? json_dumps(sub, JSON_COMPACT)
				       : strdup(bare_body);
	json_decref(ev);
	memset(&c, 0, sizeof(c));
	c.id.ptr = "cmd-sync-h";
	c.id.len = (uint32_t)strlen(c.id.ptr);
	c.type = TALLY_CMD_SYNC_TENANT;
	ck_assert_int_eq(tally_uuid_parse(c.tenant_id, tenant,
					  (uint32_t)strlen(tenant)), 0);
	c.time_ms = 1775000000000LL;
	c.trial_days = -1;
	ss = new_sync_with(stripe);
	ck_assert_msg(tally_stripe_sync_command(ss, &c, &err) == 0, "%s",
		      err.msg);
	tally_stripe_sync_free(ss);
	tally_stripe_free(stripe);
	MHD_stop_daemon(d);
	free(bare_body);
	free(expanded_body);
	bare_body = expanded_body = NULL;
}

/* A version read from the API (as of now) keeps sub_H's discount: Stripe
 * names it by id unless asked to expand. */
START_TEST(test_finance_stripe_api_read_discounts)
{
	sync_h(true);
	/* 30000 a quarter, 20% off: 8000 a month once in force */
	check("SELECT tally_subscription_mrr_minor(tenant_id, subscription_id,"
	      " now() + interval '1 year') FROM subscriptions WHERE "
	      "subscription_id = 'sub_H'", "8000");
	check("SELECT discount_id, percent_off FROM "
	      "subscription_version_discounts WHERE as_of_rank = 9",
	      "di_api|20");
}
END_TEST

/* An API read whose discount stays an id is no version: in force, it
 * would drop the discount. */
START_TEST(test_finance_stripe_api_read_bare_ids_skipped)
{
	sync_h(false);
	check("SELECT count(*) FROM subscription_versions WHERE as_of_rank = "
	      "9", "0");
	check("SELECT status FROM subscriptions WHERE subscription_id = "
	      "'sub_H'", "active");
}
END_TEST

static Suite *finance_stripe_suite(void)
{
	Suite *s = suite_create("finance_stripe");
	TCase *tc = tcase_create("Stripe month");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_finance_stripe_mirror);
	tcase_add_test(tc, test_finance_stripe_hostile_entries);
	tcase_add_test(tc, test_finance_stripe_discount_ids_expanded);
	tcase_add_test(tc, test_finance_stripe_unknown_tenant_expanded);
	tcase_add_test(tc, test_finance_stripe_api_read_discounts);
	tcase_add_test(tc, test_finance_stripe_api_read_bare_ids_skipped);
	tcase_add_test(tc, test_finance_stripe_mrr);
	tcase_add_test(tc, test_finance_stripe_movements);
	tcase_add_test(tc, test_finance_stripe_churn_revenue_clv);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(finance_stripe_suite)
