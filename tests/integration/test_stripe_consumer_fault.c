/*
 * test_stripe_consumer_fault.c - the tally-stripe binary end to end on the
 * real broker, PostgreSQL and stripe-mock, with kill -9.
 *
 * Set-up: a fresh database, unique topics (commands, stripe-events,
 * signals, both DLQs), a config file pointing at them, and between
 * tally-stripe and stripe-mock a recording proxy (libmicrohttpd, in this
 * process) that behaves like Stripe for idempotency keys: a POST with a key
 * it has seen gets the first answer again, without creating anything. So
 * "objects created" = POSTs forwarded to stripe-mock's create endpoints. It
 * also adds latency, so that kill -9 lands in the middle of Stripe calls.
 *
 * Phase 1 (no faults): commands (with duplicates and an undecodable
 * message) and signed webhook events (with duplicates and one with a bad
 * signature) -> billing_commands / tenants / subscriptions / invoices as
 * expected, each signal exactly once on the signals topic, each invalid
 * message exactly once on its DLQ with an x-tally-reason header; SIGTERM ->
 * exit 0 within a few seconds.
 *
 * Phase 2 (kill -9 twice mid-stream, restart): one billing_commands row per
 * command, all succeeded; exactly one Stripe object per command step (the
 * same Idempotency-Key on every resend), the tenant holding that object;
 * every signal of the outbox published, under its stable id. Publication
 * is at-least-once (documented in docs/stripe.md): a kill between a
 * delivery and its mark republishes that signal with the same id, so
 * duplicates are counted and reported here, not forbidden.
 *
 * Phase 3: a restart with nothing new publishes nothing: a row marked
 * published is never produced again.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe_testdb.h"
#include "tally/command.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/producer.h"
#include "tally/webhook.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define PARTS 2
#define N2 16 /* tenants in phase 2 */
#define SECRET "whsec_fault_test_secret"
#define TA "f0000000-0000-4000-8000-0000000000a1"
#define TB "f0000000-0000-4000-8000-0000000000b2"
#define TC "f0000000-0000-4000-8000-0000000000c3"

static tally_pg *pg;
static tally_config *cfg;
static char dsn[600], cfgpath[256], logpath[256], group[128];
static char t_cmd[128], t_evt[128], t_sig[128], t_cdlq[160], t_edlq[160];
static const char *brokers, *mock;

/* ---- the recording, idempotent proxy in front of stripe-mock ----------- */

#define MAXREC 1024

typedef struct rec {
	char key[256];
	char method[8];
	char path[256];
	int hits;      /* requests with this key */
	int forwarded; /* of which reached stripe-mock */
	int inflight;  /* being forwarded: Stripe answers 409 */
	long status;
	char *body;    /* first answer (replayed for the same key) */
} rec;

static struct {
	pthread_mutex_t mu;
	rec recs[MAXREC];
	int nrecs;
	int gets;
} px = { .mu = PTHREAD_MUTEX_INITIALIZER };

static struct MHD_Daemon *proxy_;
static int proxy_port;

typedef struct upload {
	char buf[16384];
	size_t len;
} upload;

typedef struct qbuf {
	char s[4096];
	size_t len;
} qbuf;

static enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind,
			       const char *key, const char *value)
{
	qbuf *q = cls;
	char *k = curl_easy_escape(NULL, key, 0);
	char *v = curl_easy_escape(NULL, value ? value : "", 0);

	(void)kind;
	q->len += (size_t)snprintf(q->s + q->len, sizeof(q->s) - q->len,
				   "%s%s=%s", q->len ? "&" : "?", k, v);
	curl_free(k);
	curl_free(v);
	return q->len < sizeof(q->s) - 1 ? MHD_YES : MHD_NO;
}

static size_t sink(char *p, size_t size, size_t n, void *payload)
{
	upload *u = payload;
	size_t len = size * n, room = sizeof(u->buf) - 1 - u->len;

	memcpy(u->buf + u->len, p, len < room ? len : room);
	u->len += len < room ? len : room;
	u->buf[u->len] = '\0';
	return len;
}

static rec *rec_find(const char *key)
{
	int i;

	for (i = 0; i < px.nrecs; i++)
		if (strcmp(px.recs[i].key, key) == 0)
			return &px.recs[i];
	return NULL;
}

static enum MHD_Result proxy_handler(void *cls, struct MHD_Connection *conn,
				     const char *url, const char *method,
				     const char *version, const char *data,
				     size_t *data_size, void **con_cls)
{
	upload *up = *con_cls, answer;
	struct MHD_Response *resp;
	struct curl_slist *hdrs = NULL;
	const char *key, *auth, *ver;
	char target[4600], h[400];
	qbuf q;
	CURL *c;
	long status = 502;
	enum MHD_Result r;
	rec *rc = NULL;

	(void)cls;
	(void)version;
	if (up == NULL) {
		*con_cls = calloc(1, sizeof(upload));
		return MHD_YES;
	}
	if (*data_size > 0) {
		size_t n = *data_size, room = sizeof(up->buf) - 1 - up->len;

		memcpy(up->buf + up->len, data, n < room ? n : room);
		up->len += n < room ? n : room;
		*data_size = 0;
		return MHD_YES;
	}
	key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  "Idempotency-Key");
	auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					   "Authorization");
	ver = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  "Stripe-Version");
	memset(&answer, 0, sizeof(answer));
	pthread_mutex_lock(&px.mu);
	if (strcmp(method, "GET") == 0)
		px.gets++;
	if (key && *key) {
		rc = rec_find(key);
		if (rc == NULL && px.nrecs < MAXREC) {
			rc = &px.recs[px.nrecs++];
			snprintf(rc->key, sizeof(rc->key), "%s", key);
			snprintf(rc->method, sizeof(rc->method), "%s", method);
			snprintf(rc->path, sizeof(rc->path), "%s", url);
		}
		if (rc)
			rc->hits++;
		if (rc && rc->inflight && rc->body == NULL) {
			/* Stripe: a request with this key is in progress */
			status = 409;
			snprintf(answer.buf, sizeof(answer.buf), "%s",
				 "{\"error\":{\"type\":\"idempotency_error\","
				 "\"code\":\"idempotency_key_in_use\","
				 "\"message\":\"in progress\"}}");
			answer.len = strlen(answer.buf);
			pthread_mutex_unlock(&px.mu);
			goto respond;
		}
		if (rc)
			rc->inflight = 1;
		if (rc && rc->body) { /* Stripe replays the first answer */
			rc->inflight = 0;
			status = rc->status;
			snprintf(answer.buf, sizeof(answer.buf), "%s",
				 rc->body);
			answer.len = strlen(answer.buf);
			pthread_mutex_unlock(&px.mu);
			goto respond;
		}
	}
	pthread_mutex_unlock(&px.mu);

	tally_sleep_ms(60); /* room for kill -9 mid-call */
	memset(&q, 0, sizeof(q));
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_arg, &q);
	snprintf(target, sizeof(target), "%s%s%s", mock, url, q.s);
	c = curl_easy_init();
	curl_easy_setopt(c, CURLOPT_URL, target);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
	if (auth) {
		snprintf(h, sizeof(h), "Authorization: %s", auth);
		hdrs = curl_slist_append(hdrs, h);
	}
	if (ver) {
		snprintf(h, sizeof(h), "Stripe-Version: %s", ver);
		hdrs = curl_slist_append(hdrs, h);
	}
	if (strcmp(method, "POST") == 0) {
		hdrs = curl_slist_append(hdrs, "Content-Type: "
					 "application/x-www-form-urlencoded");
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, up->buf);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)up->len);
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	if (rc) {
		pthread_mutex_lock(&px.mu);
		rc->forwarded++;
		rc->inflight = 0;
		if (status >= 200 && status < 300 && rc->body == NULL) {
			rc->status = status;
			rc->body = strdup(answer.buf);
		}
		pthread_mutex_unlock(&px.mu);
	}
respond:
	resp = MHD_create_response_from_buffer(answer.len, answer.buf,
					       MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	r = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return r;
}

static void proxy_done(void *cls, struct MHD_Connection *conn,
		       void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

static void proxy_start(void)
{
	const union MHD_DaemonInfo *info;

	proxy_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
				  MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
				  NULL, proxy_handler, NULL,
				  MHD_OPTION_NOTIFY_COMPLETED, proxy_done,
				  NULL, MHD_OPTION_END);
	ck_assert_msg(proxy_ != NULL, "proxy must start");
	info = MHD_get_daemon_info(proxy_, MHD_DAEMON_INFO_BIND_PORT);
	proxy_port = info->port;
}

/* Creation POSTs (customers, subscriptions) forwarded = objects created. */
static int objects_created(const char *path, int *distinct)
{
	int i, n = 0;

	*distinct = 0;
	pthread_mutex_lock(&px.mu);
	for (i = 0; i < px.nrecs; i++)
		if (strcmp(px.recs[i].method, "POST") == 0 &&
		    strcmp(px.recs[i].path, path) == 0) {
			n += px.recs[i].forwarded;
			(*distinct)++;
		}
	pthread_mutex_unlock(&px.mu);
	return n;
}

/* The object id Stripe returned for a key ("" if none). */
static void object_for_key(char *out, size_t n, const char *key)
{
	rec *r;

	out[0] = '\0';
	pthread_mutex_lock(&px.mu);
	r = rec_find(key);
	if (r && r->body) {
		json_t *j = json_loads(r->body, 0, NULL);

		snprintf(out, n, "%s", j && json_is_string(json_object_get(
			j, "id")) ? json_string_value(json_object_get(j, "id"))
			: "");
		json_decref(j);
	}
	pthread_mutex_unlock(&px.mu);
}

/* ---- set-up -------------------------------------------------------------- */

static void setup(void)
{
	rd_kafka_conf_t *conf;
	const char *topics[6];
	const char *slash;
	char errstr[256];
	tally_error err;
	rd_kafka_t *rk;
	int i;

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	mock = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	tally_log_init("test_stripe_consumer_fault", TALLY_WARN);
	pg = testdb_create("tally_stripe_fault");
	cfg = testdb_config();
	tally_config_set(cfg, "kafka.brokers", brokers);
	slash = strrchr(testdb_admin, '/');
	snprintf(dsn, sizeof(dsn), "%.*s/%s", (int)(slash - testdb_admin),
		 testdb_admin, testdb_name);
	testdb_tenant(pg, TA, "fault-a", NULL);
	testdb_tenant(pg, TB, "fault-b", NULL);
	testdb_tenant(pg, TC, "fault-c", "cus_fault_c");
	for (i = 0; i < N2; i++) {
		char id[40], slug[32];

		snprintf(id, sizeof(id), "f2000000-0000-4000-8000-%012d", i);
		snprintf(slug, sizeof(slug), "fault2-%d", i);
		testdb_tenant(pg, id, slug, NULL);
	}

	snprintf(t_cmd, sizeof(t_cmd), "test.commands.%s", testdb_name);
	snprintf(t_evt, sizeof(t_evt), "test.stripe-events.%s", testdb_name);
	snprintf(t_sig, sizeof(t_sig), "test.signals.%s", testdb_name);
	snprintf(t_cdlq, sizeof(t_cdlq), "%s.dlq", t_cmd);
	snprintf(t_edlq, sizeof(t_edlq), "%s.dlq", t_evt);
	snprintf(group, sizeof(group), "test.stripe.%s", testdb_name);
	topics[0] = t_cmd;
	topics[1] = t_evt;
	topics[2] = t_sig;
	topics[3] = t_cdlq;
	topics[4] = t_edlq;
	topics[5] = NULL;
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "create topics: %s", err.msg);
	rd_kafka_destroy(rk);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", testdb_name);
	snprintf(logpath, sizeof(logpath), "/tmp/%s.log", testdb_name);
}

static void teardown(void)
{
	unlink(cfgpath);
	tally_config_free(cfg);
	tally_pg_free(pg);
}

static void write_config(void)
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

static const char *binary(void)
{
	static char path[512];
	const char *dir = getenv("TALLY_BIN_DIR");

	snprintf(path, sizeof(path), "%s/tally-stripe",
		 dir && *dir ? dir : TALLY_BINARY_DIR);
	return path;
}

static pid_t start_consumer(void)
{
	char port[16];
	pid_t pid;

	snprintf(port, sizeof(port), "%d", proxy_port);
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		char base[64];
		int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);

		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		/* the environment wins over the file: point it at ours */
		snprintf(base, sizeof(base), "http://127.0.0.1:%s", port);
		setenv("DATABASE_URL", dsn, 1);
		setenv("KAFKA_BROKERS", brokers, 1);
		setenv("STRIPE_API_BASE", base, 1);
		setenv("STRIPE_SECRET_KEY", "sk_test_123", 1);
		setenv("STRIPE_WEBHOOK_SECRET", SECRET, 1);
		unsetenv("STRIPE_WEBHOOK_SECRET_PREVIOUS");
		unsetenv("STRIPE_PRICE_ID_STARTER");
		unsetenv("STRIPE_PRICE_ID_PROFESSIONAL");
		unsetenv("STRIPE_PRICE_ID_ENTERPRISE");
		execl(binary(), "tally-stripe", "--config", cfgpath,
		      (char *)NULL);
		_exit(127);
	}
	return pid;
}

/* SIGTERM: exit 0 within 10 s (the loop polls every 100 ms). */
static void stop_consumer(pid_t pid)
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

static void kill9(pid_t pid)
{
	int status = 0;

	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFSIGNALED(status), "tally-stripe was running when "
		      "killed (status %d, log %s)", status, logpath);
}

/* ---- producing ------------------------------------------------------------ */

static tally_producer *cmd_producer(void)
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

static void send_cmd(tally_producer *p, const char *id,
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

static rd_kafka_t *raw_producer(void)
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

static void send_raw(rd_kafka_t *rk, const char *topic, const char *key,
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
static void send_event(rd_kafka_t *rk, const char *key, const char *body,
		       int bad)
{
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];

	tally_webhook_sign(sig, sizeof(sig), body, strlen(body),
			   bad ? "whsec_wrong" : SECRET, tally_now_ms() / 1000);
	send_raw(rk, t_evt, key, body, strlen(body), sig);
}

static void invoice_event(char *out, size_t n, const char *evt,
			  const char *type, const char *status, long created)
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

static void trial_event(char *out, size_t n, const char *evt,
			const char *customer, const char *sub, long created)
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
static int read_topic(const char *topic, seen *ids, int *nids, int maxids,
		      char *reasons, size_t rlen)
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

static int count(const char *sql)
{
	char v[64];

	testdb_get(pg, v, sizeof(v), sql, NULL);
	return atoi(v);
}

static void check(const char *sql, const char *arg, const char *want)
{
	char got[512];

	testdb_get(pg, got, sizeof(got), sql, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]: want '%s', got '%s'",
		      sql, arg ? arg : "", want, got);
}

/* Wait until the commands are final, the events processed and the outbox
 * published (timeout_s), or fail. */
static void wait_done(int commands, int events, int timeout_s)
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
static int check_signals(int *total_msgs)
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

static void assert_no_secrets_logged(void)
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

START_TEST(test_stripe_consumer_fault)
{
	tally_producer *cp;
	rd_kafka_t *rk;
	tally_error err;
	char body[4096], reasons[256], obj[256], key[256], sql[512];
	pid_t pid;
	int created, distinct, dups, msgs, msgs_after, i, status_n;
	long now_s = (long)(tally_now_ms() / 1000);

	proxy_start();
	write_config();
	unlink(logpath);

	/* ---- phase 1: no faults --------------------------------------- */
	pid = start_consumer();
	cp = cmd_producer();
	rk = raw_producer();
	send_cmd(cp, "f1-a-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TA, "starter");
	send_cmd(cp, "f1-b-cus", TALLY_CMD_CREATE_CUSTOMER, TB, NULL);
	send_cmd(cp, "f1-b-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TB,
		 "professional");
	send_cmd(cp, "f1-a-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TA,
		 "starter"); /* duplicate */
	send_cmd(cp, "f1-b-up", TALLY_CMD_CHANGE_PLAN, TB, "enterprise");
	send_cmd(cp, "f1-b-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TB,
		 "professional"); /* duplicate */
	send_raw(rk, t_cmd, TA, "\xc1not msgpack", 12, NULL);
	ck_assert(tally_producer_flush(cp, 10000, &err) == 0);

	invoice_event(body, sizeof(body), "evt_f1_failed",
		      "invoice.payment_failed", "open", now_s - 100);
	send_event(rk, TC, body, 0);
	send_event(rk, TC, body, 0); /* duplicate */
	trial_event(body, sizeof(body), "evt_f1_trial", "cus_fault_c",
		    "sub_fault_c",
		    now_s - 90);
	send_event(rk, TC, body, 0);
	invoice_event(body, sizeof(body), "evt_f1_paid", "invoice.paid",
		      "paid", now_s - 80);
	send_event(rk, TC, body, 0);
	send_event(rk, TC, body, 0); /* duplicate */
	invoice_event(body, sizeof(body), "evt_f1_forged", "invoice.paid",
		      "paid", now_s - 70);
	send_event(rk, TC, body, 1); /* bad signature */
	ck_assert(rd_kafka_flush(rk, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);

	wait_done(4, 3, 90);
	tally_sleep_ms(1500); /* duplicates and dead letters behind them */
	stop_consumer(pid);

	/* commands: one row each, succeeded, duplicates counted as attempts */
	check("SELECT string_agg(command_id || ':' || status || ':' || "
	      "attempts, ',' ORDER BY command_id) FROM billing_commands",
	      NULL, "f1-a-sub:succeeded:1,f1-b-cus:succeeded:0,"
	      "f1-b-sub:succeeded:1,f1-b-up:succeeded:0");
	check("SELECT (stripe_customer_id LIKE 'cus_%')::text || ':' || "
	      "(stripe_subscription_id LIKE 'sub_%')::text || ':' || "
	      "subscription_plan FROM tenants WHERE id = $1", TA,
	      "true:true:starter");
	/* (stripe-mock answers with its fixture price and no metadata, so
	 * the plan is read from the command's result, not the mirror) */
	check("SELECT result->>'plan_to' FROM billing_commands WHERE "
	      "command_id = $1", "f1-b-up", "enterprise");
	check("SELECT count(*) FROM subscriptions WHERE tenant_id IN ($1, '"
	      TB "')", TA, "2");
	/* webhooks: invoice mirrored at its newest state, dunning there and
	 * back, the forged event never applied */
	check("SELECT status || ':' || amount_paid FROM invoices WHERE "
	      "tenant_id = $1 AND invoice_id = 'in_fault_1'", TC,
	      "paid:4900");
	check("SELECT count(*) FROM invoice_lines WHERE tenant_id = $1", TC,
	      "1");
	check("SELECT status FROM tenants WHERE id = $1", TC, "active");
	check("SELECT string_agg(from_status || '>' || to_status, ',' ORDER BY"
	      " id) FROM tenant_status_transitions WHERE tenant_id = $1", TC,
	      "active>past_due,past_due>active");
	check("SELECT string_agg(event_id || ':' || outcome, ',' ORDER BY "
	      "event_id) FROM stripe_events", NULL,
	      "evt_f1_failed:applied,evt_f1_paid:applied,"
	      "evt_f1_trial:applied");
	check("SELECT string_agg(kind, ',' ORDER BY kind) FROM "
	      "billing_signals_outbox WHERE tenant_id = $1", TC,
	      "dunning,payment_failed,payment_succeeded,status_changed,"
	      "trial_ending");
	/* Stripe objects: one per command step */
	created = objects_created("/v1/customers", &distinct);
	ck_assert_msg(created == 2 && distinct == 2, "customers created %d "
		      "(keys %d)", created, distinct);
	created = objects_created("/v1/subscriptions", &distinct);
	ck_assert_msg(created == 2 && distinct == 2, "subscriptions created "
		      "%d (keys %d)", created, distinct);
	/* signals: each exactly once */
	dups = check_signals(&msgs);
	ck_assert_msg(dups == 0, "phase 1 (no faults): %d duplicate signals",
		      dups);
	/* dead letters: exactly once each, with the reason */
	ck_assert_int_eq(read_topic(t_cdlq, NULL, NULL, 0, reasons,
				    sizeof(reasons)), 1);
	fprintf(stderr, "stripe_fault: commands DLQ reason %s\n", reasons);
	ck_assert_msg(reasons[0] != '\0', "a reason");
	ck_assert_int_eq(read_topic(t_edlq, NULL, NULL, 0, reasons,
				    sizeof(reasons)), 1);
	ck_assert_str_eq(reasons, "invalid_event");

	/* ---- phase 2: kill -9 twice mid-stream ------------------------- */
	for (i = 0; i < N2; i++) {
		char tid[40], id[64];

		snprintf(tid, sizeof(tid), "f2000000-0000-4000-8000-%012d", i);
		snprintf(id, sizeof(id), "f2-%d-sub", i);
		send_cmd(cp, id, TALLY_CMD_CREATE_SUBSCRIPTION, tid,
			 i % 2 ? "starter" : "professional");
		snprintf(id, sizeof(id), "f2-%d-cancel", i);
		send_cmd(cp, id, TALLY_CMD_CANCEL_SUBSCRIPTION, tid, NULL);
		snprintf(id, sizeof(id), "evt_f2_trial_%d", i);
		snprintf(obj, sizeof(obj), "sub_f2_%d", i);
		trial_event(body, sizeof(body), id, "cus_fault_c", obj,
			    now_s - 50 + i);
		send_event(rk, TC, body, 0);
		send_event(rk, TC, body, 0); /* duplicate */
	}
	ck_assert(tally_producer_flush(cp, 10000, &err) == 0);
	ck_assert(rd_kafka_flush(rk, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);

	/* kill -9 shortly after work resumed, twice */
	for (i = 0; i < 2; i++) {
		int before = count("SELECT count(*) FROM billing_commands "
				   "WHERE status <> 'pending'"), k;

		pid = start_consumer();
		for (k = 0; k < 600 && count("SELECT count(*) FROM "
			"billing_commands WHERE status <> 'pending'") ==
			before; k++)
			tally_sleep_ms(100);
		tally_sleep_ms(i == 0 ? 700 : 400);
		kill9(pid);
		fprintf(stderr, "stripe_fault: kill -9 #%d: %d commands final,"
			" %d pending rows, %d signals unpublished\n", i + 1,
			count("SELECT count(*) FROM billing_commands WHERE "
			      "status <> 'pending'"),
			count("SELECT count(*) FROM billing_commands WHERE "
			      "status = 'pending'"),
			count("SELECT count(*) FROM billing_signals_outbox "
			      "WHERE published_at IS NULL"));
	}
	pid = start_consumer();
	wait_done(4 + 2 * N2, 3 + N2, 120);
	tally_sleep_ms(1500);
	stop_consumer(pid);

	ck_assert_int_eq(count("SELECT count(*) FROM billing_commands"),
			 4 + 2 * N2);
	ck_assert_int_eq(count("SELECT count(*) FROM billing_commands WHERE "
			       "status = 'succeeded'"), 4 + 2 * N2);
	ck_assert_int_eq(count("SELECT count(*) FROM stripe_events WHERE "
			       "outcome = 'applied'"), 3 + N2);
	/* one Stripe object per command step, held by its tenant */
	created = objects_created("/v1/customers", &distinct);
	ck_assert_msg(created == 2 + N2 && distinct == 2 + N2,
		      "customers created %d (keys %d), want %d", created,
		      distinct, 2 + N2);
	created = objects_created("/v1/subscriptions", &distinct);
	ck_assert_msg(created == 2 + N2 && distinct == 2 + N2,
		      "subscriptions created %d (keys %d), want %d", created,
		      distinct, 2 + N2);
	for (i = 0; i < N2; i++) {
		char tid[40], want[300];

		snprintf(tid, sizeof(tid), "f2000000-0000-4000-8000-%012d", i);
		snprintf(key, sizeof(key),
			 "tally-cmd-%s-f2-%d-sub-subscription", tid, i);
		object_for_key(obj, sizeof(obj), key);
		ck_assert_msg(strncmp(obj, "sub_", 4) == 0, "key %s", key);
		snprintf(want, sizeof(want), "%s", obj);
		check("SELECT stripe_subscription_id FROM tenants WHERE id = $1",
		      tid, want);
		snprintf(key, sizeof(key), "tally-cmd-%s-f2-%d-sub-customer",
			 tid, i);
		object_for_key(obj, sizeof(obj), key);
		snprintf(want, sizeof(want), "%s", obj);
		check("SELECT stripe_customer_id FROM tenants WHERE id = $1",
		      tid, want);
	}
	/* every POST recorded under its key; resends reused the key */
	pthread_mutex_lock(&px.mu);
	status_n = 0;
	for (i = 0; i < px.nrecs; i++)
		if (px.recs[i].hits > 1)
			status_n++;
	pthread_mutex_unlock(&px.mu);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM stripe_requests");
	ck_assert_int_eq(count(sql), px.nrecs);
	fprintf(stderr, "stripe_fault: %d idempotency keys, %d of them resent "
		"after a kill (Stripe replayed the first answer)\n", px.nrecs,
		status_n);

	dups = check_signals(&msgs);
	fprintf(stderr, "stripe_fault: %d signal messages, %d duplicates "
		"(same id) after kill -9\n", msgs, dups);

	/* ---- phase 3: nothing new: nothing republished ------------------- */
	pid = start_consumer();
	tally_sleep_ms(3000);
	stop_consumer(pid);
	(void)check_signals(&msgs_after);
	ck_assert_msg(msgs_after == msgs, "a restart republished signals "
		      "already marked published (%d -> %d)", msgs,
		      msgs_after);
	assert_no_secrets_logged();

	tally_producer_free(cp);
	rd_kafka_destroy(rk);
	MHD_stop_daemon(proxy_);
}
END_TEST

static Suite *tally_stripe_consumer_fault_suite(void)
{
	Suite *s = suite_create("stripe_consumer_fault");
	TCase *tc = tcase_create("Kafka");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_stripe_consumer_fault);
	tcase_set_timeout(tc, 600);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_consumer_fault_suite)
