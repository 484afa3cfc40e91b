/*
 * test_relay.c - tally-relay end to end: real HTTP (libcurl) against a
 * running relay, real broker (TALLY_TEST_BROKERS), one fresh topic per
 * test (tally_kafka_create_topics). What reached Kafka is read back with a
 * plain consumer (content) and with the partitions' high watermarks
 * (counts: the idempotent producer writes exactly one record per message).
 */
#define _DEFAULT_SOURCE
#include "check_main.h"
#include "topic_support.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/relay.h"
#include "tally/webhook.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECRET "whsec_relay_test_current"
#define PREVIOUS "whsec_relay_test_previous"
#define PARTS 3

static const char *brokers;

typedef struct fixture {
	char topic[128];
	tally_config *cfg;
	tally_metrics *m;
	tally_relay *r;
	int port;
	int admin; /* the admin listener's port */
} fixture;

static void make_topic(char *out, size_t n)
{
	topic_make(out, n, brokers, "test.relay", PARTS);
}

/* topic NULL: a fresh one */
static void start_on(fixture *f, const char *topic, const char *kafka,
		     const char *max_body, const char *timeout_ms)
{
	tally_error err = { 0 };

	memset(f, 0, sizeof(*f));
	if (topic != NULL)
		snprintf(f->topic, sizeof(f->topic), "%s", topic);
	else
		make_topic(f->topic, sizeof(f->topic));
	ck_assert_int_eq(tally_config_load(&f->cfg, NULL, &err), 0);
	tally_config_set(f->cfg, "kafka.brokers", kafka);
	tally_config_set(f->cfg, "topics.stripe_events", f->topic);
	tally_config_set(f->cfg, "relay.listen", "127.0.0.1:0");
	tally_config_set(f->cfg, "relay.admin_listen", "127.0.0.1:0");
	/* every request comes from 127.0.0.1 (limits: test_relay_hostile) */
	tally_config_set(f->cfg, "relay.max_connections_per_ip", "0");
	tally_config_set(f->cfg, "relay.webhook_secret", SECRET);
	tally_config_set(f->cfg, "relay.webhook_secret_previous", PREVIOUS);
	tally_config_set(f->cfg, "relay.produce_timeout_ms",
			 timeout_ms ? timeout_ms : "5000");
	if (max_body != NULL)
		tally_config_set(f->cfg, "relay.max_body", max_body);
	f->m = tally_metrics_new();
	ck_assert_msg(tally_relay_new(&f->r, f->cfg, f->m, &err) == 0,
		      "relay start: %s", err.msg);
	f->port = tally_relay_port(f->r);
	ck_assert_int_gt(f->port, 0);
	f->admin = tally_relay_admin_port(f->r);
	ck_assert_int_gt(f->admin, 0);
}

static void start(fixture *f, const char *kafka, const char *max_body,
		  const char *timeout_ms)
{
	start_on(f, NULL, kafka, max_body, timeout_ms);
}

static void stop(fixture *f)
{
	tally_relay_free(f->r);
	tally_metrics_free(f->m);
	tally_config_free(f->cfg);
}

/* --- HTTP ------------------------------------------------------------------ */

typedef struct buf {
	char data[4096];
	size_t len;
} buf;

static size_t on_data(char *p, size_t sz, size_t nm, void *ud)
{
	buf *b = ud;
	size_t n = sz * nm, room = sizeof(b->data) - 1 - b->len;

	if (n < room)
		room = n;
	memcpy(b->data + b->len, p, room);
	b->len += room;
	b->data[b->len] = '\0';
	return n;
}

static CURL *request(int port, const char *method, const char *path,
		     const char *body, size_t len, const char *sig,
		     struct curl_slist **hdrs, buf *out)
{
	CURL *c = curl_easy_init();
	char url[256], h[256];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	*hdrs = curl_slist_append(NULL, "Content-Type: application/json");
	*hdrs = curl_slist_append(*hdrs, "Expect:");
	if (sig != NULL) {
		snprintf(h, sizeof(h), "Stripe-Signature: %s", sig);
		*hdrs = curl_slist_append(*hdrs, h);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
	if (body != NULL) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
	}
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
	return c;
}

static long http(int port, const char *method, const char *path,
		 const char *body, const char *sig, buf *out)
{
	struct curl_slist *hdrs = NULL;
	buf tmp;
	CURL *c;
	CURLcode cc;
	long code = 0;

	if (out == NULL)
		out = &tmp;
	memset(out, 0, sizeof(*out));
	c = request(port, method, path, body, body ? strlen(body) : 0, sig,
		    &hdrs, out);
	cc = curl_easy_perform(c);
	ck_assert_msg(cc == CURLE_OK, "%s %s: %s", method, path,
		      curl_easy_strerror(cc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdrs);
	return code;
}

static long post(const fixture *f, const char *body, const char *sig, buf *out)
{
	return http(f->port, "POST", "/webhooks/stripe", body, sig, out);
}

static void sign(char *out, const char *body, const char *secret, int64_t t)
{
	tally_webhook_sign(out, TALLY_WEBHOOK_SIG_HEADER_MAX, body,
			   strlen(body), secret, t);
}

static int64_t now_s(void)
{
	return tally_now_ms() / 1000;
}

static char *event(const char *id, const char *customer)
{
	char *s = malloc(512);

	if (customer != NULL)
		snprintf(s, 512, "{\"id\":\"%s\",\"object\":\"event\","
			 "\"type\":\"invoice.paid\",\"data\":{\"object\":"
			 "{\"id\":\"in_1\",\"object\":\"invoice\","
			 "\"customer\":\"%s\"}}}", id, customer);
	else
		snprintf(s, 512, "{\"id\":\"%s\",\"object\":\"event\","
			 "\"type\":\"balance.available\",\"data\":{\"object\":"
			 "{\"object\":\"balance\"}}}", id);
	return s;
}

/* --- Kafka read-back --------------------------------------------------------- */

/* Records on the topic: sum of high watermarks (no transactions here). */
static int64_t topic_count(const char *topic)
{
	rd_kafka_t *rk = NULL;
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	tally_error err = { 0 };
	int64_t total = 0, lo, hi;
	int p;

	ck_assert_int_eq(tally_kafka_conf_set(conf, "bootstrap.servers",
					      brokers, &err), 0);
	ck_assert_int_eq(tally_kafka_producer_new(&rk, conf, &err), 0);
	for (p = 0; p < PARTS; p++) {
		rd_kafka_resp_err_t e;
		int attempt = 0;

		/* a leader may still be moving in: retry the retriable */
		while ((e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo,
							     &hi, 10000)) ==
			       RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
		       attempt++ < 50)
			usleep(100000);
		ck_assert_msg(e == 0, "watermarks of %s [%d]: %s", topic, p,
			      rd_kafka_err2str(e));
		total += hi - lo;
	}
	rd_kafka_destroy(rk);
	return total;
}

/* --- tests ------------------------------------------------------------------- */

START_TEST(test_relay_valid_event_on_topic)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], tmp[256];
	char *body = event("evt_valid_1", "cus_ABC");
	rd_kafka_message_t *msgs[4];
	rd_kafka_t *crk = NULL;
	int64_t before = tally_now_ms(), at;
	buf resp;
	size_t n;

	start(&f, brokers, NULL, NULL);
	sign(sig, body, SECRET, now_s());
	ck_assert_int_eq(post(&f, body, sig, &resp), 200);
	ck_assert_str_eq(resp.data, "{\"received\":true}\n");
	n = topic_consume(&crk, msgs, 4, brokers, f.topic, PARTS, 5000);
	ck_assert_msg(n == 1, "exactly one record expected, got %zu", n);
	ck_assert_uint_eq(msgs[0]->len, strlen(body));
	ck_assert_msg(memcmp(msgs[0]->payload, body, strlen(body)) == 0,
		      "the raw body must be on the topic");
	ck_assert_msg(msgs[0]->key_len == 7 &&
		      memcmp(msgs[0]->key, "cus_ABC", 7) == 0,
		      "key must be the customer id");
	ck_assert_str_eq(topic_header(msgs[0], "stripe-signature", tmp,
				      sizeof(tmp)), sig);
	ck_assert_str_eq(topic_header(msgs[0], "content-type", tmp,
				      sizeof(tmp)), "application/json");
	ck_assert_int_eq(tally_parse_i64(&at, topic_header(msgs[0],
							   "received-at", tmp,
							   sizeof(tmp))), 0);
	ck_assert_msg(at >= before && at <= tally_now_ms(),
		      "received-at must be unix ms of the request");
	topic_done(crk, msgs, n);
	free(body);
	stop(&f);
}
END_TEST

START_TEST(test_relay_keys)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	const char *cust = "{\"id\":\"evt_k2\",\"type\":\"customer.updated\","
			   "\"data\":{\"object\":{\"id\":\"cus_SELF\","
			   "\"object\":\"customer\"}}}";
	char *none = event("evt_k1", NULL);
	rd_kafka_message_t *msgs[4];
	rd_kafka_t *crk = NULL;
	size_t n, i;
	int seen = 0;

	start(&f, brokers, NULL, NULL);
	sign(sig, none, SECRET, now_s());
	ck_assert_int_eq(post(&f, none, sig, NULL), 200);
	sign(sig, cust, SECRET, now_s());
	ck_assert_int_eq(post(&f, cust, sig, NULL), 200);
	n = topic_consume(&crk, msgs, 2, brokers, f.topic, PARTS, 5000);
	ck_assert_uint_eq(n, 2);
	for (i = 0; i < n; i++) {
		if (msgs[i]->key_len == 6 &&
		    memcmp(msgs[i]->key, "evt_k1", 6) == 0)
			seen |= 1; /* no customer: the event id */
		if (msgs[i]->key_len == 8 &&
		    memcmp(msgs[i]->key, "cus_SELF", 8) == 0)
			seen |= 2; /* a customer object: its own id */
	}
	topic_done(crk, msgs, n);
	ck_assert_msg(seen == 3, "keys: event id and customer object id");
	free(none);
	stop(&f);
}
END_TEST


START_TEST(test_relay_rejects_and_produces_nothing)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], v0[200], metric[200];
	char *body = event("evt_rej_1", "cus_R");
	char *tampered = event("evt_rej_2", "cus_R");
	char *text = NULL;
	buf resp;
	int64_t t = now_s();

	start(&f, brokers, NULL, NULL);

	sign(sig, body, SECRET, t - 301);
	ck_assert_int_eq(post(&f, body, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"expired\"}\n");

	sign(sig, body, "whsec_wrong", t);
	ck_assert_int_eq(post(&f, body, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"bad_signature\"}\n");

	sign(sig, body, SECRET, t);
	ck_assert_int_eq(post(&f, tampered, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"bad_signature\"}\n");

	ck_assert_int_eq(post(&f, body, NULL, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"missing_header\"}\n");

	ck_assert_int_eq(post(&f, body, "garbage", &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"malformed_header\"}\n");

	snprintf(v0, sizeof(v0), "t=%" PRId64 ",v0=%s", t, sig + 16);
	ck_assert_int_eq(post(&f, body, v0, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"no_v1\"}\n");

	/* correctly signed, but not a Stripe event */
	sign(sig, "{\"id\":\"x_1\",\"type\":\"a\"}", SECRET, t);
	ck_assert_int_eq(post(&f, "{\"id\":\"x_1\",\"type\":\"a\"}", sig,
			      &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"malformed_body\"}\n");
	sign(sig, "[1,2]", SECRET, t);
	ck_assert_int_eq(post(&f, "[1,2]", sig, &resp), 400);

	ck_assert_int_eq(http(f.port, "GET", "/webhooks/stripe", NULL, NULL,
			      NULL), 405);
	ck_assert_int_eq(http(f.port, "POST", "/webhooks/other", body, NULL,
			      NULL), 404);
	ck_assert_int_eq(http(f.admin, "GET", "/healthz", NULL, NULL, &resp),
			 200);
	ck_assert_int_eq(http(f.admin, "GET", "/readyz", NULL, NULL, &resp),
			 200);
	ck_assert_int_eq(http(f.admin, "GET", "/metrics", NULL, NULL, NULL),
			 200);
	/* the webhook listener serves only the webhook path */
	ck_assert_int_eq(http(f.port, "GET", "/metrics", NULL, NULL, NULL),
			 404);
	ck_assert_int_eq(http(f.port, "GET", "/readyz", NULL, NULL, NULL),
			 404);
	tally_metrics_render(&text, NULL, f.m);
	snprintf(metric, sizeof(metric), "tally_relay_requests_total{status="
		 "\"400\",reason=\"bad_signature\"} 2\n");
	ck_assert_msg(strstr(text, metric) != NULL, "metrics: %s", text);
	ck_assert_msg(strstr(text, "reason=\"expired\"} 1\n") != NULL,
		      "expired counted");
	ck_assert_msg(strstr(text, "reason=\"malformed_body\"} 2\n") != NULL,
		      "malformed bodies counted");
	ck_assert_msg(strstr(text, "reason=\"ok\"} 0\n") != NULL, "none ok");
	free(text);

	usleep(500 * 1000);
	ck_assert_msg(topic_count(f.topic) == 0,
		      "rejected webhooks must never reach Kafka");
	free(body);
	free(tampered);
	stop(&f);
}
END_TEST

START_TEST(test_relay_previous_secret)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	char *body = event("evt_rot_1", "cus_ROT");

	start(&f, brokers, NULL, NULL);
	sign(sig, body, PREVIOUS, now_s());
	ck_assert_msg(post(&f, body, sig, NULL) == 200,
		      "previous secret must still verify during rotation");
	ck_assert_int_eq(topic_count(f.topic), 1);
	free(body);
	stop(&f);
}
END_TEST

START_TEST(test_relay_oversized)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	char *big = malloc(4096);
	buf resp;

	start(&f, brokers, "1024", NULL);
	snprintf(big, 4096, "{\"id\":\"evt_big\",\"type\":\"x\",\"pad\":\"");
	memset(big + strlen(big), 'a', 2000);
	big[2060] = '\0';
	memcpy(big + 2058, "\"}", 2);
	sign(sig, big, SECRET, now_s());
	ck_assert_int_eq(post(&f, big, sig, &resp), 413);
	ck_assert_int_eq(topic_count(f.topic), 0);
	free(big);
	stop(&f);
}
END_TEST

#define CONC 500

START_TEST(test_relay_concurrent_500)
{
	fixture f;
	CURLM *multi = curl_multi_init();
	CURL *easy[CONC];
	struct curl_slist *hdrs[CONC];
	char *bodies[CONC], id[32], sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	buf *resp = calloc(CONC, sizeof(buf));
	rd_kafka_message_t **msgs = calloc(CONC + 10, sizeof(*msgs));
	rd_kafka_t *crk = NULL;
	char *seen = calloc(CONC, 1);
	int running = 0, i, ok = 0, other = 0;
	size_t n;
	CURLMsg *cm;
	int left;

	start(&f, brokers, NULL, NULL);
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)CONC);
	for (i = 0; i < CONC; i++) {
		snprintf(id, sizeof(id), "evt_conc_%d", i);
		bodies[i] = event(id, i % 7 ? "cus_many" : NULL);
		sign(sig, bodies[i], SECRET, now_s());
		easy[i] = request(f.port, "POST", "/webhooks/stripe",
				  bodies[i], strlen(bodies[i]), sig, &hdrs[i],
				  &resp[i]);
		curl_easy_setopt(easy[i], CURLOPT_FORBID_REUSE, 1L);
		curl_multi_add_handle(multi, easy[i]);
	}
	do {
		curl_multi_perform(multi, &running);
		if (running)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	} while (running);
	while ((cm = curl_multi_info_read(multi, &left)) != NULL) {
		long code = 0;

		if (cm->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE,
				  &code);
		if (cm->data.result == CURLE_OK && code == 200)
			ok++;
		else
			other++;
	}
	for (i = 0; i < CONC; i++) {
		curl_multi_remove_handle(multi, easy[i]);
		curl_easy_cleanup(easy[i]);
		curl_slist_free_all(hdrs[i]);
		free(bodies[i]);
	}
	curl_multi_cleanup(multi);
	ck_assert_msg(ok == CONC, "%d x 200 expected, got %d (others %d)",
		      CONC, ok, other);
	ck_assert_int_eq(topic_count(f.topic), CONC);
	n = topic_consume(&crk, msgs, CONC + 10, brokers, f.topic, PARTS,
			  8000);
	ck_assert_uint_eq(n, CONC);
	for (i = 0; i < (int)n; i++) {
		char copy[512], digits[16];
		const char *p;
		size_t d = 0;
		int64_t k = -1;

		ck_assert_uint_lt(msgs[i]->len, sizeof(copy));
		memcpy(copy, msgs[i]->payload, msgs[i]->len);
		copy[msgs[i]->len] = '\0';
		p = strstr(copy, "evt_conc_");
		ck_assert_ptr_nonnull(p);
		for (p += 9; *p >= '0' && *p <= '9' && d < 15; p++)
			digits[d++] = *p;
		digits[d] = '\0';
		ck_assert_int_eq(tally_parse_i64(&k, digits), 0);
		ck_assert_msg(k >= 0 && k < CONC && !seen[k],
			      "each event exactly once (%" PRId64 ")", k);
		seen[k] = 1;
	}
	topic_done(crk, msgs, n);
	free(seen);
	free(msgs);
	free(resp);
	stop(&f);
}
END_TEST

START_TEST(test_relay_kafka_down_then_back)
{
	fixture down, up;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], topic[128];
	char *body = event("evt_outage_1", "cus_OUT");
	int64_t t0;
	buf resp;

	/* nothing listens on port 1: Kafka "stopped" (the topic exists) */
	make_topic(topic, sizeof(topic));
	start_on(&down, topic, "127.0.0.1:1", NULL, "1500");
	sign(sig, body, SECRET, now_s());
	t0 = tally_now_ms();
	ck_assert_int_eq(post(&down, body, sig, &resp), 503);
	ck_assert_str_eq(resp.data, "{\"error\":\"kafka_unavailable\"}\n");
	ck_assert_msg(tally_now_ms() - t0 < 10000,
		      "503 within the produce timeout");
	ck_assert_int_eq(http(down.admin, "GET", "/readyz", NULL, NULL, NULL),
			 503);
	ck_assert_int_eq(http(down.admin, "GET", "/healthz", NULL, NULL, NULL),
			 200);
	stop(&down);

	/* Kafka back: Stripe retries the same event (same topic as before) */
	start_on(&up, topic, brokers, NULL, NULL);
	sign(sig, body, SECRET, now_s());
	ck_assert_int_eq(post(&up, body, sig, NULL), 200);
	ck_assert_msg(topic_count(topic) == 1,
		      "exactly the retried event: nothing lost or duplicated");
	free(body);
	stop(&up);
}
END_TEST

/* Stop while requests are in flight: every 200 is on the topic, and
 * nothing that was answered non-2xx was produced by the draining path. */
START_TEST(test_relay_drain_on_stop)
{
	fixture f;
	CURLM *multi = curl_multi_init();
	CURL *easy[100];
	struct curl_slist *hdrs[100];
	char *bodies[100], id[32], sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	buf *resp = calloc(100, sizeof(buf));
	int running = 0, i, ok = 0, rounds = 0, left;
	CURLMsg *cm;

	start(&f, brokers, NULL, NULL);
	for (i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "evt_drain_%d", i);
		bodies[i] = event(id, "cus_D");
		sign(sig, bodies[i], SECRET, now_s());
		easy[i] = request(f.port, "POST", "/webhooks/stripe",
				  bodies[i], strlen(bodies[i]), sig, &hdrs[i],
				  &resp[i]);
		curl_multi_add_handle(multi, easy[i]);
	}
	do {
		curl_multi_perform(multi, &running);
		if (++rounds == 3)
			tally_relay_stop(f.r); /* blocks until drained */
		if (running)
			curl_multi_poll(multi, NULL, 0, 50, NULL);
	} while (running);
	while ((cm = curl_multi_info_read(multi, &left)) != NULL) {
		long code = 0;

		curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE,
				  &code);
		if (cm->data.result == CURLE_OK && code == 200)
			ok++;
	}
	for (i = 0; i < 100; i++) {
		curl_multi_remove_handle(multi, easy[i]);
		curl_easy_cleanup(easy[i]);
		curl_slist_free_all(hdrs[i]);
		free(bodies[i]);
	}
	curl_multi_cleanup(multi);
	fprintf(stderr, "drain: %d of 100 answered 200 before the stop\n", ok);
	ck_assert_msg(topic_count(f.topic) == ok,
		      "every 200 is on the topic and only those: %d vs %" PRId64,
		      ok, topic_count(f.topic));
	free(resp);
	stop(&f);
}
END_TEST

static int sick(char *detail, size_t n, void *payload)
{
	(void)payload;
	snprintf(detail, n, "db down");
	return 1;
}

START_TEST(test_metrics_server_http)
{
	tally_metrics *m = tally_metrics_new();
	tally_metrics_server *srv = NULL;
	tally_error err = { 0 };
	buf resp;
	int port;

	tally_counter_add(tally_metrics_counter(m, "x_total", NULL, "X."), 3);
	ck_assert_msg(tally_metrics_serve(&srv, m, "127.0.0.1:0", NULL, sick,
					  NULL, &err) == 0, "%s", err.msg);
	port = tally_metrics_server_port(srv);
	ck_assert_int_eq(http(port, "GET", "/metrics", NULL, NULL, &resp), 200);
	ck_assert_msg(strstr(resp.data, "\nx_total 3\n") != NULL, "%s",
		      resp.data);
	ck_assert_int_eq(http(port, "GET", "/healthz", NULL, NULL, &resp), 200);
	ck_assert_int_eq(http(port, "GET", "/readyz", NULL, NULL, &resp), 503);
	ck_assert_str_eq(resp.data, "unavailable: db down\n");
	ck_assert_int_eq(http(port, "GET", "/nope", NULL, NULL, NULL), 404);
	ck_assert_int_eq(http(port, "POST", "/metrics", "x", NULL, NULL), 405);
	tally_metrics_server_free(srv);
	tally_metrics_free(m);
}
END_TEST

static Suite *tally_relay_suite(void)
{
	Suite *s = suite_create("relay");
	TCase *tc = tcase_create("Relay");

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test-relay", TALLY_WARN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	srand((unsigned)getpid());
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_metrics_server_http);
	tcase_add_test(tc, test_relay_valid_event_on_topic);
	tcase_add_test(tc, test_relay_keys);
	tcase_add_test(tc, test_relay_rejects_and_produces_nothing);
	tcase_add_test(tc, test_relay_previous_secret);
	tcase_add_test(tc, test_relay_oversized);
	tcase_add_test(tc, test_relay_concurrent_500);
	tcase_add_test(tc, test_relay_kafka_down_then_back);
	tcase_add_test(tc, test_relay_drain_on_stop);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_suite)
