/*
 * test_kafka_start.c - where a newly assigned partition starts when no
 * position is known (src/io/kafka_start.c, the rebalance callback in
 * src/io/kafka.c), on librdkafka's in-process mock cluster:
 *
 *  - a partition the group has never committed is set to the log start;
 *    one it has committed, and one the caller positioned, are left alone;
 *  - when the coordinator refuses the lookup nothing changes (librdkafka's
 *    own resolution follows, as without the lookup);
 *  - through a subscribed tally_consumer: a fresh group reads every
 *    partition from offset 0, and a group resumes each partition at its
 *    committed offset.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "kafka_mock_client.h"
#include "io/kafka_start.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>

#define TOPIC "start.t"
#define PARTS 3
#define PER_PART 10
#define APIKEY_OFFSET_FETCH 9
#define MS INT64_C(1000000)

typedef struct cluster {
	rd_kafka_t *mrk;
	rd_kafka_mock_cluster_t *mc;
	const char *bs;
} cluster;

static void cluster_up(cluster *c)
{
	rd_kafka_t *p;
	int i;

	tally_log_init("test_kafka_start", TALLY_ERR);
	c->mrk = mock_client(RD_KAFKA_PRODUCER, NULL, NULL);
	c->mc = rd_kafka_mock_cluster_new(c->mrk, 1);
	ck_assert(c->mc != NULL);
	rd_kafka_mock_group_initial_rebalance_delay_ms(c->mc, 0);
	c->bs = rd_kafka_mock_cluster_bootstraps(c->mc);
	ck_assert(rd_kafka_mock_topic_create(c->mc, TOPIC, PARTS, 1) == 0);
	p = mock_client(RD_KAFKA_PRODUCER, c->bs, NULL);
	for (i = 0; i < PARTS * PER_PART; i++)
		ck_assert(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(TOPIC),
				RD_KAFKA_V_PARTITION(i % PARTS),
				RD_KAFKA_V_VALUE("x", 1),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert(rd_kafka_flush(p, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(p);
}

static void cluster_down(cluster *c)
{
	rd_kafka_mock_cluster_destroy(c->mc);
	rd_kafka_destroy(c->mrk);
}

/* the group's committed offset of partition 0: next */
static void commit_p0(const cluster *c, const char *group, int64_t next)
{
	rd_kafka_t *rk = mock_client(RD_KAFKA_CONSUMER, c->bs, group);
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(1);

	rd_kafka_topic_partition_list_add(l, TOPIC, 0)->offset = next;
	ck_assert_int_eq(rd_kafka_commit(rk, l, 0), RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
}

/* p0 and p1 at INVALID, p2 positioned by the caller at 7 */
static rd_kafka_topic_partition_list_t *assignment(void)
{
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(PARTS);

	rd_kafka_topic_partition_list_add(l, TOPIC, 0)->offset =
		RD_KAFKA_OFFSET_INVALID;
	rd_kafka_topic_partition_list_add(l, TOPIC, 1)->offset =
		RD_KAFKA_OFFSET_INVALID;
	rd_kafka_topic_partition_list_add(l, TOPIC, 2)->offset = 7;
	return l;
}

START_TEST(test_never_committed_starts_at_beginning)
{
	cluster c;
	rd_kafka_t *rk;
	rd_kafka_topic_partition_list_t *l;

	cluster_up(&c);
	commit_p0(&c, "start.g1", 4);
	rk = mock_client(RD_KAFKA_CONSUMER, c.bs, "start.g1");
	l = assignment();
	ck_assert_int_eq(tally_kafka_start_unpositioned(rk, l, 5000), 1);
	ck_assert_int_eq(l->elems[0].offset, RD_KAFKA_OFFSET_INVALID);
	ck_assert_int_eq(l->elems[1].offset, RD_KAFKA_OFFSET_BEGINNING);
	ck_assert_int_eq(l->elems[2].offset, 7);
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	cluster_down(&c);
}
END_TEST

START_TEST(test_refused_lookup_changes_nothing)
{
	cluster c;
	rd_kafka_t *rk;
	rd_kafka_topic_partition_list_t *l;

	cluster_up(&c);
	rk = mock_client(RD_KAFKA_CONSUMER, c.bs, "start.g2");
	rd_kafka_mock_push_request_errors(c.mc, APIKEY_OFFSET_FETCH, 4,
		RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
		RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
		RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
		RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED);
	l = assignment();
	ck_assert_int_eq(tally_kafka_start_unpositioned(rk, l, 2000), 0);
	ck_assert_int_eq(l->elems[0].offset, RD_KAFKA_OFFSET_INVALID);
	ck_assert_int_eq(l->elems[1].offset, RD_KAFKA_OFFSET_INVALID);
	ck_assert_int_eq(l->elems[2].offset, 7);
	rd_kafka_topic_partition_list_destroy(l);
	rd_kafka_mock_clear_request_errors(c.mc, APIKEY_OFFSET_FETCH);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	cluster_down(&c);
}
END_TEST

/* leaves every start offset to the group (INVALID), as tally-rate does */
static int from_group(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	(void)parts;
	(void)payload;
	return 0;
}

/*
 * Subscribes a tally_consumer in group and reads until every partition
 * has given a message; first[p] is the offset of partition p's first one.
 */
static void first_offsets(const cluster *c, const char *group,
			  int64_t first[PARTS])
{
	static const char *topics[] = { TOPIC, NULL };
	tally_consumer_opts co;
	tally_consumer *tc;
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_message_t *msgs[64];
	tally_error err;
	int64_t end = tally_mono_ns() + 20000 * MS;
	int seen = 0, p;
	size_t k, i;

	for (p = 0; p < PARTS; p++)
		first[p] = -1;
	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers", c->bs,
				       &err) == 0);
	memset(&co, 0, sizeof(co));
	co.group = group;
	co.topics = topics;
	co.on_assign = from_group;
	ck_assert_msg(tally_consumer_new(&tc, conf, &co, &err) == 0, "%s",
		      err.msg);
	while (seen < PARTS && tally_mono_ns() < end) {
		k = tally_consumer_poll_batch(tc, msgs, 64, 100);
		for (i = 0; i < k; i++) {
			p = (int)msgs[i]->partition;
			ck_assert(p >= 0 && p < PARTS);
			if (first[p] < 0) {
				first[p] = msgs[i]->offset;
				seen++;
			}
			rd_kafka_message_destroy(msgs[i]);
		}
	}
	tally_consumer_free(tc);
	ck_assert_int_eq(seen, PARTS);
}

START_TEST(test_consumer_fresh_group_and_resume)
{
	cluster c;
	int64_t first[PARTS];

	cluster_up(&c);
	first_offsets(&c, "start.fresh", first);
	ck_assert_int_eq(first[0], 0);
	ck_assert_int_eq(first[1], 0);
	ck_assert_int_eq(first[2], 0);

	commit_p0(&c, "start.resume", 6);
	first_offsets(&c, "start.resume", first);
	ck_assert_int_eq(first[0], 6);
	ck_assert_int_eq(first[1], 0);
	ck_assert_int_eq(first[2], 0);
	cluster_down(&c);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("kafka_start");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_never_committed_starts_at_beginning);
	tcase_add_test(tc, test_refused_lookup_changes_nothing);
	tcase_add_test(tc, test_consumer_fresh_group_and_resume);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
