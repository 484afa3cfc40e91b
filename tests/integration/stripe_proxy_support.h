/*
 * stripe_proxy_support.h - a recording proxy in front of stripe-mock
 * (libmicrohttpd, in the test process) that behaves like Stripe for
 * idempotency keys: a POST with a key it has seen gets the first answer
 * again, without creating anything. It adds latency, so that a kill -9
 * lands in the middle of Stripe calls. Set mock (stripe-mock's base URL),
 * then proxy_start().
 */
#ifndef TALLY_TEST_STRIPE_PROXY_SUPPORT_H
#define TALLY_TEST_STRIPE_PROXY_SUPPORT_H

#include "check_main.h"
#include "tally/pg.h"

#include <curl/curl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* stripe-mock's base URL, where the proxy forwards */
static const char *mock;

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

static inline enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind,
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

static inline size_t sink(char *p, size_t size, size_t n, void *payload)
{
	upload *u = payload;
	size_t len = size * n, room = sizeof(u->buf) - 1 - u->len;

	memcpy(u->buf + u->len, p, len < room ? len : room);
	u->len += len < room ? len : room;
	u->buf[u->len] = '\0';
	return len;
}

static inline rec *rec_find(const char *key)
{
	int i;

	for (i = 0; i < px.nrecs; i++)
		if (strcmp(px.recs[i].key, key) == 0)
			return &px.recs[i];
	return NULL;
}

static inline enum MHD_Result proxy_handler(void *cls,
					    struct MHD_Connection *conn,
					    const char *url, const char *method,
					    const char *version,
					    const char *data, size_t *data_size,
					    void **con_cls)
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

static inline void proxy_done(void *cls, struct MHD_Connection *conn,
			      void **con_cls,
			      enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

static inline void proxy_start(void)
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
static inline int objects_created(const char *path, int *distinct)
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
static inline void object_for_key(char *out, size_t n, const char *key)
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

#endif
