/*
 * test_rerate_storage.c - `tally rerate` and storage, against a real
 * PostgreSQL: storage snapshot rows are left alone and the periods'
 * storage charges re-priced, also beyond the ledger's retention.
 */
#include "rerate_support.h"

/*
 * Storage snapshots cost 0 in the ledger (the charge is the period's
 * GB-months, re-priced per period: test_rerate_storage_price_fixed):
 * rerate reads no snapshot row, so their price_id stays, no
 * prev_price_id appears and no zero 'rerate' adjustment is written for a
 * snapshot in a closed period.
 */
START_TEST(test_rerate_leaves_storage_alone)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_rerate_stats rs;
	agg_gen g;
	batch b = { 0 };
	char s1[37];
	uint8_t t1[16];
	int i;

	agg_tenant(t1, 1);
	tally_uuid_fmt(s1, t1);
	invoiced_period(s1, now - 10 * DAY_MS, now - 3 * DAY_MS, "in_1");
	for (i = 0; i < 2; i++) {
		agg_gen_event(&g, 9, 8, now);
		agg_tenant(g.re.ev.tenant_id, 1);
		g.re.ev.meter = TALLY_METER_STORAGE;
		g.re.ev.bytes = INT64_C(2000000000);
		/* one in the closed period, one in the open one */
		g.re.ev.time_ms = i == 0 ? now - 5 * DAY_MS : now - 3600000;
		snprintf(g.id, sizeof(g.id), "snap-%d", i);
		g.re.ev.id.len = (uint32_t)strlen(g.id);
		g.re.cost = 0;
		g.re.price_id = 1;
		batch_add(&b, &g.re, i);
	}
	run(agg, &b, now);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE meter_id = 3 AND price_id = 1"), 2);
	rerate(now - 30 * DAY_MS, now + DAY_MS, &rs);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE meter_id = 3 AND price_id = 1"
				       " AND prev_price_id IS NULL"), 2);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'rerate'"),
			 0);
	ck_assert_int_eq(rs.rows_seen, 0);
	ck_assert_int_eq(rs.rows_changed, 0);
	tally_agg_free(agg);
}
END_TEST

/* Tenant k with 25-day periods, the current one [ps1, pe1); budget may be
 * "DEFAULT". Its uuid text into s. */
static void period_tenant(char s[37], uint8_t t[16], int k, int64_t ps1,
			  int64_t pe1, const char *budget)
{
	char sql[512];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql), "INSERT INTO tenants (id, name, slug, domain,"
		 " monthly_budget, current_period_start, current_period_end)"
		 " VALUES ('%s', 't%d', 't%d', 't%d.example', %s, timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms', timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms')", s, k, k, k, budget, ps1,
		 pe1);
	tally_test_exec(dsn, sql);
}

/* Two storage snapshots of tenant t (bytes b[i] at at[i]), counted by a
 * batch priced with the database's book at now. */
static void two_snapshots(const uint8_t t[16], const int64_t b[2],
			  const int64_t at[2], int64_t now)
{
	tally_pricebook *pb = NULL;
	tally_error err;
	tally_agg *agg;
	agg_gen g;
	batch bt = { 0 };
	int i;

	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = aggpg_new(pb, 0);
	for (i = 0; i < 2; i++) {
		agg_gen_event(&g, 9, 8, now);
		memcpy(g.re.ev.tenant_id, t, 16);
		g.re.ev.meter = TALLY_METER_STORAGE;
		g.re.ev.bytes = b[i];
		g.re.ev.time_ms = at[i];
		snprintf(g.id, sizeof(g.id), "snap-%" PRId64 "-%d", at[i], i);
		g.re.ev.id.len = (uint32_t)strlen(g.id);
		g.re.cost = 0;
		batch_add(&bt, &g.re, i);
	}
	run(agg, &bt, now);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}

/*
 * A storage price fixed after the fact: the storage charge of each period
 * in the range becomes what a batch prices with the new book. The tenant's
 * periods are 25 days (fixed length): P0 = [now - 30 d, now - 5 d),
 * invoiced after its usage was counted, and P1, the current one. 10 GB
 * from day 10 of P0; 20 GB from day 1 of P1. At 0.10 per GB-month (10^9
 * bytes for 30 days): P0 10 GB x 15 d = 5 GB-months = 0.50; P1 10 GB x
 * 1 d + 20 GB x 24 d = 0.033333333333 + 1.6. The price is then corrected
 * to 0.12: P1 becomes 0.04 + 1.92 = 1.96 (its budget of 1.80 now
 * exceeded), P0 gets a 'storage' adjustment of exactly 0.10; a second
 * run changes nothing; a book without a storage price leaves both alone;
 * a model filter leaves storage out; back at 0.10 the adjustments sum
 * to 0.
 */
static int64_t storage_sum(const char *what)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT (coalesce(sum(%s), 0)"
		 " * 1000000000000)::bigint FROM %s", what,
		 strcmp(what, "cost") == 0 ? "usage_adjustments WHERE kind ="
		 " 'storage'" : "tenant_period_usage");
	return agg_query_i64(chk, sql);
}

START_TEST(test_rerate_storage_price_fixed)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - 25 * DAY_MS, pe1 = ps1 + 25 * DAY_MS;
	const int64_t pico = INT64_C(1000000000000);
	tally_pricebook *pb = NULL;
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_error err;
	char s[37], sql[512];
	uint8_t t[16];

	period_tenant(s, t, 30, ps1, pe1, "1.80");
	two_snapshots(t, (const int64_t[2]){ INT64_C(10000000000),
					    INT64_C(20000000000) },
		      (const int64_t[2]){ ps0 + 10 * DAY_MS, ps1 + DAY_MS },
		      now);
	invoiced_period(s, ps0, ps1, "in_p0");
	ck_assert_int_eq(storage_sum("storage_cost"),
			 pico / 2 + INT64_C(1633333333333));
	snprintf(sql, sizeof(sql), "SELECT budget_state FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "warning"); /* 1.63 of 1.80 */

	tally_test_exec(dsn, "UPDATE unit_prices SET price = 0.12"
			" WHERE meter = 'storage.snapshot'");
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.rows_seen, 0);
	ck_assert_int_eq(rs.storage_periods, 2);
	ck_assert_int_eq(rs.storage_adjusted, 1);
	ck_assert_int_eq(rs.storage_unpriced, 0);
	ck_assert_str_eq(rs.storage_delta, "0.426666666667");
	snprintf(sql, sizeof(sql), "SELECT storage_cost::numeric(20, 12) || ' '"
		 " || cost::numeric(20, 12) || ' '"
		 " || budget_state || ' ' || version || ' ' ||"
		 " (published_version < version) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "1.960000000000 1.960000000000"
			 " exceeded 2 true");
	/* the invoiced period keeps its row; the difference is adjusted */
	snprintf(sql, sizeof(sql), "SELECT storage_cost::numeric(20, 12) FROM"
		 " tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms'", s, ps0);
	ck_assert_str_eq(agg_query1(chk, sql), "0.500000000000");
	ck_assert_int_eq(storage_sum("cost"), pico / 10);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'storage'"
				       " AND storage_byte_ms = 0"), 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT storage_periods FROM"
				       " rerate_runs ORDER BY id DESC LIMIT 1"), 2);

	/* again: nothing moves */
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.storage_periods, 0);
	ck_assert_str_eq(rs.storage_delta, "0");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments"), 1);
	ck_assert_str_eq(agg_query1(chk, sql), "0.500000000000");

	/* no storage price in the book now: left alone, counted */
	tally_test_exec(dsn, "DELETE FROM unit_prices"
			" WHERE meter = 'storage.snapshot'");
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.storage_periods, 0);
	ck_assert_int_eq(rs.storage_unpriced, 2);
	ck_assert_int_eq(storage_sum("storage_cost"),
			 pico / 2 + INT64_C(1960000000000));

	/* back at 0.10; a model filter leaves storage out */
	tally_test_exec(dsn, "INSERT INTO unit_prices (meter, unit, price)"
			" VALUES ('storage.snapshot', 'GB-month', 0.10)");
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = ps0;
	ro.to_ms = pe1;
	ro.model = "gpt-4o";
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	tally_pricebook_free(pb);
	ck_assert_int_eq(rs.storage_periods, 0);
	ck_assert_int_eq(storage_sum("storage_cost"),
			 pico / 2 + INT64_C(1960000000000));
	/* ... without it: P1 back to 1.633333333333, P0's adjustments sum 0 */
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.storage_periods, 2);
	ck_assert_str_eq(rs.storage_delta, "-0.426666666667");
	ck_assert_int_eq(storage_sum("storage_cost"),
			 pico / 2 + INT64_C(1633333333333));
	ck_assert_int_eq(storage_sum("cost"), 0);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments"), 2);
	snprintf(sql, sizeof(sql), "SELECT budget_state FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "warning");
}
END_TEST

/*
 * Retention thins old snapshots (each tenant keeps its last one before the
 * bound) and drops old ledger partitions; a period that starts before the
 * oldest partition has lost segments and is not re-priced. P0 = [now -
 * 30 d, now - 5 d): 10 GB from day 5, 20 GB from day 10; P1 carries 20 GB
 * for its 25 days. Retention is played up to day 12 of P0 (the partitions
 * before that day dropped, the day-5 snapshot deleted). With the same
 * book nothing moves (recomputed from what is left, P0 would lose the
 * day-5 segment: 1.166666666667 -> 1.00); the price then goes from 0.10
 * to 0.12: P1 becomes exactly 2.00, P0 keeps its charge. P0 is counted as
 * before the retention bound both times.
 */
START_TEST(test_rerate_storage_beyond_retention)
{
	/* _i 0: the partitions before the bound dropped; 1: every partition
	 * kept (as after a longer retention recreated them), the bound only
	 * recorded by maintenance in ledger_retention */
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - 25 * DAY_MS, pe1 = ps1 + 25 * DAY_MS;
	int64_t bound = ps0 + 12 * DAY_MS;
	tally_rerate_stats rs;
	char s[37], sql[1024], p0[256], q0[256];
	uint8_t t[16];

	period_tenant(s, t, 31, ps1, pe1, "DEFAULT");
	two_snapshots(t, (const int64_t[2]){ INT64_C(10000000000),
					    INT64_C(20000000000) },
		      (const int64_t[2]){ ps0 + 5 * DAY_MS, ps0 + 10 * DAY_MS },
		      now);
	snprintf(q0, sizeof(q0), "SELECT storage_cost::text FROM"
		 " tenant_period_usage WHERE tenant_id = '%s' AND period_start"
		 " = timestamptz 'epoch' + %" PRId64 " * interval '1 ms'", s, ps0);
	snprintf(p0, sizeof(p0), "%s", agg_query1(chk, q0));
	/* 10 GB x 5 d + 20 GB x 15 d at 0.10 */
	ck_assert_str_eq(p0, "1.166666666667");

	/* retention up to the bound's day */
	if (_i == 1) {
		snprintf(sql, sizeof(sql), "INSERT INTO ledger_retention"
			 " VALUES (true, timestamptz 'epoch' + %" PRId64
			 " * interval '1 ms')", bound);
		goto thinned;
	}
	snprintf(sql, sizeof(sql),
		 "DO $$DECLARE r record; BEGIN FOR r IN SELECT c.relname"
		 " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
		 " WHERE i.inhparent = 'usage_ledger'::regclass AND"
		 " c.relname ~ '^usage_ledger_p[0-9]{8}$' AND"
		 " to_date(substr(c.relname, 15), 'YYYYMMDD') <"
		 " ((timestamptz 'epoch' + %" PRId64 " * interval '1 ms')"
		 " AT TIME ZONE 'UTC')::date LOOP EXECUTE format('DROP TABLE %%I',"
		 " r.relname); END LOOP; END$$", bound);
thinned:
	tally_test_exec(dsn, sql);
	snprintf(sql, sizeof(sql), "DELETE FROM storage_snapshots WHERE"
		 " occurred_at < timestamptz 'epoch' + %" PRId64 " * interval"
		 " '1 ms'", ps0 + 6 * DAY_MS);
	tally_test_exec(dsn, sql);
	/* the same book: nothing moves, P0 is not recomputed */
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.storage_periods, 0);
	ck_assert_int_eq(rs.storage_too_old, 1);
	ck_assert_str_eq(agg_query1(chk, q0), p0);

	tally_test_exec(dsn, "UPDATE unit_prices SET price = 0.12"
			" WHERE meter = 'storage.snapshot'");
	rerate(ps0, pe1, &rs);
	ck_assert_int_eq(rs.storage_too_old, 1);
	ck_assert_int_eq(rs.storage_periods, 1);
	ck_assert_str_eq(rs.storage_delta, "0.333333333333");
	ck_assert_str_eq(agg_query1(chk, q0), p0);
	snprintf(sql, sizeof(sql), "SELECT storage_cost = 2 FROM"
		 " tenant_period_usage WHERE tenant_id = '%s' AND period_start"
		 " = timestamptz 'epoch' + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments"), 0);
}
END_TEST

static Suite *rerate_storage_suite(void)
{
	Suite *s = suite_create("rerate_storage");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_rerate_leaves_storage_alone);
	tcase_add_test(tc, test_rerate_storage_price_fixed);
	tcase_add_loop_test(tc, test_rerate_storage_beyond_retention, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rerate_storage_suite)
