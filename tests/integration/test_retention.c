/*
 * test_retention.c - tally-aggregate's retention (tally_agg_maintain, i.e.
 * tally_ledger_maintain): ledger partitions are created ahead of time and
 * dropped once they ended more than aggregate.retention_days ago, never
 * inside the dedupe window (a retention that short is refused); dedupe
 * keys are forgotten after the window (lateness + 2 days); storage
 * snapshots older than the retention go, except each tenant's last one
 * before the bound, which opens every later period.
 */
#include "aggregate_pg_support.h"
#include "tally/log.h"

static void setup(void)
{
	aggpg_setup("t_ret");
}

static void teardown(void)
{
	aggpg_teardown();
}

static long long q_ll(const char *sql)
{
	PGresult *r = PQexec(chk, sql);
	long long v;

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1,
		      "%s: %s", sql, PQerrorMessage(chk));
	v = atoll(PQgetvalue(r, 0, 0));
	PQclear(r);
	return v;
}

/* Does the ledger partition of UTC day today + d exist? */
static int has_day(int d)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON"
		 " c.oid = i.inhrelid WHERE i.inhparent = 'usage_ledger'::regclass"
		 " AND c.relname = 'usage_ledger_p' || to_char((now() AT TIME"
		 " ZONE 'UTC')::date + %d, 'YYYYMMDD')", d);
	return (int)q_ll(sql);
}

/* Create the partition of UTC day today + d with one row in it. */
static void old_day(int d)
{
	char sql[1024];

	snprintf(sql, sizeof(sql),
		 "DO $$ DECLARE d date := (now() AT TIME ZONE 'UTC')::date + %d;"
		 " BEGIN EXECUTE format('CREATE TABLE %%I PARTITION OF"
		 " usage_ledger FOR VALUES FROM (%%L) TO (%%L)',"
		 " 'usage_ledger_p' || to_char(d, 'YYYYMMDD'),"
		 " to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',"
		 " to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00'); END $$;"
		 "INSERT INTO usage_ledger (occurred_at, quantity, tenant_id,"
		 " digest, meter_id, cost) VALUES (((now() AT TIME ZONE"
		 " 'UTC')::date + %d)::timestamp AT TIME ZONE 'UTC'"
		 " + interval '12 hours', 1, gen_random_uuid(),"
		 " gen_random_uuid(), 4, 0)", d, d);
	tally_test_exec(dsn, sql);
}

START_TEST(test_retention_partitions)
{
	tally_error err;
	int d;

	/* lateness 35 (dedupe window 37 days), 7 ahead, retention 400 */
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	for (d = -37; d <= 7; d++)
		ck_assert_msg(has_day(d), "no partition for today %+d", d);
	ck_assert(!has_day(8));
	/* ended more than 400 days ago: the day of today - 401 ends at
	 * today - 400; the day of today - 400 ends after it */
	old_day(-402);
	old_day(-401);
	old_day(-400);
	old_day(-399);
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	ck_assert(!has_day(-402));
	ck_assert(!has_day(-401));
	ck_assert(has_day(-400));
	ck_assert(has_day(-399));
	ck_assert_int_eq(q_ll("SELECT count(*) FROM usage_ledger WHERE"
			      " occurred_at < now() - interval '398 days'"), 2);
	/* a retention inside the dedupe window (37 days) is refused, and
	 * nothing is dropped */
	old_day(-45);
	ck_assert(tally_agg_maintain(pg, 35, 7, 37, &err) != 0);
	ck_assert_msg(strstr(err.msg, "must exceed the dedupe window") != NULL,
		      "%s", err.msg);
	ck_assert(has_day(-45));
	ck_assert(has_day(-399));
	/* the shortest retention allowed (38 days) drops the days that
	 * ended more than 38 days ago, nothing after */
	old_day(-39);
	old_day(-38);
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 38, &err) == 0, "%s",
		      err.msg);
	ck_assert(!has_day(-45));
	ck_assert(!has_day(-39));
	ck_assert(has_day(-38));
	ck_assert(has_day(-37));
}
END_TEST

START_TEST(test_retention_dedupe_keys)
{
	tally_error err;

	/* md5-form keys (ids that carry no time) go by the event's time */
	tally_test_exec(dsn,
		"INSERT INTO usage_dedupe VALUES"
		" (gen_random_uuid(), tally_event_digest('r', 'a'),"
		"  now() - interval '37 days 1 hour'),"
		" (gen_random_uuid(), tally_event_digest('r', 'b'),"
		"  now() - interval '36 days 23 hours'),"
		" (gen_random_uuid(), tally_event_digest('r', 'c'), now())");
	/* time-led keys of days without a partition (the default one) go
	 * by the id's time: older than the dropped days, or far ahead */
	tally_test_exec(dsn,
		"INSERT INTO usage_dedupe VALUES"
		" (gen_random_uuid(), (lpad(to_hex((extract(epoch FROM now()"
		"  - interval '39 days') * 1000)::bigint), 12, '0')"
		"  || '00000000000000000000')::uuid, now()),"
		" (gen_random_uuid(), (lpad(to_hex((extract(epoch FROM now()"
		"  + interval '30 days') * 1000)::bigint), 12, '0')"
		"  || '00000000000000000000')::uuid, now())");
	ck_assert_int_eq(q_ll("SELECT count(*) FROM usage_dedupe_default"), 2);
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	/* window = lateness + 2 days = 37 days */
	ck_assert_int_eq(q_ll("SELECT count(*) FROM usage_dedupe_md5"), 2);
	ck_assert_int_eq(q_ll("SELECT count(*) FROM usage_dedupe WHERE"
			      " occurred_at < now() - interval '37 days'"), 0);
	ck_assert_int_eq(q_ll("SELECT count(*) FROM usage_dedupe_default"), 1);
}
END_TEST

/* Snapshot of tenant k at the retention bound (today - 400, 00:00 UTC)
 * plus off_days. */
static void snap(int k, int off_days)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO storage_snapshots VALUES"
		 " ('00000000-0000-4000-8000-%012d', (((now() AT TIME ZONE"
		 " 'UTC')::date - 400)::timestamp AT TIME ZONE 'UTC')"
		 " + interval '%d days', gen_random_uuid(), %d)",
		 k, off_days, 1000 + off_days);
	tally_test_exec(dsn, sql);
}

static long long snaps_of(int k)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM storage_snapshots"
		 " WHERE tenant_id = '00000000-0000-4000-8000-%012d'", k);
	return q_ll(sql);
}

static long long oldest_of(int k)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT min(bytes) - 1000 FROM"
		 " storage_snapshots WHERE tenant_id ="
		 " '00000000-0000-4000-8000-%012d'", k);
	return q_ll(sql);
}

START_TEST(test_retention_snapshots_keep_the_opening_one)
{
	tally_error err;

	snap(1, -100); /* superseded before the bound */
	snap(1, -50);  /* tenant 1's value at the bound: kept */
	snap(2, -10);  /* opens the periods after the bound: kept */
	snap(2, 5);
	snap(3, -30);
	snap(3, -20);
	snap(3, -1);   /* tenant 3's last before the bound */
	snap(4, 1);    /* inside the retention */
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(snaps_of(1), 1);
	ck_assert_int_eq(oldest_of(1), -50);
	ck_assert_int_eq(snaps_of(2), 2);
	ck_assert_int_eq(oldest_of(2), -10);
	ck_assert_int_eq(snaps_of(3), 1);
	ck_assert_int_eq(oldest_of(3), -1);
	ck_assert_int_eq(snaps_of(4), 1);
	/* the bound is recorded for tally rerate (UTC midnight, 400 d ago) */
	ck_assert_int_eq(q_ll("SELECT count(*) FROM ledger_retention WHERE"
			      " snapshots_thinned_before = ((now() AT TIME ZONE"
			      " 'UTC')::date - 400)::timestamp AT TIME ZONE"
			      " 'UTC'"), 1);
	/* a second run changes nothing */
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(q_ll("SELECT count(*) FROM storage_snapshots"), 5);
}
END_TEST

static Suite *retention_suite(void)
{
	Suite *s = suite_create("retention");
	TCase *tc = tcase_create("Maintain");

	tally_log_init("test_retention", TALLY_WARN);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_retention_partitions);
	tcase_add_test(tc, test_retention_dedupe_keys);
	tcase_add_test(tc, test_retention_snapshots_keep_the_opening_one);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(retention_suite)
