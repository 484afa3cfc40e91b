/*
 * stripe_consumer_support.h - the tally-stripe binary as a child process
 * for end-to-end tests on the real broker, PostgreSQL and the recording
 * proxy (stripe_proxy_support.h): its config, start, SIGTERM and kill -9;
 * producing commands and signed webhook events; reading the signal and
 * DLQ topics; the checks on the database and the log.
 */
#ifndef TALLY_TEST_STRIPE_CONSUMER_SUPPORT_H
#define TALLY_TEST_STRIPE_CONSUMER_SUPPORT_H

#include "program_support.h"
#include "stripe_proxy_support.h"
#include "stripe_testdb.h"
#include "tally/command.h"
#include "tally/kafka.h"
#include "tally/producer.h"
#include "tally/webhook.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define PARTS 2
#define SECRET "whsec_fault_test_secret"

static tally_pg *pg;
static tally_config *cfg;
static char dsn[600], cfgpath[256], logpath[256], group[128];
static char t_cmd[128], t_evt[128], t_sig[128], t_cdlq[160], t_edlq[160];
static const char *brokers;

static inline void write_config(void)
{
	FILE *fp = fopen(cfgpath, "w");

	ck_assert(fp != NULL);
	fprintf(fp,
		"database: { url = \"%s\"; };\n"
		"kafka: { brokers = \"%s\"; session_timeout_ms = 6000; };\n"
		"topics: { commands = \"%s\"; stripe_events = \"%s\"; "
		"signals = \"%s\"; };\n"
		"stripe: { group = \"%s\"; api_base = \"http://127.0.0.1:%d\";"
		" timeout_ms = 10000; max_retries = 2; "
		"price_starter = \"price_starter_test\"; "
		"price_professional = \"price_professional_test\"; "
		"price_enterprise = \"price_enterprise_test\"; "
		"meter_interval_s = 86400; metrics_listen = \"127.0.0.1:0\"; "
		"};\n"
		"log: { level = \"info\"; };\n",
		dsn, brokers, t_cmd, t_evt, t_sig, group, proxy_port);
	fclose(fp);
}

static inline const char *binary(void)
{
	static char path[512];
	const char *dir = getenv("TALLY_BIN_DIR");

	snprintf(path, sizeof(path), "%s/tally-stripe",
		 dir && *dir ? dir : TALLY_BINARY_DIR);
	return path;
}

static inline pid_t start_consumer(void)
{
	char url[640], kb[300], base[64];
	char *argv[] = { "tally-stripe", "--config", cfgpath, NULL };
	/* the environment wins over the file: point it at ours */
	const char *set[] = { url, kb, base, "STRIPE_SECRET_KEY=sk_test_123",
			      "STRIPE_WEBHOOK_SECRET=" SECRET, NULL };
	const char *unset[] = { "STRIPE_WEBHOOK_SECRET_PREVIOUS",
				"STRIPE_PRICE_ID_STARTER",
				"STRIPE_PRICE_ID_PROFESSIONAL",
				"STRIPE_PRICE_ID_ENTERPRISE", NULL };

	snprintf(url, sizeof(url), "DATABASE_URL=%s", dsn);
	snprintf(kb, sizeof(kb), "KAFKA_BROKERS=%s", brokers);
	snprintf(base, sizeof(base), "STRIPE_API_BASE=http://127.0.0.1:%d",
		 proxy_port);
	return prog_spawn(binary(), argv, logpath, set, unset);
}

/* SIGTERM: exit 0 within 10 s (the loop polls every 100 ms). */
static inline void stop_consumer(pid_t pid)
{
	int status = 0, i;
	pid_t w = 0;

	kill(pid, SIGTERM);
	for (i = 0; i < 100 && w == 0; i++) {
		tally_sleep_ms(100);
		w = waitpid(pid, &status, WNOHANG);
	}
	if (w == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		ck_abort_msg("tally-stripe did not exit within 10 s of "
			     "SIGTERM (log %s)", logpath);
	}
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "clean exit 0 on SIGTERM (status %d, log %s)", status,
		      logpath);
	fprintf(stderr, "stripe_fault: SIGTERM -> exit 0 in %d ms\n", i * 100);
}

static inline void kill9(pid_t pid)
{
	int status = 0;

	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFSIGNALED(status), "tally-stripe was running when "
		      "killed (status %d, log %s)", status, logpath);
}

/* ---- producing ------------------------------------------------------------ */

static inline tally_producer *cmd_producer(void)
{
	tally_producer_opts o = { 0 };
	tally_producer *p = NULL;
	tally_error err;

	o.topic = t_cmd;
	o.ce_source = "test/stripe-fault";
	ck_assert_msg(tally_producer_new(&p, cfg, &o, &err) == 0, "%s",
		      err.msg);
	return p;
}

static inline void send_cmd(tally_producer *p, const char *id,
			    tally_command_type type, const char *tenant,
			    const char *plan)
{
	tally_command c;
	tally_error err;

	memset(&c, 0, sizeof(c));
	c.id.ptr = id;
	c.id.len = (uint32_t)strlen(id);
	c.type = type;
	ck_assert(tally_uuid_parse(c.tenant_id, tenant,
				   (uint32_t)strlen(tenant)) == 0);
	c.time_ms = tally_now_ms();
	c.trial_days = -1;
	if (plan) {
		c.plan.ptr = plan;
		c.plan.len = (uint32_t)strlen(plan);
	}
	if (type == TALLY_CMD_CANCEL_SUBSCRIPTION) {
		c.has_at_period_end = true;
		c.at_period_end = true;
	}
	ck_assert_msg(tally_producer_send_command(p, &c, NULL, &err) == 0,
		      "send %s: %s", id, err.msg);
}

static inline rd_kafka_t *raw_producer(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

static inline void send_raw(rd_kafka_t *rk, const char *topic, const char *key,
			    const char *val, size_t len, const char *sig)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(1);

	if (sig)
		rd_kafka_header_add(h, "stripe-signature", -1, sig, -1);
	ck_assert(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
				    RD_KAFKA_V_KEY(key, strlen(key)),
				    RD_KAFKA_V_VALUE((void *)val, len),
				    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				    RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END) ==
		  RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* A signed event as the relay would produce it. bad: wrong secret. */
static inline void send_event(rd_kafka_t *rk, const char *key, const char *body,
			      int bad)
{
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];

	tally_webhook_sign(sig, sizeof(sig), body, strlen(body),
			   bad ? "whsec_wrong" : SECRET, tally_now_ms() / 1000);
	send_raw(rk, t_evt, key, body, strlen(body), sig);
}

static inline void invoice_event(char *out, size_t n, const char *evt,
				 const char *type, const char *status,
				 long created)
{
	snprintf(out, n,
		 "{\"id\":\"%s\",\"object\":\"event\",\"type\":\"%s\","
		 "\"created\":%ld,\"livemode\":false,\"data\":{\"object\":{"
		 "\"id\":\"in_fault_1\",\"object\":\"invoice\","
		 "\"customer\":\"cus_fault_c\",\"status\":\"%s\","
		 "\"currency\":\"usd\",\"amount_due\":4900,"
		 "\"amount_paid\":%d,\"amount_remaining\":%d,"
		 "\"attempt_count\":1,\"created\":%ld,"
		 "\"billing_reason\":\"subscription_cycle\","
		 "\"lines\":{\"object\":\"list\",\"has_more\":false,"
		 "\"data\":[{\"id\":\"il_fault_1\",\"object\":\"line_item\","
		 "\"amount\":4900,\"currency\":\"usd\",\"quantity\":1,"
		 "\"description\":\"Starter\",\"period\":{\"start\":%ld,"
		 "\"end\":%ld}}]}}}}",
		 evt, type, created, status,
		 strcmp(status, "paid") == 0 ? 4900 : 0,
		 strcmp(status, "paid") == 0 ? 0 : 4900, created - 3600,
		 created - 3600, created + 86400 * 30);
}

static inline void trial_event(char *out, size_t n, const char *evt,
			       const char *customer, const char *sub,
			       long created)
{
	snprintf(out, n,
		 "{\"id\":\"%s\",\"object\":\"event\","
		 "\"type\":\"customer.subscription.trial_will_end\","
		 "\"created\":%ld,\"livemode\":false,\"data\":{\"object\":{"
		 "\"id\":\"%s\",\"object\":\"subscription\","
		 "\"customer\":\"%s\",\"status\":\"trialing\","
		 "\"trial_end\":%ld,\"cancel_at_period_end\":false,"
		 "\"created\":%ld,\"metadata\":{},"
		 "\"items\":{\"object\":\"list\",\"data\":[]}}}}",
		 evt, created, sub, customer, created + 3 * 86400,
		 created - 86400);
}

/* ---- reading topics ------------------------------------------------------- */

typedef struct seen {
	char id[40];
	int copies;
} seen;

/*
 * Read a whole topic from the beginning. For signals, count copies per
 * signal-id header (ids[]); for DLQs, check x-tally-reason and return
 * the reasons joined with ','.
 */
static inline int read_topic(const char *topic, seen *ids, int *nids,
			     int maxids, char *reasons, size_t rlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256];
	rd_kafka_t *rk;
	int n = 0, idle = 0, p;

	if (nids)
		*nids = 0;
	if (reasons)
		reasons[0] = '\0';
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", "test.reader", errstr,
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
	while (idle < 12) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 250);
		rd_kafka_headers_t *h = NULL;
		const void *v = NULL;
		size_t len = 0;

		if (m == NULL || m->err) {
			idle++;
			if (m)
				rd_kafka_message_destroy(m);
			continue;
		}
		idle = 0;
		n++;
		if (rd_kafka_message_headers(m, &h) != 0)
			h = NULL;
		if (ids && h && rd_kafka_header_get_last(h, "signal-id", &v,
							 &len) == 0) {
			int i;

			for (i = 0; i < *nids; i++)
				if (strlen(ids[i].id) == len &&
				    memcmp(ids[i].id, v, len) == 0)
					break;
			if (i == *nids && *nids < maxids) {
				snprintf(ids[i].id, sizeof(ids[i].id), "%.*s",
					 (int)len, (const char *)v);
				ids[i].copies = 0;
				(*nids)++;
			}
			if (i < maxids)
				ids[i].copies++;
		}
		if (reasons) {
			ck_assert_msg(h && rd_kafka_header_get_last(
				      h, "x-tally-reason", &v, &len) == 0,
				      "dead letter with x-tally-reason");
			snprintf(reasons + strlen(reasons),
				 rlen - strlen(reasons), "%s%.*s",
				 reasons[0] ? "," : "", (int)len,
				 (const char *)v);
		}
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

/* ---- waiting and checking ------------------------------------------------- */

static inline int count(const char *sql)
{
	char v[64];

	testdb_get(pg, v, sizeof(v), sql, NULL);
	return atoi(v);
}

static inline void check(const char *sql, const char *arg, const char *want)
{
	char got[512];

	testdb_get(pg, got, sizeof(got), sql, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]: want '%s', got '%s'",
		      sql, arg ? arg : "", want, got);
}

/* Wait until the commands are final, the events processed and the outbox
 * published (timeout_s), or fail. */
static inline void wait_done(int commands, int events, int timeout_s)
{
	int i, c = 0, e = 0, u = -1;

	for (i = 0; i < timeout_s * 5; i++) {
		c = count("SELECT count(*) FROM billing_commands WHERE "
			  "status <> 'pending'");
		e = count("SELECT count(*) FROM stripe_events");
		u = count("SELECT count(*) FROM billing_signals_outbox WHERE "
			  "published_at IS NULL");
		if (c >= commands && e >= events && u == 0)
			return;
		tally_sleep_ms(200);
	}
	ck_abort_msg("not done after %d s: %d/%d commands final, %d/%d "
		     "events, %d signals unpublished (log %s)", timeout_s, c,
		     commands, e, events, u, logpath);
}

/* Every outbox row on the topic; returns total duplicates. */
static inline int check_signals(int *total_msgs)
{
	static seen ids[2048];
	PGresult *res = NULL;
	tally_error err;
	int nids = 0, i, j, dups = 0, rows;

	*total_msgs = read_topic(t_sig, ids, &nids, 2048, NULL, 0);
	ck_assert(tally_pg_exec(pg, &res, "SELECT signal_id::text FROM "
				"billing_signals_outbox WHERE published_at IS "
				"NOT NULL", 0, NULL, &err) == 0);
	rows = PQntuples(res);
	ck_assert_int_eq(count("SELECT count(*) FROM billing_signals_outbox"),
			 rows);
	for (i = 0; i < rows; i++) {
		const char *id = PQgetvalue(res, i, 0);

		for (j = 0; j < nids; j++)
			if (strcmp(ids[j].id, id) == 0)
				break;
		ck_assert_msg(j < nids, "signal %s marked published but not on "
			      "the topic", id);
	}
	ck_assert_msg(nids == rows, "topic has %d signal ids, outbox %d",
		      nids, rows);
	for (j = 0; j < nids; j++)
		dups += ids[j].copies - 1;
	PQclear(res);
	return dups;
}

static inline void assert_no_secrets_logged(void)
{
	FILE *fp = fopen(logpath, "r");
	char line[8192];

	ck_assert(fp != NULL);
	while (fgets(line, sizeof(line), fp))
		ck_assert_msg(strstr(line, "sk_test_123") == NULL &&
			      strstr(line, SECRET) == NULL,
			      "a secret in the log: %.200s", line);
	fclose(fp);
}

#endif
