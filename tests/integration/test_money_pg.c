/*
 * test_money_pg.c - tally_money_pgnumeric(), the binary numeric that
 * tally-aggregate sends its cost deltas in, read back by PostgreSQL: every
 * value must arrive exactly (as a numeric equal to tally_money_fmt128's
 * text, and printed the same), from 0 and one pico-unit to ±2^126, over
 * fixed edge cases and 2 000 pseudo-random 128-bit values.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/money.h"

#include <inttypes.h>

__extension__ typedef unsigned __int128 u128;

static PGconn *conn;

static void setup(void)
{
	const char *dsn = tally_test_need_env("TALLY_TEST_PG_DSN");

	conn = PQconnectdb(dsn);
	ck_assert_msg(PQstatus(conn) == CONNECTION_OK, "connect: %s",
		      PQerrorMessage(conn));
}

static void teardown(void)
{
	PQfinish(conn);
}

/* PostgreSQL reads v from its binary form: equal and printed alike */
static void round_trip(tally_money128 v)
{
	uint8_t bin[TALLY_PGNUMERIC_LEN];
	char want[80];
	const char *vals[2];
	int lens[2], fmts[2] = { 1, 0 };
	Oid types[2] = { 1700, 1700 };
	PGresult *r;

	ck_assert_uint_eq(tally_money_pgnumeric(bin, v), TALLY_PGNUMERIC_LEN);
	tally_money_fmt128(want, sizeof(want), v);
	vals[0] = (const char *)bin;
	vals[1] = want;
	lens[0] = TALLY_PGNUMERIC_LEN;
	lens[1] = 0;
	r = PQexecParams(conn, "SELECT $1 = $2, $1::text", 2, types, vals, lens,
			 fmts, 0);
	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", want,
		      PQerrorMessage(conn));
	ck_assert_msg(strcmp(PQgetvalue(r, 0, 0), "t") == 0,
		      "sent %s, PostgreSQL read %s", want, PQgetvalue(r, 0, 1));
	ck_assert_str_eq(PQgetvalue(r, 0, 1), want);
	PQclear(r);
}

START_TEST(test_money_pgnumeric_edges)
{
	static const int64_t small[] = {
		0, 1, -1, 5, 999999999999, 1000000000000, -1000000000000,
		1000000000001, 123456789012345678, INT64_MAX, INT64_MIN + 1,
		2345000000, 10000, 100000000, 1000000000000000000
	};
	size_t i;

	for (i = 0; i < sizeof(small) / sizeof(small[0]); i++)
		round_trip(small[i]);
	round_trip((tally_money128)1 << 100);
	round_trip(-((tally_money128)1 << 100) + 7);
	round_trip(((tally_money128)1 << 126) - 1);
	round_trip(-(((tally_money128)1 << 126) - 1));
}
END_TEST

START_TEST(test_money_pgnumeric_random)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL;
	int i;

	for (i = 0; i < 2000; i++) {
		u128 u;
		tally_money128 v;

		/* xorshift64*: two draws (< 2^126), then a random magnitude */
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		u = (u128)(x * 2685821657736338717ULL) << 62;
		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		u ^= (u128)(x >> 2);
		u >>= (unsigned)(x % 120);
		v = (tally_money128)u;
		if (x & 1)
			v = -v;
		round_trip(v);
	}
}
END_TEST

static Suite *money_pg_suite(void)
{
	Suite *s = suite_create("money_pg");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_money_pgnumeric_edges);
	tcase_add_test(tc, test_money_pgnumeric_random);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(money_pg_suite)
