/*
 * test_pg_restart.c - PostgreSQL restarted (ops/services restart pg) while
 * the helper holds an open connection: the next transaction reconnects with
 * backoff and succeeds. Disruptive (label), so ops/test runs it alone.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/log.h"

static int txn_insert(tally_pg *pg, void *payload, tally_error *err)
{
	const char *p[1] = { payload };

	return tally_pg_exec(pg, NULL, "INSERT INTO t VALUES ($1::int)", 1, p,
			     err);
}

START_TEST(test_pg_survives_server_restart)
{
	char db[64], dsn[512];
	tally_pg *pg = NULL;
	tally_error err;
	PGresult *res = NULL;

	tally_test_unique(db, sizeof(db), "t_pgrs");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 60000, &err), 0);
	ck_assert_int_eq(tally_pg_exec(pg, NULL, "CREATE TABLE t (x int)", 0,
				       NULL, &err), 0);
	ck_assert_int_eq(tally_pg_txn(pg, txn_insert, "1", 0, &err), 0);
	ck_assert_msg(system("bash ops/services restart pg >/dev/null 2>&1") == 0,
		      "ops/services restart pg failed");
	ck_assert_msg(tally_pg_txn(pg, txn_insert, "2", 0, &err) == 0,
		      "txn after restart: %s", err.msg);
	ck_assert_int_eq(tally_pg_exec(pg, &res, "SELECT count(*) FROM t", 0,
				       NULL, &err), 0);
	ck_assert_str_eq(PQgetvalue(res, 0, 0), "2");
	PQclear(res);
	tally_pg_free(pg);
	tally_test_db_drop(db);
}
END_TEST

static Suite *restart_suite(void)
{
	Suite *s = suite_create("pg_restart");
	TCase *tc = tcase_create("Restart");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test_pg_restart", TALLY_WARN);
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_pg_survives_server_restart);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(restart_suite)
