#ifndef TALLY_TESTS_BILLING_PIPELINE_SUPPORT_H
#define TALLY_TESTS_BILLING_PIPELINE_SUPPORT_H

/*
 * billing_pipeline_support.h - the billing programs as child processes for
 * the program-level invoice usage tests: a database (migrated, the genai
 * price book imported), topics of their own, one config file, the
 * scripted Stripe (stripe_scripted.h) as stripe.api_base, and tally-rate,
 * tally-aggregate, tally-relay and tally-stripe started from
 * TALLY_BIN_DIR (logs in /tmp/<db>.<program>.log). Webhooks are signed
 * with the test's secret and POSTed to the running relay.
 *
 * The children die with the test process (PR_SET_PDEATHSIG); the test
 * process only ever signals the pids it started.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>

#include "program_support.h" /* before the suite's global pg */
#include "invoice_usage_support.h"
#include "tally/kafka.h"
#include "tally/money.h"
#include "tally/webhook.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#define PL_SECRET "whsec_pipeline_test_secret"

enum { PL_RATE, PL_AGGREGATE, PL_RELAY, PL_STRIPE, PL_N };

static const char *const pl_names[PL_N] = { "tally-rate", "tally-aggregate",
					    "tally-relay", "tally-stripe" };

static struct {
	char dsn[600], cfgpath[256], log[PL_N][300];
	char usage[128], rated[128], totals[128], events[128], commands[128];
	char signals[128];
	pid_t pid[PL_N];
	int relay_port;
} pl;

/* The database (prefix: its name) and topics: an unchecked fixture. The
 * test itself starts the scripted Stripe (ss_start: threads do not follow
 * Check's fork), then writes the config. */
static inline void pl_setup(const char *prefix)
{
	const char *slash;
	char names[10][160];
	const char *topics[11];
	rd_kafka_t *rk = NULL;
	tally_error err;
	int i;

	tally_test_need_env("TALLY_TEST_BROKERS");
	pg = testdb_create(prefix);
	cfg = testdb_config();
	slash = strrchr(testdb_admin, '/');
	snprintf(pl.dsn, sizeof(pl.dsn), "%.*s/%s",
		 (int)(slash - testdb_admin), testdb_admin, testdb_name);
	snprintf(pl.usage, sizeof(pl.usage), "test.usage.%s", testdb_name);
	snprintf(pl.rated, sizeof(pl.rated), "test.rated.%s", testdb_name);
	snprintf(pl.totals, sizeof(pl.totals), "test.totals.%s", testdb_name);
	snprintf(pl.events, sizeof(pl.events), "test.stripe-events.%s",
		 testdb_name);
	snprintf(pl.commands, sizeof(pl.commands), "test.commands.%s",
		 testdb_name);
	snprintf(pl.signals, sizeof(pl.signals), "test.signals.%s",
		 testdb_name);
	snprintf(pl.cfgpath, sizeof(pl.cfgpath), "/tmp/%s.cfg", testdb_name);
	for (i = 0; i < PL_N; i++) {
		snprintf(pl.log[i], sizeof(pl.log[i]), "/tmp/%s.%s.log",
			 testdb_name, pl_names[i]);
		pl.pid[i] = 0;
	}
	{
		const char *base[5] = { pl.usage, pl.rated, pl.events,
					pl.commands, NULL };

		for (i = 0; base[i] != NULL; i++)
			snprintf(names[i], sizeof(names[i]), "%s.dlq", base[i]);
		for (i = 0; i < 4; i++)
			topics[i] = base[i];
		for (i = 0; i < 4; i++)
			topics[4 + i] = names[i];
		topics[8] = pl.totals;
		topics[9] = pl.signals;
		topics[10] = NULL;
	}
	tally_config_set(cfg, "kafka.brokers", getenv("TALLY_TEST_BROKERS"));
	ck_assert(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg),
					   &err) == 0);
	/* one partition each: the events of a test stay in their order */
	ck_assert_msg(tally_kafka_create_topics(rk, topics, 1, &err) == 0,
		      "create topics: %s", err.msg);
	rd_kafka_destroy(rk);
}

/* The config every program reads (stripe.api_base: the scripted one). */
static inline void pl_write_config(void)
{
	FILE *fp = fopen(pl.cfgpath, "w");

	ck_assert(fp != NULL);
	fprintf(fp,
		"log: { level = \"info\"; };\n"
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; session_timeout_ms = 6000; };\n"
		"topics: { usage = \"%s\"; rated = \"%s\"; totals = \"%s\"; "
		"stripe_events = \"%s\"; commands = \"%s\"; signals = \"%s\";"
		" };\n"
		"rate: { group = \"%s.rate\"; transactional_id = \"%s.rate\"; "
		"batch_size = 100; batch_ms = 50; "
		"metrics_listen = \"127.0.0.1:0\"; };\n"
		"aggregate: { group = \"%s.aggregate\"; batch_size = 100; "
		"batch_ms = 50; metrics_listen = \"127.0.0.1:0\"; };\n"
		"relay: { listen = \"127.0.0.1:0\"; };\n"
		"stripe: { group = \"%s.stripe\"; api_base = \"%s\"; "
		"timeout_ms = 10000; max_retries = 0; "
		"price_starter = \"price_starter_test\"; "
		"price_professional = \"price_professional_test\"; "
		"price_enterprise = \"price_enterprise_test\"; "
		"meter_interval_s = 86400; metrics_listen = \"127.0.0.1:0\"; "
		"};\n",
		pl.dsn, getenv("TALLY_TEST_BROKERS"), pl.usage, pl.rated,
		pl.totals, pl.events, pl.commands, pl.signals, testdb_name,
		testdb_name, testdb_name, testdb_name, ss_base);
	fclose(fp);
}

static inline const char *pl_bin_dir(void)
{
	const char *dir = getenv("TALLY_BIN_DIR");

	return dir && *dir ? dir : TALLY_BINARY_DIR;
}

/* Start program `which` with the config file; stderr to its log. */
static inline void pl_start(int which)
{
	char path[512], url[640], kb[300];
	char *argv[] = { (char *)pl_names[which], "--config", pl.cfgpath,
			 NULL };
	/* the environment wins over the file: ours, or the file's */
	const char *set[] = { url, kb, "STRIPE_SECRET_KEY=sk_test_pipeline",
			      "STRIPE_WEBHOOK_SECRET=" PL_SECRET,
			      "ASAN_OPTIONS=detect_leaks=0", NULL };
	const char *unset[] = { "STRIPE_API_BASE",
				"STRIPE_WEBHOOK_SECRET_PREVIOUS",
				"STRIPE_PRICE_ID_STARTER",
				"STRIPE_PRICE_ID_PROFESSIONAL",
				"STRIPE_PRICE_ID_ENTERPRISE",
				"TALLY_TRANSACTIONAL_ID", NULL };

	snprintf(path, sizeof(path), "%s/%s", pl_bin_dir(), pl_names[which]);
	snprintf(url, sizeof(url), "DATABASE_URL=%s", pl.dsn);
	snprintf(kb, sizeof(kb), "KAFKA_BROKERS=%s",
		 getenv("TALLY_TEST_BROKERS"));
	pl.pid[which] = prog_fork_exec(path, argv, pl.log[which], O_APPEND,
				       set, unset);
}

/* SIGKILL (a crash) or SIGTERM (a clean stop, exit 0 expected). */
static inline void pl_stop(int which, int sig)
{
	int status = 0;

	if (pl.pid[which] <= 0)
		return;
	kill(pl.pid[which], sig);
	waitpid(pl.pid[which], &status, 0);
	pl.pid[which] = 0;
	if (sig == SIGKILL)
		ck_assert_msg(WIFSIGNALED(status), "%s was running when killed"
			      " (status %d, log %s)", pl_names[which], status,
			      pl.log[which]);
	else
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "%s: exit 0 on signal %d (status %d, log %s)",
			      pl_names[which], sig, status, pl.log[which]);
}

static inline void pl_stop_all(void)
{
	int i;

	for (i = PL_N - 1; i >= 0; i--)
		pl_stop(i, SIGTERM);
}

/* Every started program still runs. */
static inline void pl_check_alive(void)
{
	int i, status;

	for (i = 0; i < PL_N; i++)
		if (pl.pid[i] > 0 &&
		    waitpid(pl.pid[i], &status, WNOHANG) == pl.pid[i]) {
			pl.pid[i] = 0;
			ck_abort_msg("%s died (status %d); see %s",
				     pl_names[i], status, pl.log[i]);
		}
}

/* The relay's port, from its relay.listening log line. */
static inline void pl_wait_relay(void)
{
	int i;

	for (i = 0; i < 300; i++) {
		char *text = prog_slurp(pl.log[PL_RELAY]);
		const char *l = strstr(text, "\"relay.listening\"");
		const char *p = l ? strstr(l, "\"port\":") : NULL;

		pl.relay_port = p ? atoi(p + 7) : 0;
		free(text);
		if (pl.relay_port > 0)
			return;
		pl_check_alive();
		tally_sleep_ms(100);
	}
	ck_abort_msg("tally-relay did not listen; see %s", pl.log[PL_RELAY]);
}

/* Wait until the first column of sql (one $1 = arg) reads want. */
static inline void pl_wait_for(const char *sql, const char *arg,
			       const char *want, int timeout_s)
{
	char got[512] = "";
	int i;

	for (i = 0; i < timeout_s * 5; i++) {
		pl_check_alive();
		testdb_get(pg, got, sizeof(got), sql, arg);
		if (strcmp(got, want) == 0)
			return;
		tally_sleep_ms(200);
	}
	ck_abort_msg("after %d s: %s [%s]: want '%s', got '%s'", timeout_s,
		     sql, arg ? arg : "", want, got);
}

/* `tally produce` of JSON lines onto the usage topic: all delivered. */
static inline void pl_produce(const char *jsonl)
{
	char path[300], cmd[1400], out[2048];
	FILE *fp;
	size_t n;
	int st;

	snprintf(path, sizeof(path), "/tmp/%s.%lld.jsonl", testdb_name,
		 (long long)tally_now_ms());
	fp = fopen(path, "w");
	ck_assert(fp != NULL);
	fputs(jsonl, fp);
	fclose(fp);
	snprintf(cmd, sizeof(cmd), "KAFKA_BROKERS='%s' %s/tally --config %s "
		 "produce --topic %s %s 2>&1", getenv("TALLY_TEST_BROKERS"),
		 pl_bin_dir(), pl.cfgpath, pl.usage, path);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	n = fread(out, 1, sizeof(out) - 1, fp);
	out[n] = '\0';
	st = pclose(fp);
	unlink(path);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "tally produce: %s", out);
}

static size_t pl_discard(char *p, size_t size, size_t n, void *ud)
{
	(void)p;
	(void)ud;
	return size * n;
}

/* POST a webhook body, signed now with the secret, to the relay. */
static inline long pl_post_webhook(const char *body)
{
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], h[160], url[96];
	struct curl_slist *hdrs = NULL;
	long code = 0;
	CURL *c = curl_easy_init();
	CURLcode cc;

	tally_webhook_sign(sig, sizeof(sig), body, strlen(body), PL_SECRET,
			   tally_now_ms() / 1000);
	snprintf(h, sizeof(h), "Stripe-Signature: %s", sig);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/webhooks/stripe",
		 pl.relay_port);
	hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
	hdrs = curl_slist_append(hdrs, h);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, pl_discard);
	cc = curl_easy_perform(c);
	ck_assert_msg(cc == CURLE_OK, "POST to the relay: %s",
		      curl_easy_strerror(cc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	return code;
}

/* An invoice event through the relay (200: on Kafka). */
static inline void pl_webhook(const char *evt, const char *type,
			      const char *inv, const char *customer,
			      const char *status, const char *currency,
			      long long ps, long long pe)
{
	char *body = usage_invoice_event(evt, type, inv, customer, status,
					 currency, ps, pe, 9900);
	long code = pl_post_webhook(body);

	free(body);
	ck_assert_msg(code == 200, "relay answered %ld to %s", code, evt);
}

/* Wait until tally-stripe has recorded the event. */
static inline void pl_wait_event(const char *evt, int timeout_s)
{
	pl_wait_for("SELECT count(*) FROM stripe_events WHERE event_id = $1",
		    evt, "1", timeout_s);
}

static inline void pl_teardown(void)
{
	unlink(pl.cfgpath);
	ss_stop();
	usage_db_teardown();
}

#endif /* TALLY_TESTS_BILLING_PIPELINE_SUPPORT_H */
