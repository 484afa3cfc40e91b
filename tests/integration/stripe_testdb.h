#ifndef TALLY_TESTS_STRIPE_TESTDB_H
#define TALLY_TESTS_STRIPE_TESTDB_H

/*
 * stripe_testdb.h - shared set-up of the Stripe integration tests: a fresh
 * database per test program (CREATE DATABASE <unique>; tally_migrate()),
 * dropped at exit, a config with test prices, tenants.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/config.h"
#include "tally/migrate.h"
#include "tally/pg.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char testdb_name[64];
static char testdb_admin[512];
static pid_t testdb_owner;

static void testdb_drop(void)
{
	tally_pg *pg = NULL;
	tally_error err;
	char sql[128];

	/* Check forks test cases: only the creating process drops */
	if (testdb_name[0] == '\0' || getpid() != testdb_owner ||
	    tally_pg_connect(&pg, testdb_admin, 2000, &err) != 0)
		return;
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 testdb_name);
	if (tally_pg_exec(pg, NULL, sql, 0, NULL, &err) != 0)
		fprintf(stderr, "drop %s: %s\n", testdb_name, err.msg);
	tally_pg_free(pg);
}

/* Create and migrate a database; returns a connection to it. */
static tally_pg *testdb_create(const char *prefix)
{
	const char *dsn = tally_test_need_env("TALLY_TEST_PG_DSN");
	char sql[128], url[600];
	const char *slash;
	tally_pg *pg = NULL;
	tally_error err;
	int applied = 0;
	struct timespec ts;

	snprintf(testdb_admin, sizeof(testdb_admin), "%s", dsn);
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(testdb_name, sizeof(testdb_name), "%s_%ld_%ld", prefix,
		 (long)getpid(), (long)(ts.tv_nsec % 1000000));
	ck_assert_msg(tally_pg_connect(&pg, dsn, 5000, &err) == 0,
		      "connect: %s", err.msg);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", testdb_name);
	ck_assert_msg(tally_pg_exec(pg, NULL, sql, 0, NULL, &err) == 0,
		      "create database: %s", err.msg);
	tally_pg_free(pg);
	testdb_owner = getpid();
	atexit(testdb_drop);
	slash = strrchr(dsn, '/');
	ck_assert_msg(slash != NULL, "TALLY_TEST_PG_DSN must be a URI");
	snprintf(url, sizeof(url), "%.*s/%s", (int)(slash - dsn), dsn,
		 testdb_name);
	ck_assert_msg(tally_pg_connect(&pg, url, 5000, &err) == 0,
		      "connect test db: %s", err.msg);
	ck_assert_msg(tally_migrate(pg, TALLY_SOURCE_DIR "/migrations",
				    &applied, &err) == 0,
		      "migrate: %s", err.msg);
	return pg;
}

static tally_config *testdb_config(void)
{
	tally_config *cfg = NULL;
	tally_error err;

	ck_assert_msg(tally_config_load(&cfg, NULL, &err) == 0, "config: %s",
		      err.msg);
	tally_config_set(cfg, "stripe.price_starter", "price_starter_test");
	tally_config_set(cfg, "stripe.price_professional",
			 "price_professional_test");
	tally_config_set(cfg, "stripe.price_enterprise",
			 "price_enterprise_test");
	tally_config_set(cfg, "stripe.price_white_label_starter", "");
	return cfg;
}

static void testdb_sql(tally_pg *pg, const char *sql)
{
	tally_error err;

	ck_assert_msg(tally_pg_exec(pg, NULL, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
}

/* First column of the first row as text ("" for NULL / no row). */
static void testdb_get(tally_pg *pg, char *out, size_t n, const char *sql,
		       const char *arg)
{
	PGresult *res = NULL;
	tally_error err;
	const char *p[1] = { arg };

	ck_assert_msg(tally_pg_exec(pg, &res, sql, arg ? 1 : 0, p, &err) == 0,
		      "%s: %s", sql, err.msg);
	snprintf(out, n, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0)
						  : "");
	PQclear(res);
}

static void testdb_tenant(tally_pg *pg, const char *id, const char *slug,
			  const char *customer)
{
	char sql[600];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain, "
		 "stripe_customer_id) VALUES ('%s', 'Tenant %s', '%s', "
		 "'%s.example.com', %s%s%s)", id, slug, slug, slug,
		 customer ? "'" : "", customer ? customer : "NULL",
		 customer ? "'" : "");
	testdb_sql(pg, sql);
}

#endif /* TALLY_TESTS_STRIPE_TESTDB_H */
