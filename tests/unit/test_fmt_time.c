/*
 * test_fmt_time.c - tally_fmt_time_ms: RFC 3339 UTC with milliseconds, the
 * text gmtime_r and "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" give, for the
 * epoch, leap days, century years, the last millisecond of 9999 and a
 * pseudo-random sweep; times outside 1970..9999 as libc writes them.
 * ce_time of every produced message is this text (docs/relay.md).
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/common.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* the reference: libc's civil time */
static void ref(char out[96], int64_t ms)
{
	int64_t rem = ms % 1000;
	time_t secs;
	struct tm tm;

	if (rem < 0)
		rem += 1000;
	secs = (time_t)((ms - rem) / 1000);
	if (gmtime_r(&secs, &tm) == NULL)
		ck_abort_msg("gmtime_r(%" PRId64 ")", ms);
	snprintf(out, 96, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)rem);
}

static void same(int64_t ms)
{
	char want[96], got[32];

	ref(want, ms);
	want[31] = '\0';
	memset(got, 'x', sizeof(got));
	tally_fmt_time_ms(got, ms);
	/* no ck_assert per call: Check's fork mode logs each one */
	if (strcmp(got, want) != 0)
		ck_abort_msg("%" PRId64 ": %s, want %s", ms, got, want);
}

START_TEST(test_fmt_time_fixed)
{
	char got[32];

	tally_fmt_time_ms(got, 0);
	ck_assert_str_eq(got, "1970-01-01T00:00:00.000Z");
	tally_fmt_time_ms(got, INT64_C(1764151200123));
	ck_assert_str_eq(got, "2025-11-26T10:00:00.123Z");
	tally_fmt_time_ms(got, INT64_C(951782400000)); /* leap day of 2000 */
	ck_assert_str_eq(got, "2000-02-29T00:00:00.000Z");
	tally_fmt_time_ms(got, INT64_C(253402300799999));
	ck_assert_str_eq(got, "9999-12-31T23:59:59.999Z");
}
END_TEST

START_TEST(test_fmt_time_like_libc)
{
	static const int64_t edges[] = {
		0, 1, 999, 1000, 86399999, 86400000, -1, -1000, -86400001,
		INT64_C(951782399999), INT64_C(951782400000),  /* 2000-02-29 */
		INT64_C(951868800000),                         /* 2000-03-01 */
		INT64_C(4107542400000),                        /* 2100-03-01 */
		INT64_C(4107456000000),                        /* 2100-02-28 */
		INT64_C(253402300799999), INT64_C(253402300800000),
		INT64_C(253402300800001), INT64_C(32503680000000),
	};
	uint64_t x = 88172645463325252ull;
	size_t i;

	for (i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
		same(edges[i]);
	/* every day boundary of 1970..2500 and its neighbours */
	for (i = 0; i < 193000; i += 7) {
		int64_t d = (int64_t)i * 86400000;

		same(d - 1);
		same(d);
		same(d + 43200123);
	}
	/* xorshift64 times in 0..year 10000 */
	for (i = 0; i < 200000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		same((int64_t)(x % UINT64_C(253402300800000)));
	}
}
END_TEST

static Suite *fmt_time_suite(void)
{
	Suite *s = suite_create("fmt_time");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_fmt_time_fixed);
	tcase_add_test(tc, test_fmt_time_like_libc);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(fmt_time_suite)
