/*
 * test_aggregate_storage_rollover.c - the storage rollover against a real
 * PostgreSQL gives a period with storage and no events its row, never
 * overwrites a row a batch writes, and fills a missed period.
 */
#include "aggregate_storage_support.h"

#include <pthread.h>
#include <stdatomic.h>

/* tally_agg_storage_rollover at now; returns the rows it wrote */
static size_t rollover_at(tally_agg *agg, int64_t now)
{
	tally_error err;
	size_t rows = 99;

	ck_assert_msg(tally_agg_storage_rollover(agg, now, &rows, &err) == 0,
		      "rollover: %s", err.msg);
	return rows;
}

static int64_t rollover_rows(const char *s)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s);
	return agg_query_i64(chk, sql);
}

/* The storage rollover on its own thread (it may wait for a row lock). */
typedef struct bg_roll {
	tally_agg *agg;
	int64_t now;
	size_t rows;
	int rc;
	tally_error err;
	atomic_int done;
} bg_roll;

static void *bg_rollover(void *arg)
{
	bg_roll *x = arg;

	x->rc = tally_agg_storage_rollover(x->agg, x->now, &x->rows, &x->err);
	atomic_store(&x->done, 1);
	return NULL;
}

/*
 * The rollover only creates rows: a batch of another instance writing the
 * same new period row at the same time (here: an uncommitted insert with
 * other storage figures, as a batch carrying a snapshot the rollover did
 * not see would write) wins. Before, the rollover's upsert waited for it
 * and then overwrote it with its own, stale, integral.
 */
START_TEST(test_aggregate_storage_rollover_never_overwrites)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	bg_roll x = { 0 };
	pthread_t th;
	PGconn *writer;
	PGresult *r;
	char s[37], sql[768];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 25, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	writer = PQconnectdb(dsn);
	ck_assert(PQstatus(writer) == CONNECTION_OK);
	snprintf(sql, sizeof(sql),
		 "BEGIN; INSERT INTO tenant_period_usage (tenant_id,"
		 " period_start, period_end, storage_snapshots, storage_byte_ms,"
		 " storage_gb_months, storage_cost, cost, version) VALUES ('%s',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms', 1, 123,"
		 " 0, 0.5, 0.5, 1)", s, ps1, pe1);
	r = PQexec(writer, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(writer));
	PQclear(r);
	x.agg = agg;
	x.now = ps1 + 2 * DAY_MS;
	ck_assert_int_eq(pthread_create(&th, NULL, bg_rollover, &x), 0);
	for (int i = 0; i < 200 && !atomic_load(&x.done); i++) {
		if (agg_query_i64(chk, "SELECT count(*) FROM pg_stat_activity"
				  " WHERE datname = current_database() AND"
				  " wait_event_type = 'Lock'") > 0)
			break;
		tally_sleep_ms(50);
	}
	ck_assert_msg(!atomic_load(&x.done),
		      "the rollover did not meet the uncommitted row");
	r = PQexec(writer, "COMMIT");
	ck_assert(PQresultStatus(r) == PGRES_COMMAND_OK);
	PQclear(r);
	pthread_join(th, NULL);
	ck_assert_msg(x.rc == 0, "rollover: %s", x.err.msg);
	ck_assert_int_eq(x.rows, 0);
	ck_assert_int_eq(carry_i64("storage_byte_ms", s, ps1), 123);
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	PQfinish(writer);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

/*
 * (c) Storage rollover: a tenant with storage and no events at all in a
 * later period gets that period's row from tally_agg_storage_rollover. A
 * 10 GB snapshot in P (25-day periods), processed while P is current;
 * nothing in P+1 or P+2. The rollover inside P+1, then inside P+2, creates
 * each one's row with 10 GB for 25 days, its cost, a version to publish
 * and the budget state; run again, it changes nothing. A tenant whose last
 * snapshot is 0 bytes gets no row; one whose P+2 is invoiced gets none
 * for P+2.
 */
START_TEST(test_aggregate_storage_rollover)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	int64_t ps2 = pe1, pe2 = ps2 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], sz[37], sc[37], want[160], sql[768];
	uint8_t t[16], tz[16], tc[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 22, ps1, pe1);
	carry_tenant(sz, tz, 23, ps1, pe1);
	carry_tenant(sc, tc, 24, ps1, pe1);
	/* 0.83 of a 1.00 budget: 'warning' (the default state is 'ok') */
	snprintf(sql, sizeof(sql), "UPDATE tenants SET monthly_budget = 1.00"
		 " WHERE id = '%s'", s);
	tally_test_exec(dsn, sql);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* while P is current: 10 GB from day 10 of P; the second tenant
	 * drops to 0 bytes on day 11, the third keeps 10 GB */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	add_snapshot(&b, tz, 2, ps0 + 10 * DAY_MS, CARRY_BYTES);
	add_snapshot(&b, tz, 3, ps0 + 11 * DAY_MS, 0);
	add_snapshot(&b, tc, 4, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	ck_assert_int_eq(st.accepted, 4);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	ck_assert_int_eq(rollover_rows(s), 1);
	ck_assert_int_eq(rollover_rows(sz), 1);
	ck_assert_int_eq(rollover_rows(sc), 1);

	/* inside P+1: rows for the first and the third tenant */
	ck_assert_int_eq(rollover_at(agg, ps1 + 2 * DAY_MS), 2);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(want, "21600000000000000000 8.333333333333"
			 " 0.833333333333"); /* 10 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_str_eq(carry_row(sc, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " storage_snapshots = 0 AND api_calls = 0 AND version >= 1 AND"
		 " published_version < version AND budget_state = 'warning'"
		 " FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", pe1, s, ps1);
	ck_assert_msg(strcmp(agg_query1(chk, sql), "t") == 0,
		      "P+1's row: period_end, cost = storage_cost, a version"
		      " to publish, budget 'warning'");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	ck_assert_int_eq(rollover_rows(sz), 1);
	/* again: nothing */
	ck_assert_int_eq(rollover_at(agg, ps1 + 3 * DAY_MS), 0);
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	ck_assert_int_eq(carry_i64("version", sc, ps1), 1);

	/* inside P+2, whose period the third tenant's invoice closed */
	snprintf(sql, sizeof(sql), "INSERT INTO billing_periods (tenant_id,"
		 " period_start, period_end, status, closed_at, invoice_id)"
		 " VALUES ('%s', timestamptz 'epoch' + %" PRId64 " * interval"
		 " '1 ms', timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " 'invoiced', now(), 'in_1')", sc, ps2, pe2);
	tally_test_exec(dsn, sql);
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS), 1);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps2), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " version >= 1 AND published_version < version AND"
		 " budget_state = 'warning' FROM tenant_period_usage WHERE"
		 " tenant_id = '%s' AND period_start = timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms'", pe2, s, ps2);
	ck_assert_msg(strcmp(agg_query1(chk, sql), "t") == 0,
		      "P+2's row: period_end, cost = storage_cost, a version"
		      " to publish, budget 'warning'");
	ck_assert_int_eq(carry_i64("version", s, ps2), 1);
	ck_assert_msg(rollover_rows(sc) == 2, "no row in an invoiced period");
	ck_assert_msg(rollover_rows(sz) == 1, "no row for 0 bytes");
	/* again: nothing */
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS + 3600000), 0);
	ck_assert_int_eq(carry_i64("version", s, ps2), 1);
	ck_assert_int_eq(rollover_rows(s), 3);
	ck_assert_int_eq(rollover_rows(sc), 2);
	ck_assert_int_eq(rollover_rows(sz), 1);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST


/*
 * A period that began and ended while tally-aggregate was down (no batch,
 * no rollover in it) still gets its storage row from the next rollover, as
 * long as it ends inside the lateness window (35 days). Tenant s: 10 GB
 * from day 10 of P; the first rollover runs in P+2: P+1 and P+2 are both
 * created, each holding 10 GB for its 25 days. Tenant u (its snapshot
 * counted later): the next rollover runs on day 15 of P+3, when P+1 ended
 * 40 days ago: P+2 and P+3 are created, P+1 is not.
 */
START_TEST(test_aggregate_storage_rollover_missed_period)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	int64_t ps2 = pe1, ps3 = ps2 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], u[37], want[160], sql[256];
	uint8_t t[16], tu[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 25, ps1, pe1);
	carry_tenant(u, tu, 26, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	ck_assert_int_eq(rollover_rows(s), 1);
	/* first rollover in P+2: P+1 and P+2 */
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS), 2);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_str_eq(carry_row(s, ps2), want);
	ck_assert_int_eq(rollover_rows(s), 3);

	add_snapshot(&b, tu, 2, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	/* day 15 of P+3: u's P+2 and P+3, s's P+3; u's P+1 is too old */
	ck_assert_int_eq(rollover_at(agg, ps3 + 15 * DAY_MS), 3);
	ck_assert_str_eq(carry_row(u, ps2), want);
	ck_assert_str_eq(carry_row(u, ps3), want);
	ck_assert_str_eq(carry_row(s, ps3), want);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", u, ps1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	ck_assert_int_eq(rollover_rows(u), 3);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

static Suite *aggregate_storage_rollover_suite(void)
{
	Suite *s = suite_create("aggregate_storage_rollover");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_storage_rollover);
	tcase_add_test(tc, test_aggregate_storage_rollover_never_overwrites);
	tcase_add_test(tc, test_aggregate_storage_rollover_missed_period);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_storage_rollover_suite)
