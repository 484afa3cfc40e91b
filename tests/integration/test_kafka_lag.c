/*
 * test_kafka_lag.c - a real consumer with tally_consumer_opts.metrics set
 * exports its lag and committed offset per partition from librdkafka's
 * statistics: 10 messages read, 4 of them stored (committed) -> lag 6,
 * committed offset 4; 4 read and nothing committed by this consumer (as
 * when a transactional producer commits its offsets) -> the position: lag
 * 6, offset 4; without .metrics no lag series at all.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_support.h"
#include "check_main.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char topic[96], group[96];

static tally_config *config(void)
{
	tally_config *cfg = NULL;
	tally_error err;

	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "kafka.brokers", getenv("TALLY_TEST_BROKERS"));
	return cfg;
}

static void produce_ten(const tally_config *cfg)
{
	rd_kafka_t *rk = NULL;
	const char *topics[2] = { topic, NULL };
	tally_error err;
	int i;

	ck_assert(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg), &err) == 0);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, 1, &err) == 0, "%s",
		      err.msg);
	for (i = 0; i < 10; i++)
		ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
			RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_VALUE("x", 1),
			RD_KAFKA_V_END), RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(rk);
}

/* Poll (serving the statistics callback) until the line shows, <= 40 s. */
static bool wait_line(tally_consumer *c, tally_metrics *m, const char *line)
{
	rd_kafka_message_t *msgs[16];
	char *text = NULL;
	size_t n, i;
	int rounds;

	for (rounds = 0; rounds < 80; rounds++) {
		n = tally_consumer_poll_batch(c, msgs, 16, 500);
		for (i = 0; i < n; i++)
			rd_kafka_message_destroy(msgs[i]);
		tally_metrics_render(&text, NULL, m);
		if (strstr(text, line) != NULL) {
			free(text);
			return true;
		}
		free(text);
	}
	return false;
}

typedef enum { COMMIT_4, READ_4, NO_METRICS } mode;

static void run(mode md)
{
	tally_config *cfg = config();
	tally_metrics *m = tally_metrics_new();
	tally_consumer *c = NULL;
	tally_consumer_opts co = { 0 };
	const char *topics[2] = { topic, NULL };
	rd_kafka_message_t *msgs[16];
	char line[512], *text = NULL;
	tally_error err;
	size_t n = 0, got, want;
	int rounds;

	tally_test_unique(topic, sizeof(topic), "t_lag");
	tally_test_unique(group, sizeof(group), "g_lag");
	produce_ten(cfg);
	co.group = group;
	co.topics = topics;
	co.metrics = md != NO_METRICS ? m : NULL;
	ck_assert_int_eq(tally_consumer_new(&c, tally_kafka_conf(cfg), &co,
					    &err), 0);
	want = md == READ_4 ? 4 : 10;
	for (rounds = 0; rounds < 40 && n < want; rounds++) {
		got = tally_consumer_poll_batch(c, msgs + n, want - n, 500);
		n += got;
	}
	ck_assert_uint_eq(n, want);
	if (md != READ_4) {
		ck_assert_int_eq(tally_consumer_store(c, msgs, 4, &err), 0);
		ck_assert_int_eq(rd_kafka_commit(tally_consumer_rk(c), NULL, 0),
				 0);
	} else {
		/* stop at the position: no more is read while we wait */
		rd_kafka_topic_partition_list_t *asg = NULL;

		ck_assert_int_eq(rd_kafka_assignment(tally_consumer_rk(c), &asg),
				 0);
		ck_assert_int_eq(rd_kafka_pause_partitions(tally_consumer_rk(c),
							   asg), 0);
		rd_kafka_topic_partition_list_destroy(asg);
	}
	for (got = 0; got < n; got++)
		rd_kafka_message_destroy(msgs[got]);
	snprintf(line, sizeof(line), "tally_kafka_consumer_lag{group=\"%s\","
		 "topic=\"%s\",partition=\"0\"} 6\n", group, topic);
	if (md != NO_METRICS) {
		ck_assert_msg(wait_line(c, m, line), "no \"%s\"", line);
		snprintf(line, sizeof(line),
			 "tally_kafka_consumer_committed_offset{group=\"%s\","
			 "topic=\"%s\",partition=\"0\"} 4\n", group, topic);
		ck_assert_msg(wait_line(c, m, line), "no \"%s\"", line);
	} else {
		(void)tally_consumer_poll_batch(c, msgs, 16, 12000);
		tally_metrics_render(&text, NULL, m);
		ck_assert_ptr_null(strstr(text, "tally_kafka_consumer_lag"));
		free(text);
	}
	tally_consumer_free(c);
	tally_metrics_free(m);
	tally_config_free(cfg);
}

START_TEST(test_kafka_lag_from_statistics)
{
	run(COMMIT_4);
}
END_TEST

START_TEST(test_kafka_lag_position_when_commits_unseen)
{
	run(READ_4);
}
END_TEST

START_TEST(test_kafka_lag_off_without_metrics)
{
	run(NO_METRICS);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("kafka_lag");
	TCase *tc = tcase_create("kafka");

	tally_test_need_env("TALLY_TEST_BROKERS");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_kafka_lag_from_statistics);
	tcase_add_test(tc, test_kafka_lag_position_when_commits_unseen);
	tcase_add_test(tc, test_kafka_lag_off_without_metrics);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
