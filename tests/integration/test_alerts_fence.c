/*
 * test_alerts_fence.c - the tally-alerts engine on a real PostgreSQL
 * refuses a zombie (an instance whose fence was taken over).
 */
#include "alerts_engine_support.h"

START_TEST(test_alerts_fence_refuses_zombie)
{
	tally_alerts_opts ao = { 0 };
	tally_alerts *a = NULL, *b = NULL;
	tally_alerts_msg v[1];
	tally_alerts_stats st = { 0 };
	tally_error err;
	char *m;

	ao.group = "g_fence";
	ao.totals_topic = "tt";
	ao.signals_topic = "ts";
	ck_assert_int_eq(tally_alerts_new(&a, pg, &ao, &err), 0);
	ck_assert_int_eq(tally_alerts_new(&b, pg, &ao, &err), 0);
	assign0(a, "tt", "ts");
	assign0(b, "tt", "ts"); /* b: assigned at the same start (zombie) */
	raise_four(a, "tt", "ts");
	m = totals_json(2, "100");
	view(&v[0], "tt", 1, m);
	ck_assert_int_eq(tally_alerts_process(b, v, 1, &st, &err),
			 TALLY_ALERTS_FENCED);
	ck_assert_int_eq(st.totals, 0);
	ck_assert_int_eq(q_int("SELECT next_offset FROM consumer_offsets"
			       " WHERE topic = 'tt'"), 1);
	ck_assert_int_eq(tally_alerts_reseek(b, NULL, v, 1, &err), 0);
	ck_assert_msg(tally_alerts_process(b, v, 1, &st, &err) == 0,
		      "after the reseek b owns the position: %s", err.msg);
	ck_assert_int_eq(q_int("SELECT next_offset FROM consumer_offsets"
			       " WHERE topic = 'tt'"), 2);
	free(m);
	tally_alerts_free(a);
	tally_alerts_free(b);
}
END_TEST

static Suite *tally_alerts_fence_suite(void)
{
	Suite *s = suite_create("alerts_fence");
	TCase *tc = tcase_create("Postgres");

	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_alerts_fence_refuses_zombie);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_fence_suite)
