/*
 * test_rate_consumer.c - tally-rate on the real broker: produce 100 000
 * usage events (plus invalid and unpriced ones), run the tally-rate binary,
 * kill -9 it several times mid-stream and restart it, then read the rated
 * topic read_committed: every valid input exactly once with the cost the
 * rating function gives (price book imported into a fresh database), every
 * bad one exactly once in the dead-letter topic.
 *
 * Reload: a price changed in PostgreSQL while tally-rate runs (NOTIFY; the
 * periodic version check is set to an hour so it cannot be what reloads)
 * prices the events produced after it with the new book, and no
 * transaction mixes books (all events of a batch share rated_at); a change
 * made without NOTIFY is picked up on SIGHUP, and not before.
 *
 * Fixtures are unchecked (they run in the parent process), so the database
 * and the topics are dropped even when a test fails or times out; the
 * tally-rate children die with the test process (PR_SET_PDEATHSIG).
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
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
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_EVENTS 100000
#define N_BAD 100      /* undecodable */
#define N_UNPRICED 100 /* unknown model: dead letter */
#define PARTS 4
#define DATA TALLY_SOURCE_DIR "/data/genai-prices-0.1.8.json"

static char db[64], dsn[512], usage_t[128], rated_t[128], dlq_t[160];
static char group[128], cfgpath[256];
static const char *rate_extra = ""; /* more keys of the rate section */
static int fixture_seq;
static const char *brokers;
static int64_t *expected;

static void admin_exec(const char *base, const char *sql)
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
static void dsn_for(char *out, size_t n, const char *base, const char *name)
{
	const char *slash = strrchr(base, '/');
	size_t pre = slash ? (size_t)(slash - base) + 1 : strlen(base);

	snprintf(out, n, "%.*s%s", (int)pre, base, name);
}

static int read_file(char **out, size_t *len, const char *path)
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

static void setup(void)
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

static void setup_reload(void)
{
	/* only NOTIFY or SIGHUP may reload within the test */
	rate_extra = "price_check_s = 3600; ";
	setup();
	rate_extra = "";
}

static void delete_topics(void)
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
static void teardown(void)
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

static rd_kafka_t *producer(void)
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

static void make_event(tally_usage_event *ev, char *idbuf, int i)
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

static void produce_all_topics_only(void)
{
	rd_kafka_t *rk = producer();
	const char *topics[] = { usage_t, rated_t, dlq_t, NULL };
	tally_error err;

	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "%s", err.msg);
	rd_kafka_destroy(rk);
}

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

static pid_t start_rater(void)
{
	pid_t pid = fork();

	ck_assert(pid >= 0);
	if (pid == 0) {
		/* dies with the test process, even when a test fails */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execl(TALLY_BINARY_DIR "/tally-rate", "tally-rate", "--config",
		      cfgpath, (char *)NULL);
		_exit(127);
	}
	return pid;
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


/* ---- reload -------------------------------------------------------- */

typedef struct rated_row {
	char tag;       /* first letter of the event id: the phase */
	int64_t price_id;
	int64_t rated_at;
	int32_t partition;
} rated_row;

/* gpt-4o events whose ids start with tag, produced and flushed */
static void produce_tagged(char tag, int first, int n)
{
	rd_kafka_t *rk = producer();
	msgpack_sbuffer sb;
	int i;

	msgpack_sbuffer_init(&sb);
	for (i = first; i < first + n; i++) {
		tally_usage_event ev;
		char id[32], key[8];
		rd_kafka_resp_err_t e;

		make_event(&ev, id, i * 8); /* i * 8: openai gpt-4o */
		snprintf(id, sizeof(id), "%c-%06d", tag, i);
		ev.id.len = (uint32_t)strlen(id);
		snprintf(key, sizeof(key), "t%d", i % 16);
		sb.size = 0;
		tally_codec_encode_usage(&sb, &ev);
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
}

/* All committed rated events so far (waits until want are there). */
static size_t collect(rated_row **out, size_t want)
{
	rd_kafka_conf_t *conf;
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256], gid[160];
	rated_row *rows = NULL;
	size_t n = 0, cap = 0;
	rd_kafka_t *rk;
	int64_t idle_since, deadline = tally_mono_ns() + INT64_C(120000000000);
	int p;

	do {
		conf = rd_kafka_conf_new();
		snprintf(gid, sizeof(gid), "%s.reader.%lld", group,
			 (long long)tally_mono_ns());
		rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
				  sizeof(errstr));
		rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof(errstr));
		rd_kafka_conf_set(conf, "isolation.level", "read_committed",
				  errstr, sizeof(errstr));
		rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
				  sizeof(errstr));
		rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr,
				  sizeof(errstr));
		ck_assert(rk != NULL);
		rd_kafka_poll_set_consumer(rk);
		parts = rd_kafka_topic_partition_list_new(PARTS);
		for (p = 0; p < PARTS; p++)
			rd_kafka_topic_partition_list_add(parts, rated_t, p)
				->offset = RD_KAFKA_OFFSET_BEGINNING;
		rd_kafka_assign(rk, parts);
		rd_kafka_topic_partition_list_destroy(parts);
		n = 0;
		idle_since = tally_mono_ns();
		while ((tally_mono_ns() - idle_since) / 1000000 < 2000) {
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
			tally_rated_event re;
			tally_codec_error cerr;

			if (m == NULL)
				continue;
			if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
				ck_assert_msg(tally_codec_decode_rated(
						      &re, m->payload, m->len,
						      &cerr) == 0,
					      "rated event decodes");
				if (n == cap) {
					cap = cap ? cap * 2 : 4096;
					rows = tally_xrealloc(rows,
							      cap * sizeof(*rows));
				}
				rows[n].tag = re.ev.id.ptr[0];
				rows[n].price_id = re.price_id;
				rows[n].rated_at = re.rated_at_ms;
				rows[n].partition = m->partition;
				n++;
				idle_since = tally_mono_ns();
			}
			rd_kafka_message_destroy(m);
		}
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	} while (n < want && tally_mono_ns() < deadline);
	ck_assert_msg(n >= want, "%zu rated events, waited for %zu", n, want);
	*out = rows;
	return n;
}

/* ids of the open gpt-4o rows, into ids[] (sorted); returns their number */
static int open_ids(int64_t *ids, int max)
{
	PGconn *c = PQconnectdb(dsn);
	PGresult *res;
	int i, n;

	ck_assert(PQstatus(c) == CONNECTION_OK);
	res = PQexec(c, "SELECT id FROM model_prices WHERE provider = 'openai'"
			" AND model = 'gpt-4o' AND effective_to = 'infinity' "
			"ORDER BY id");
	ck_assert(PQresultStatus(res) == PGRES_TUPLES_OK);
	n = PQntuples(res);
	ck_assert(n > 0 && n <= max);
	for (i = 0; i < n; i++)
		ck_assert(tally_parse_i64(&ids[i], PQgetvalue(res, i, 0)) == 0);
	PQclear(res);
	PQfinish(c);
	return n;
}

/*
 * A new version of gpt-4o's prices (input and output doubled), valid for
 * every event time from `cut` on (the test's events are in 2026), the old
 * rows closed at `cut`: the new rows get new price ids.
 */
static void change_price(const char *cut, bool notify)
{
	PGconn *c = PQconnectdb(dsn);
	char sql[1200];
	PGresult *res;

	ck_assert(PQstatus(c) == CONNECTION_OK);
	snprintf(sql, sizeof(sql),
		 "BEGIN;"
		 "%s"
		 "CREATE TEMP TABLE np ON COMMIT DROP AS SELECT * FROM "
		 "model_prices WHERE provider = 'openai' AND model = 'gpt-4o'"
		 " AND effective_to = 'infinity';"
		 "UPDATE model_prices SET effective_to = '%s' WHERE id IN "
		 "(SELECT id FROM np);"
		 "UPDATE np SET id = nextval('price_id_seq'), "
		 "effective_from = '%s', input_mtok = input_mtok * 2, "
		 "output_mtok = output_mtok * 2;"
		 "INSERT INTO model_prices SELECT * FROM np;"
		 "%s"
		 "COMMIT;",
		 notify ? "" : "ALTER TABLE model_prices DISABLE TRIGGER "
			       "model_prices_bump;",
		 cut, cut,
		 notify ? "" : "ALTER TABLE model_prices ENABLE TRIGGER "
			       "model_prices_bump;");
	res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

static bool in_ids(int64_t id, const int64_t *ids, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

/* 0: first book, 1: second, 2: third; fails on any other price_id */
static int book_of(const rated_row *row, const int64_t ids[3][8],
		   const int nids[3])
{
	int b;

	for (b = 0; b < 3; b++)
		if (in_ids(row->price_id, ids[b], nids[b]))
			return b;
	ck_abort_msg("price_id %lld is in none of the books",
		     (long long)row->price_id);
	return -1;
}

START_TEST(test_rate_consumer_reload_notify_and_sighup)
{
	int64_t ids[3][8];
	int nids[3], status, per_book[3] = { 0, 0, 0 };
	rated_row *rows = NULL;
	size_t n, i, j, groups = 0;
	pid_t pid;

	produce_all_topics_only();
	nids[0] = open_ids(ids[0], 8);
	pid = start_rater();

	/* a: price change once the rater has committed some of a (not
	 * after a fixed sleep: its group join can take longer than that on
	 * a loaded machine), committed with NOTIFY */
	produce_tagged('a', 0, 20000);
	{
		rated_row *first = NULL;

		(void)collect(&first, 1);
		free(first);
	}
	change_price("2000-01-01", true);
	nids[1] = open_ids(ids[1], 8);
	ck_assert(ids[1][0] > ids[0][nids[0] - 1]);
	/* b: produced after the change (and after one batch's time) */
	tally_sleep_ms(1500);
	produce_tagged('b', 0, 2000);
	n = collect(&rows, 22000);
	ck_assert_msg(n == 22000, "exactly once: %zu", n);
	for (i = 0; i < n; i++) {
		int b = book_of(&rows[i], ids, nids);

		ck_assert_msg(b <= 1, "only two books so far");
		if (rows[i].tag == 'b')
			ck_assert_msg(b == 1, "an event produced after the "
					      "NOTIFY is priced with the new "
					      "book (price_id %lld)",
				      (long long)rows[i].price_id);
		per_book[b]++;
	}
	ck_assert_msg(per_book[0] > 0 && per_book[1] >= 2000,
		      "both books used: %d old, %d new", per_book[0],
		      per_book[1]);
	/* one transaction = one rated_at: never two books in it */
	for (i = 0; i < n; i++) {
		int b = book_of(&rows[i], ids, nids);
		bool first = true;

		for (j = 0; j < i; j++)
			if (rows[j].rated_at == rows[i].rated_at) {
				first = false;
				break;
			}
		if (!first)
			continue;
		groups++;
		for (j = i + 1; j < n; j++)
			if (rows[j].rated_at == rows[i].rated_at)
				ck_assert_msg(book_of(&rows[j], ids, nids) ==
						      b,
					      "batch rated at %lld priced "
					      "with two books",
					      (long long)rows[i].rated_at);
	}
	ck_assert(groups >= 2);
	free(rows);

	/* c: a change without NOTIFY (trigger off) is not picked up ... */
	change_price("2001-01-01", false);
	nids[2] = open_ids(ids[2], 8);
	tally_sleep_ms(1500);
	produce_tagged('c', 0, 1000);
	n = collect(&rows, 23000);
	for (i = 0; i < n; i++)
		if (rows[i].tag == 'c')
			ck_assert_msg(book_of(&rows[i], ids, nids) == 1,
				      "no reload without NOTIFY or SIGHUP");
	free(rows);
	/* d: ... until SIGHUP */
	ck_assert(kill(pid, SIGHUP) == 0);
	tally_sleep_ms(1500);
	produce_tagged('d', 0, 1000);
	n = collect(&rows, 24000);
	ck_assert_msg(n == 24000, "exactly once: %zu", n);
	for (i = 0; i < n; i++)
		if (rows[i].tag == 'd')
			ck_assert_msg(book_of(&rows[i], ids, nids) == 2,
				      "SIGHUP reloads the book");
	free(rows);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "clean exit on SIGTERM");
}
END_TEST

static Suite *tally_rate_consumer_suite(void)
{
	Suite *s = suite_create("rate_consumer");
	TCase *tc = tcase_create("Kafka");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_rate_consumer_exactly_once_kill9);
	tcase_set_timeout(tc, 800);
	suite_add_tcase(s, tc);

	tc = tcase_create("Reload");
	tcase_add_unchecked_fixture(tc, setup_reload, teardown);
	tcase_add_test(tc, test_rate_consumer_reload_notify_and_sighup);
	tcase_set_timeout(tc, 400);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_rate_consumer_suite)
