/*
 * test_aggregate_storage_carry.c - storage carried into a period without a
 * snapshot of its own (tally-aggregate's batch logic against a real
 * PostgreSQL): the period opens with the last snapshot before it.
 */
#include "aggregate_storage_support.h"

/*
 * (a) A row created by a batch with no snapshot in its period takes the
 * carried-over one: a 10 GB snapshot in P, processed while P is current
 * (P+1 has not begun: no row is made for it ahead of time); then only API
 * calls in P+1. P+1 holds 10 GB for all its 25 days.
 */
START_TEST(test_aggregate_storage_carried_into_new_period)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], want[160], sql[512];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 20, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* while P is current: 10 GB from day 10 of P (15 days to its end) */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, now - 10 * DAY_MS, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);

	/* P+1 is current: API calls only; the batch creates P+1's row */
	add_calls(&b, t, 1, now - 3600000);
	add_calls(&b, t, 2, now - 7200000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 2);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(want, "21600000000000000000 8.333333333333"
			 " 0.833333333333"); /* 10 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(carry_row(s, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT cost::text || ' ' || api_calls ||"
		 " ' ' || storage_snapshots || ' ' || (published_version <"
		 " version) FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", s, ps1);
	/* 8 calls * 0.0001 + the storage; the totals outbox has it */
	ck_assert_str_eq(agg_query1(chk, sql), "0.834133333333 8 0 true");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);

	/* more calls: the storage stays, the version moves */
	add_calls(&b, t, 3, now - 60000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 2);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

/*
 * (b) The period after a snapshot's, begun but without a row yet, gets
 * one with the carried storage (and a version, for billing.totals); a
 * later snapshot before it changes it again; its own usage adds to it.
 */
START_TEST(test_aggregate_storage_following_period_created)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], want[160], sql[512];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 21, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* a late 10 GB snapshot from day 10 of P (still open) */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " storage_snapshots = 0 AND api_calls = 0 AND published_version"
		 " < version FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", pe1, s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);

	/* P+1's own usage adds to it */
	add_calls(&b, t, 1, now - 3600000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 2);

	/* 4 GB from day 20 of P: P+1 opens with 4 GB now */
	add_snapshot(&b, t, 2, ps0 + 20 * DAY_MS, INT64_C(4000000000));
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	carry_expect(want, sizeof(want), INT64_C(4000000000), CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 3);
	snprintf(sql, sizeof(sql), "SELECT cost::text FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s, ps1);
	/* 4 calls * 0.0001 + 4 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(agg_query1(chk, sql), "0.333733333333");
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

static Suite *aggregate_storage_carry_suite(void)
{
	Suite *s = suite_create("aggregate_storage_carry");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_storage_carried_into_new_period);
	tcase_add_test(tc, test_aggregate_storage_following_period_created);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_storage_carry_suite)
