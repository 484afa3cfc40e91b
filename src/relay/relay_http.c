/*
 * relay_http.c - tally-relay's listener (libmicrohttpd): the webhook path
 * and the intake path (relay_intake.c; /metrics, /healthz and /readyz are
 * on the admin listener, relay_admin.c). An intake request is checked
 * for its Content-Type, API key and rate before its body is read; a
 * webhook without a plausible Stripe-Signature is answered before its
 * body is read. A body is held only within its limit (relay.max_body or
 * relay.intake_max_body), relay.body_timeout_ms and the relay-wide
 * relay.max_buffered; then verify, suspend, hand to Kafka, answer when
 * resumed.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Count the outcome (and log a rejection). */
static void record(tally_relay *r, tally_relay__outcome o,
		   const tally_relay__req *rq)
{
	tally_counter_add(r->requests[o], 1);
	if (o == O_OK || o == O_ACCEPTED || o == O_PARTIAL) {
		if (rq != NULL)
			tally_histogram_observe(
				r->request_lat,
				(uint64_t)(tally_mono_ns() - rq->start_ns) /
					1000);
		if (rq != NULL && rq->kind != 0)
			tally_relay__intake_observe(r, rq);
	} else if (o != O_NOT_FOUND && o != O_METHOD) {
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
}

enum MHD_Result tally_relay__respond(tally_relay *r,
				     struct MHD_Connection *conn,
				     tally_relay__outcome o,
				     tally_relay__req *rq, const char *body,
				     int64_t retry_after_s)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	char fixed[96], ra[24];

	record(r, o, rq);
	if (body == NULL && rq != NULL && rq->answer.len > 0 &&
	    (o == O_ACCEPTED || o == O_PARTIAL))
		body = tally_strbuf_cstr(&rq->answer);
	if (body == NULL) {
		if (o == O_OK)
			snprintf(fixed, sizeof(fixed), "{\"received\":true}\n");
		else
			snprintf(fixed, sizeof(fixed), "{\"error\":\"%s\"}\n",
				 tally_relay__outcomes[o].reason);
		body = fixed;
	}
	resp = MHD_create_response_from_buffer(strlen(body), (void *)body,
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
	if (o == O_NO_KEY || o == O_BAD_KEY)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer");
	if (retry_after_s > 0) {
		snprintf(ra, sizeof(ra), "%lld", (long long)retry_after_s);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
	}
	ret = MHD_queue_response(conn, tally_relay__outcomes[o].status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result respond(tally_relay *r, struct MHD_Connection *conn,
			       tally_relay__outcome o, tally_relay__req *rq)
{
	return tally_relay__respond(r, conn, o, rq, NULL, 0);
}

/* Why a Stripe-Signature header cannot be valid, or O_OK. */
static tally_relay__outcome implausible(const char *sig)
{
	switch (tally_webhook_check_header(sig, MAX_SIG)) {
	case TALLY_WEBHOOK_OK:
		return O_OK;
	case TALLY_WEBHOOK_MISSING_HEADER:
		return O_MISSING_HEADER;
	case TALLY_WEBHOOK_NO_V1:
		return O_NO_V1;
	case TALLY_WEBHOOK_MALFORMED_HEADER:
		return O_MALFORMED_HEADER;
	default:
		return O_BAD_SIGNATURE;
	}
}

/* A new request's state: its body may hold up to max_body bytes. */
static tally_relay__req *new_req(tally_relay *r, struct MHD_Connection *conn,
				 size_t max_body)
{
	tally_relay__req *rq = tally_xcalloc(1, sizeof(*rq));

	rq->r = r;
	rq->conn = conn;
	rq->max_body = max_body;
	rq->received_ms = tally_now_ms();
	rq->start_ns = tally_mono_ns();
	rq->deadline_ns = rq->start_ns + r->body_timeout_ms * 1000000;
	atomic_init(&rq->state, S_READING);
	atomic_init(&rq->result, O_OK);
	atomic_init(&rq->outstanding, 0);
	atomic_init(&rq->failed, 0);
	return rq;
}

/* A Content-Length above max: 413 before the body is read. */
static bool too_long(struct MHD_Connection *conn, size_t max)
{
	const char *cl = MHD_lookup_connection_value(
		conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	int64_t clen;

	return cl != NULL && tally_parse_i64(&clen, cl) == 0 &&
	       clen > (int64_t)max;
}

/* The first call of an intake request: its type, key, rate and announced
 * length are checked before any body is read. */
static enum MHD_Result intake_first(tally_relay *r,
				    struct MHD_Connection *conn,
				    void **con_cls)
{
	tally_relay__req *rq;
	tally_relay__outcome o;
	tally_relay__kind kind;
	uint8_t tenant[16];
	int64_t wait;

	kind = tally_relay__intake_kind(MHD_lookup_connection_value(
		conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE));
	if (kind == 0)
		return respond(r, conn, O_UNSUPPORTED_TYPE, NULL);
	o = tally_relay__auth_check(
		r->auth,
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					    MHD_HTTP_HEADER_AUTHORIZATION),
		tenant, &wait);
	if (o != O_OK)
		return tally_relay__respond(r, conn, o, NULL, NULL, wait);
	if (too_long(conn, r->intake_max_body))
		return respond(r, conn, O_TOO_LARGE, NULL);
	rq = new_req(r, conn, r->intake_max_body);
	rq->kind = kind;
	memcpy(rq->tenant, tenant, sizeof(tenant));
	*con_cls = rq;
	return MHD_YES;
}

/* The first call of a request (headers read, no body yet): the path, the
 * method, the signature header and the announced length are checked
 * before any body is read; a plausible webhook POST gets its state. */
static enum MHD_Result first_call(tally_relay *r, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  void **con_cls)
{
	tally_relay__outcome o;
	bool intake = r->intake_path[0] != '\0' &&
		      strcmp(url, r->intake_path) == 0;

	if (!intake && strcmp(url, r->path) != 0)
		return respond(r, conn, O_NOT_FOUND, NULL);
	if (strcmp(method, MHD_HTTP_METHOD_POST) != 0)
		return respond(r, conn, O_METHOD, NULL);
	if (intake)
		return intake_first(r, conn, con_cls);
	o = implausible(MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						    TALLY_WEBHOOK_HEADER));
	if (o != O_OK)
		return respond(r, conn, o, NULL);
	if (too_long(conn, r->max_body))
		return respond(r, conn, O_TOO_LARGE, NULL);
	*con_cls = new_req(r, conn, r->max_body);
	return MHD_YES;
}

/* Give back what rq holds of r->buffered. */
static void release_body(tally_relay *r, tally_relay__req *rq)
{
	atomic_fetch_sub(&r->buffered, rq->held);
	rq->held = 0;
	tally_strbuf_free(&rq->body);
	tally_strbuf_free(&rq->answer);
}

/* A chunk of the body: O_OK, or why the request is answered now (past
 * relay.max_body, relay.body_timeout_ms or relay.max_buffered). */
static tally_relay__outcome append_body(tally_relay *r, tally_relay__req *rq,
					const char *data, size_t n)
{
	if (rq->body.len + n > rq->max_body)
		return O_TOO_LARGE;
	if (tally_mono_ns() > rq->deadline_ns)
		return O_BODY_TIMEOUT;
	if (atomic_fetch_add(&r->buffered, n) + n > r->max_buffered) {
		atomic_fetch_sub(&r->buffered, n);
		return O_BUSY;
	}
	rq->held += n;
	tally_strbuf_add(&rq->body, data, n);
	return O_OK;
}

bool tally_relay__hold(tally_relay *r, tally_relay__req *rq)
{
	bool draining;

	pthread_mutex_lock(&r->mu);
	draining = r->stopping;
	if (!draining) {
		rq->counted = true;
		r->pending++;
		tally_gauge_set(r->inflight, r->pending);
	}
	pthread_mutex_unlock(&r->mu);
	return !draining;
}

/* The whole body is here: verify, then hand it to Kafka with the
 * connection suspended (unless draining). */
static enum MHD_Result hand_off(tally_relay *r, struct MHD_Connection *conn,
				tally_relay__req *rq)
{
	char key[MAX_KEY + 1];
	const char *sig, *ctype;
	tally_relay__outcome o;

	if (rq->kind != 0)
		return tally_relay__intake(r, conn, rq);
	sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  TALLY_WEBHOOK_HEADER);
	o = tally_relay__verify(r, rq, sig, key, sizeof(key));
	if (o != O_OK)
		return respond(r, conn, o, rq);
	if (!tally_relay__hold(r, rq))
		return respond(r, conn, O_DRAINING, rq);

	ctype = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					    MHD_HTTP_HEADER_CONTENT_TYPE);
	atomic_store(&rq->state, S_WAITING);
	MHD_suspend_connection(conn);
	if (ctype == NULL || strlen(ctype) > MAX_CTYPE)
		ctype = "application/json";
	tally_relay__produce(r, rq, key, sig, ctype);
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
		tally_relay__outcome o = append_body(r, rq, upload_data,
						     *upload_data_size);

		*upload_data_size = 0;
		if (o == O_OK)
			return MHD_YES;
		/* MHD answers only a whole request: count, free, and close */
		release_body(r, rq);
		record(r, o, rq);
		return MHD_NO;
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
	release_body(r, rq);
	free(rq);
	*con_cls = NULL;
}
