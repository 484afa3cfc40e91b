/*
 * test_rate_consumer.c - tally-rate on the real broker: produce 100 000
 * usage events (plus invalid and unpriced ones), run the tally-rate binary,
 * kill -9 it several times mid-stream and restart it, then read the rated
 * topic read_committed: every valid input exactly once with the cost the
 * rating function gives (price book imported into a fresh database), every
 * bad one exactly once in the dead-letter topic.
 *
 * The fixture (rate_consumer_support.h) is unchecked, so the database and
 * the topics are dropped even when the test fails or times out.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_support.h"

#define N_EVENTS 100000
#define N_BAD 100      /* undecodable */
#define N_UNPRICED 100 /* unknown model: dead letter */

static void produce_all(void)
{
	rd_kafka_t *rk = producer();
	const char *topics[] = { usage_t, rated_t, dlq_t, NULL };
	tally_pricebook *pb = NULL;
	tally_rate_ctx *ctx = tally_rate_ctx_new();
	tally_pg *pg = NULL;
	tally_error err;
	msgpack_sbuffer sb;
	int i;

	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "%s", err.msg);
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert(tally_pricebook_load_pg(&pb, pg, &err) == 0);
	tally_pg_free(pg);
	expected = tally_xcalloc(N_EVENTS, sizeof(int64_t));
	msgpack_sbuffer_init(&sb);
	for (i = 0; i < N_EVENTS + N_BAD + N_UNPRICED; i++) {
		tally_usage_event ev;
		tally_rated_event re;
		char id[32], key[8];
		rd_kafka_resp_err_t e;

		snprintf(key, sizeof(key), "t%d", i % 16);
		sb.size = 0;
		make_event(&ev, id, i);
		if (i < N_EVENTS) {
			ck_assert(tally_rate_event(&re, pb, &ev, ctx, &err) ==
				  0);
			expected[i] = re.cost;
			tally_codec_encode_usage(&sb, &ev);
		} else if (i < N_EVENTS + N_BAD) {
			msgpack_sbuffer_write(&sb, "\xc1garbage", 8);
		} else {
			ev.model.ptr = "no-such-model";
			ev.model.len = 13;
			tally_codec_encode_usage(&sb, &ev);
		}
		do {
			e = rd_kafka_producev(
				rk, RD_KAFKA_V_TOPIC(usage_t),
				RD_KAFKA_V_KEY(key, strlen(key)),
				RD_KAFKA_V_VALUE(sb.data, sb.size),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 50);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		ck_assert(e == RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	ck_assert(rd_kafka_flush(rk, 60000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rk);
	tally_pricebook_free(pb);
	tally_rate_ctx_free(ctx);
}

/* Count committed messages of a topic (read_committed, from the start). */
static int64_t read_topic(const char *topic, int *counts, bool rated,
			  int64_t want, int wait_ms)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256], gid[160];
	rd_kafka_t *rk;
	int64_t n = 0, idle_since = tally_mono_ns();
	int p;

	snprintf(gid, sizeof(gid), "%s.reader.%lld", group,
		 (long long)tally_mono_ns());
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof(errstr));
	rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert(rk != NULL);
	rd_kafka_poll_set_consumer(rk);
	parts = rd_kafka_topic_partition_list_new(PARTS);
	for (p = 0; p < PARTS; p++)
		rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while ((tally_mono_ns() - idle_since) / 1000000 < wait_ms &&
	       (want < 0 || n < want)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);

		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
			n++;
			idle_since = tally_mono_ns();
			if (rated && counts != NULL) {
				tally_rated_event re;
				tally_codec_error cerr;
				int64_t idx;
				char idb[16];

				ck_assert_msg(tally_codec_decode_rated(
						      &re, m->payload, m->len,
						      &cerr) == 0,
					      "rated event decodes");
				ck_assert(re.ev.id.len == 9);
				memcpy(idb, re.ev.id.ptr + 3, 6);
				idb[6] = '\0';
				ck_assert(tally_parse_i64(&idx, idb) == 0);
				ck_assert(idx >= 0 && idx < N_EVENTS);
				counts[idx]++;
				ck_assert_msg(re.cost == expected[idx],
					      "event %lld: cost %lld, expected "
					      "%lld", (long long)idx,
					      (long long)re.cost,
					      (long long)expected[idx]);
				ck_assert_msg(re.price_id > 0, "price_id set");
			}
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

START_TEST(test_rate_consumer_exactly_once_kill9)
{
	int *counts = tally_xcalloc(N_EVENTS, sizeof(int));
	pid_t pid;
	int kills, status, i, missing = 0, dup = 0;
	int64_t n, t0, dlq;

	produce_all();
	t0 = tally_mono_ns();
	/* kill -9 mid-stream, several times, at varying points */
	for (kills = 0; kills < 4; kills++) {
		pid = start_rater();
		tally_sleep_ms(2500 + kills * 700);
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		ck_assert_msg(WIFSIGNALED(status), "rater was running when "
						   "killed (start failure?)");
		fprintf(stderr, "rate_consumer: kill -9 #%d: %lld committed "
				"rated events so far\n", kills + 1,
			(long long)read_topic(rated_t, NULL, false, -1, 1000));
	}
	pid = start_rater();
	/* wait until everything is handled (valid events rated, bad ones
	 * dead-lettered: a partition may end in bad ones), then stop */
	for (i = 0; i < 240; i++) {
		n = read_topic(rated_t, NULL, false, N_EVENTS, 3000);
		if (n >= N_EVENTS &&
		    read_topic(dlq_t, NULL, false, N_BAD + N_UNPRICED, 3000) >=
			    N_BAD + N_UNPRICED)
			break;
	}
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "clean exit on SIGTERM");
	fprintf(stderr, "rate_consumer: %d events rated with %d kill -9 in "
			"%.1f s\n", N_EVENTS, kills,
		(double)(tally_mono_ns() - t0) / 1e9);

	n = read_topic(rated_t, counts, true, -1, 5000);
	for (i = 0; i < N_EVENTS; i++) {
		if (counts[i] == 0)
			missing++;
		else if (counts[i] > 1)
			dup++;
	}
	ck_assert_msg(missing == 0 && dup == 0 && n == N_EVENTS,
		      "exactly once: %lld read, %d missing, %d duplicated",
		      (long long)n, missing, dup);
	dlq = read_topic(dlq_t, NULL, false, -1, 5000);
	ck_assert_msg(dlq == N_BAD + N_UNPRICED,
		      "dead letters exactly once: %lld, expected %d",
		      (long long)dlq, N_BAD + N_UNPRICED);
	free(counts);
	free(expected);
	expected = NULL;
}
END_TEST

static Suite *tally_rate_consumer_suite(void)
{
	Suite *s = suite_create("rate_consumer");
	TCase *tc = tcase_create("Kafka");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 800);
	tcase_add_test(tc, test_rate_consumer_exactly_once_kill9);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_rate_consumer_suite)
