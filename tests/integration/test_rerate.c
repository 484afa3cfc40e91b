/*
 * test_rerate.c - `tally rerate` against a real PostgreSQL (ledger rows
 * written by the aggregate's batch logic, no broker): budget_state follows
 * the re-priced cost; storage snapshot rows are left alone and the
 * periods' storage charges re-priced; the statistics count
 * what committed when a COMMIT fails and the day is retried; bad ranges and
 * times are refused (library and command line); the rows are locked in the
 * consumer's order (usage_hourly by key).
 */
#include "aggregate_pg_support.h"
#include "tally/money.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

static void setup(void)
{
	aggpg_setup("rer");
}

static void teardown(void)
{
	aggpg_teardown();
}

static tally_agg *new_agg(void)
{
	return aggpg_new(NULL, 0);
}

/* Process the batch (must succeed), then empty it. */
static void run(tally_agg *agg, batch *b, int64_t now)
{
	tally_agg_stats st;
	tally_error err;

	ck_assert_msg(tally_agg_process(agg, b->m, b->n, now, &st, &err) == 0,
		      "process: %s", err.msg);
	ck_assert_int_eq(st.accepted, (int64_t)b->n);
	batch_free(b);
}

/* An api.call event of tenant k priced at half the book's price (the
 * book's is 0.0001 a call): what rerate corrects. */
static void half_priced_call(agg_gen *g, int64_t i, int k, int64_t at,
			     int64_t count)
{
	agg_gen_event(g, 9, 8 + 10 * i, at);
	ck_assert_int_eq(g->re.ev.meter, TALLY_METER_API_CALL);
	agg_tenant(g->re.ev.tenant_id, k);
	g->re.ev.time_ms = at;
	g->re.ev.count = count;
	g->re.cost = count * INT64_C(50000000);
	g->re.price_id = 1;
}

static void add_tenant(int k, const char *budget)
{
	char sql[512], s[37];
	uint8_t t[16];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql), "INSERT INTO tenants (id, name, slug, domain,"
		 " monthly_budget) VALUES ('%s', 't%d', 't%d', 't%d.example',"
		 " %s)", s, k, k, k, budget);
	tally_test_exec(dsn, sql);
}

static size_t stage_bytes; /* tally_rerate_opts.stage_bytes of rerate() */

static void rerate(int64_t from, int64_t to, tally_rerate_stats *rs)
{
	tally_rerate_opts ro = { 0 };
	tally_pricebook *pb = NULL;
	tally_error err;

	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = from;
	ro.to_ms = to;
	ro.stage_bytes = stage_bytes;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, rs, &err) == 0, "%s",
		      err.msg);
	tally_pricebook_free(pb);
}

/* The budget_state of tenant k's period rows (one expected). */
static const char *budget_state(int k)
{
	char sql[256], s[37];
	uint8_t t[16];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql), "SELECT budget_state FROM"
		 " tenant_period_usage WHERE tenant_id = '%s'", s);
	return agg_query1(chk, sql);
}

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

/* An empty, reversed or overflowing range is refused before any work. */
START_TEST(test_rerate_bad_range_refused)
{
	static const int64_t r[][2] = {
		{ 1000, 1000 },                /* empty */
		{ 2000, 1000 },                /* reversed */
		{ 0, INT64_MAX },              /* day + DAY_MS would overflow */
		{ INT64_MAX - 1, INT64_MAX },
		{ -DAY_MS, 1000 },             /* before 1970 */
	};
	tally_rerate_opts ro = { 0 };
	tally_pricebook *pb = NULL;
	tally_error err;
	size_t i;

	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	for (i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		ro.from_ms = r[i][0];
		ro.to_ms = r[i][1];
		ck_assert_msg(tally_agg_rerate(pg, pb, &ro, NULL, &err) ==
			      TALLY_EINVALID, "range %zu accepted", i);
	}
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM rerate_runs"),
			 0);
	tally_pricebook_free(pb);
}
END_TEST

/* `tally rerate ARGS` against the test database: its exit status. */
static int cli(const char *args)
{
	const char *b = getenv("TALLY_BIN_DIR");
	char cmd[2048];
	int st;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' PGTZ=Asia/Tokyo"
		 " %s/tally rerate %s >/dev/null 2>&1", dsn,
		 b ? b : TALLY_BINARY_DIR, args);
	st = system(cmd);
	ck_assert_msg(WIFEXITED(st), "%s: no exit status", cmd);
	return WEXITSTATUS(st);
}

/*
 * The command line: --from not before --to, a time without an offset (it
 * would be read in the server's time zone), an overflowing unix ms and the
 * removed --prices are usage errors (2) and run nothing; a time with an
 * offset is that instant.
 */
START_TEST(test_rerate_cli_times)
{
	ck_assert_int_eq(cli("--from 2025-02-01 --to 2025-01-01"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00Z"
			     " --to 2025-01-01T00:00:00Z"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00"
			     " --to 2025-01-02T00:00:00"), 2);
	ck_assert_int_eq(cli("--from 0 --to 9223372036854775807"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01 --to 2025-01-02"
			     " --prices /dev/null"), 2);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM rerate_runs"),
			 0);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00+02:00"
			     " --to 2025-01-02"), 0);
	ck_assert_str_eq(agg_query1(chk, "SELECT range_from ="
				    " '2024-12-31T22:00:00Z'::timestamptz AND"
				    " range_to = '2025-01-02T00:00:00Z'"
				    "::timestamptz FROM rerate_runs"), "t");
}
END_TEST

/*
 * Lock order. Eight hourly rows, one per tenant, stored in a shuffled
 * order; another session holds the middle one (tenant 4). Rerate, locking
 * in the consumer's order (by key), waits there holding exactly the rows
 * of tenants 0..3 and none of 5..7. Locking in scan or hash order it would
 * hold some other set. Sorts and nested loops are discouraged for the
 * database: the hash plans a big day gets, which meet rows in storage
 * order (a few rows would otherwise come sorted by chance).
 */
typedef struct rr_thread {
	int64_t from, to;
	int rc;
	char msg[256];
	char dsn[512];
} rr_thread;

static void *rerate_thread(void *payload)
{
	rr_thread *t = payload;
	tally_rerate_opts ro = { 0 };
	tally_pricebook *pb = NULL;
	tally_pg *p2 = NULL;
	tally_error err;

	t->rc = tally_pg_connect(&p2, t->dsn, 10000, &err);
	if (t->rc == 0)
		t->rc = tally_pricebook_load_pg(&pb, p2, &err);
	if (t->rc == 0) {
		ro.from_ms = t->from;
		ro.to_ms = t->to;
		t->rc = tally_agg_rerate(p2, pb, &ro, NULL, &err);
	}
	if (t->rc != 0)
		snprintf(t->msg, sizeof(t->msg), "%s", err.msg);
	tally_pricebook_free(pb);
	tally_pg_free(p2);
	return NULL;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Is tenant k's hourly row locked by someone else? */
static int hourly_locked(int k)
{
	char sql[256], st[37];
	uint8_t t[16];
	PGresult *res;
	int locked;

	agg_tenant(t, k);
	tally_uuid_fmt(st, t);
	snprintf(sql, sizeof(sql), "SELECT 1 FROM usage_hourly WHERE tenant_id"
		 " = '%s' FOR UPDATE NOWAIT", st);
	res = PQexec(chk, sql);
	locked = PQresultStatus(res) != PGRES_TUPLES_OK;
	if (locked)
		ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE),
				 "55P03");
	PQclear(res);
	return locked;
}

START_TEST(test_rerate_locks_hourly_in_key_order)
{
	static const int order[8] = { 5, 2, 7, 0, 3, 6, 1, 4 };
	int64_t now = tally_now_ms();
	int64_t hr = now - now % 3600000 - 3600000;
	tally_agg *agg = new_agg();
	agg_gen g;
	batch b = { 0 };
	rr_thread t;
	pthread_t th;
	PGconn *holder;
	PGresult *res;
	char sql[512], s4[37];
	uint8_t t4[16];
	int waited = 0, i;

	snprintf(sql, sizeof(sql), "ALTER DATABASE %s SET enable_sort = off",
		 db);
	tally_test_exec(dsn, sql);
	snprintf(sql, sizeof(sql), "ALTER DATABASE %s SET enable_nestloop ="
		 " off", db);
	tally_test_exec(dsn, sql);
	for (i = 0; i < 8; i++) {
		half_priced_call(&g, i, order[i], hr + 60000 * (i + 1), 10);
		batch_add(&b, &g.re, i % 4);
		run(agg, &b, now);
	}
	agg_tenant(t4, 4);
	tally_uuid_fmt(s4, t4);
	holder = PQconnectdb(dsn);
	ck_assert(PQstatus(holder) == CONNECTION_OK);
	res = PQexec(holder, "BEGIN");
	PQclear(res);
	snprintf(sql, sizeof(sql), "SELECT 1 FROM usage_hourly WHERE tenant_id"
		 " = '%s' FOR UPDATE", s4);
	res = PQexec(holder, sql);
	ck_assert_int_eq(PQntuples(res), 1);
	PQclear(res);

	memset(&t, 0, sizeof(t));
	snprintf(t.dsn, sizeof(t.dsn), "%s", dsn);
	t.from = hr;
	t.to = hr + 3600000;
	ck_assert_int_eq(pthread_create(&th, NULL, rerate_thread, &t), 0);
	/* until rerate waits for tenant 4's row */
	for (i = 0; i < 200 && !waited; i++) {
		sleep_ms(50);
		waited = agg_query_i64(chk, "SELECT count(*) FROM pg_stat_activity"
				       " WHERE wait_event_type = 'Lock' AND"
				       " datname = current_database()") > 0;
	}
	ck_assert_msg(waited, "rerate never waited for the held row");
	for (i = 0; i < 8; i++)
		if (i != 4)
			ck_assert_msg(hourly_locked(i) == (i < 4),
				      "tenant %d's hourly row is %s while rerate"
				      " waits for tenant 4's", i,
				      i < 4 ? "free" : "locked");
	res = PQexec(holder, "COMMIT");
	PQclear(res);
	ck_assert_int_eq(pthread_join(th, NULL), 0);
	ck_assert_msg(t.rc == 0, "rerate: %s", t.msg);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE prev_price_id = 1"), 8);
	PQfinish(holder);
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
	tcase_add_test(tc, test_rerate_leaves_storage_alone);
	tcase_add_test(tc, test_rerate_storage_price_fixed);
	tcase_add_loop_test(tc, test_rerate_storage_beyond_retention, 0, 2);
	tcase_add_test(tc, test_rerate_price_id_only_moves_no_money);
	tcase_add_test(tc, test_rerate_stats_count_committed_only);
	tcase_add_test(tc, test_rerate_bad_range_refused);
	tcase_add_test(tc, test_rerate_cli_times);
	tcase_add_test(tc, test_rerate_locks_hourly_in_key_order);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rerate_suite)
