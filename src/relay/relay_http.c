/*
 * relay_http.c - tally-relay's HTTP side (libmicrohttpd): the webhook
 * path (read the body within relay.max_body, verify, suspend, hand to
 * Kafka, answer when resumed), /metrics, /healthz and /readyz, and the
 * answers.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "io/metrics_int.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READY_CACHE_MS 1000 /* /readyz probes at most one metadata call/s */

static enum MHD_Result respond(tally_relay *r, struct MHD_Connection *conn,
			       tally_relay__outcome o, tally_relay__req *rq)
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
			 tally_relay__outcomes[o].reason);
		if (o != O_NOT_FOUND && o != O_METHOD)
			tally_log(o == O_KAFKA ? TALLY_WARN : TALLY_INFO,
				  "relay.rejected",
				  TALLY_KV_INT("status",
					       tally_relay__outcomes[o].status),
				  TALLY_KV_STR("reason",
					       tally_relay__outcomes[o].reason),
				  TALLY_KV_STR("event_id", rq && rq->event_id[0]
							       ? rq->event_id
							       : ""));
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
	ret = MHD_queue_response(conn, tally_relay__outcomes[o].status, resp);
	MHD_destroy_response(resp);
	return ret;
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

/* The first call of a request: other paths, the method, the announced
 * length; a webhook POST gets its request state. */
static enum MHD_Result first_call(tally_relay *r, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  void **con_cls)
{
	enum MHD_Result ret = MHD_NO;
	tally_relay__req *rq;
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

/* A chunk of the body; past relay.max_body the rest is read and dropped
 * (then 413). */
static void append_body(tally_relay *r, tally_relay__req *rq,
			const char *data, size_t n)
{
	if (rq->too_big)
		return;
	if (rq->body.len + n > r->max_body) {
		rq->too_big = true; /* keep reading, then 413 */
		tally_strbuf_free(&rq->body);
		return;
	}
	tally_strbuf_add(&rq->body, data, n);
}

/* The whole body is here: verify, then hand it to Kafka with the
 * connection suspended (unless draining). */
static enum MHD_Result hand_off(tally_relay *r, struct MHD_Connection *conn,
				tally_relay__req *rq)
{
	char key[MAX_KEY + 1];
	const char *sig, *ctype;
	tally_relay__outcome o;
	bool draining;

	if (rq->too_big)
		return respond(r, conn, O_TOO_LARGE, rq);
	sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  TALLY_WEBHOOK_HEADER);
	o = tally_relay__verify(r, rq, sig, key, sizeof(key));
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
	tally_relay__produce(r, rq, key, sig,
			     ctype ? ctype : "application/json");
	return MHD_YES;
}

enum MHD_Result tally_relay__access_cb(void *cls, struct MHD_Connection *conn,
				       const char *url, const char *method,
				       const char *version,
				       const char *upload_data,
				       size_t *upload_data_size,
				       void **con_cls)
{
	tally_relay *r = cls;
	tally_relay__req *rq = *con_cls;

	(void)version;
	if (rq == NULL)
		return first_call(r, conn, url, method, con_cls);
	switch (atomic_load(&rq->state)) {
	case S_WAITING: /* spurious call while suspended: nothing to do */
		return MHD_YES;
	case S_DONE:
		return respond(r, conn,
			       (tally_relay__outcome)atomic_load(&rq->result),
			       rq);
	default:
		break;
	}
	if (*upload_data_size > 0) {
		append_body(r, rq, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	return hand_off(r, conn, rq);
}

void tally_relay__completed_cb(void *cls, struct MHD_Connection *conn,
			       void **con_cls,
			       enum MHD_RequestTerminationCode toe)
{
	tally_relay *r = cls;
	tally_relay__req *rq = *con_cls;

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
	tally_strbuf_free(&rq->body);
	free(rq);
	*con_cls = NULL;
}
