/*
 * test_rerate_locks.c - `tally rerate` against a real PostgreSQL locks the
 * rows in the consumer's order (usage_hourly by key).
 */
#include "rerate_support.h"

#include <pthread.h>
#include <time.h>

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

static Suite *rerate_locks_suite(void)
{
	Suite *s = suite_create("rerate_locks");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_rerate_locks_hourly_in_key_order);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rerate_locks_suite)
