/*
 * test_aggregate_restart.c - tally-aggregate while PostgreSQL restarts
 * (`ops/services restart pg` mid-run, two instances): the consumers wait,
 * retry, reconnect, and the totals are exact. It restarts the shared
 * PostgreSQL, so the file name carries `restart`: label `disruptive`,
 * run alone by ops/test after the parallel suites.
 *
 * TALLY_AGG_TEST_EVENTS overrides the event count (default 200000; this
 * test uses a quarter of it).
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_kafka_support.h"
#include "check_main.h"

START_TEST(test_aggregate_restart_pg_exact)
{
	rd_kafka_t *rk;
	int64_t n = nevents() / 4, sent = 0;
	int64_t base = tally_now_ms() - 2 * 3600000;
	int rc;

	rk = producer();
	write_config_lanes(2000, 2);
	start(0);
	start(1);
	produce_range(rk, 0, n / 2, base, &sent);
	rd_kafka_flush(rk, 30000);
	tally_sleep_ms(500);
	rc = system(TALLY_SOURCE_DIR "/ops/services restart pg >/dev/null 2>&1");
	ck_assert_msg(rc == 0, "ops/services restart pg failed");
	produce_range(rk, n / 2, n, base, &sent);
	rd_kafka_flush(rk, 30000);
	PQreset(chk);
	wait_done(sent, 300);
	stop(0, SIGTERM);
	stop(1, SIGTERM);
	expect_all(n, base);
	rd_kafka_destroy(rk);
}
END_TEST

static Suite *aggregate_restart_suite(void)
{
	Suite *s = suite_create("aggregate_restart");
	TCase *tc = tcase_create("PgRestart");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, test_aggregate_restart_pg_exact);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_restart_suite)
