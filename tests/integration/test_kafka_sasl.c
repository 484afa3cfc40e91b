/*
 * test_kafka_sasl.c - the pipeline through the broker's SASL_SSL listener
 * (ops/services up --sasl): usage events produced -> tally-rate ->
 * tally-aggregate -> exact totals in PostgreSQL, every client configured by
 * kafka.properties and $KAFKA_SASL_PASSWORD. A wrong password and an
 * untrusted CA: the program exits non-zero at start with an error naming
 * the broker and the cause, and no log line holds a password.
 *
 * Skipped (77) without TALLY_TEST_KAFKA_SASL_BROKERS and the rest of what
 * ops/services writes for --sasl.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_support.h"
#include "check_main.h"
#include "program_support.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pricebook.h"
#include "tally/rating.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#define NPART 4
#define N_EVENTS 20000

static const char *brokers, *password;
static char db[64], dsn[512], usage_t[96], rated_t[96], totals_t[96];
static char cfgpath[256];
static PGconn *chk;

/* the pipeline's config through the SASL listener, trusting ca */
static void write_config(const char *path, const char *ca)
{
	FILE *fp = fopen(path, "w");

	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"info\"; };\n"
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; session_timeout_ms = 6000;\n"
		"  properties = ( (\"security.protocol\", \"SASL_SSL\"),\n"
		"    (\"sasl.mechanism\", \"%s\"), (\"sasl.username\", \"%s\"),\n"
		"    (\"ssl.ca.location\", \"%s\") ); };\n"
		"topics: { usage = \"%s\"; rated = \"%s\"; totals = \"%s\"; };\n"
		"rate: { group = \"%s.rate\"; batch_size = 2000; batch_ms = 50;"
		" metrics_listen = \"127.0.0.1:0\"; };\n"
		"aggregate: { group = \"%s.agg\"; batch_size = 5000;"
		" batch_ms = 100; metrics_listen = \"127.0.0.1:0\"; };\n",
		dsn, brokers, getenv("TALLY_TEST_KAFKA_SASL_MECHANISM"),
		getenv("TALLY_TEST_KAFKA_SASL_USER"), ca, usage_t, rated_t,
		totals_t, db, db);
	fclose(fp);
}

static void setup(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	brokers = tally_test_need_env("TALLY_TEST_KAFKA_SASL_BROKERS");
	password = tally_test_need_env("TALLY_TEST_KAFKA_SASL_PASSWORD");
	tally_test_need_env("TALLY_TEST_KAFKA_SASL_USER");
	tally_test_need_env("TALLY_TEST_KAFKA_SASL_MECHANISM");
	tally_test_need_env("TALLY_TEST_KAFKA_CA");
	tally_log_init("test_kafka_sasl", TALLY_WARN);
	tally_test_unique(db, sizeof(db), "sasl");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	chk = PQconnectdb(dsn);
	ck_assert(PQstatus(chk) == CONNECTION_OK);
	prog_import_prices(dsn);
	snprintf(usage_t, sizeof(usage_t), "test.usage.%s", db);
	snprintf(rated_t, sizeof(rated_t), "test.rated.%s", db);
	snprintf(totals_t, sizeof(totals_t), "test.totals.%s", db);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", db);
	write_config(cfgpath, getenv("TALLY_TEST_KAFKA_CA"));
	/* the children take these; the services' plaintext address must
	 * not win over the file's */
	unsetenv("KAFKA_BROKERS");
	setenv("DATABASE_URL", dsn, 1);
	setenv("KAFKA_SASL_PASSWORD", password, 1);
}

static void teardown(void)
{
	PQfinish(chk);
	unlink(cfgpath);
	tally_test_db_drop(db);
}

/* Start program with cfg and $KAFKA_SASL_PASSWORD = pw; stderr to log. */
static pid_t start(const char *program, const char *cfg, const char *pw,
		   const char *log)
{
	char bin[512], pwv[300];
	char *argv[] = { (char *)program, "--config", (char *)cfg, NULL };
	const char *set[] = { pwv, "ASAN_OPTIONS=detect_leaks=0", NULL };

	snprintf(bin, sizeof(bin), "%s/%s", TALLY_BINARY_DIR, program);
	snprintf(pwv, sizeof(pwv), "KAFKA_SASL_PASSWORD=%s", pw);
	return prog_fork_exec(bin, argv, log, O_TRUNC, set, NULL);
}

/* No line of the log may hold a password (the real one or pw). */
static void no_secret_in(const char *log, const char *pw)
{
	char *text = prog_slurp(log);

	ck_assert_msg(strstr(text, password) == NULL,
		      "%s holds the SASL password", log);
	ck_assert_msg(strstr(text, pw) == NULL, "%s holds the password", log);
	free(text);
}

static void alive(pid_t pid, const char *log)
{
	int status;

	ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0,
		      "died (status %d); see %s", status, log);
}

static void stop(pid_t pid)
{
	int status = 0;

	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "clean stop on SIGTERM (status %d)", status);
}

/* Usage events through the listener; returns the totals they must give. */
static agg_expect produce(void)
{
	tally_config *cfg = NULL;
	rd_kafka_t *rk = NULL;
	tally_pricebook *pb = NULL;
	tally_rate_ctx *ctx = tally_rate_ctx_new();
	tally_pg *pg = NULL;
	tally_error err;
	agg_expect x = { 0 };
	msgpack_sbuffer sb;
	char dlq[112], rdlq[112];
	const char *topics[6] = { usage_t, rated_t, totals_t, dlq, rdlq, NULL };
	int64_t base = tally_now_ms() - 2 * 3600000;
	int64_t i;

	snprintf(dlq, sizeof(dlq), "%s.dlq", usage_t);
	snprintf(rdlq, sizeof(rdlq), "%s.dlq", rated_t);
	/* the test's own clients also take kafka.properties and the env */
	ck_assert_msg(tally_config_load(&cfg, cfgpath, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg),
					       &err) == 0, "%s", err.msg);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, NPART, &err) == 0,
		      "%s", err.msg);
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert(tally_pricebook_load_pg(&pb, pg, &err) == 0);
	tally_pg_free(pg);
	msgpack_sbuffer_init(&sb);
	for (i = 0; i < N_EVENTS; i++) {
		agg_gen g;
		tally_rated_event re;
		char key[37];
		rd_kafka_resp_err_t e;

		/* AI token events (kinds 0-5): priced by the imported book */
		agg_gen_event(&g, 11, (i / 6) * 10 + i % 6, base);
		ck_assert(tally_rate_event(&re, pb, &g.re.ev, ctx, &err) == 0);
		agg_expect_add(&x, &re);
		sb.size = 0;
		tally_codec_encode_usage(&sb, &g.re.ev);
		tally_uuid_fmt(key, g.re.ev.tenant_id);
		do {
			e = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(usage_t),
				RD_KAFKA_V_KEY(key, 36),
				RD_KAFKA_V_VALUE(sb.data, sb.size),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 50);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		ck_assert_int_eq(e, 0);
	}
	ck_assert(rd_kafka_flush(rk, 60000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rk);
	tally_pricebook_free(pb);
	tally_rate_ctx_free(ctx);
	tally_config_free(cfg);
	return x;
}

START_TEST(test_kafka_sasl_pipeline_exact)
{
	char rlog[300], alog[300];
	agg_expect x = produce();
	int64_t t0 = tally_mono_ns(), rows = 0;
	pid_t rate, agg;

	snprintf(rlog, sizeof(rlog), "/tmp/%s.rate.log", db);
	snprintf(alog, sizeof(alog), "/tmp/%s.agg.log", db);
	rate = start("tally-rate", cfgpath, password, rlog);
	agg = start("tally-aggregate", cfgpath, password, alog);
	while ((tally_mono_ns() - t0) / 1000000000 < 300) {
		alive(rate, rlog);
		alive(agg, alog);
		rows = agg_query_i64(chk, "SELECT count(*) FROM usage_ledger");
		if (rows >= N_EVENTS)
			break;
		tally_sleep_ms(250);
	}
	ck_assert_msg(rows == N_EVENTS, "%lld of %d events in the ledger",
		      (long long)rows, N_EVENTS);
	stop(rate);
	stop(agg);
	agg_check_totals(chk, &x, N_EVENTS);
	no_secret_in(rlog, password);
	no_secret_in(alog, password);
	unlink(rlog);
	unlink(alog);
}
END_TEST

/*
 * program must exit non-zero within 60 s; its log must name the broker
 * and hold cause; no password anywhere in it.
 */
static void expect_refused(const char *program, const char *cfg,
			   const char *pw, const char *cause)
{
	char log[300], *text;
	int64_t t0 = tally_mono_ns();
	int status = 0;
	pid_t pid, got = 0;

	snprintf(log, sizeof(log), "/tmp/%s.%s.refused.log", db, program);
	pid = start(program, cfg, pw, log);
	while (got == 0 && (tally_mono_ns() - t0) / 1000000000 < 60) {
		got = waitpid(pid, &status, WNOHANG);
		if (got == 0)
			tally_sleep_ms(100);
	}
	if (got == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		ck_abort_msg("%s still running 60 s after a refused login; see "
			     "%s", program, log);
	}
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) != 0,
		      "%s: non-zero exit expected (status %d)", program, status);
	text = prog_slurp(log);
	ck_assert_msg(strstr(text, brokers) != NULL,
		      "%s names the broker %s; see %s", program, brokers, log);
	ck_assert_msg(strstr(text, cause) != NULL, "%s says '%s'; see %s",
		      program, cause, log);
	ck_assert_msg(strstr(text, "\"level\":\"fatal\"") != NULL,
		      "%s logs a fatal line; see %s", program, log);
	free(text);
	no_secret_in(log, pw);
	unlink(log);
}

START_TEST(test_kafka_sasl_wrong_password_refused)
{
	char pw[64];

	snprintf(pw, sizeof(pw), "wrong-%d-pw", (int)getpid());
	expect_refused("tally-rate", cfgpath, pw, "Authentication failed");
	expect_refused("tally-aggregate", cfgpath, pw, "Authentication failed");
	expect_refused("tally-relay", cfgpath, pw, "Authentication failed");
}
END_TEST

START_TEST(test_kafka_sasl_untrusted_ca_refused)
{
	char other[300];

	/* the system's CAs: none of them signed the broker's certificate */
	snprintf(other, sizeof(other), "/tmp/%s.other-ca.cfg", db);
	write_config(other, "/etc/ssl/certs/ca-certificates.crt");
	expect_refused("tally-rate", other, password, "certificate verify failed");
	expect_refused("tally-aggregate", other, password,
		       "certificate verify failed");
	unlink(other);
}
END_TEST

static Suite *kafka_sasl_suite(void)
{
	Suite *s = suite_create("kafka_sasl");
	TCase *tc = tcase_create("Core");

	tcase_set_timeout(tc, 600);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_kafka_sasl_pipeline_exact);
	tcase_add_test(tc, test_kafka_sasl_wrong_password_refused);
	tcase_add_test(tc, test_kafka_sasl_untrusted_ca_refused);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(kafka_sasl_suite)
