/*
 * test_rate_abort.c - the failure path of tally-rate's transactions, on
 * librdkafka's mock cluster (rd_kafka_mock_push_request_errors): a Produce,
 * an AddOffsetsToTxn and an EndTxn that fail make the batch's transaction
 * abort (tally_rate_aborts_total), the consumer rewinds to the batch's
 * first offsets, and the batch is redone: the committed output holds every
 * input exactly once; a coordinator that refuses the transactional id
 * fails the start with init_transactions' error. PostgreSQL holds the
 * price book (integration label); Kafka is the in-process mock.
 *
 * The mock of librdkafka 2.0.2 writes no transaction markers (a
 * read_committed reader also sees aborted messages) and ignores
 * TxnOffsetCommit, so the committed output is told apart here by rated_at:
 * every event of a batch carries the time its rating began, a step rates
 * at most one batch and steps run 2 ms apart, so each batch has its own
 * rated_at; tally_rater_committed_stamps() names the committed ones. (On
 * the real broker, test_rate_consumer checks read_committed directly.)
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/codec.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/migrate.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"
#include "tally/rate_consumer.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Kafka protocol ApiKeys (librdkafka keeps its RD_KAFKAP_* enum private) */
#define APIKEY_PRODUCE 0
#define APIKEY_ADD_OFFSETS_TO_TXN 25
#define APIKEY_INIT_PRODUCER_ID 22
#define APIKEY_END_TXN 26

#define N 3000
#define PARTS 4
#define DATA TALLY_SOURCE_DIR "/data/genai-prices-0.1.8.json"

static char db[64], dsn[512], cfgpath[256];

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

static void dsn_for(char *out, size_t n, const char *base, const char *name)
{
	const char *slash = strrchr(base, '/');
	size_t pre = slash ? (size_t)(slash - base) + 1 : strlen(base);

	snprintf(out, n, "%.*s%s", (int)pre, base, name);
}

/* Unchecked (parent process): teardown runs whatever the test did. */
static void setup(void)
{
	const char *base = tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_price_import_stats st;
	tally_pg *pg = NULL;
	tally_error err;
	char sql[160], *text;
	FILE *fp;
	long sz;
	size_t len;

	tally_log_init("test_rate_abort", TALLY_WARN);
	snprintf(db, sizeof(db), "tally_rabort_it_%d_%lld", (int)getpid(),
		 (long long)(tally_now_ms() % 100000));
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
	admin_exec(base, sql);
	dsn_for(dsn, sizeof(dsn), base, db);
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(), NULL,
				    &err) == 0, "migrate: %s", err.msg);
	fp = fopen(DATA, "rb");
	ck_assert(fp != NULL);
	fseek(fp, 0, SEEK_END);
	sz = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	text = tally_xmalloc((size_t)sz + 1);
	len = fread(text, 1, (size_t)sz, fp);
	fclose(fp);
	ck_assert(tally_pricebook_import_genai(pg, text, len, "test",
					       tally_now_ms(), &st, &err) == 0);
	free(text);
	tally_pg_free(pg);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
}

static void teardown(void)
{
	char sql[160];

	unlink(cfgpath);
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 db);
	admin_exec(tally_test_need_env("TALLY_TEST_PG_DSN"), sql);
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *bootstraps,
			  const char *group)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, errstr,
			  sizeof(errstr));
	if (group != NULL) {
		rd_kafka_conf_set(conf, "group.id", group, errstr,
				  sizeof(errstr));
		rd_kafka_conf_set(conf, "isolation.level", "read_committed",
				  errstr, sizeof(errstr));
		rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
				  sizeof(errstr));
	}
	rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

static void produce_input(const char *bootstraps)
{
	rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, bootstraps, NULL);
	msgpack_sbuffer sb;
	int i;

	msgpack_sbuffer_init(&sb);
	for (i = 0; i < N; i++) {
		tally_usage_event ev;
		char id[32], key[8];

		memset(&ev, 0, sizeof(ev));
		snprintf(id, sizeof(id), "ab-%06d", i);
		ev.id.ptr = id;
		ev.id.len = (uint32_t)strlen(id);
		ev.source.ptr = "it";
		ev.source.len = 2;
		ev.tenant_id[0] = (uint8_t)(1 + i % 4);
		ev.time_ms = INT64_C(1767225600000) + i;
		ev.meter = TALLY_METER_AI_TOKENS;
		ev.provider.ptr = "openai";
		ev.provider.len = 6;
		ev.model.ptr = "gpt-4o-mini";
		ev.model.len = 11;
		ev.input_tokens = 1000 + i;
		ev.output_tokens = 10 + i % 100;
		sb.size = 0;
		tally_codec_encode_usage(&sb, &ev);
		snprintf(key, sizeof(key), "t%d", i % 16);
		ck_assert(rd_kafka_producev(
				  rk, RD_KAFKA_V_TOPIC("abort.usage"),
				  RD_KAFKA_V_KEY(key, strlen(key)),
				  RD_KAFKA_V_VALUE(sb.data, sb.size),
				  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				  RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	ck_assert(rd_kafka_flush(rk, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rk);
}

static bool committed_stamp(int64_t t, const int64_t *w, int nw)
{
	int i;

	for (i = 0; i < nw; i++)
		if (t == w[i])
			return true;
	return false;
}

/* one step; the rated_at of what it committed joins w */
static size_t step(tally_rater *r, int64_t *w, int *nw, tally_error *err)
{
	int64_t stamps[2];
	size_t got = 0, k, i;

	ck_assert_msg(tally_rater_step(r, &got, err) == 0,
		      "no fatal error: %s", err->msg);
	k = tally_rater_committed_stamps(r, stamps);
	ck_assert(k <= 2 && (k > 0) == (got > 0));
	for (i = 0; i < k; i++) {
		ck_assert(!committed_stamp(stamps[i], w, *nw));
		w[(*nw)++] = stamps[i];
	}
	tally_sleep_ms(2); /* no two steps rate in the same ms */
	return got;
}

/* committed rated events: counts[i] per input i; aborted ones in *aborted */
static int read_rated(const char *bootstraps, int *counts, const int64_t *w,
		      int nw, int *aborted)
{
	rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, bootstraps, "abort.reader");
	rd_kafka_topic_partition_list_t *parts =
		rd_kafka_topic_partition_list_new(PARTS);
	int64_t idle = tally_mono_ns();
	int p, n = 0;

	for (p = 0; p < PARTS; p++)
		rd_kafka_topic_partition_list_add(parts, "abort.rated", p)
			->offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while ((tally_mono_ns() - idle) / 1000000 < 3000) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
		tally_rated_event re;
		tally_codec_error cerr;
		int64_t idx;
		char idb[8];

		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
			ck_assert(tally_codec_decode_rated(&re, m->payload,
							   m->len, &cerr) == 0);
			ck_assert(re.ev.id.len == 9);
			memcpy(idb, re.ev.id.ptr + 3, 6);
			idb[6] = '\0';
			ck_assert(tally_parse_i64(&idx, idb) == 0);
			ck_assert(idx >= 0 && idx < N);
			if (getenv("ABORT_DEBUG") != NULL)
				fprintf(stderr, "dbg %lld p%d o%lld at %lld\n",
					(long long)idx, (int)m->partition,
					(long long)m->offset,
					(long long)re.rated_at_ms);
			if (committed_stamp(re.rated_at_ms, w, nw)) {
				counts[idx]++;
				n++;
			} else {
				(*aborted)++;
			}
			idle = tally_mono_ns();
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

/*
 * A mock cluster (owned by *mrk) with the topics and the N input events,
 * and the rater's config for it in *cfg.
 */
static rd_kafka_mock_cluster_t *mock_start(rd_kafka_t **mrk, const char **bs,
					   tally_config **cfg)
{
	rd_kafka_mock_cluster_t *mc;
	tally_error err;
	FILE *fp;

	/* a bare handle owning the mock cluster */
	*mrk = client(RD_KAFKA_PRODUCER, "", NULL);
	mc = rd_kafka_mock_cluster_new(*mrk, 1);
	ck_assert(mc != NULL);
	*bs = rd_kafka_mock_cluster_bootstraps(mc);
	ck_assert(rd_kafka_mock_topic_create(mc, "abort.usage", PARTS, 1) == 0);
	ck_assert(rd_kafka_mock_topic_create(mc, "abort.rated", PARTS, 1) == 0);
	ck_assert(rd_kafka_mock_topic_create(mc, "abort.usage.dlq", PARTS,
					     1) == 0);
	produce_input(*bs);

	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; };\n"
		"topics: { usage = \"abort.usage\"; rated = \"abort.rated\"; };\n"
		"rate: { group = \"abort.rate\"; transactional_id = "
		"\"abort.rate.0\"; batch_size = 500; batch_ms = 200; };\n"
		"log: { level = \"error\"; };\n",
		dsn, *bs);
	fclose(fp);
	setenv("DATABASE_URL", dsn, 1);
	setenv("KAFKA_BROKERS", *bs, 1);
	unsetenv("TALLY_TRANSACTIONAL_ID");
	ck_assert_msg(tally_config_load(cfg, cfgpath, &err) == 0, "%s",
		      err.msg);
	return mc;
}

START_TEST(test_rate_abort_rewinds_exactly_once)
{
	rd_kafka_t *mrk;
	rd_kafka_mock_cluster_t *mc;
	const char *bs;
	tally_config *cfg = NULL;
	tally_metrics *m = tally_metrics_new();
	tally_rater *r = NULL;
	tally_error err;
	int *counts = tally_xcalloc(N, sizeof(int));
	int i, steps, n, missing = 0, dup = 0, nw = 0, aborted = 0;
	int64_t w[512];
	size_t done = 0;
	uint64_t aborts, lag_n;

	mc = mock_start(&mrk, &bs, &cfg);
	ck_assert_msg(tally_rater_new(&r, cfg, m, &err) == 0, "%s", err.msg);

	/* one clean batch first, so that a rewind has a committed offset */
	for (steps = 0; steps < 200 && done == 0; steps++)
		done += step(r, w, &nw, &err);
	ck_assert_msg(done > 0, "a first batch commits");

	/* each failure hits one of the following transactions */
	rd_kafka_mock_push_request_errors(
		mc, APIKEY_PRODUCE, 1,
		RD_KAFKA_RESP_ERR_INVALID_RECORD);
	for (steps = 0; steps < 400 && done < N && nw < 510; steps++) {
		done += step(r, w, &nw, &err);
		if (steps == 3)
			rd_kafka_mock_push_request_errors(
				mc, APIKEY_ADD_OFFSETS_TO_TXN, 1,
				RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED);
		if (steps == 8)
			rd_kafka_mock_push_request_errors(
				mc, APIKEY_END_TXN, 1,
				RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID);
	}
	aborts = tally_counter_get(tally_metrics_counter(
		m, "tally_rate_aborts_total", NULL, NULL));
	fprintf(stderr, "rate_abort: %zu committed in %d steps, %llu aborts\n",
		done, steps, (unsigned long long)aborts);
	ck_assert_msg(aborts >= 2, "failed transactions were aborted: %llu",
		      (unsigned long long)aborts);
	ck_assert_msg(done == N, "every input committed once: %zu of %d",
		      done, N);
	/* event-to-commit: one observation per committed event, none of an
	 * aborted transaction */
	lag_n = tally_histogram_count(tally_metrics_histogram(
		m, "tally_event_to_commit_seconds", "stage=\"rate\"", NULL,
		NULL, 0));
	ck_assert_msg(lag_n == N, "event-to-commit observed %llu times, not %d",
		      (unsigned long long)lag_n, N);

	/* the batch after an abort is the same events again: no more input
	 * arrives, so a rewind that skipped the batch would leave done < N */
	if (getenv("ABORT_DEBUG") != NULL)
		for (i = 0; i < nw; i++)
			fprintf(stderr, "committed rated_at %lld\n",
				(long long)w[i]);
	n = read_rated(bs, counts, w, nw, &aborted);
	fprintf(stderr, "rate_abort: %d committed, %d aborted in the topic\n",
		n, aborted);
	ck_assert_msg(aborted > 0, "aborted batches did reach the broker");
	for (i = 0; i < N; i++) {
		if (counts[i] == 0)
			missing++;
		else if (counts[i] > 1)
			dup++;
	}
	ck_assert_msg(missing == 0 && dup == 0 && n == N,
		      "exactly once: %d read, %d missing, %d duplicated", n,
		      missing, dup);
	free(counts);
	tally_rater_free(r);
	tally_config_free(cfg);
	tally_metrics_free(m);
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(mrk);
}
END_TEST

/*
 * A coordinator that refuses the transactional id: tally_rater_new fails
 * with the init_transactions error (the program ends with it), and
 * nothing is left running.
 */
START_TEST(test_rate_init_refused_fails_start)
{
	rd_kafka_t *mrk;
	rd_kafka_mock_cluster_t *mc;
	const char *bs;
	tally_config *cfg = NULL;
	tally_metrics *m = tally_metrics_new();
	tally_rater *r = NULL;
	tally_error err;

	mc = mock_start(&mrk, &bs, &cfg);
	rd_kafka_mock_push_request_errors(
		mc, APIKEY_INIT_PRODUCER_ID, 1,
		RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
	tally_error_clear(&err);
	ck_assert(tally_rater_new(&r, cfg, m, &err) != 0);
	ck_assert(r == NULL);
	ck_assert_msg(strstr(err.msg, "init_transactions") != NULL &&
			      strstr(err.msg, "uthorization") != NULL,
		      "%s", err.msg);
	tally_config_free(cfg);
	tally_metrics_free(m);
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(mrk);
}
END_TEST

static Suite *tally_rate_abort_suite(void)
{
	Suite *s = suite_create("rate_abort");
	TCase *tc = tcase_create("MockCluster");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_rate_abort_rewinds_exactly_once);
	tcase_add_test(tc, test_rate_init_refused_fails_start);
	tcase_set_timeout(tc, 180);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_rate_abort_suite)
