/*
 * test_aggregate_topics.c - what tally-aggregate puts on Kafka: dead
 * letters on <rated>.dlq with their reason headers, and billing.totals
 * (content, versions strictly increasing per tenant-period), and the
 * totals outbox: versions not marked published are published again when
 * the consumer starts. Runs the built binary against the real broker.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_support.h"
#include "check_main.h"
#include "program_support.h"
#include "tally/kafka.h"

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

static char db[64], dsn[512], topic[96], cfgpath[256];
static PGconn *chk;

static void produce_raw(rd_kafka_t *rk, const char *key, const void *v,
			size_t len)
{
	ck_assert(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
				    RD_KAFKA_V_KEY(key, strlen(key)),
				    RD_KAFKA_V_VALUE((void *)v, len),
				    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				    RD_KAFKA_V_END) == 0);
}

static pid_t start_consumer(void)
{
	char url[600];
	char *argv[] = { "tally-aggregate", "--config", cfgpath, NULL };
	const char *set[] = { url, NULL };

	snprintf(url, sizeof(url), "DATABASE_URL=%s", dsn);
	return prog_spawn(TALLY_BINARY_DIR "/tally-aggregate", argv, NULL, set,
			  NULL);
}

static void wait_committed(int64_t n)
{
	char sql[256];
	int i;

	snprintf(sql, sizeof(sql), "SELECT coalesce(sum(next_offset), 0) FROM"
		 " consumer_offsets WHERE consumer_group = 'topics.%s'", db);
	for (i = 0; i < 600 && agg_query_i64(chk, sql) < n; i++)
		tally_sleep_ms(100);
	ck_assert_int_eq(agg_query_i64(chk, sql), n);
}

static void stop(pid_t pid)
{
	int st = 0;

	kill(pid, SIGTERM);
	waitpid(pid, &st, 0);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "tally-aggregate should stop cleanly");
}

/*
 * What the test needs of one message, copied out: librdkafka's
 * rd_kafka_destroy() waits until every message of the handle has been
 * destroyed, so a reader that kept its messages past destroy would hang.
 */
typedef struct rec {
	char key[64];
	char value[4096];
	size_t key_len, len;
	char reason[64], source_topic[128], consumer[64];
} rec;

static void header(const rd_kafka_message_t *m, const char *name, char *buf,
		   size_t len)
{
	rd_kafka_headers_t *h = NULL;
	const void *v = NULL;
	size_t vl = 0;

	buf[0] = '\0';
	if (rd_kafka_message_headers(m, &h) == 0 &&
	    rd_kafka_header_get_last(h, name, &v, &vl) == 0 && v != NULL)
		snprintf(buf, len, "%.*s", (int)vl, (const char *)v);
}

/* Read every message of t (1 partition) from the beginning, up to max. */
static size_t read_all(const char *t, rec *out, size_t max)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_t *rk;
	tally_error err;
	size_t n = 0;
	int idle = 0;

	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers",
				       getenv("TALLY_TEST_BROKERS"), &err) == 0);
	/* no group: a plain assignment, nothing committed */
	ck_assert(tally_kafka_conf_set(conf, "group.id", "unused", &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "enable.auto.commit", "false",
				       &err) == 0);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, NULL, 0);
	ck_assert(rk != NULL);
	l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, t, 0)->offset =
		RD_KAFKA_OFFSET_BEGINNING;
	ck_assert(rd_kafka_assign(rk, l) == 0);
	rd_kafka_topic_partition_list_destroy(l);
	while (n < max && idle < 30) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);

		if (m == NULL) {
			idle++;
			continue;
		}
		if (m->err == 0) {
			rec *r = &out[n++];

			ck_assert(m->key_len < sizeof(r->key) &&
				  m->len < sizeof(r->value));
			memcpy(r->key, m->key, m->key_len);
			r->key[m->key_len] = '\0';
			r->key_len = m->key_len;
			memcpy(r->value, m->payload, m->len);
			r->value[m->len] = '\0';
			r->len = m->len;
			header(m, "x-tally-reason", r->reason, sizeof(r->reason));
			header(m, "x-tally-source-topic", r->source_topic,
			       sizeof(r->source_topic));
			header(m, "x-tally-consumer", r->consumer,
			       sizeof(r->consumer));
			idle = 0;
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_assign(rk, NULL);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

/* "version":N from a totals JSON text */
static int64_t json_int(const rec *m, const char *key)
{
	char pat[64];
	const char *p, *txt = m->value;
	int64_t v = -1;

	snprintf(pat, sizeof(pat), "\"%s\" : ", key);
	p = strstr(txt, pat);
	if (p == NULL) {
		snprintf(pat, sizeof(pat), "\"%s\":", key);
		p = strstr(txt, pat);
	}
	if (p != NULL)
		v = strtoll(p + strlen(pat), NULL, 10);
	return v;
}

START_TEST(test_aggregate_topics_dlq_totals_outbox)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	tally_error err;
	char totals[128], dlq[128], key[37];
	const char *topics[4];
	static rec got[4096];
	int64_t now = tally_now_ms(), i, n = 200, last_v[AGG_TENANTS] = { 0 };
	int64_t ai = 0, max_ai[AGG_TENANTS] = { 0 };
	size_t k, ng;
	agg_gen g;
	msgpack_sbuffer sb;
	FILE *fp;
	pid_t pid;
	int reasons_late = 0, reasons_bad = 0;

	snprintf(totals, sizeof(totals), "%s.totals", topic);
	snprintf(dlq, sizeof(dlq), "%s.dlq", topic);
	topics[0] = topic;
	topics[1] = totals;
	topics[2] = dlq;
	topics[3] = NULL;
	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers",
				       getenv("TALLY_TEST_BROKERS"), &err) == 0);
	ck_assert(tally_kafka_producer_new(&rk, conf, &err) == 0);
	ck_assert(tally_kafka_create_topics(rk, topics, 1, &err) == 0);
	for (i = 0; i < n; i++) {
		agg_gen_event(&g, 11, i, now - 2 * 3600000);
		agg_encode(&sb, &g.re);
		tally_uuid_fmt(key, g.re.ev.tenant_id);
		produce_raw(rk, key, sb.data, sb.size);
		msgpack_sbuffer_destroy(&sb);
		if (g.re.ev.meter == TALLY_METER_AI_TOKENS)
			ai++;
	}
	/* two dead letters: undecodable, and 40 days late */
	produce_raw(rk, "bad", "\x01\x02\x03", 3);
	agg_gen_event(&g, 11, n, now - 40 * INT64_C(86400000));
	g.re.ev.time_ms = now - 40 * INT64_C(86400000);
	agg_encode(&sb, &g.re);
	produce_raw(rk, "late", sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_flush(rk, 30000);
	rd_kafka_destroy(rk);

	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"warn\"; };\n"
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; };\n"
		"topics: { rated = \"%s\"; totals = \"%s\"; };\n"
		"aggregate: { group = \"topics.%s\"; batch_size = 50;"
		" batch_ms = 100; metrics_listen = \"127.0.0.1:0\"; };\n",
		dsn, getenv("TALLY_TEST_BROKERS"), topic, totals, db);
	fclose(fp);
	pid = start_consumer();
	wait_committed(n + 2);
	stop(pid);

	/* dead letters: both, with reason headers and the source position */
	ng = read_all(dlq, got, 16);
	ck_assert_int_eq(ng, 2);
	for (k = 0; k < ng; k++) {
		const char *r = got[k].reason;

		if (strcmp(r, "too_late") == 0)
			reasons_late++;
		else if (r[0] != '\0')
			reasons_bad++;
		ck_assert_str_eq(got[k].source_topic, topic);
		ck_assert_str_eq(got[k].consumer, "tally-aggregate");
	}
	ck_assert_int_eq(reasons_late, 1);
	ck_assert_int_eq(reasons_bad, 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dead_letters"),
			 2);

	/* totals: versions strictly increasing per tenant (one period each),
	 * the last one equal to the table, every version marked published */
	ng = read_all(totals, got, 4096);
	ck_assert(ng > 0);
	for (k = 0; k < ng; k++) {
		int t = -1, j;

		for (j = 0; j < AGG_TENANTS; j++) {
			uint8_t id[16];
			char s[37];

			agg_tenant(id, j);
			tally_uuid_fmt(s, id);
			if (got[k].key_len == 36 &&
			    memcmp(got[k].key, s, 36) == 0)
				t = j;
		}
		ck_assert_msg(t >= 0, "totals key should be a generator tenant");
		ck_assert_msg(json_int(&got[k], "version") > last_v[t],
			      "versions must increase per tenant-period");
		last_v[t] = json_int(&got[k], "version");
		max_ai[t] = json_int(&got[k], "ai_requests");
	}
	{
		int64_t sum = 0;
		int j;

		for (j = 0; j < AGG_TENANTS; j++)
			sum += max_ai[j];
		ck_assert_int_eq(sum, ai);
	}
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " tenant_period_usage WHERE"
				       " published_version <> version"), 0);

	/* the outbox: as if the process had died between commit and publish */
	tally_test_exec(dsn, "UPDATE tenant_period_usage SET"
			     " published_version = version - 1");
	pid = start_consumer();
	for (i = 0; i < 300 && agg_query_i64(chk, "SELECT count(*) FROM"
			    " tenant_period_usage WHERE published_version"
			    " <> version") > 0; i++)
		tally_sleep_ms(100);
	stop(pid);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " tenant_period_usage WHERE"
				       " published_version <> version"), 0);
	k = read_all(totals, got, 4096);
	ck_assert_msg(k >= ng + (size_t)agg_query_i64(chk, "SELECT count(*)"
		      " FROM tenant_period_usage"),
		      "the latest totals should have been published again");
}
END_TEST

static void setup(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	tally_test_unique(db, sizeof(db), "aggt");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	chk = PQconnectdb(dsn);
	snprintf(topic, sizeof(topic), "topics.rated.%s", db);
}

static void teardown(void)
{
	PQfinish(chk);
	tally_test_db_drop(db);
}

static Suite *topics_suite(void)
{
	Suite *su = suite_create("aggregate_topics");
	TCase *tc = tcase_create("Topics");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_aggregate_topics_dlq_totals_outbox);
	suite_add_tcase(su, tc);
	return su;
}

TALLY_CHECK_MAIN(topics_suite)
