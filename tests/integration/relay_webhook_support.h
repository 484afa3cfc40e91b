/*
 * relay_webhook_support.h - for the tally-relay webhook tests: a relay in
 * this process on a fresh topic of the real broker (TALLY_TEST_BROKERS),
 * real HTTP (libcurl), signed Stripe events, and what reached Kafka
 * counted with the partitions' high watermarks (the idempotent producer
 * writes exactly one record per message).
 */
#ifndef TALLY_TEST_RELAY_WEBHOOK_SUPPORT_H
#define TALLY_TEST_RELAY_WEBHOOK_SUPPORT_H

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

static inline void make_topic(char *out, size_t n)
{
	topic_make(out, n, brokers, "test.relay", PARTS);
}

/* topic NULL: a fresh one */
static inline void start_on(fixture *f, const char *topic, const char *kafka,
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

static inline void start(fixture *f, const char *kafka, const char *max_body,
		  const char *timeout_ms)
{
	start_on(f, NULL, kafka, max_body, timeout_ms);
}

static inline void stop(fixture *f)
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

static inline size_t on_data(char *p, size_t sz, size_t nm, void *ud)
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

static inline CURL *request(int port, const char *method, const char *path,
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

static inline long http(int port, const char *method, const char *path,
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

static inline long post(const fixture *f, const char *body, const char *sig,
			buf *out)
{
	return http(f->port, "POST", "/webhooks/stripe", body, sig, out);
}

static inline void sign(char *out, const char *body, const char *secret,
			int64_t t)
{
	tally_webhook_sign(out, TALLY_WEBHOOK_SIG_HEADER_MAX, body,
			   strlen(body), secret, t);
}

static inline int64_t now_s(void)
{
	return tally_now_ms() / 1000;
}

static inline char *event(const char *id, const char *customer)
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
static inline int64_t topic_count(const char *topic)
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

/* Once per program, before the tests: the broker, quiet logs, libcurl. */
static inline void relay_suite_init(void)
{
	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test-relay", TALLY_WARN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	srand((unsigned)getpid());
}

#endif
