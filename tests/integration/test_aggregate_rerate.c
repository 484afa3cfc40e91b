/*
 * test_aggregate_rerate.c - re-rated rows in tally-aggregate's batch logic
 * against a real PostgreSQL move the totals between prices, and create
 * the period row a re-rated row's period lacks.
 */
#include "aggregate_batch_support.h"

START_TEST(test_aggregate_rerate_moves_totals)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_pricebook *pb = NULL;
	tally_error err;
	agg_gen g;
	batch b = { 0 };
	char sql[1024];
	uint8_t t1[16];
	char s1[37];
	int i;
	int64_t calls = 0;

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t1, 1);
	tally_uuid_fmt(s1, t1);
	/* tenant 1's period of 10..3 days ago is closed (invoiced) */
	invoiced_period(s1, now - 10 * DAY_MS, now - 3 * DAY_MS, "in_1");
	agg = new_agg();
	/* api calls priced at half the book's price (a bug, fixed later) */
	for (i = 0; i < 40; i++) {
		agg_gen_event(&g, 5, 8 + 10 * i, now - 3600000);
		ck_assert_int_eq(g.re.ev.meter, TALLY_METER_API_CALL);
		if (i == 0) {
			memcpy(g.re.ev.tenant_id, t1, 16);
			g.re.ev.time_ms = now - 5 * DAY_MS;
		}
		g.re.cost = g.re.ev.count * INT64_C(50000000);
		g.re.price_id = 1;
		calls += g.re.ev.count;
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 40);
	ck_assert_int_eq(st.adjusted, 1);
	batch_free(&b);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = now - 30 * DAY_MS;
	ro.to_ms = now + DAY_MS;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_seen, 40);
	ck_assert_int_eq(rs.rows_changed, 40);
	ck_assert_int_eq(rs.adjusted, 1);
	/* every call now at 0.0001: ledger = hourly = periods + adjustment */
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM usage_ledger)"
		 " = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM usage_hourly)"
		 " = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) + (SELECT sum(cost) FROM"
		 " usage_adjustments) = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE prev_price_id = 1 AND price_id <> 1"),
			 40);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'rerate'"),
			 1);
	/* a second run changes nothing */
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 0);
	ck_assert_str_eq(rs.cost_delta, "0");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) + (SELECT sum(cost) FROM"
		 " usage_adjustments) = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	tally_pricebook_free(pb);
	tally_agg_free(agg);
}
END_TEST

/* A re-rated row whose period has no tenant_period_usage row keeps its
 * difference: the period row is created. */
START_TEST(test_aggregate_rerate_creates_missing_period)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_pricebook *pb = NULL;
	tally_error err;
	agg_gen g;
	batch b = { 0 };
	char sql[512];
	int64_t calls;

	memset(next_off, 0, sizeof(next_off));
	agg = new_agg();
	agg_gen_event(&g, 7, 8, now - 3600000);
	ck_assert_int_eq(g.re.ev.meter, TALLY_METER_API_CALL);
	g.re.cost = g.re.ev.count * INT64_C(50000000);
	g.re.price_id = 1;
	calls = g.re.ev.count;
	batch_add(&b, &g.re, 0);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	/* the period row is gone (e.g. written by an older version) */
	tally_test_exec(dsn, "DELETE FROM tenant_period_usage");
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = now - DAY_MS;
	ro.to_ms = now + DAY_MS;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 1);
	/* the difference (new - old = calls * 0.00005) is in a period row */
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) = %" PRId64 " * 0.00005", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " tenant_period_usage WHERE version >= 1"
				       " AND period_end > period_start"), 1);
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 0);
	tally_pricebook_free(pb);
	tally_agg_free(agg);
}
END_TEST

static Suite *aggregate_rerate_suite(void)
{
	Suite *s = suite_create("aggregate_rerate");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_rerate_moves_totals);
	tcase_add_test(tc, test_aggregate_rerate_creates_missing_period);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_rerate_suite)
