#ifndef TALLY_TESTS_TOPIC_SUPPORT_H
#define TALLY_TESTS_TOPIC_SUPPORT_H

/*
 * topic_support.h - for tests that check what reached Kafka: a fresh
 * topic, its records read back from the beginning with a plain consumer,
 * and a record's header.
 */

#include <check.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally/common.h"
#include "tally/kafka.h"

/* A fresh topic of parts partitions named after prefix. */
static inline void topic_make(char *out, size_t n, const char *brokers,
			      const char *prefix, int parts)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	tally_error err = { 0 };
	const char *topics[2] = { out, NULL };

	snprintf(out, n, "%s.%d.%lld.%d", prefix, (int)getpid(),
		 (long long)tally_now_ms(), rand() % 100000);
	ck_assert_int_eq(tally_kafka_conf_set(conf, "bootstrap.servers",
					      brokers, &err), 0);
	ck_assert_msg(tally_kafka_producer_new(&rk, conf, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, parts, &err) ==
			      0,
		      "create topic: %s", err.msg);
	rd_kafka_destroy(rk);
}

/*
 * Read up to max records from the beginning of the topic's parts
 * partitions, for at most timeout_ms. The consumer is returned in
 * *rk_out: librdkafka's destroy waits for every message to be destroyed,
 * so the caller frees with topic_done().
 */
static inline size_t topic_consume(rd_kafka_t **rk_out,
				   rd_kafka_message_t **out, size_t max,
				   const char *brokers, const char *topic,
				   int parts, int timeout_ms)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *list;
	rd_kafka_t *rk;
	char errstr[256], gid[200];
	size_t n = 0;
	int64_t deadline = tally_now_ms() + timeout_ms;
	int p;

	snprintf(gid, sizeof(gid), "%s.reader", topic);
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_ptr_nonnull(rk);
	list = rd_kafka_topic_partition_list_new(parts);
	for (p = 0; p < parts; p++)
		rd_kafka_topic_partition_list_add(list, topic, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, list);
	rd_kafka_topic_partition_list_destroy(list);
	while (n < max && tally_now_ms() < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);

		if (m == NULL)
			continue;
		if (m->err) {
			rd_kafka_message_destroy(m);
			continue;
		}
		out[n++] = m;
	}
	*rk_out = rk;
	return n;
}

static inline void topic_done(rd_kafka_t *rk, rd_kafka_message_t **msgs,
			      size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		rd_kafka_message_destroy(msgs[i]);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
}

/* The last value of header name as a string in tmp, or NULL. */
static inline const char *topic_header(rd_kafka_message_t *m,
				       const char *name, char *tmp, size_t n)
{
	rd_kafka_headers_t *h = NULL;
	const void *v;
	size_t vl;

	if (rd_kafka_message_headers(m, &h) != 0 ||
	    rd_kafka_header_get_last(h, name, &v, &vl) != 0 || vl >= n)
		return NULL;
	memcpy(tmp, v, vl);
	tmp[vl] = '\0';
	return tmp;
}

#endif /* TALLY_TESTS_TOPIC_SUPPORT_H */
