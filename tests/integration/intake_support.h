#ifndef TALLY_TESTS_INTAKE_SUPPORT_H
#define TALLY_TESTS_INTAKE_SUPPORT_H

/*
 * intake_support.h - for tests of tally-relay's HTTP intake: a POST with
 * a Content-Type and a bearer key (status, body, Retry-After), a fresh
 * topic, and the records of a topic read back from the beginning.
 */

#include <check.h>
#include <curl/curl.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "tally/common.h"
#include "tally/kafka.h"

#define INTAKE_PARTS 3

typedef struct intake_resp {
	long status;
	char body[65536];
	size_t len;
	long retry_after; /* -1: no Retry-After */
} intake_resp;

static size_t intake_on_body(char *p, size_t sz, size_t nm, void *ud)
{
	intake_resp *r = ud;
	size_t n = sz * nm, room = sizeof(r->body) - 1 - r->len;

	if (n < room)
		room = n;
	memcpy(r->body + r->len, p, room);
	r->len += room;
	r->body[r->len] = '\0';
	return n;
}

static size_t intake_on_header(char *p, size_t sz, size_t nm, void *ud)
{
	intake_resp *r = ud;
	size_t n = sz * nm;

	if (n > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		r->retry_after = strtol(p + 12, NULL, 10);
	return n;
}

/* POST body to port's path; ctype and key (Bearer) may be NULL. */
static void intake_post(intake_resp *out, int port, const char *method,
			const char *path, const char *ctype, const char *key,
			const char *body)
{
	struct curl_slist *h = NULL;
	CURL *c = curl_easy_init();
	char url[256], line[256];
	CURLcode cc;

	memset(out, 0, sizeof(*out));
	out->retry_after = -1;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
	h = curl_slist_append(h, "Expect:");
	snprintf(line, sizeof(line), "Content-Type: %s", ctype ? ctype : "");
	h = curl_slist_append(h, ctype ? line : "Content-Type:");
	if (key != NULL) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", key);
		h = curl_slist_append(h, line);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (body != NULL) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, intake_on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, intake_on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
	cc = curl_easy_perform(c);
	ck_assert_msg(cc == CURLE_OK, "%s %s: %s", method, path,
		      curl_easy_strerror(cc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
}

/* A fresh topic of INTAKE_PARTS partitions named after prefix. */
static void intake_make_topic(char *out, size_t n, const char *brokers,
			      const char *prefix)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	tally_error err = { 0 };
	const char *topics[2] = { out, NULL };

	snprintf(out, n, "%s.%d.%lld.%d", prefix, (int)getpid(),
		 (long long)tally_now_ms(), rand() % 100000);
	ck_assert_int_eq(tally_kafka_conf_set(conf, "bootstrap.servers",
					      brokers, &err), 0);
	ck_assert_msg(tally_kafka_producer_new(&rk, conf, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, INTAKE_PARTS,
						&err) == 0,
		      "create topic: %s", err.msg);
	rd_kafka_destroy(rk);
}

/*
 * Read records of topic from the beginning until max arrived or quiet_ms
 * passed without one (so a count below max is exact once the producer
 * has answered). Free with intake_done().
 */
static size_t intake_consume(rd_kafka_t **rk_out, rd_kafka_message_t **out,
			     size_t max, const char *brokers,
			     const char *topic, int quiet_ms)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_t *rk;
	char errstr[256], gid[200];
	size_t n = 0;
	int64_t last = tally_now_ms();
	int p;

	snprintf(gid, sizeof(gid), "%s.reader", topic);
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof(errstr));
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_ptr_nonnull(rk);
	parts = rd_kafka_topic_partition_list_new(INTAKE_PARTS);
	for (p = 0; p < INTAKE_PARTS; p++)
		rd_kafka_topic_partition_list_add(parts, topic, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while (n < max && tally_now_ms() - last < quiet_ms) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);

		if (m == NULL)
			continue;
		if (m->err) {
			rd_kafka_message_destroy(m);
			continue;
		}
		out[n++] = m;
		last = tally_now_ms();
	}
	*rk_out = rk;
	return n;
}

static void intake_done(rd_kafka_t *rk, rd_kafka_message_t **msgs, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		rd_kafka_message_destroy(msgs[i]);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
}

/* The last value of header name as a string ("" when absent). */
static const char *intake_header(rd_kafka_message_t *m, const char *name,
				 char *tmp, size_t n)
{
	rd_kafka_headers_t *h = NULL;
	const void *v;
	size_t vl;

	tmp[0] = '\0';
	if (rd_kafka_message_headers(m, &h) != 0 ||
	    rd_kafka_header_get_last(h, name, &v, &vl) != 0 || vl >= n)
		return tmp;
	memcpy(tmp, v, vl);
	tmp[vl] = '\0';
	return tmp;
}

#endif /* TALLY_TESTS_INTAKE_SUPPORT_H */
