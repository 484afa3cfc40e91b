/*
 * test_pg_tls.c - DATABASE_URL with sslmode=verify-full (ops/services up
 * --pg-ssl): tally_pg_connect() reaches PostgreSQL over TLS when the URL
 * names the CA that signed the server's certificate (sslrootcert), for
 * 127.0.0.1 and localhost alike, and is refused with another CA.
 *
 * Skipped (77) without TALLY_TEST_PG_CA.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "test_support.h"
#include "tally/log.h"
#include "tally/pg.h"

/* base (postgresql://user@host:port/db) with host and TLS parameters */
static void tls_url(char *out, size_t n, const char *host, const char *ca)
{
	const char *base = tally_test_need_env("TALLY_TEST_PG_DSN");
	const char *at = strchr(base, '@'), *colon;

	ck_assert_msg(at != NULL && strchr(base, '?') == NULL,
		      "TALLY_TEST_PG_DSN is user@host:port/db: %s", base);
	colon = strchr(at, ':');
	ck_assert(colon != NULL);
	snprintf(out, n, "%.*s%s%s?sslmode=verify-full&sslrootcert=%s",
		 (int)(at + 1 - base), base, host, colon, ca);
}

static void expect_tls(const char *url)
{
	tally_pg *pg = NULL;
	tally_error err;
	PGresult *r;

	ck_assert_msg(tally_pg_connect(&pg, url, 2000, &err) == 0, "%s: %s",
		      url, err.msg);
	r = PQexec(tally_pg_conn(pg), "SELECT ssl FROM pg_stat_ssl WHERE pid ="
		   " pg_backend_pid()");
	ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	ck_assert_str_eq(PQgetvalue(r, 0, 0), "t");
	PQclear(r);
	tally_pg_free(pg);
}

START_TEST(test_pg_tls_verify_full)
{
	const char *ca = tally_test_need_env("TALLY_TEST_PG_CA");
	char url[1024];

	tls_url(url, sizeof(url), "127.0.0.1", ca);
	expect_tls(url);
	tls_url(url, sizeof(url), "localhost", ca);
	expect_tls(url);
}
END_TEST

START_TEST(test_pg_tls_wrong_ca_refused)
{
	char url[1024];
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_need_env("TALLY_TEST_PG_CA");
	/* the system's CAs: none of them signed the server's certificate */
	tls_url(url, sizeof(url), "127.0.0.1",
		"/etc/ssl/certs/ca-certificates.crt");
	ck_assert_int_ne(tally_pg_connect(&pg, url, 1000, &err), 0);
	ck_assert_msg(strstr(err.msg, "certificate verify failed") != NULL,
		      "%s", err.msg);
}
END_TEST

static Suite *pg_tls_suite(void)
{
	Suite *s = suite_create("pg_tls");
	TCase *tc = tcase_create("Core");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_PG_CA");
	tally_log_init("test_pg_tls", TALLY_WARN);
	tcase_add_test(tc, test_pg_tls_verify_full);
	tcase_add_test(tc, test_pg_tls_wrong_ca_refused);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(pg_tls_suite)
