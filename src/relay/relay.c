/*
 * relay.c - tally-relay: Stripe webhooks onto Kafka, durable before 2xx.
 *
 * Key design decision: a verified request is never answered from the
 * HTTP thread. The handler suspends the connection (MHD suspend/resume),
 * produces the raw body, and returns; librdkafka's delivery report (on the
 * relay's poll thread) records 200 or 503 and resumes the connection, whose
 * next handler call queues the answer. So a 2xx is only ever sent after
 * acks=all succeeded, HTTP threads never block on Kafka, and the number of
 * events waiting for Kafka is bounded by connections, not threads.
 *
 * The connection is suspended *before* producing, so a delivery report
 * that arrives at once always finds a suspended connection to resume
 * (resuming one that is not suspended is undefined in libmicrohttpd).
 * Drain on stop: new requests get 503 under r->mu, the listener is
 * quiesced, and stop waits for r->pending (produced, no report yet) to
 * reach 0 before MHD_stop_daemon (which must never see a suspended
 * connection).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/relay.h"
#include "io/metrics_int.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4           /* MHD worker threads; handlers never block */
#define MAX_KEY 255         /* longer customer ids fall back to the event */
#define READY_CACHE_MS 1000 /* /readyz probes at most one metadata call/s */

/* Outcomes: one series of tally_relay_requests_total each. */
typedef enum {
	O_OK = 0,
	O_MISSING_HEADER,
	O_MALFORMED_HEADER,
	O_NO_V1,
	O_EXPIRED,
	O_BAD_SIGNATURE,
	O_MALFORMED_BODY,
	O_TOO_LARGE,
	O_KAFKA,
	O_DRAINING,
	O_METHOD,
	O_NOT_FOUND,
	O__COUNT
} outcome;

static const struct {
	unsigned status;
	const char *reason;
} outcomes[O__COUNT] = {
	[O_OK] = { 200, "ok" },
	[O_MISSING_HEADER] = { 400, "missing_header" },
	[O_MALFORMED_HEADER] = { 400, "malformed_header" },
	[O_NO_V1] = { 400, "no_v1" },
	[O_EXPIRED] = { 400, "expired" },
	[O_BAD_SIGNATURE] = { 400, "bad_signature" },
	[O_MALFORMED_BODY] = { 400, "malformed_body" },
	[O_TOO_LARGE] = { 413, "too_large" },
	[O_KAFKA] = { 503, "kafka_unavailable" },
	[O_DRAINING] = { 503, "draining" },
	[O_METHOD] = { 405, "method_not_allowed" },
	[O_NOT_FOUND] = { 404, "not_found" },
};

struct tally_relay {
	struct MHD_Daemon *d;
	MHD_socket lsock;
	rd_kafka_t *rk;
	pthread_t poller;
	bool poller_started;
	atomic_int poll_stop;
	atomic_int fatal;

	char *topic;
	char *path;
	char *secrets[2];
	const char *secret_list[2];
	size_t nsecrets;
	atomic_int_fast64_t tolerance_s;
	int64_t produce_timeout_ms;
	size_t max_body;
	int port;

	pthread_mutex_t mu; /* pending, stopping, stopped */
	pthread_cond_t cv;
	int pending; /* produced, not yet answered and completed */
	bool stopping, stopped;

	pthread_mutex_t ready_mu;
	int64_t ready_at_ms;
	int ready_bad;
	char ready_detail[128];

	tally_metrics *m;
	tally_counter *requests[O__COUNT];
	tally_counter *delivered, *delivery_failed;
	tally_histogram *produce_lat;
	tally_histogram *request_lat;
	tally_gauge *inflight;
};

typedef enum { S_READING = 0, S_WAITING, S_DONE } rstate;

typedef struct req {
	tally_relay *r;
	struct MHD_Connection *conn;
	char *body;
	size_t len, cap;
	bool too_big;
	bool counted; /* in r->pending until completed_cb */
	atomic_int state;
	atomic_int result; /* outcome once S_DONE */
	int64_t received_ms;
	int64_t start_ns;
	int64_t produce_ns;
	char event_id[64];
} req;

/* --- event checks --------------------------------------------------------- */

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_is_object(o) ? json_object_get(o, k) : NULL;

	return json_is_string(v) ? json_string_value(v) : NULL;
}

/*
 * Check that body is a Stripe event and pick the message key. Only called
 * on authenticated bodies (after the signature), so junk from strangers is
 * never parsed.
 */
static int parse_event(char *key, size_t keylen, char *evt, size_t evtlen,
		       const char *body, size_t len)
{
	json_error_t jerr;
	json_t *root, *obj;
	const char *id, *type, *k = NULL;
	int rc = -1;

	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(root))
		goto cleanup;
	id = jstr(root, "id");
	type = jstr(root, "type");
	if (id == NULL || strncmp(id, "evt_", 4) != 0 || strlen(id) >= evtlen ||
	    type == NULL || *type == '\0')
		goto cleanup;
	snprintf(evt, evtlen, "%s", id);
	obj = json_object_get(json_object_get(root, "data"), "object");
	if (json_is_object(obj)) {
		json_t *cus = json_object_get(obj, "customer");
		const char *otype = jstr(obj, "object");

		if (json_is_string(cus))
			k = json_string_value(cus);
		else if (json_is_object(cus)) /* expanded */
			k = jstr(cus, "id");
		else if (otype != NULL && strcmp(otype, "customer") == 0)
			k = jstr(obj, "id");
	}
	if (k == NULL || *k == '\0' || strlen(k) > MAX_KEY)
		k = id;
	snprintf(key, keylen, "%s", k);
	rc = 0;
cleanup:
	json_decref(root);
	return rc;
}

/* --- responses ------------------------------------------------------------ */

static enum MHD_Result respond(tally_relay *r, struct MHD_Connection *conn,
			       outcome o, req *rq)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	char body[96];

	tally_counter_add(r->requests[o], 1);
	if (o == O_OK) {
		snprintf(body, sizeof(body), "{\"received\":true}\n");
		if (rq != NULL)
			tally_histogram_observe(
				r->request_lat,
				(uint64_t)(tally_mono_ns() - rq->start_ns) /
					1000);
	} else {
		snprintf(body, sizeof(body), "{\"error\":\"%s\"}\n",
			 outcomes[o].reason);
		if (o != O_NOT_FOUND && o != O_METHOD)
			tally_log(o == O_KAFKA ? TALLY_WARN : TALLY_INFO,
				  "relay.rejected",
				  TALLY_KV_INT("status", outcomes[o].status),
				  TALLY_KV_STR("reason", outcomes[o].reason),
				  TALLY_KV_STR("event_id",
					       rq && rq->event_id[0] ?
					       rq->event_id : ""));
	}
	resp = MHD_create_response_from_buffer(strlen(body), body,
					       MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				"application/json");
	if (o == O_METHOD)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "POST");
	if (o == O_DRAINING)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION,
					"close");
	ret = MHD_queue_response(conn, outcomes[o].status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* --- Kafka ---------------------------------------------------------------- */

/*
 * Record the answer and give the connection back to MHD, whose next
 * handler call sends it. r->pending drops only when the request completes
 * (completed_cb), i.e. after the answer went out or the client left, so a
 * drain never closes a connection that owes its client a 200.
 */
static void finish(req *rq, outcome o)
{
	tally_relay *r = rq->r;
	struct MHD_Connection *conn = rq->conn;

	(void)r;
	atomic_store(&rq->result, (int)o);
	atomic_store(&rq->state, S_DONE);
	/* rq may be freed by an MHD thread from here on: don't touch it */
	MHD_resume_connection(conn);
}

/* Delivery report, on the poll thread. */
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
	tally_relay *r = opaque;
	req *rq = rkm->_private;

	(void)rk;
	tally_histogram_observe(r->produce_lat,
				(uint64_t)(tally_mono_ns() - rq->produce_ns) /
					1000);
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		tally_log(TALLY_WARN, "relay.produce_failed",
			  TALLY_KV_STR("event_id", rq->event_id),
			  TALLY_KV_STR("error", rd_kafka_err2str(rkm->err)));
		tally_counter_add(r->delivery_failed, 1);
		finish(rq, O_KAFKA);
		return;
	}
	tally_counter_add(r->delivered, 1);
	tally_log(TALLY_DEBUG, "relay.accepted",
		  TALLY_KV_STR("event_id", rq->event_id),
		  TALLY_KV_INT("partition", rkm->partition),
		  TALLY_KV_INT("offset", rkm->offset));
	finish(rq, O_OK);
}

static void error_cb(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
	tally_relay *r = opaque;
	char buf[256];

	if (e == RD_KAFKA_RESP_ERR__FATAL) {
		rd_kafka_fatal_error(rk, buf, sizeof(buf));
		atomic_store(&r->fatal, 1);
		tally_log(TALLY_ERR, "relay.kafka_fatal",
			  TALLY_KV_STR("error", buf));
		return;
	}
	tally_log(TALLY_WARN, "relay.kafka_error",
		  TALLY_KV_STR("error", rd_kafka_err2name(
					  (rd_kafka_resp_err_t)e)),
		  TALLY_KV_STR("detail", reason));
}

static void *poll_main(void *arg)
{
	tally_relay *r = arg;

	while (!atomic_load(&r->poll_stop))
		rd_kafka_poll(r->rk, 100);
	rd_kafka_poll(r->rk, 0);
	return NULL;
}

/* Produce rq's body; the connection is already suspended. */
static void produce(tally_relay *r, req *rq, const char *key,
		    const char *sig, const char *ctype)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(3);
	rd_kafka_resp_err_t e;
	char at[24];

	snprintf(at, sizeof(at), "%lld", (long long)rq->received_ms);
	rd_kafka_header_add(hdrs, "stripe-signature", -1, sig, -1);
	rd_kafka_header_add(hdrs, "received-at", -1, at, -1);
	rd_kafka_header_add(hdrs, "content-type", -1, ctype, -1);
	rq->produce_ns = tally_mono_ns();
	e = rd_kafka_producev(r->rk, RD_KAFKA_V_TOPIC(r->topic),
			      RD_KAFKA_V_KEY(key, strlen(key)),
			      RD_KAFKA_V_VALUE(rq->body, rq->len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_HEADERS(hdrs),
			      RD_KAFKA_V_OPAQUE(rq), RD_KAFKA_V_END);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		/* not enqueued: headers are still ours, no report will come */
		rd_kafka_headers_destroy(hdrs);
		tally_log(TALLY_WARN, "relay.produce_failed",
			  TALLY_KV_STR("event_id", rq->event_id),
			  TALLY_KV_STR("error", rd_kafka_err2str(e)));
		finish(rq, O_KAFKA);
	}
}

/* --- HTTP ----------------------------------------------------------------- */

static outcome verify(tally_relay *r, req *rq, const char *sig, char *key,
		      size_t keylen)
{
	tally_webhook_reason why;
	int64_t now_s = rq->received_ms / 1000;

	if (tally_webhook_verify(sig, rq->body ? rq->body : "", rq->len,
				 r->secret_list, r->nsecrets, now_s,
				 atomic_load(&r->tolerance_s), &why) != 0) {
		switch (why) {
		case TALLY_WEBHOOK_MISSING_HEADER:
			return O_MISSING_HEADER;
		case TALLY_WEBHOOK_MALFORMED_HEADER:
			return O_MALFORMED_HEADER;
		case TALLY_WEBHOOK_NO_V1:
			return O_NO_V1;
		case TALLY_WEBHOOK_EXPIRED:
			return O_EXPIRED;
		default:
			return O_BAD_SIGNATURE;
		}
	}
	if (parse_event(key, keylen, rq->event_id, sizeof(rq->event_id),
			rq->body ? rq->body : "", rq->len) != 0)
		return O_MALFORMED_BODY;
	return O_OK;
}

static int health_fn(char *detail, size_t n, void *payload)
{
	tally_relay *r = payload;

	if (atomic_load(&r->fatal)) {
		snprintf(detail, n, "kafka producer fatal error");
		return 1;
	}
	return 0;
}

static int ready_fn(char *detail, size_t n, void *payload)
{
	tally_relay *r = payload;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t e;
	bool stopping;
	int64_t now = tally_now_ms();
	int bad;

	if (health_fn(detail, n, payload) != 0)
		return 1;
	pthread_mutex_lock(&r->mu);
	stopping = r->stopping;
	pthread_mutex_unlock(&r->mu);
	if (stopping) {
		snprintf(detail, n, "draining");
		return 1;
	}
	pthread_mutex_lock(&r->ready_mu);
	if (now - r->ready_at_ms >= READY_CACHE_MS) {
		e = rd_kafka_metadata(r->rk, 0, NULL, &md, 2000);
		if (e == RD_KAFKA_RESP_ERR_NO_ERROR && md->broker_cnt > 0) {
			r->ready_bad = 0;
			snprintf(r->ready_detail, sizeof(r->ready_detail),
				 "kafka: %d broker(s)", md->broker_cnt);
		} else {
			r->ready_bad = 1;
			snprintf(r->ready_detail, sizeof(r->ready_detail),
				 "kafka unreachable: %s",
				 e ? rd_kafka_err2name(e) : "no brokers");
		}
		if (md != NULL)
			rd_kafka_metadata_destroy(md);
		r->ready_at_ms = tally_now_ms();
	}
	bad = r->ready_bad;
	snprintf(detail, n, "%s", r->ready_detail);
	pthread_mutex_unlock(&r->ready_mu);
	return bad;
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn,
				 const char *url, const char *method,
				 const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	tally_relay *r = cls;
	req *rq = *con_cls;
	enum MHD_Result ret = MHD_NO;
	char key[MAX_KEY + 1];
	const char *sig, *ctype;
	outcome o;
	bool draining;

	(void)version;
	if (rq == NULL) {
		const char *cl;
		int64_t clen;

		if (strcmp(url, r->path) != 0) {
			if (tally_metrics__handle(&ret, conn, method, url, r->m,
						  health_fn, ready_fn, r))
				return ret;
			return respond(r, conn, O_NOT_FOUND, NULL);
		}
		if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
			return respond(r, conn, O_METHOD, NULL);
		cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						 MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl != NULL && tally_parse_i64(&clen, cl) == 0 &&
		    clen > (int64_t)r->max_body)
			return respond(r, conn, O_TOO_LARGE, NULL);
		rq = tally_xcalloc(1, sizeof(*rq));
		rq->r = r;
		rq->conn = conn;
		rq->received_ms = tally_now_ms();
		rq->start_ns = tally_mono_ns();
		atomic_init(&rq->state, S_READING);
		atomic_init(&rq->result, O_OK);
		*con_cls = rq;
		return MHD_YES;
	}

	switch (atomic_load(&rq->state)) {
	case S_WAITING: /* spurious call while suspended: nothing to do */
		return MHD_YES;
	case S_DONE:
		return respond(r, conn, (outcome)atomic_load(&rq->result), rq);
	default:
		break;
	}

	if (*upload_data_size > 0) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		if (rq->too_big)
			return MHD_YES;
		if (rq->len + n > r->max_body) {
			rq->too_big = true; /* keep reading, then 413 */
			free(rq->body);
			rq->body = NULL;
			rq->len = rq->cap = 0;
			return MHD_YES;
		}
		if (rq->len + n > rq->cap) {
			size_t cap = rq->cap ? rq->cap : 4096;
			while (cap < rq->len + n)
				cap *= 2;
			rq->body = tally_xrealloc(rq->body, cap);
			rq->cap = cap;
		}
		memcpy(rq->body + rq->len, upload_data, n);
		rq->len += n;
		return MHD_YES;
	}

	/* the whole body is here */
	if (rq->too_big)
		return respond(r, conn, O_TOO_LARGE, rq);
	sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  TALLY_WEBHOOK_HEADER);
	o = verify(r, rq, sig, key, sizeof(key));
	if (o != O_OK)
		return respond(r, conn, o, rq);

	pthread_mutex_lock(&r->mu);
	draining = r->stopping;
	if (!draining) {
		rq->counted = true;
		r->pending++;
		tally_gauge_set(r->inflight, r->pending);
	}
	pthread_mutex_unlock(&r->mu);
	if (draining)
		return respond(r, conn, O_DRAINING, rq);

	ctype = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					    MHD_HTTP_HEADER_CONTENT_TYPE);
	atomic_store(&rq->state, S_WAITING);
	MHD_suspend_connection(conn);
	produce(r, rq, key, sig, ctype ? ctype : "application/json");
	return MHD_YES;
}

static void completed_cb(void *cls, struct MHD_Connection *conn,
			 void **con_cls, enum MHD_RequestTerminationCode toe)
{
	tally_relay *r = cls;
	req *rq = *con_cls;

	(void)conn;
	(void)toe;
	if (rq == NULL)
		return;
	if (rq->counted) {
		pthread_mutex_lock(&r->mu);
		r->pending--;
		tally_gauge_set(r->inflight, r->pending);
		pthread_cond_broadcast(&r->cv);
		pthread_mutex_unlock(&r->mu);
	}
	free(rq->body);
	free(rq);
	*con_cls = NULL;
}

/* --- lifecycle ------------------------------------------------------------ */

static int kafka_setup(tally_relay *r, const tally_config *cfg,
		       tally_error *err)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	char tmo[24];
	int rc;

	snprintf(tmo, sizeof(tmo), "%lld", (long long)r->produce_timeout_ms);
	rc = tally_kafka_conf_set(conf, "acks", "all", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "enable.idempotence", "true",
					  err);
	if (rc == 0) /* a report (and so an answer) within the timeout */
		rc = tally_kafka_conf_set(conf, "message.timeout.ms", tmo, err);
	if (rc == 0) /* webhooks are latency-bound, not batch-bound */
		rc = tally_kafka_conf_set(conf, "linger.ms", "1", err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		return rc;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_opaque(conf, r);
	return tally_kafka_producer_new(&r->rk, conf, err);
}

static void register_metrics(tally_relay *r)
{
	char labels[96];
	int i;

	for (i = 0; i < O__COUNT; i++) {
		snprintf(labels, sizeof(labels),
			 "status=\"%u\",reason=\"%s\"", outcomes[i].status,
			 outcomes[i].reason);
		r->requests[i] = tally_metrics_counter(
			r->m, "tally_relay_requests_total", labels,
			"Webhook requests answered, by HTTP status and reason.");
	}
	r->delivered = tally_metrics_counter(
		r->m, "tally_relay_delivered_total", NULL,
		"Events acknowledged by Kafka (each is one record on the "
		"topic; a client that left before its 200 still counts).");
	r->delivery_failed = tally_metrics_counter(
		r->m, "tally_relay_delivery_failed_total", NULL,
		"Events Kafka could not take in time (answered 503).");
	r->produce_lat = tally_metrics_histogram(
		r->m, "tally_relay_produce_seconds", NULL,
		"Time from produce to Kafka delivery report (acks=all).",
		NULL, 0);
	r->request_lat = tally_metrics_histogram(
		r->m, "tally_relay_request_seconds", NULL,
		"Time from request headers to a 200 answer.", NULL, 0);
	r->inflight = tally_metrics_gauge(
		r->m, "tally_relay_inflight",
		NULL, "Verified events waiting for their delivery report.");
}

int tally_relay_new(tally_relay **out, const tally_config *cfg,
		    tally_metrics *m, tally_error *err)
{
	tally_relay *r = tally_xcalloc(1, sizeof(*r));
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	const union MHD_DaemonInfo *info;
	const char *listen = tally_config_str(cfg, "relay.listen");
	unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	const char *s;
	int rc;

	r->m = m;
	r->lsock = MHD_INVALID_SOCKET;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	pthread_mutex_init(&r->ready_mu, NULL);
	atomic_init(&r->poll_stop, 0);
	atomic_init(&r->fatal, 0);
	atomic_init(&r->tolerance_s, tally_config_int(cfg, "relay.tolerance_s"));
	r->topic = tally_xstrdup(tally_config_str(cfg, "topics.stripe_events"));
	r->path = tally_xstrdup(tally_config_str(cfg, "relay.path"));
	r->produce_timeout_ms = tally_config_int(cfg,
						 "relay.produce_timeout_ms");
	r->max_body = (size_t)tally_config_int(cfg, "relay.max_body");
	s = tally_config_str(cfg, "relay.webhook_secret");
	if (*s != '\0')
		r->secrets[r->nsecrets++] = tally_xstrdup(s);
	s = tally_config_str(cfg, "relay.webhook_secret_previous");
	if (*s != '\0')
		r->secrets[r->nsecrets++] = tally_xstrdup(s);
	r->secret_list[0] = r->secrets[0];
	r->secret_list[1] = r->secrets[1];
	register_metrics(r);
	r->stopped = true; /* until the server runs: stop is a no-op */

	if (r->nsecrets == 0) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "no webhook secret: set "
				     "STRIPE_WEBHOOK_SECRET");
		goto fail;
	}
	if (r->path[0] != '/') {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "relay.path must start with '/'");
		goto fail;
	}
	rc = tally_metrics_parse_listen(&ss, &sl, listen, err);
	if (rc != 0)
		goto fail;
	rc = kafka_setup(r, cfg, err);
	if (rc != 0)
		goto fail;
	if (pthread_create(&r->poller, NULL, poll_main, r) != 0) {
		rc = tally_error_set(err, TALLY_ERROR, "cannot start thread");
		goto fail;
	}
	r->poller_started = true;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	r->d = MHD_start_daemon(
		flags, 0, NULL, NULL, access_cb, r,
		/* must come first, or MHD logs to stderr before it is set */
		MHD_OPTION_EXTERNAL_LOGGER, tally_metrics__mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)THREADS,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)8192,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
		MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
		MHD_OPTION_NOTIFY_COMPLETED, completed_cb, r,
		MHD_OPTION_END);
	if (r->d == NULL) {
		rc = tally_error_set(err, TALLY_ERROR, "cannot listen on %s",
				     listen);
		goto fail;
	}
	info = MHD_get_daemon_info(r->d, MHD_DAEMON_INFO_BIND_PORT);
	r->port = info != NULL ? (int)info->port : 0;
	r->stopped = false;
	tally_log(TALLY_INFO, "relay.listening", TALLY_KV_STR("listen", listen),
		  TALLY_KV_INT("port", r->port), TALLY_KV_STR("path", r->path),
		  TALLY_KV_STR("topic", r->topic),
		  TALLY_KV_INT("secrets", (int64_t)r->nsecrets));
	*out = r;
	return 0;
fail:
	tally_relay_free(r);
	return rc;
}

int tally_relay_port(const tally_relay *r)
{
	return r->port;
}

void tally_relay_reload(tally_relay *r, const tally_config *cfg)
{
	atomic_store(&r->tolerance_s,
		     tally_config_int(cfg, "relay.tolerance_s"));
}

int tally_relay_failed(const tally_relay *r)
{
	return atomic_load(&((tally_relay *)r)->fatal);
}

/* Wait until nothing is pending or deadline (monotonic ns) passes. */
static bool wait_pending(tally_relay *r, int64_t deadline_ns)
{
	struct timespec ts;
	bool done;

	pthread_mutex_lock(&r->mu);
	while (r->pending > 0 && tally_mono_ns() < deadline_ns) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	done = r->pending == 0;
	pthread_mutex_unlock(&r->mu);
	return done;
}

void tally_relay_stop(tally_relay *r)
{
	int64_t deadline;
	int left;

	pthread_mutex_lock(&r->mu);
	if (r->stopped || r->stopping) {
		pthread_mutex_unlock(&r->mu);
		return;
	}
	r->stopping = true;
	left = r->pending;
	pthread_mutex_unlock(&r->mu);
	tally_log(TALLY_INFO, "relay.draining", TALLY_KV_INT("pending", left));

	r->lsock = MHD_quiesce_daemon(r->d);
	/* every message gets a report within message.timeout.ms */
	deadline = tally_mono_ns() + (r->produce_timeout_ms + 5000) * 1000000;
	if (!wait_pending(r, deadline)) {
		tally_log(TALLY_WARN, "relay.purge",
			  TALLY_KV_STR("reason", "drain timeout"));
		rd_kafka_purge(r->rk, RD_KAFKA_PURGE_F_QUEUE |
				      RD_KAFKA_PURGE_F_INFLIGHT);
		(void)wait_pending(r, tally_mono_ns() + 5000 * INT64_C(1000000));
	}
	rd_kafka_flush(r->rk, 5000);
	MHD_stop_daemon(r->d);
	r->d = NULL;
	if (r->lsock != MHD_INVALID_SOCKET)
		close(r->lsock);
	r->lsock = MHD_INVALID_SOCKET;
	pthread_mutex_lock(&r->mu);
	r->stopped = true;
	pthread_mutex_unlock(&r->mu);
	tally_log(TALLY_INFO, "relay.stopped",
		  TALLY_KV_INT("ok", (int64_t)tally_counter_get(
					     r->requests[O_OK])));
}

void tally_relay_free(tally_relay *r)
{
	size_t i;

	if (r == NULL)
		return;
	tally_relay_stop(r);
	if (r->poller_started) {
		atomic_store(&r->poll_stop, 1);
		pthread_join(r->poller, NULL);
	}
	if (r->rk != NULL)
		rd_kafka_destroy(r->rk);
	for (i = 0; i < r->nsecrets; i++) {
		OPENSSL_cleanse(r->secrets[i], strlen(r->secrets[i]));
		free(r->secrets[i]);
	}
	free(r->topic);
	free(r->path);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->ready_mu);
	free(r);
}
