/*
 * test_aggregate_bench.c - throughput of tally-aggregate (only with
 * TALLY_AGG_BENCH=1; otherwise skipped): N pre-produced rated events on 4
 * partitions, one instance, from the first committed batch to the last, at
 * two batch sizes; next to a plain COPY of the same rows into usage_ledger.
 * Reports events/s and the consumer's peak RSS (VmHWM). Build it in a
 * Release tree: the numbers of a sanitizer build mean little.
 * TALLY_AGG_BENCH_DUP_PCT (default 5, as ops/bench) percent of the
 * messages are re-sends of an earlier event (a retry: same source and id),
 * some in the same batch, most in an earlier one; events/s counts messages.
 *
 * TALLY_AGG_BENCH_BATCHES="5000,20000" (default) chooses the batch sizes.
 *
 *   TALLY_AGG_BENCH=1 TALLY_AGG_BENCH_EVENTS=300000 \
 *     build-rel/tests/integration_test_aggregate_bench
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_support.h"
#include "check_main.h"
#include "program_support.h"
#include "tally/aggregate.h"
#include "tally/dedupe_key.h"
#include "tally/kafka.h"
#include "tally/money.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

static char db[64], dsn[512], topic[96], group[96], cfgpath[256];
static PGconn *chk;
static int dup_pct = 5;

/* message i carries event msg_event(i): every (100 / dup_pct)-th message
 * re-sends an event from 1..4000 messages earlier */
static int64_t msg_event(int64_t i)
{
	int64_t every;

	if (dup_pct <= 0)
		return i;
	every = 100 / dup_pct;
	if (i % every == every - 1 && i >= 4000)
		return i - 1 - (i * 7919) % 3999;
	return i;
}

static int64_t committed(void)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT coalesce(sum(next_offset), 0) FROM"
		 " consumer_offsets WHERE consumer_group = '%s'", group);
	return agg_query_i64(chk, sql);
}

static long vm_hwm_kb(pid_t pid)
{
	return tally_test_proc_kb(pid, "VmHWM:");
}

/* CPU time (utime + stime) of a process or thread stat file, in ms */
static int64_t stat_cpu_ms(const char *path, char *comm, size_t commlen)
{
	char buf[1024], *p;
	unsigned long ut = 0, st = 0;
	FILE *fp = fopen(path, "r");
	size_t len;

	if (fp == NULL)
		return 0;
	len = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[len] = '\0';
	p = strrchr(buf, ')');
	if (p == NULL)
		return 0;
	if (comm != NULL) {
		char *o = strchr(buf, '(');
		snprintf(comm, commlen, "%.*s", o ? (int)(p - o - 1) : 0,
			 o ? o + 1 : "");
	}
	/* fields after ")": state ppid pgrp session tty tpgid flags minflt
	 * cminflt majflt cmajflt utime stime */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
		   &ut, &st) != 2)
		return 0;
	return (int64_t)(ut + st) * 1000 / sysconf(_SC_CLK_TCK);
}

/* CPU of the Kafka broker (the JVM whose command line names kafka) */
static int64_t broker_cpu_ms(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int64_t ms = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		char path[300], cmd[4096];
		FILE *fp;
		size_t len;

		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		fp = fopen(path, "r");
		if (fp == NULL)
			continue;
		len = fread(cmd, 1, sizeof(cmd) - 1, fp);
		fclose(fp);
		for (size_t i = 0; i < len; i++)
			if (cmd[i] == '\0')
				cmd[i] = ' ';
		cmd[len] = '\0';
		if (strstr(cmd, "java") != NULL && strstr(cmd, "kafka") != NULL) {
			snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
			ms += stat_cpu_ms(path, NULL, 0);
		}
	}
	closedir(d);
	return ms;
}

/* CPU of the PostgreSQL backends connected to the bench database */
static int64_t backends_cpu_ms(void)
{
	PGresult *r = PQexec(chk, "SELECT pid FROM pg_stat_activity WHERE"
			     " datname = current_database() AND"
			     " pid <> pg_backend_pid()");
	int64_t ms = 0;

	for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK &&
	     i < PQntuples(r); i++) {
		char path[64];

		snprintf(path, sizeof(path), "/proc/%s/stat",
			 PQgetvalue(r, i, 0));
		ms += stat_cpu_ms(path, NULL, 0);
	}
	PQclear(r);
	return ms;
}

/* the consumer's threads: main (poll), the PostgreSQL thread, librdkafka */
static void report_threads(pid_t pid)
{
	char path[300], comm[64], out[1024];
	DIR *d;
	struct dirent *e;
	size_t off = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (d == NULL)
		return;
	out[0] = '\0';
	while ((e = readdir(d)) != NULL) {
		int64_t ms;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/stat", (int)pid,
			 e->d_name);
		ms = stat_cpu_ms(path, comm, sizeof(comm));
		if (ms > 0 && off < sizeof(out) - 64)
			off += (size_t)snprintf(out + off, sizeof(out) - off,
						" %s=%lld", comm, (long long)ms);
	}
	closedir(d);
	fprintf(stderr, "BENCH   consumer threads CPU ms:%s\n", out);
}

static void produce(int64_t n, int64_t base)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	tally_error err;
	const char *topics[2] = { topic, NULL };
	agg_gen g;
	msgpack_sbuffer sb;
	int64_t i;

	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers",
				       getenv("TALLY_TEST_BROKERS"), &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "linger.ms", "50", &err) == 0);
	ck_assert(tally_kafka_producer_new(&rk, conf, &err) == 0);
	ck_assert(tally_kafka_create_topics(rk, topics, 4, &err) == 0);
	for (i = 0; i < n; i++) {
		char key[37];
		rd_kafka_resp_err_t e;

		agg_gen_event(&g, 9, msg_event(i), base);
		agg_encode(&sb, &g.re);
		tally_uuid_fmt(key, g.re.ev.tenant_id);
		do {
			e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
				RD_KAFKA_V_KEY(key, 36),
				RD_KAFKA_V_VALUE(sb.data, sb.size),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 50);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		msgpack_sbuffer_destroy(&sb);
	}
	rd_kafka_flush(rk, 60000);
	rd_kafka_destroy(rk);
}

static void run_consumer(int64_t n, int batch)
{
	FILE *fp;
	pid_t pid;
	int64_t t_first = 0, t_end, c = 0, t0 = tally_mono_ns(), first_c = 0;
	int64_t cpu0 = 0, cpu1, br0 = 0, br1, pg0 = 0, pg1;
	long hwm = -1, h;
	char path[64], url[600];
	char *argv[] = { "tally-aggregate", "--config", cfgpath, NULL };
	const char *set[] = { url, NULL };

	snprintf(url, sizeof(url), "DATABASE_URL=%s", dsn);
	snprintf(group, sizeof(group), "bench.%s.%d", db, batch);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	fp = fopen(cfgpath, "w");
	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"warn\"; };\n"
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; };\n"
		"topics: { rated = \"%s\"; totals = \"%s.totals\"; };\n"
		"aggregate: { group = \"%s\"; batch_size = %d; batch_ms = 200;"
		" metrics_listen = \"127.0.0.1:0\"; };\n",
		dsn, getenv("TALLY_TEST_BROKERS"), topic, topic, group, batch);
	fclose(fp);
	/* a fresh ledger for each run: TRUNCATE the usage tables */
	tally_test_exec(dsn, "TRUNCATE usage_ledger, usage_dedupe, usage_hourly,"
			     " tenant_period_usage");
	pid = prog_spawn(TALLY_BINARY_DIR "/tally-aggregate", argv, NULL, set,
			 NULL);
	while (c < n && (tally_mono_ns() - t0) / 1000000000 < 600) {
		c = committed();
		if (c > 0 && t_first == 0) {
			t_first = tally_mono_ns();
			first_c = c;
			snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
			cpu0 = stat_cpu_ms(path, NULL, 0);
			br0 = broker_cpu_ms();
			pg0 = backends_cpu_ms();
		}
		h = vm_hwm_kb(pid);
		if (h > hwm)
			hwm = h;
		tally_sleep_ms(20);
	}
	t_end = tally_mono_ns();
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	cpu1 = stat_cpu_ms(path, NULL, 0);
	br1 = broker_cpu_ms();
	pg1 = backends_cpu_ms();
	report_threads(pid);
	h = vm_hwm_kb(pid);
	if (h > hwm)
		hwm = h;
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	ck_assert_int_eq(c, n);
	fprintf(stderr, "BENCH aggregate batch_size=%d: %lld events in %lld ms "
		"= %lld events/s (after the first commit; incl. startup %lld/s);"
		" peak RSS %ld KiB\n", batch, (long long)n,
		(long long)((t_end - t_first) / 1000000),
		(long long)((n - first_c) * 1000000000 / (t_end - t_first + 1)),
		(long long)(n * 1000000000 / (t_end - t0)), hwm);
	fprintf(stderr, "BENCH   CPU over the same interval (%lld ms wall):"
		" tally-aggregate %lld ms, its PostgreSQL backend(s) %lld ms,"
		" Kafka broker %lld ms\n", (long long)((t_end - t_first) / 1000000),
		(long long)(cpu1 - cpu0), (long long)(pg1 - pg0),
		(long long)(br1 - br0));
}

static void copy_baseline(int64_t n, int64_t base)
{
	tally_pg *pg = NULL;
	tally_error err;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	agg_gen g;
	int64_t i, t0, t1, rows = 0;
	uint8_t dg[16];

	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	tally_test_exec(dsn, "TRUNCATE usage_ledger");
	for (i = 0; i < n; i++) {
		char line[512], tid[37], cost[48], hex[33], ts[32];
		if (msg_event(i) != i)
			continue; /* COPY the distinct rows */
		rows++;
		const tally_usage_event *ev;
		int k, m;
		static const char hx[] = "0123456789abcdef";

		agg_gen_event(&g, 9, i, base);
		ev = &g.re.ev;
		tally_uuid_fmt(tid, ev->tenant_id);
		(void)tally_dedupe_key(dg, ev->source.ptr, ev->source.len,
				       ev->id.ptr, ev->id.len,
				       TALLY_DEDUPE_TIMELED_ALWAYS);
		for (k = 0; k < 16; k++) {
			hex[2 * k] = hx[dg[k] >> 4];
			hex[2 * k + 1] = hx[dg[k] & 15];
		}
		hex[32] = 0;
		tally_money_fmt(cost, sizeof(cost), g.re.cost);
		tally_fmt_time_ms(ts, ev->time_ms);
		m = snprintf(line, sizeof(line),
			     "%s\t%lld\t%lld\t%lld\t%lld\t%lld\t%s\t%s\t%d\t%s\n",
			     ts, (long long)g.re.price_id,
			     (long long)(ev->meter == TALLY_METER_AI_TOKENS ? 1 :
					 ev->complexity + ev->count),
			     (long long)ev->input_tokens,
			     (long long)ev->output_tokens,
			     (long long)ev->cache_read_tokens, tid, hex,
			     (int)ev->meter, cost);
		if (len + (size_t)m + 1 > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			buf = tally_xrealloc(buf, cap);
		}
		memcpy(buf + len, line, (size_t)m);
		len += (size_t)m;
	}
	t0 = tally_mono_ns();
	ck_assert(tally_pg_exec(pg, NULL, "BEGIN", 0, NULL, &err) == 0);
	ck_assert_msg(tally_pg_copy(pg, "COPY usage_ledger (occurred_at,"
				    " price_id, quantity, input_tokens,"
				    " output_tokens, cache_read_tokens, tenant_id,"
				    " digest, meter_id, cost) FROM STDIN", buf,
				    len, &err) == 0, "%s", err.msg);
	ck_assert(tally_pg_exec(pg, NULL, "COMMIT", 0, NULL, &err) == 0);
	t1 = tally_mono_ns();
	fprintf(stderr, "BENCH plain COPY of the same %lld rows into"
		" usage_ledger (one transaction, no dedupe/aggregates):"
		" %lld rows/s\n", (long long)rows,
		(long long)(rows * 1000000000 / (t1 - t0)));
	free(buf);
	tally_pg_free(pg);
}

START_TEST(test_aggregate_bench)
{
	const char *s = getenv("TALLY_AGG_BENCH_EVENTS");
	int64_t n = 300000, base = tally_now_ms() - 2 * 3600000;

	if (s != NULL && tally_parse_i64(&n, s) != 0)
		n = 300000;
	s = getenv("TALLY_AGG_BENCH_DUP_PCT");
	if (s != NULL)
		dup_pct = atoi(s);
	if (dup_pct < 0 || dup_pct > 50)
		dup_pct = 5;
	produce(n, base);
	/* TALLY_AGG_BENCH_BATCHES="5000,20000" (the default) */
	s = getenv("TALLY_AGG_BENCH_BATCHES");
	if (s == NULL) {
		run_consumer(n, 5000);
		run_consumer(n, 20000);
	} else {
		char *dup = tally_xmalloc(strlen(s) + 1), *save = NULL, *b;

		memcpy(dup, s, strlen(s) + 1);
		for (b = strtok_r(dup, ",", &save); b != NULL;
		     b = strtok_r(NULL, ",", &save))
			if (atoi(b) > 0)
				run_consumer(n, atoi(b));
		free(dup);
	}
	copy_baseline(n, base);
}
END_TEST

static void setup(void)
{
	const char *b = getenv("TALLY_AGG_BENCH");

	if (b == NULL || strcmp(b, "1") != 0)
		exit(77);
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	tally_test_unique(db, sizeof(db), "aggb");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	chk = PQconnectdb(dsn);
	snprintf(topic, sizeof(topic), "bench.rated.%s", db);
}

static void teardown(void)
{
	PQfinish(chk);
	tally_test_db_drop(db);
}

static Suite *bench_suite(void)
{
	Suite *su = suite_create("aggregate_bench");
	TCase *tc = tcase_create("Bench");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 1800);
	tcase_add_test(tc, test_aggregate_bench);
	suite_add_tcase(su, tc);
	return su;
}

TALLY_CHECK_MAIN(bench_suite)
