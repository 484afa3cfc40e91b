/*
 * test_stripe_publish.c - the signal outbox is marked published only on a
 * successful delivery report, never because the producer's queue drained:
 * - broker up: every unpublished row is produced once (header signal-id),
 *   marked, and never produced again;
 * - producer pointed at a dead broker address: the delivery reports fail
 *   (message.timeout.ms) and the rows stay unpublished; a later publish on
 *   a working producer delivers them;
 * - reports still missing at the deadline keep the signals in flight (not
 *   produced a second time meanwhile) until a later call settles them.
 */
#include "stripe_testdb.h"
#include "tally/kafka.h"
#include "tally/stripe_sync.h"

#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#define TENANT "9e8d7c6b-0000-4000-8000-00000000000a"

static tally_pg *pg;
static tally_config *cfg;
static char topic[128];
static const char *brokers;

static void setup(void)
{
	const char *topics[2] = { topic, NULL };
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	tally_error err;
	rd_kafka_t *rk;

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	pg = testdb_create("tally_stripe_pub");
	cfg = testdb_config();
	testdb_tenant(pg, TENANT, "pub-tenant", NULL);
	snprintf(topic, sizeof(topic), "test.signals.%s", testdb_name);
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, 1, &err) == 0,
		      "%s", err.msg);
	rd_kafka_destroy(rk);
}

static void teardown(void)
{
	tally_config_free(cfg);
	tally_pg_free(pg);
}

static rd_kafka_t *producer(const char *bootstrap, const char *timeout_ms)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap,
				    errstr, sizeof(errstr)) ==
		  RD_KAFKA_CONF_OK);
	ck_assert(rd_kafka_conf_set(conf, "enable.idempotence", "true",
				    errstr, sizeof(errstr)) ==
		  RD_KAFKA_CONF_OK);
	ck_assert(rd_kafka_conf_set(conf, "message.timeout.ms", timeout_ms,
				    errstr, sizeof(errstr)) ==
		  RD_KAFKA_CONF_OK);
	ck_assert(rd_kafka_conf_set(conf, "log_level", "0", errstr,
				    sizeof(errstr)) == RD_KAFKA_CONF_OK);
	tally_stripe_sync_producer_conf(conf);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

static tally_stripe_sync *sync_new(int wait_ms)
{
	tally_stripe_sync_opts o = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_error err;

	o.pg = pg;
	o.cfg = cfg;
	o.publish_wait_ms = wait_ms;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &o, &err), 0);
	return ss;
}

static void outbox_add(int first, int n)
{
	char sql[400];
	int i;

	for (i = first; i < first + n; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO billing_signals_outbox (tenant_id, "
			 "signal_id, kind, payload) VALUES ('" TENANT "', "
			 "'00000000-0000-4000-8000-%012d', 'dispute', "
			 "'{\"n\": %d}')", i, i);
		testdb_sql(pg, sql);
	}
}

static int unpublished(void)
{
	char v[32];

	testdb_get(pg, v, sizeof(v), "SELECT count(*) FROM "
		   "billing_signals_outbox WHERE published_at IS NULL", NULL);
	return atoi(v);
}

/* Messages on the topic per signal id (index = the id's last digits). */
static int read_signals(int *counts, int max)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256];
	rd_kafka_t *rk;
	int n = 0, idle = 0;

	memset(counts, 0, sizeof(int) * (size_t)max);
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", topic, errstr, sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert(rk != NULL);
	rd_kafka_poll_set_consumer(rk);
	parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, topic, 0)->offset =
		RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while (idle < 10) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		rd_kafka_headers_t *h = NULL;
		const void *v;
		size_t len;

		if (m == NULL || m->err) {
			idle++;
			if (m)
				rd_kafka_message_destroy(m);
			continue;
		}
		idle = 0;
		n++;
		ck_assert(rd_kafka_message_headers(m, &h) == 0);
		ck_assert(rd_kafka_header_get_last(h, "signal-id", &v, &len) ==
			  0 && len == 36);
		{
			char id[13];
			int k;

			memcpy(id, (const char *)v + 24, 12);
			id[12] = '\0';
			k = atoi(id);
			ck_assert(k >= 0 && k < max);
			counts[k]++;
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

START_TEST(test_stripe_publish_marks_on_delivery)
{
	tally_stripe_sync *ss;
	rd_kafka_t *dead, *live;
	tally_error err;
	int n = -1, rc, counts[16], i;

	outbox_add(0, 3);

	/* 1. a dead broker: reports fail, nothing is marked */
	dead = producer("127.0.0.1:1", "1500");
	ss = sync_new(6000);
	rc = tally_stripe_sync_publish(ss, dead, topic, &n, &err);
	ck_assert_msg(rc == TALLY_ETRANSIENT, "dead broker: ETRANSIENT, got "
		      "%d (%s)", rc, rc ? err.msg : "");
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(unpublished(), 3);
	ck_assert_int_eq(tally_stripe_sync_signals_in_flight(ss), 0);

	/* 2. reports not back by the deadline: in flight, not produced a
	 * second time, settled (as failures) by a later call */
	rd_kafka_destroy(dead);
	tally_stripe_sync_free(ss);
	dead = producer("127.0.0.1:1", "2500");
	ss = sync_new(300);
	rc = tally_stripe_sync_publish(ss, dead, topic, &n, &err);
	ck_assert_int_eq(rc, TALLY_ETRANSIENT);
	ck_assert_int_eq(tally_stripe_sync_signals_in_flight(ss), 3);
	ck_assert_int_eq(rd_kafka_outq_len(dead), 3);
	rc = tally_stripe_sync_publish(ss, dead, topic, &n, &err);
	ck_assert_int_eq(rd_kafka_outq_len(dead), 3); /* not produced again */
	tally_sleep_ms(3000);
	rc = tally_stripe_sync_publish(ss, dead, topic, &n, &err);
	/* the three failed and were settled; this call produced them anew */
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(unpublished(), 3);
	ck_assert_int_eq(rd_kafka_outq_len(dead), 3);
	rd_kafka_destroy(dead);
	tally_stripe_sync_free(ss);

	/* 3. a working broker: delivered, marked, and exactly once */
	live = producer(brokers, "30000");
	ss = sync_new(10000);
	rc = tally_stripe_sync_publish(ss, live, topic, &n, &err);
	ck_assert_msg(rc == 0, "publish: %s", err.msg);
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(unpublished(), 0);
	outbox_add(3, 2);
	rc = tally_stripe_sync_publish(ss, live, topic, &n, &err);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(n, 2);
	rc = tally_stripe_sync_publish(ss, live, topic, &n, &err);
	ck_assert_int_eq(rc, 0);
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(read_signals(counts, 16), 5);
	for (i = 0; i < 5; i++)
		ck_assert_msg(counts[i] == 1, "signal %d: %d copies", i,
			      counts[i]);
	rd_kafka_destroy(live);
	tally_stripe_sync_free(ss);
}
END_TEST

static Suite *tally_stripe_publish_suite(void)
{
	Suite *s = suite_create("stripe_publish");
	TCase *tc = tcase_create("Outbox");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_stripe_publish_marks_on_delivery);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_publish_suite)
