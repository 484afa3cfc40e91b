/*
 * rate_consumer_support.h - the fixture of the test_rate_consumer*.c
 * programs (tally-rate on the real broker): a fresh database with the
 * price book imported, unique topics and a config file, usage events
 * produced, and the tally-rate binary as a child process that dies with
 * the test process (PR_SET_PDEATHSIG). The fixtures are unchecked (they
 * run in the parent process), so the database and the topics are dropped
 * even when a test fails or times out.
 */
#ifndef TALLY_TEST_RATE_CONSUMER_SUPPORT_H
#define TALLY_TEST_RATE_CONSUMER_SUPPORT_H

#include "check_main.h"
#include "program_support.h"
#include "tally/codec.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/migrate.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"
#include "tally/rating.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PARTS 4
#define DATA TALLY_SOURCE_DIR "/data/genai-prices-0.1.8.json"

static char db[64], dsn[512], usage_t[128], rated_t[128], dlq_t[160];
static char group[128], cfgpath[256];
static const char *rate_extra = ""; /* more keys of the rate section */
static int fixture_seq;
static const char *brokers;
static int64_t *expected;

static inline void admin_exec(const char *base, const char *sql)
{
	PGconn *c = PQconnectdb(base);
	PGresult *res;

	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect admin");
	res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s: %s", sql,
		      PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

/* replace the database name at the end of a postgresql:// URL */
static inline void dsn_for(char *out, size_t n, const char *base,
			   const char *name)
{
	const char *slash = strrchr(base, '/');
	size_t pre = slash ? (size_t)(slash - base) + 1 : strlen(base);

	snprintf(out, n, "%.*s%s", (int)pre, base, name);
}

static inline int read_file(char **out, size_t *len, const char *path)
{
	FILE *fp = fopen(path, "rb");
	long sz;

	if (fp == NULL)
		return -1;
	fseek(fp, 0, SEEK_END);
	sz = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	*out = tally_xmalloc((size_t)sz + 1);
	*len = fread(*out, 1, (size_t)sz, fp);
	fclose(fp);
	return 0;
}

static inline void setup(void)
{
	const char *base = tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_pg *pg = NULL;
	tally_error err;
	tally_price_import_stats st;
	char sql[160], *text = NULL;
	size_t len = 0;
	FILE *fp;

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test_rate_consumer", TALLY_WARN);
	snprintf(db, sizeof(db), "tally_rate_it_%d_%lld_%d", (int)getpid(),
		 (long long)(tally_now_ms() % 100000), fixture_seq++);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
	admin_exec(base, sql);
	dsn_for(dsn, sizeof(dsn), base, db);
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(), NULL,
				    &err) == 0, "migrate: %s", err.msg);
	ck_assert(read_file(&text, &len, DATA) == 0);
	ck_assert_msg(tally_pricebook_import_genai(pg, text, len, "test",
						   tally_now_ms(), &st,
						   &err) == 0,
		      "import: %s", err.msg);
	free(text);
	tally_pg_free(pg);

	snprintf(usage_t, sizeof(usage_t), "test.usage.%s", db);
	snprintf(rated_t, sizeof(rated_t), "test.rated.%s", db);
	snprintf(dlq_t, sizeof(dlq_t), "%s.dlq", usage_t);
	snprintf(group, sizeof(group), "test.rate.%s", db);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; };\n"
		"topics: { usage = \"%s\"; rated = \"%s\"; };\n"
		"rate: { group = \"%s\"; transactional_id = \"%s\"; "
		"batch_size = 2000; batch_ms = 50; %s"
		"metrics_listen = \"127.0.0.1:0\"; };\n"
		"log: { level = \"warn\"; };\n",
		dsn, brokers, usage_t, rated_t, group, group, rate_extra);
	fclose(fp);
	/* the child reads these in preference to the file */
	setenv("DATABASE_URL", dsn, 1);
	setenv("KAFKA_BROKERS", brokers, 1);
	unsetenv("TALLY_TRANSACTIONAL_ID");
}

static inline void delete_topics(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	const char *names[] = { usage_t, rated_t, dlq_t };
	rd_kafka_DeleteTopic_t *del[3];
	rd_kafka_queue_t *q;
	rd_kafka_event_t *ev;
	char errstr[256];
	rd_kafka_t *rk;
	int i;

	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		return;
	for (i = 0; i < 3; i++)
		del[i] = rd_kafka_DeleteTopic_new(names[i]);
	q = rd_kafka_queue_new(rk);
	rd_kafka_DeleteTopics(rk, del, 3, NULL, q);
	ev = rd_kafka_queue_poll(q, 15000); /* missing topics: fine */
	if (ev != NULL)
		rd_kafka_event_destroy(ev);
	rd_kafka_DeleteTopic_destroy_array(del, 3);
	rd_kafka_queue_destroy(q);
	rd_kafka_destroy(rk);
}

/* Runs in the parent, whatever the test did: drop what setup created. */
static inline void teardown(void)
{
	char sql[160];

	unlink(cfgpath);
	delete_topics();
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 db);
	admin_exec(tally_test_need_env("TALLY_TEST_PG_DSN"), sql);
	free(expected);
	expected = NULL;
}

static inline rd_kafka_t *producer(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "linger.ms", "20", errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

static const char *const models[][2] = {
	{ "openai", "gpt-4o" },         { "openai", "gpt-4o-mini" },
	{ "anthropic", "claude-sonnet-4-5" },
	{ "google", "gemini-2.5-pro" }, { "deepseek", "deepseek-chat" },
	{ "perplexity", "sonar" },      { "azure", "gpt-4o" },
	{ "mistral", "mistral-large-latest" },
};

static inline void make_event(tally_usage_event *ev, char *idbuf, int i)
{
	static const uint8_t tenants[4][16] = { { 1 }, { 2 }, { 3 }, { 4 } };
	int m = i % (int)(sizeof(models) / sizeof(models[0]));

	memset(ev, 0, sizeof(*ev));
	snprintf(idbuf, 32, "ev-%06d", i);
	ev->id.ptr = idbuf;
	ev->id.len = (uint32_t)strlen(idbuf);
	ev->source.ptr = "it";
	ev->source.len = 2;
	memcpy(ev->tenant_id, tenants[i % 4], 16);
	ev->time_ms = INT64_C(1767225600000) + (int64_t)i * 997;
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider.ptr = models[m][0];
	ev->provider.len = (uint32_t)strlen(models[m][0]);
	ev->model.ptr = models[m][1];
	ev->model.len = (uint32_t)strlen(models[m][1]);
	ev->input_tokens = 100 + ((int64_t)i * 7919) % 300000;
	ev->cache_read_tokens = ev->input_tokens / 3;
	ev->cache_write_tokens = (i % 5 == 0) ? ev->input_tokens / 10 : 0;
	ev->output_tokens = 10 + ((int64_t)i * 104729) % 8000;
}

static inline void produce_all_topics_only(void)
{
	rd_kafka_t *rk = producer();
	const char *topics[] = { usage_t, rated_t, dlq_t, NULL };
	tally_error err;

	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "%s", err.msg);
	rd_kafka_destroy(rk);
}

/* dies with the test process, even when a test fails */
static inline pid_t start_rater(void)
{
	char *argv[] = { "tally-rate", "--config", cfgpath, NULL };

	return prog_fork_exec(TALLY_BINARY_DIR "/tally-rate", argv, NULL, 0,
			      NULL, NULL);
}

#endif
