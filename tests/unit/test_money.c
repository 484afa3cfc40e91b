/* test_money.c - exact decimal parsing, formatting, muldiv and rounding. */
#include "check_main.h"
#include "tally/money.h"

#include <string.h>

static int64_t parse(const char *s)
{
	int64_t v = 0;

	ck_assert_msg(tally_money_parse(&v, s, strlen(s)) == 0,
		      "%s should parse", s);
	return v;
}

START_TEST(test_money_parse)
{
	ck_assert_int_eq(parse("0.1"), INT64_C(100000000000));
	ck_assert_int_eq(parse("3"), INT64_C(3000000000000));
	ck_assert_int_eq(parse("-0.075"), INT64_C(-75000000000));
	ck_assert_int_eq(parse("1.5e-3"), INT64_C(1500000000));
	ck_assert_int_eq(parse("2E+2"), INT64_C(200000000000000));
	ck_assert_int_eq(parse("0.000000000001"), 1);
	ck_assert_int_eq(parse("0.0000000000010"), 1);
	int64_t v;
	ck_assert_msg(tally_money_parse(&v, "0.0000000000001", 15) ==
		      TALLY_EINVALID, "finer than a pico must be rejected");
	ck_assert_int_eq(tally_money_parse(&v, "1.2.3", 5), TALLY_EINVALID);
	ck_assert_int_eq(tally_money_parse(&v, "", 0), TALLY_EINVALID);
	ck_assert_int_eq(tally_money_parse(&v, "e5", 2), TALLY_EINVALID);
	ck_assert_int_eq(tally_money_parse(&v, "99999999999", 11),
			 TALLY_EOVERFLOW);
}
END_TEST

START_TEST(test_money_fmt)
{
	char b[64];

	tally_money_fmt(b, sizeof(b), INT64_C(13963000000));
	ck_assert_str_eq(b, "0.013963");
	tally_money_fmt(b, sizeof(b), 0);
	ck_assert_str_eq(b, "0");
	tally_money_fmt(b, sizeof(b), INT64_C(-500000000000));
	ck_assert_str_eq(b, "-0.5");
	tally_money_fmt(b, sizeof(b), INT64_C(12000000000000));
	ck_assert_str_eq(b, "12");
	tally_money_fmt(b, sizeof(b), 1);
	ck_assert_str_eq(b, "0.000000000001");
	tally_money_fmt(b, sizeof(b), INT64_MIN);
	ck_assert_str_eq(b, "-9223372.036854775808");
	tally_money_fmt128(b, sizeof(b), (tally_money128)INT64_MAX * 1000);
	ck_assert_str_eq(b, "9223372036.854775807");
}
END_TEST

/* the 64-bit formatter writes what the 128-bit one writes, truncation
 * included */
START_TEST(test_money_fmt_matches_fmt128)
{
	static const int64_t edges[] = {
		0, 1, -1, 9, 10, 999999999999, 1000000000000, -1000000000000,
		1000000000001, 1200000000000, -1200000000010, INT64_MAX,
		INT64_MIN, INT64_MAX - 1, INT64_MIN + 1,
	};
	uint64_t x = UINT64_C(88172645463325252);
	char a[64], b[64];
	size_t i, len;

	for (i = 0; i < 200000; i++) {
		int64_t v;

		if (i < sizeof(edges) / sizeof(edges[0])) {
			v = edges[i];
		} else {
			/* xorshift64; every magnitude and trailing-zero count */
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			v = (int64_t)(x >> (x % 64));
			if ((x & 1) && v != INT64_MIN)
				v = -v;
			if (x & 2)
				v -= v % 1000000;
		}
		len = (i % 7 == 0) ? i % 23 : sizeof(a);
		memset(a, 'x', sizeof(a));
		memset(b, 'x', sizeof(b));
		ck_assert_uint_eq(tally_money_fmt(a, len, v),
				  tally_money_fmt128(b, len, v));
		ck_assert_msg(memcmp(a, b, sizeof(a)) == 0,
			      "%lld (buffer %zu): %.40s vs %.40s",
			      (long long)v, len, a, b);
	}
}
END_TEST

START_TEST(test_money_muldiv_rounds_half_even)
{
	int64_t out;

	ck_assert_int_eq(tally_money_muldiv(&out, 5, 1, 2), 0);
	ck_assert_int_eq(out, 2); /* 2.5 -> 2 */
	ck_assert_int_eq(tally_money_muldiv(&out, 7, 1, 2), 0);
	ck_assert_int_eq(out, 4); /* 3.5 -> 4 */
	ck_assert_int_eq(tally_money_muldiv(&out, -5, 1, 2), 0);
	ck_assert_int_eq(out, -2);
	ck_assert_int_eq(tally_money_muldiv(&out, INT64_MAX, 4, 2),
			 TALLY_EOVERFLOW);
	/* 1e12 tokens at $3/MTok = $3,000,000 */
	ck_assert_int_eq(tally_money_muldiv(&out, INT64_C(1000000000000),
					    INT64_C(3000000000000),
					    INT64_C(1000000)), 0);
	ck_assert_int_eq(out, INT64_C(3000000) * TALLY_PICO_PER_UNIT);
}
END_TEST

START_TEST(test_money_round_minor_half_away)
{
	/* 0.005 -> 1 cent; 0.0049999 -> 0; -0.005 -> -1 */
	ck_assert(tally_money_round_minor(INT64_C(5000000000), 2) == 1);
	ck_assert(tally_money_round_minor(INT64_C(4999999999), 2) == 0);
	ck_assert(tally_money_round_minor(INT64_C(-5000000000), 2) == -1);
	ck_assert(tally_money_round_minor(INT64_C(1234560000000), 2) == 123);
}
END_TEST

static Suite *money_suite(void)
{
	Suite *s = suite_create("money");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_money_parse);
	tcase_add_test(tc, test_money_fmt);
	tcase_add_test(tc, test_money_fmt_matches_fmt128);
	tcase_add_test(tc, test_money_muldiv_rounds_half_even);
	tcase_add_test(tc, test_money_round_minor_half_away);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(money_suite)
