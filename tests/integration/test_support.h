#ifndef TALLY_TESTS_SUPPORT_H
#define TALLY_TESTS_SUPPORT_H

/*
 * test_support.h - helpers for integration tests: a throwaway database
 * per test (created on the services' cluster, migrated, dropped) and
 * unique names for topics and groups, so suites can run in parallel.
 */

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <check.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally/migrate.h"
#include "tally/pg.h"

/* Replace the database name of a postgresql:// URL (no query string). */
static inline void tally_test_dsn_with_db(char *out, size_t n,
					  const char *dsn, const char *db)
{
	const char *slash = strrchr(dsn, '/');
	const char *q = strchr(dsn, '?');

	if (slash == NULL || (q != NULL && slash > q))
		snprintf(out, n, "%s dbname=%s", dsn, db);
	else
		snprintf(out, n, "%.*s/%s%s", (int)(slash - dsn), dsn, db,
			 q ? q : "");
}

static inline void tally_test_exec(const char *dsn, const char *sql)
{
	PGconn *c = PQconnectdb(dsn);
	PGresult *r;

	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s",
		      PQerrorMessage(c));
	r = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK ||
		      PQresultStatus(r) == PGRES_TUPLES_OK,
		      "%s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	PQfinish(c);
}

/*
 * Create database `name` (dropping a leftover one) and fill out with its
 * DSN. With migrate, apply every migration.
 */
static inline void tally_test_db_create(char *out, size_t n, const char *name,
					int migrate)
{
	const char *base = getenv("TALLY_TEST_PG_DSN");
	char sql[256];

	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 name);
	tally_test_exec(base, sql);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
	tally_test_exec(base, sql);
	tally_test_dsn_with_db(out, n, base, name);
	if (migrate) {
		tally_pg *pg = NULL;
		tally_error err;
		int applied = 0;

		ck_assert_msg(tally_pg_connect(&pg, out, 10000, &err) == 0,
			      "%s", err.msg);
		ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(),
					    &applied, &err) == 0,
			      "migrate: %s", err.msg);
		tally_pg_free(pg);
	}
}

static inline void tally_test_db_drop(const char *name)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 name);
	tally_test_exec(getenv("TALLY_TEST_PG_DSN"), sql);
}

/* "prefix_<pid>_<counter>" */
static inline void tally_test_unique(char *out, size_t n, const char *prefix)
{
	static int counter;

	snprintf(out, n, "%s_%d_%d", prefix, (int)getpid(), counter++);
}

/* A "<field> <n> kB" line of /proc/<pid>/status (VmRSS:, VmHWM:), in
 * KiB; -1 if unreadable. */
static inline long tally_test_proc_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	long kb = -1;
	FILE *fp;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	fp = fopen(path, "r");
	if (fp == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, field, strlen(field)) == 0)
			kb = strtol(line + strlen(field), NULL, 10);
	fclose(fp);
	return kb;
}

#endif /* TALLY_TESTS_SUPPORT_H */
