#ifndef TALLY_TESTS_ROLES_SUPPORT_H
#define TALLY_TESTS_ROLES_SUPPORT_H

/*
 * roles_support.h - SQL as another login role: connect as a role on the
 * test server, and the SQLSTATE a statement ends with, for the tests of
 * what each role may do.
 */
#include <check.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

/* base (postgresql://user@host...) with another user */
static inline void tally_test_dsn_as(char *out, size_t n, const char *base,
				     const char *role)
{
	const char *at = strchr(base, '@');

	ck_assert(at != NULL && strncmp(base, "postgresql://", 13) == 0);
	snprintf(out, n, "postgresql://%s%s", role, at);
}

static inline PGconn *tally_test_connect_as(const char *base,
					    const char *role)
{
	char d[600];
	PGconn *c;

	tally_test_dsn_as(d, sizeof(d), base, role);
	c = PQconnectdb(d);
	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s: %s", role,
		      PQerrorMessage(c));
	return c;
}

/* SQLSTATE of sql on c ("" when it succeeds) */
static inline const char *tally_test_sqlstate(PGconn *c, const char *sql)
{
	static char st[8];
	PGresult *r = PQexec(c, sql);
	const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);

	snprintf(st, sizeof(st), "%s", s ? s : "");
	PQclear(r);
	return st;
}

static inline void tally_test_sql_ok(PGconn *c, const char *sql)
{
	ck_assert_msg(strcmp(tally_test_sqlstate(c, sql), "") == 0, "%s: %s",
		      sql, PQerrorMessage(c));
}

static inline void tally_test_sql_denied(PGconn *c, const char *sql)
{
	ck_assert_msg(strcmp(tally_test_sqlstate(c, sql), "42501") == 0,
		      "should be refused (42501): %s; got: %s", sql,
		      PQerrorMessage(c));
}

#endif /* TALLY_TESTS_ROLES_SUPPORT_H */
