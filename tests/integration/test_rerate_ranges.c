/*
 * test_rerate_ranges.c - bad ranges and times are refused by `tally
 * rerate`, in the library and on the command line (a real PostgreSQL).
 */
#include "rerate_support.h"

#include <stdlib.h>
#include <sys/wait.h>

/* An empty, reversed or overflowing range is refused before any work. */
START_TEST(test_rerate_bad_range_refused)
{
	static const int64_t r[][2] = {
		{ 1000, 1000 },                /* empty */
		{ 2000, 1000 },                /* reversed */
		{ 0, INT64_MAX },              /* day + DAY_MS would overflow */
		{ INT64_MAX - 1, INT64_MAX },
		{ -DAY_MS, 1000 },             /* before 1970 */
	};
	tally_rerate_opts ro = { 0 };
	tally_pricebook *pb = NULL;
	tally_error err;
	size_t i;

	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	for (i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		ro.from_ms = r[i][0];
		ro.to_ms = r[i][1];
		ck_assert_msg(tally_agg_rerate(pg, pb, &ro, NULL, &err) ==
			      TALLY_EINVALID, "range %zu accepted", i);
	}
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM rerate_runs"),
			 0);
	tally_pricebook_free(pb);
}
END_TEST

/* `tally rerate ARGS` against the test database: its exit status. */
static int cli(const char *args)
{
	const char *b = getenv("TALLY_BIN_DIR");
	char cmd[2048];
	int st;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' PGTZ=Asia/Tokyo"
		 " %s/tally rerate %s >/dev/null 2>&1", dsn,
		 b ? b : TALLY_BINARY_DIR, args);
	st = system(cmd);
	ck_assert_msg(WIFEXITED(st), "%s: no exit status", cmd);
	return WEXITSTATUS(st);
}

/*
 * The command line: --from not before --to, a time without an offset (it
 * would be read in the server's time zone), an overflowing unix ms and the
 * removed --prices are usage errors (2) and run nothing; a time with an
 * offset is that instant.
 */
START_TEST(test_rerate_cli_times)
{
	ck_assert_int_eq(cli("--from 2025-02-01 --to 2025-01-01"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00Z"
			     " --to 2025-01-01T00:00:00Z"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00"
			     " --to 2025-01-02T00:00:00"), 2);
	ck_assert_int_eq(cli("--from 0 --to 9223372036854775807"), 2);
	ck_assert_int_eq(cli("--from 2025-01-01 --to 2025-01-02"
			     " --prices /dev/null"), 2);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM rerate_runs"),
			 0);
	ck_assert_int_eq(cli("--from 2025-01-01T00:00:00+02:00"
			     " --to 2025-01-02"), 0);
	ck_assert_str_eq(agg_query1(chk, "SELECT range_from ="
				    " '2024-12-31T22:00:00Z'::timestamptz AND"
				    " range_to = '2025-01-02T00:00:00Z'"
				    "::timestamptz FROM rerate_runs"), "t");
}
END_TEST

static Suite *rerate_ranges_suite(void)
{
	Suite *s = suite_create("rerate_ranges");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_rerate_bad_range_refused);
	tcase_add_test(tc, test_rerate_cli_times);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rerate_ranges_suite)
