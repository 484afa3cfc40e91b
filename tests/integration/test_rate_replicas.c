/*
 * test_rate_replicas.c - two tally-rate instances with the same config (no
 * rate.transactional_id, no $TALLY_TRANSACTIONAL_ID) on one consumer
 * group: each gets its own transactional.id, so neither fences the other;
 * both keep partitions and stay up while every event is rated exactly once.
 * (With one id for both, the second's init_transactions fenced the first,
 * which then exited.)
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "program_support.h"
#include "test_support.h"
#include "tally/codec.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pricebook.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#define PARTS 4
#define N_EVENTS 20000

static const char *brokers;
static char db[64], dsn[512], usage_t[96], rated_t[96], dlq_t[112];
static char cfgpath[256], logs[2][300];
static pid_t procs[2];

static void setup(void)
{
	FILE *fp;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test_rate_replicas", TALLY_WARN);
	tally_test_unique(db, sizeof(db), "rrep");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	prog_import_prices(dsn);
	snprintf(usage_t, sizeof(usage_t), "test.usage.%s", db);
	snprintf(rated_t, sizeof(rated_t), "test.rated.%s", db);
	snprintf(dlq_t, sizeof(dlq_t), "%s.dlq", usage_t);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"info\"; };\n"
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; session_timeout_ms = 6000; };\n"
		"topics: { usage = \"%s\"; rated = \"%s\"; };\n"
		"rate: { group = \"%s.rate\"; batch_size = 500; batch_ms = 50;"
		" metrics_listen = \"127.0.0.1:0\"; };\n",
		dsn, brokers, usage_t, rated_t, db);
	fclose(fp);
	setenv("DATABASE_URL", dsn, 1);
	setenv("KAFKA_BROKERS", brokers, 1);
	unsetenv("TALLY_TRANSACTIONAL_ID");
	memset(procs, 0, sizeof(procs));
}

static void teardown(void)
{
	int i;

	for (i = 0; i < 2; i++)
		if (procs[i] > 0) {
			kill(procs[i], SIGKILL);
			waitpid(procs[i], NULL, 0);
		}
	unlink(cfgpath);
	tally_test_db_drop(db);
}

static void start(int i)
{
	char *argv[] = { "tally-rate", "--config", cfgpath, NULL };
	const char *set[] = { "ASAN_OPTIONS=detect_leaks=0", NULL };

	snprintf(logs[i], sizeof(logs[i]), "/tmp/%s.%d.log", db, i);
	procs[i] = prog_fork_exec(TALLY_BINARY_DIR "/tally-rate", argv, logs[i],
				  O_TRUNC, set, NULL);
}

static void both_alive(void)
{
	int i, status;

	for (i = 0; i < 2; i++)
		ck_assert_msg(waitpid(procs[i], &status, WNOHANG) == 0,
			      "instance %d exited (status %d); see %s", i,
			      status, logs[i]);
}

/* instance i holds partitions: assigned after its last revocation */
static bool holds_partitions(int i)
{
	char *text = prog_slurp(logs[i]);
	char *rev = NULL, *p = text;
	bool yes;

	while ((p = strstr(p, "\"kafka.revoked\"")) != NULL)
		rev = p++;
	yes = strstr(rev ? rev : text, "\"kafka.assigned\"") != NULL;
	free(text);
	return yes;
}

/* the transactional_id instance i logged at start ("" if none yet) */
static void txn_id(int i, char *out, size_t n)
{
	char *text = prog_slurp(logs[i]);
	const char *k = "\"transactional_id\":\"";
	char *p = strstr(text, k), *e;

	out[0] = '\0';
	if (p != NULL && (e = strchr(p + strlen(k), '"')) != NULL)
		snprintf(out, n, "%.*s", (int)(e - p - strlen(k)),
			 p + strlen(k));
	free(text);
}

static rd_kafka_t *producer(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	const char *topics[4] = { usage_t, rated_t, dlq_t, NULL };
	tally_error err;
	rd_kafka_t *rk = NULL;

	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers", brokers,
				       &err) == 0);
	ck_assert(tally_kafka_producer_new(&rk, conf, &err) == 0);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "%s", err.msg);
	return rk;
}

static void produce(rd_kafka_t *rk)
{
	msgpack_sbuffer sb;
	int i;

	msgpack_sbuffer_init(&sb);
	for (i = 0; i < N_EVENTS; i++) {
		tally_usage_event ev;
		char id[32];
		rd_kafka_resp_err_t e;

		memset(&ev, 0, sizeof(ev));
		snprintf(id, sizeof(id), "ev-%06d", i);
		ev.id.ptr = id;
		ev.id.len = (uint32_t)strlen(id);
		ev.source.ptr = "it";
		ev.source.len = 2;
		ev.tenant_id[0] = (uint8_t)(1 + i % 4);
		ev.time_ms = tally_now_ms() - 60000;
		ev.meter = TALLY_METER_AI_TOKENS;
		ev.provider.ptr = "openai";
		ev.provider.len = 6;
		ev.model.ptr = "gpt-4o";
		ev.model.len = 6;
		ev.input_tokens = 100 + i % 1000;
		ev.output_tokens = 10 + i % 300;
		sb.size = 0;
		tally_codec_encode_usage(&sb, &ev);
		do {
			e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(usage_t),
				RD_KAFKA_V_PARTITION(i % PARTS),
				RD_KAFKA_V_VALUE(sb.data, sb.size),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 50);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		ck_assert_int_eq(e, 0);
		if (i % 1000 == 999) /* spread over time: both keep working */
			tally_sleep_ms(100);
	}
	ck_assert(rd_kafka_flush(rk, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	msgpack_sbuffer_destroy(&sb);
}

/* committed rated events, each id counted (read_committed, from the start) */
static int64_t read_rated(int *counts, int wait_ms)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256];
	rd_kafka_t *rk;
	int64_t n = 0, idle = tally_mono_ns();
	int p;

	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", db, errstr, sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert(rk != NULL);
	rd_kafka_poll_set_consumer(rk);
	parts = rd_kafka_topic_partition_list_new(PARTS);
	for (p = 0; p < PARTS; p++)
		rd_kafka_topic_partition_list_add(parts, rated_t, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while ((tally_mono_ns() - idle) / 1000000 < wait_ms && n < N_EVENTS) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		tally_rated_event re;
		tally_codec_error cerr;
		int64_t idx;
		char digits[8];

		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
			ck_assert(tally_codec_decode_rated(&re, m->payload,
							   m->len, &cerr) == 0);
			ck_assert(re.ev.id.len == 9);
			memcpy(digits, re.ev.id.ptr + 3, 6);
			digits[6] = '\0';
			ck_assert(tally_parse_i64(&idx, digits) == 0);
			ck_assert(idx >= 0 && idx < N_EVENTS);
			counts[idx]++;
			n++;
			idle = tally_mono_ns();
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_assign(rk, NULL);
	rd_kafka_destroy(rk);
	return n;
}

START_TEST(test_rate_replicas_both_progress)
{
	int *counts = tally_xcalloc(N_EVENTS, sizeof(int));
	char id0[160], id1[160];
	int64_t t0 = tally_mono_ns(), n;
	rd_kafka_t *rk = producer(); /* and the topics */
	int i;

	start(0);
	start(1);
	while (!(holds_partitions(0) && holds_partitions(1))) {
		both_alive();
		ck_assert_msg((tally_mono_ns() - t0) / 1000000000 < 90,
			      "both instances should hold partitions");
		tally_sleep_ms(200);
	}
	txn_id(0, id0, sizeof(id0));
	txn_id(1, id1, sizeof(id1));
	ck_assert_msg(*id0 && *id1 && strcmp(id0, id1) != 0,
		      "distinct transactional ids: '%s' '%s'", id0, id1);
	produce(rk);
	rd_kafka_destroy(rk);
	both_alive();
	n = read_rated(counts, 60000);
	both_alive();
	ck_assert_msg(holds_partitions(0) && holds_partitions(1),
		      "both still hold partitions");
	for (i = 0; i < 2; i++)
		ck_assert_msg(prog_metric(logs[i], "tally_rate_batches_total") > 0,
			      "instance %d committed batches", i);
	ck_assert_int_eq(n, N_EVENTS);
	for (i = 0; i < N_EVENTS; i++)
		ck_assert_msg(counts[i] == 1, "event %d rated %d times", i,
			      counts[i]);
	free(counts);
	for (i = 0; i < 2; i++) {
		int status = 0;

		kill(procs[i], SIGTERM);
		waitpid(procs[i], &status, 0);
		procs[i] = 0;
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "instance %d stops cleanly", i);
		unlink(logs[i]);
	}
}
END_TEST

static Suite *rate_replicas_suite(void)
{
	Suite *s = suite_create("rate_replicas");
	TCase *tc = tcase_create("Core");

	tcase_set_timeout(tc, 300);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_rate_replicas_both_progress);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(rate_replicas_suite)
