/*
 * aggregate_kafka_support.h - tally-aggregate end to end on the real broker
 * and database, for test_aggregate_kafka.c (kill -9, rebalance) and
 * test_aggregate_restart.c (PostgreSQL restarted mid-run): a unique
 * database, topics and group per test, instances of the built binary as
 * child processes (logs in /tmp/<db>.<slot>.log), the generator's events
 * produced with re-sent duplicates, and the exact expected totals.
 */
#ifndef TALLY_TEST_AGGREGATE_KAFKA_SUPPORT_H
#define TALLY_TEST_AGGREGATE_KAFKA_SUPPORT_H

#include "aggregate_support.h"
#include "program_support.h"
#include "check_main.h"
#include "tally/kafka.h"
#include "tally/money.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#define NPART 4
#define MAXPROC 4

static char db[64], dsn[512], topic[96], dlq[112], totals[112], group[96];
static char cfgpath[256];
static PGconn *chk;
static pid_t procs[MAXPROC];
static int restarts;

static inline void setup(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	tally_test_unique(db, sizeof(db), "aggk");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	chk = PQconnectdb(dsn);
	ck_assert(PQstatus(chk) == CONNECTION_OK);
	snprintf(topic, sizeof(topic), "test.rated.%s", db);
	snprintf(dlq, sizeof(dlq), "%s.dlq", topic);
	snprintf(totals, sizeof(totals), "test.totals.%s", db);
	snprintf(group, sizeof(group), "test.aggregate.%s", db);
	memset(procs, 0, sizeof(procs));
	restarts = 0;
}

static inline void teardown(void)
{
	int i;

	for (i = 0; i < MAXPROC; i++)
		if (procs[i] > 0) {
			kill(procs[i], SIGKILL);
			waitpid(procs[i], NULL, 0);
			procs[i] = 0;
		}
	PQfinish(chk);
	/* keep the database on failure? no: names are unique anyway */
	tally_test_db_drop(db);
}

static inline rd_kafka_t *producer(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	tally_error err;
	const char *topics[4] = { topic, dlq, totals, NULL };

	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers",
				       getenv("TALLY_TEST_BROKERS"), &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "linger.ms", "20", &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "enable.idempotence", "true",
				       &err) == 0);
	ck_assert(tally_kafka_producer_new(&rk, conf, &err) == 0);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, NPART, &err) == 0,
		      "%s", err.msg);
	return rk;
}

/* every message to partition (i + copy) % NPART instead of by tenant:
 * a tenant's rows, and the two copies of a re-sent event, then meet in
 * different partitions, hence in different lanes and instances */
static bool spread;

static inline void write_config_lanes(int batch_size, int lanes)
{
	FILE *fp;

	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"info\"; };\n" /* info: the metrics port */
		"database: { url = \"%s\"; retry_max_ms = 600000; };\n"
		"kafka: { brokers = \"%s\"; session_timeout_ms = 6000; };\n"
		"topics: { rated = \"%s\"; totals = \"%s\"; };\n"
		"aggregate: { group = \"%s\"; batch_size = %d; batch_ms = 100;"
		" lanes = %d; metrics_listen = \"127.0.0.1:0\"; };\n",
		dsn, getenv("TALLY_TEST_BROKERS"), topic, totals, group,
		batch_size, lanes);
	fclose(fp);
}

static inline void write_config(int batch_size)
{
	write_config_lanes(batch_size, 1);
}

static inline void start(int slot)
{
	char log[300], url[640];
	char *argv[] = { "tally-aggregate", "--config", cfgpath, NULL };
	/* the file's url must win over the services' DATABASE_URL */
	const char *set[] = { url, "ASAN_OPTIONS=detect_leaks=0", NULL };

	snprintf(log, sizeof(log), "/tmp/%s.%d.log", db, slot);
	snprintf(url, sizeof(url), "DATABASE_URL=%s", dsn);
	procs[slot] = prog_spawn(TALLY_BINARY_DIR "/tally-aggregate", argv, log,
				 set, NULL);
}

static inline void stop(int slot, int sig)
{
	int status = 0;

	if (procs[slot] <= 0)
		return;
	kill(procs[slot], sig);
	waitpid(procs[slot], &status, 0);
	if (sig == SIGTERM)
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "instance %d should stop cleanly on SIGTERM "
			      "(status %d)", slot, status);
	procs[slot] = 0;
}

/* Instances must not die on their own. */
static inline void check_alive(void)
{
	int i, status;

	for (i = 0; i < MAXPROC; i++)
		if (procs[i] > 0 && waitpid(procs[i], &status, WNOHANG) ==
		    procs[i])
			ck_abort_msg("instance %d died (%s %d); see "
				     "/tmp/%s.%d.log", i,
				     WIFSIGNALED(status) ? "signal" : "exit",
				     WIFSIGNALED(status) ? WTERMSIG(status) :
				     WEXITSTATUS(status), db, i);
}

/* Produce events [from, to) of the generator, re-sending every 97th. */
static inline void produce_range(rd_kafka_t *rk, int64_t from, int64_t to,
			  int64_t base_ms, int64_t *sent)
{
	agg_gen g;
	int64_t i;
	msgpack_sbuffer sb;

	for (i = from; i < to; i++) {
		int copies = (i % 97 == 0) ? 2 : 1, c;

		agg_gen_event(&g, 7, i, base_ms);
		agg_encode(&sb, &g.re);
		for (c = 0; c < copies; c++) {
			char key[37];
			rd_kafka_resp_err_t e;

			tally_uuid_fmt(key, g.re.ev.tenant_id);
			do {
				e = rd_kafka_producev(rk,
					RD_KAFKA_V_TOPIC(topic),
					RD_KAFKA_V_KEY(key, 36),
					RD_KAFKA_V_PARTITION(spread ?
						(int32_t)((i + c) % NPART) :
						RD_KAFKA_PARTITION_UA),
					RD_KAFKA_V_VALUE(sb.data, sb.size),
					RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					RD_KAFKA_V_END);
				if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
					rd_kafka_poll(rk, 50);
			} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
			ck_assert_int_eq(e, 0);
			(*sent)++;
		}
		msgpack_sbuffer_destroy(&sb);
	}
	rd_kafka_poll(rk, 0);
}

static inline int64_t committed(void)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT coalesce(sum(next_offset), 0) FROM"
		 " consumer_offsets WHERE consumer_group = '%s'", group);
	return agg_query_i64(chk, sql);
}

/* Wait until PostgreSQL has every message's position (or time out). */
static inline void wait_done(int64_t sent, int timeout_s)
{
	int64_t t0 = tally_mono_ns(), c = 0;

	while ((tally_mono_ns() - t0) / 1000000000 < timeout_s) {
		check_alive();
		if (PQstatus(chk) != CONNECTION_OK)
			PQreset(chk);
		if (PQstatus(chk) == CONNECTION_OK) {
			c = committed();
			if (c >= sent)
				return;
		}
		tally_sleep_ms(200);
	}
	ck_abort_msg("timed out: %lld of %lld messages committed",
		     (long long)c, (long long)sent);
}

static inline void expect_all(int64_t n, int64_t base_ms)
{
	agg_expect x = { 0 };
	agg_gen g;
	int64_t i;

	for (i = 0; i < n; i++) {
		agg_gen_event(&g, 7, i, base_ms);
		agg_expect_add(&x, &g.re);
	}
	agg_check_totals(chk, &x, n);
}

static inline int64_t nevents(void)
{
	const char *s = getenv("TALLY_AGG_TEST_EVENTS");
	int64_t n = 200000;

	if (s != NULL && tally_parse_i64(&n, s) != 0)
		n = 200000;
	return n;
}

#endif /* TALLY_TEST_AGGREGATE_KAFKA_SUPPORT_H */
