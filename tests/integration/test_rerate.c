/*
 * test_rerate.c - `tally rerate` against a real PostgreSQL (ledger rows
 * written by the aggregate's batch logic, no broker): the rows staged in
 * pieces; budget_state follows the re-priced cost; a new price id alone
 * moves no money; the statistics count what committed when a COMMIT fails
 * and the day is retried.
 */
#include "rerate_support.h"

/*
 * The changed rows go to the day's stage in pieces (here: after every
 * fetch, stage_bytes = 1): 30 half-priced calls of 3 tenants in two hours
 * are all re-priced, their tenants' periods move by exactly the
 * difference, and a second run changes nothing.
 */
START_TEST(test_rerate_stage_in_pieces)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_rerate_stats rs;
	agg_gen g;
	batch b = { 0 };
	int i;

	for (i = 0; i < 30; i++) {
		half_priced_call(&g, i, i % 3, now - 7200000 + i * 60000, 1000);
		batch_add(&b, &g.re, i % 4);
	}
	run(agg, &b, now);
	/* 30 × 1000 calls at 0.00005: 1.50 */
	ck_assert_str_eq(agg_query1(chk, "SELECT sum(cost) FROM"
				    " tenant_period_usage"), "1.5");
	stage_bytes = 1;
	rerate(now - DAY_MS, now + DAY_MS, &rs);
	stage_bytes = 0;
	ck_assert_int_eq(rs.rows_seen, 30);
	ck_assert_int_eq(rs.rows_changed, 30);
	ck_assert_str_eq(agg_query1(chk, "SELECT sum(cost) = 3 FROM"
				    " tenant_period_usage"), "t");
	ck_assert_str_eq(agg_query1(chk, "SELECT sum(cost) = 3 FROM"
				    " usage_hourly"), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE cost = 0.1 AND prev_price_id"
				       " = 1"), 30);
	rerate(now - DAY_MS, now + DAY_MS, &rs);
	ck_assert_int_eq(rs.rows_changed, 0);
	tally_agg_free(agg);
}
END_TEST

/*
 * Tenant 1 (budget 8.00) used 5.00 at the wrong price: 'ok'. Re-priced to
 * 10.00 it is 'exceeded', in the same version the outbox publishes.
 * Tenant 2 is unlimited (budget 0) and its period row is gone: the row
 * rerate creates says 'unlimited', not the column default 'ok'.
 */
START_TEST(test_rerate_budget_state_follows_cost)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_rerate_stats rs;
	agg_gen g;
	batch b = { 0 };
	char s2[37];
	uint8_t t2[16];
	char sql[256];
	int64_t v0;

	add_tenant(1, "8.00");
	add_tenant(2, "0");
	half_priced_call(&g, 0, 1, now - 3600000, 100000); /* 5.00 */
	batch_add(&b, &g.re, 0);
	half_priced_call(&g, 1, 2, now - 3600000, 1000);
	batch_add(&b, &g.re, 1);
	run(agg, &b, now);
	ck_assert_str_eq(budget_state(1), "ok");
	v0 = agg_query_i64(chk, "SELECT version FROM tenant_period_usage u"
			   " JOIN tenants t ON t.id = u.tenant_id"
			   " WHERE t.slug = 't1'");
	agg_tenant(t2, 2);
	tally_uuid_fmt(s2, t2);
	snprintf(sql, sizeof(sql), "DELETE FROM tenant_period_usage WHERE"
		 " tenant_id = '%s'", s2);
	tally_test_exec(dsn, sql);

	rerate(now - DAY_MS, now + DAY_MS, &rs);
	ck_assert_int_eq(rs.rows_changed, 2);
	ck_assert_str_eq(agg_query1(chk, "SELECT u.cost = 10 FROM"
				    " tenant_period_usage u JOIN tenants t ON"
				    " t.id = u.tenant_id WHERE t.slug = 't1'"),
			 "t");
	ck_assert_str_eq(budget_state(1), "exceeded");
	/* the outbox sees a new version carrying the new state */
	ck_assert_int_gt(agg_query_i64(chk, "SELECT version FROM"
				       " tenant_period_usage u JOIN tenants t"
				       " ON t.id = u.tenant_id WHERE"
				       " t.slug = 't1'"), v0);
	ck_assert_str_eq(budget_state(2), "unlimited");
	tally_agg_free(agg);
}
END_TEST

/*
 * A change of price_id alone (the same cost: here a row that names a
 * price id the book no longer has, at the book's price) is recorded on
 * the ledger row (price_id and prev_price_id) but moves no money: no
 * zero 'rerate' adjustment for the closed period, no version bump (so
 * no totals republished) for the open one.
 */
START_TEST(test_rerate_price_id_only_moves_no_money)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_rerate_stats rs;
	agg_gen g;
	batch b = { 0 };
	char s1[37];
	uint8_t t1[16];
	int64_t v0;
	int i;

	agg_tenant(t1, 1);
	tally_uuid_fmt(s1, t1);
	invoiced_period(s1, now - 10 * DAY_MS, now - 3 * DAY_MS, "in_1");
	for (i = 0; i < 2; i++) {
		half_priced_call(&g, i, 1, i == 0 ? now - 5 * DAY_MS
					       : now - 3600000, 1000);
		g.re.cost = 1000 * INT64_C(100000000); /* the book's 0.0001 */
		g.re.price_id = 999999;
		batch_add(&b, &g.re, i);
	}
	run(agg, &b, now);
	v0 = agg_query_i64(chk, "SELECT max(version) FROM tenant_period_usage");
	ck_assert_int_ge(v0, 1);
	rerate(now - 30 * DAY_MS, now + DAY_MS, &rs);
	ck_assert_int_eq(rs.rows_changed, 2);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE prev_price_id = 999999 AND"
				       " price_id <> 999999"), 2);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'rerate'"),
			 0);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT max(version) FROM"
				       " tenant_period_usage"), v0);
	tally_agg_free(agg);
}
END_TEST

/*
 * The first COMMIT of a day with changes fails with a serialisation
 * failure (a deferred trigger, once): the day is retried, and the run's
 * statistics and its rerate_runs row count its rows once, the adjustment
 * of the closed period included.
 */
START_TEST(test_rerate_stats_count_committed_only)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_rerate_stats rs;
	agg_gen g;
	batch b = { 0 };
	char sql[512], s1[37];
	uint8_t t1[16];
	int64_t calls = 0;
	int i;

	agg_tenant(t1, 1);
	tally_uuid_fmt(s1, t1);
	invoiced_period(s1, now - 10 * DAY_MS, now - 3 * DAY_MS, "in_1");
	for (i = 0; i < 10; i++) {
		/* the first in tenant 1's closed period */
		half_priced_call(&g, i, i == 0 ? 1 : 2 + i % 3,
				 i == 0 ? now - 5 * DAY_MS : now - 3600000,
				 1 + i);
		calls += 1 + i;
		batch_add(&b, &g.re, i % 4);
	}
	run(agg, &b, now);
	tally_test_exec(dsn, "CREATE SEQUENCE rr_fail_seq");
	tally_test_exec(dsn,
			"CREATE FUNCTION rr_fail_once() RETURNS trigger"
			" LANGUAGE plpgsql AS $$ BEGIN"
			" IF nextval('rr_fail_seq') = 1 THEN RAISE EXCEPTION"
			" 'injected at commit' USING ERRCODE = '40001';"
			" END IF; RETURN NULL; END $$");
	tally_test_exec(dsn,
			"CREATE CONSTRAINT TRIGGER rr_fail_once AFTER UPDATE"
			" ON usage_hourly DEFERRABLE INITIALLY DEFERRED"
			" FOR EACH ROW EXECUTE FUNCTION rr_fail_once()");
	rerate(now - 30 * DAY_MS, now + DAY_MS, &rs);
	/* the failure did happen: the trigger ran again on the retry */
	ck_assert_int_gt(agg_query_i64(chk, "SELECT last_value FROM"
				       " rr_fail_seq"), 1);
	ck_assert_int_eq(rs.rows_seen, 10);
	ck_assert_int_eq(rs.rows_changed, 10);
	ck_assert_int_eq(rs.adjusted, 1);
	snprintf(sql, sizeof(sql), "SELECT '%s'::numeric = %" PRId64
		 " * 0.00005", rs.cost_delta, calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	snprintf(sql, sizeof(sql), "SELECT rows_seen = 10 AND rows_changed = 10"
		 " AND cost_delta = %" PRId64 " * 0.00005 FROM rerate_runs",
		 calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	/* and the money moved once: ledger = hourly = periods + adjustment */
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM usage_hourly)"
		 " = %" PRId64 " * 0.0001 AND (SELECT sum(cost) FROM"
		 " tenant_period_usage) + (SELECT sum(cost) FROM"
		 " usage_adjustments) = %" PRId64 " * 0.0001", calls, calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	tally_agg_free(agg);
}
END_TEST

static Suite *rerate_suite(void)
{
	Suite *s = suite_create("rerate");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_rerate_budget_state_follows_cost);
	tcase_add_test(tc, test_rerate_stage_in_pieces);
	tcase_add_test(tc, test_rerate_price_id_only_moves_no_money);
	tcase_add_test(tc, test_rerate_stats_count_committed_only);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rerate_suite)
