/*
 * test_aggregate_kafka.c - tally-aggregate end to end on the real broker
 * and database: the built binary runs as child processes.
 *
 *  - chaos: 200 000 generated events (plus re-sent duplicates) over 4
 *    partitions, 2 instances, one of them killed with SIGKILL at random
 *    points at least 10 times and restarted; the totals are exact.
 *  - rebalance: a third instance joins and leaves mid-stream; exact.
 *  - retention gap: while the consumer is down, DeleteRecords moves every
 *    partition's log start past PostgreSQL's position; on restart it
 *    resumes at the log start, records the gap in consumer_offset_gaps
 *    (from the stored position to the log start) and counts exactly the
 *    events still in the log.
 *
 * (The PostgreSQL restart is in test_aggregate_restart.c: it disturbs
 * everyone on the machine, so ops/test runs it alone.) Only this suite's own
 * child processes are killed, so it runs in parallel with the others.
 *
 * TALLY_AGG_TEST_EVENTS overrides the event count (default 200000).
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_kafka_support.h"
#include "check_main.h"

START_TEST(test_aggregate_kafka_kill9_exact)
{
	rd_kafka_t *rk = producer();
	int64_t n = nevents(), sent = 0, done = 0, chunk = n / 40;
	int64_t base = tally_now_ms() - 2 * 3600000;
	unsigned seed = 12345;
	int kills = 0;

	/* two lanes each: lanes of two instances die at random points */
	write_config_lanes(5000, 2);
	start(0);
	start(1);
	while (done < n || kills < 10) {
		int64_t to = done + chunk > n ? n : done + chunk;
		int victim;

		if (done < n) {
			produce_range(rk, done, to, base, &sent);
			done = to;
		}
		tally_sleep_ms((100000 + rand_r(&seed) % 600000) / 1000);
		check_alive();
		if (rand_r(&seed) % 3 == 0 || (done >= n && kills < 10)) {
			victim = (int)(rand_r(&seed) % 2);
			stop(victim, SIGKILL);
			kills++;
			tally_sleep_ms((rand_r(&seed) % 300000) / 1000);
			start(victim);
		}
	}
	rd_kafka_flush(rk, 30000);
	ck_assert_int_eq(rd_kafka_outq_len(rk), 0);
	wait_done(sent, 600);
	stop(0, SIGTERM);
	stop(1, SIGTERM);
	fprintf(stderr, "kill9: %lld events, %lld messages, %d kills\n",
		(long long)n, (long long)sent, kills);
	ck_assert_int_ge(kills, 10);
	expect_all(n, base);
	rd_kafka_destroy(rk);
}
END_TEST

/* Instance slot's event-to-commit histogram holds one observation per
 * event it accepted (its counter), and there were some. */
static void expect_event_lag_observed(int slot)
{
	char log[300];
	int64_t accepted, observed;
	int tries = 0;

	snprintf(log, sizeof(log), "/tmp/%s.%d.log", db, slot);
	do { /* both move right after a commit: settle */
		if (tries > 0)
			tally_sleep_ms(100);
		accepted = prog_metric(log, "tally_aggregate_events_total"
				       "{outcome=\"accepted\"}");
		observed = prog_metric(log,
				       "tally_event_to_commit_seconds_count"
				       "{stage=\"aggregate\"}");
	} while (observed != accepted && ++tries < 50);
	ck_assert_msg(accepted > 0 && observed == accepted,
		      "event-to-commit observed %lld times, %lld accepted",
		      (long long)observed, (long long)accepted);
}

START_TEST(test_aggregate_kafka_rebalance_exact)
{
	rd_kafka_t *rk = producer();
	int64_t n = nevents() / 4, sent = 0;
	int64_t base = tally_now_ms() - 2 * 3600000;

	/*
	 * Three lanes over four partitions (one lane has two), and messages
	 * spread over the partitions regardless of tenant: the same tenant's
	 * rows are updated by several lanes (and instances) at once, and the
	 * two copies of a re-sent event arrive in different lanes.
	 */
	spread = true;
	write_config_lanes(2000, 3);
	start(0);
	produce_range(rk, 0, n / 3, base, &sent);
	sleep(2);
	start(1); /* joins: partitions move */
	produce_range(rk, n / 3, 2 * n / 3, base, &sent);
	sleep(3);
	stop(1, SIGTERM); /* leaves: partitions move back */
	produce_range(rk, 2 * n / 3, n, base, &sent);
	rd_kafka_flush(rk, 30000);
	wait_done(sent, 300);
	expect_event_lag_observed(0);
	stop(0, SIGTERM);
	expect_all(n, base);
	rd_kafka_destroy(rk);
}
END_TEST

START_TEST(test_aggregate_kafka_retention_gap)
{
	rd_kafka_t *rk = producer();
	rd_kafka_topic_partition_list_t *offs;
	rd_kafka_DeleteRecords_t *del;
	rd_kafka_queue_t *q;
	rd_kafka_event_t *ev;
	const rd_kafka_topic_partition_list_t *res;
	int64_t sent = 0, stored[NPART], hi[NPART], lo, gaps = 0;
	int64_t base = tally_now_ms() - 2 * 3600000, i;
	agg_expect x = { 0 };
	agg_gen g;
	char sql[512];
	int p;

	/* A: 0..999 consumed and committed */
	write_config(500);
	start(0);
	produce_range(rk, 0, 1000, base, &sent);
	rd_kafka_flush(rk, 30000);
	wait_done(sent, 120);
	stop(0, SIGTERM);
	for (p = 0; p < NPART; p++) {
		snprintf(sql, sizeof(sql), "SELECT next_offset FROM"
			 " consumer_offsets WHERE consumer_group = '%s' AND"
			 " partition = %d", group, p);
		stored[p] = agg_query_i64(chk, sql);
	}
	/* B: 1000..1999 produced while it is down, then deleted unread */
	produce_range(rk, 1000, 2000, base, &sent);
	rd_kafka_flush(rk, 30000);
	offs = rd_kafka_topic_partition_list_new(NPART);
	for (p = 0; p < NPART; p++) {
		ck_assert(rd_kafka_query_watermark_offsets(rk, topic, p, &lo,
							   &hi[p], 10000) == 0);
		rd_kafka_topic_partition_list_add(offs, topic, p)->offset = hi[p];
	}
	del = rd_kafka_DeleteRecords_new(offs);
	rd_kafka_topic_partition_list_destroy(offs);
	q = rd_kafka_queue_new(rk);
	rd_kafka_DeleteRecords(rk, &del, 1, NULL, q);
	rd_kafka_DeleteRecords_destroy(del);
	ev = rd_kafka_queue_poll(q, 30000);
	ck_assert_msg(ev != NULL, "DeleteRecords timed out");
	ck_assert_msg(rd_kafka_event_error(ev) == 0, "DeleteRecords: %s",
		      rd_kafka_event_error_string(ev));
	res = rd_kafka_DeleteRecords_result_offsets(
		rd_kafka_event_DeleteRecords_result(ev));
	for (p = 0; res != NULL && p < res->cnt; p++)
		ck_assert_msg(res->elems[p].err == 0, "DeleteRecords %d: %s",
			      res->elems[p].partition,
			      rd_kafka_err2str(res->elems[p].err));
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	/* C: 2000..2999 after the deletion */
	produce_range(rk, 2000, 3000, base, &sent);
	rd_kafka_flush(rk, 30000);
	start(0);
	wait_done(sent, 120);
	stop(0, SIGTERM);
	/* one gap per partition that lost messages: [stored, log start) */
	for (p = 0; p < NPART; p++) {
		if (hi[p] == stored[p])
			continue;
		gaps++;
		snprintf(sql, sizeof(sql), "SELECT count(*) FROM"
			 " consumer_offset_gaps WHERE consumer_group = '%s'"
			 " AND topic = '%s' AND partition = %d AND"
			 " from_offset = %lld AND to_offset = %lld", group,
			 topic, p, (long long)stored[p], (long long)hi[p]);
		ck_assert_msg(agg_query_i64(chk, sql) == 1,
			      "partition %d: gap [%lld, %lld) not recorded", p,
			      (long long)stored[p], (long long)hi[p]);
	}
	ck_assert_int_gt(gaps, 0);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " consumer_offset_gaps"), gaps);
	/* exactly A and C are counted; B is gone (replayable at its source) */
	for (i = 0; i < 3000; i++) {
		if (i >= 1000 && i < 2000)
			continue;
		agg_gen_event(&g, 7, i, base);
		agg_expect_add(&x, &g.re);
	}
	agg_check_totals(chk, &x, 2000);
	rd_kafka_destroy(rk);
}
END_TEST

/*
 * Every write of tenant_period_usage fails with a retryable serialisation
 * failure while on (a statement trigger), or works again when off.
 */
static void poison(bool on)
{
	if (!on) {
		tally_test_exec(dsn, "UPDATE test_poison SET on_ = false");
		return;
	}
	tally_test_exec(dsn, "CREATE TABLE test_poison (on_ boolean NOT NULL);"
			" INSERT INTO test_poison VALUES (true);"
			" CREATE FUNCTION test_poison() RETURNS trigger"
			" LANGUAGE plpgsql AS $$ BEGIN"
			" IF (SELECT on_ FROM test_poison) THEN"
			" RAISE EXCEPTION 'test poison'"
			" USING ERRCODE = '40001'; END IF;"
			" RETURN NULL; END $$;"
			" CREATE TRIGGER test_poison BEFORE INSERT OR UPDATE"
			" ON tenant_period_usage FOR EACH STATEMENT"
			" EXECUTE FUNCTION test_poison()");
}

/* Rewrite the config's database.retry_max_ms (write_config sets 600000). */
static void retry_max_ms(int ms)
{
	char buf[4096], repl[64];
	FILE *fp = fopen(cfgpath, "r");
	size_t n;
	char *p;

	ck_assert(fp != NULL);
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	p = strstr(buf, "retry_max_ms = 600000;");
	ck_assert(p != NULL);
	snprintf(repl, sizeof(repl), "retry_max_ms = %6d;", ms);
	memcpy(p, repl, strlen(repl));
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fputs(buf, fp);
	fclose(fp);
}

/* Wait until instance slot's log has a line containing both a and b. */
static void wait_log(int slot, const char *a, const char *b, int timeout_s)
{
	char path[300], line[4096];
	int64_t t0 = tally_mono_ns();

	snprintf(path, sizeof(path), "/tmp/%s.%d.log", db, slot);
	while ((tally_mono_ns() - t0) / 1000000000 < timeout_s) {
		FILE *fp = fopen(path, "r");

		while (fp != NULL && fgets(line, sizeof(line), fp) != NULL)
			if (strstr(line, a) != NULL && strstr(line, b) != NULL) {
				fclose(fp);
				return;
			}
		if (fp != NULL)
			fclose(fp);
		check_alive();
		tally_sleep_ms(20);
	}
	ck_abort_msg("no \"%s\" + \"%s\" in %s", a, b, path);
}

/*
 * SIGTERM while a batch is being retried: that batch is abandoned (not
 * committed), and the batch gathered meanwhile, which starts after it,
 * must not be committed either, or its positions would move past the
 * abandoned one and lose it. A statement trigger makes every write of
 * tenant_period_usage fail (a retryable serialisation failure) until it
 * is switched off; it is switched off right before the SIGTERM, while the
 * first batch waits 3.2-6.4 s after its sixth failed attempt (each gives
 * up after database.retry_max_ms = 300) and the second one is gathered.
 */
START_TEST(test_aggregate_kafka_stop_while_retrying)
{
	rd_kafka_t *rk = producer();
	int64_t n = 2000, sent = 0;
	int64_t base = tally_now_ms() - 2 * 3600000;

	poison(true);
	produce_range(rk, 0, n, base, &sent);
	rd_kafka_flush(rk, 30000);
	write_config(300);
	retry_max_ms(300);
	start(0);
	wait_log(0, "\"aggregate.retry\"", "\"attempt\":6,", 120);
	poison(false);
	stop(0, SIGTERM);
	ck_assert_int_eq(committed(), 0);
	start(0);
	wait_done(sent, 120);
	stop(0, SIGTERM);
	expect_all(n, base);
	rd_kafka_destroy(rk);
}
END_TEST

/* Set a config of topic t (IncrementalAlterConfigs). */
static void topic_config(rd_kafka_t *rk, const char *t, const char *name,
			 const char *value)
{
	rd_kafka_ConfigResource_t *cr =
		rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, t);
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	const rd_kafka_ConfigResource_t **res;
	rd_kafka_error_t *e;
	rd_kafka_event_t *ev;
	size_t cnt = 0;

	e = rd_kafka_ConfigResource_add_incremental_config(
		cr, name, RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET, value);
	ck_assert_msg(e == NULL, "%s", e ? rd_kafka_error_string(e) : "");
	rd_kafka_IncrementalAlterConfigs(rk, &cr, 1, NULL, q);
	rd_kafka_ConfigResource_destroy(cr);
	ev = rd_kafka_queue_poll(q, 30000);
	ck_assert_msg(ev != NULL, "IncrementalAlterConfigs timed out");
	ck_assert_msg(rd_kafka_event_error(ev) == 0, "alter configs: %s",
		      rd_kafka_event_error_string(ev));
	res = rd_kafka_IncrementalAlterConfigs_result_resources(
		rd_kafka_event_IncrementalAlterConfigs_result(ev), &cnt);
	ck_assert_int_eq(cnt, 1);
	ck_assert_msg(rd_kafka_ConfigResource_error(res[0]) == 0,
		      "alter %s: %s", t,
		      rd_kafka_ConfigResource_error_string(res[0]));
	rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
}

/* Messages in topic t (all partitions, high - low watermark). */
static int64_t topic_messages(rd_kafka_t *rk, const char *t)
{
	int64_t lo, hi, sum = 0;

	for (int p = 0; p < NPART; p++) {
		ck_assert(rd_kafka_query_watermark_offsets(rk, t, p, &lo, &hi,
							   10000) == 0);
		sum += hi - lo;
	}
	return sum;
}

/*
 * Dead letters the broker refuses (here: larger than the DLQ topic's
 * max.message.bytes) must keep the batch uncommitted: before the fix a
 * flush that emptied the queue by failing counted as delivered, the
 * offsets moved on and the dead letters were gone. Once the topic takes
 * them again, the batch commits and every dead letter is on the topic.
 */
START_TEST(test_aggregate_kafka_dead_letter_delivery_failed)
{
	rd_kafka_t *rk = producer();
	int64_t sent = 0, base = tally_now_ms() - 2 * 3600000;
	int64_t late = tally_now_ms() - 40 * 86400000LL; /* > 35 days */

	topic_config(rk, dlq, "max.message.bytes", "64");
	produce_range(rk, 0, 500, base, &sent);
	/* 5 events out of the lateness window (no index is a multiple of
	 * 97: each is sent once) */
	produce_range(rk, 1001, 1006, late, &sent);
	rd_kafka_flush(rk, 30000);
	write_config(2000);
	start(0);
	wait_log(0, "\"aggregate.retry\"", "failed delivery", 120);
	ck_assert_int_eq(committed(), 0);
	ck_assert_int_eq(topic_messages(rk, dlq), 0);
	topic_config(rk, dlq, "max.message.bytes", "1048588");
	wait_done(sent, 120);
	stop(0, SIGTERM);
	expect_all(500, base);
	/* every attempt before was refused whole: exactly one copy each */
	ck_assert_int_eq(topic_messages(rk, dlq), 5);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " dead_letters"), 5);
	rd_kafka_destroy(rk);
}
END_TEST

/*
 * SIGTERM while a transaction is retried inside tally_pg_txn (here: every
 * attempt fails with 40001; database.retry_max_ms is 600 s): the instance
 * stops within seconds, not after the retry time, commits nothing, and a
 * restart counts everything exactly.
 */
START_TEST(test_aggregate_kafka_stop_during_pg_retries)
{
	rd_kafka_t *rk = producer();
	int64_t n = 500, sent = 0, t0;
	int64_t base = tally_now_ms() - 2 * 3600000;

	poison(true);
	produce_range(rk, 0, n, base, &sent);
	rd_kafka_flush(rk, 30000);
	write_config(300);
	start(0);
	wait_log(0, "\"pg.txn_retry\"", "test poison", 120);
	t0 = tally_mono_ns();
	stop(0, SIGTERM);
	ck_assert_msg((tally_mono_ns() - t0) / 1000000000 < 30,
		      "the stop waited %lld s for the retries",
		      (long long)((tally_mono_ns() - t0) / 1000000000));
	ck_assert_int_eq(committed(), 0);
	poison(false);
	start(0);
	wait_done(sent, 120);
	stop(0, SIGTERM);
	expect_all(n, base);
	rd_kafka_destroy(rk);
}
END_TEST

static Suite *aggregate_kafka_suite(void)
{
	Suite *s = suite_create("aggregate_kafka");
	TCase *tc = tcase_create("EndToEnd");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 900);
	tcase_add_test(tc, test_aggregate_kafka_kill9_exact);
	tcase_add_test(tc, test_aggregate_kafka_rebalance_exact);
	tcase_add_test(tc, test_aggregate_kafka_retention_gap);
	tcase_add_test(tc, test_aggregate_kafka_stop_while_retrying);
	tcase_add_test(tc, test_aggregate_kafka_dead_letter_delivery_failed);
	tcase_add_test(tc, test_aggregate_kafka_stop_during_pg_retries);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_kafka_suite)
