/*
 * relay_intake.c - tally-relay's HTTP intake of usage events (POST
 * relay.intake_path): the body's events, each validated by the codec core
 * that judges Kafka input (tally_codec_usage_from_json) and checked against
 * the API key's tenant, then produced as canonical msgpack to topics.usage
 * (tally/producer.h: key, CloudEvents headers, acks=all). The answer waits
 * for every accepted event's delivery report, as a webhook's does.
 *
 * Bodies: application/json (one usage event, or an array of them),
 * application/cloudevents+json (one CloudEvent, the usage event in its
 * data) and application/cloudevents-batch+json (an array of CloudEvents).
 * An invalid event never stops the others: the answer lists each rejected
 * index with its reason code and field (docs/relay.md).
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "tally/codec.h"
#include "tally/codec_json.h"
#include "tally/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct {
	const char *type;
	tally_relay__kind kind;
} kinds[] = {
	{ "application/json", K_JSON },
	{ "application/cloudevents+json", K_CE },
	{ "application/cloudevents-batch+json", K_CE_BATCH },
};

tally_relay__kind tally_relay__intake_kind(const char *ctype)
{
	size_t n, i;

	if (ctype == NULL)
		return 0;
	while (*ctype == ' ')
		ctype++;
	n = strcspn(ctype, "; \t");
	for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strlen(kinds[i].type) == n &&
		    strncasecmp(ctype, kinds[i].type, n) == 0)
			return kinds[i].kind;
	return 0;
}

/* Count and list the rejection of event i. */
static void reject(tally_relay *r, json_t *list, size_t i, const char *code,
		   const char *field)
{
	char labels[96];

	json_array_append_new(list, json_pack("{s:I,s:s,s:s}", "index",
					      (json_int_t)i, "code", code,
					      "field", field));
	snprintf(labels, sizeof(labels), "result=\"rejected\",reason=\"%s\"",
		 code);
	tally_counter_add(tally_metrics_counter(r->m,
						"tally_relay_intake_events_total",
						labels, EVENTS_HELP),
			  1);
}

/* The usage event of a CloudEvent (structured mode), or NULL with the
 * reason and field. */
static const json_t *cloudevent_data(const json_t *ce, const char **code,
				     const char **field)
{
	const json_t *sv, *data;

	*field = "";
	if (!json_is_object(ce)) {
		*code = "not_a_map";
		return NULL;
	}
	sv = json_object_get(ce, "specversion");
	data = json_object_get(ce, "data");
	if (sv == NULL || data == NULL) {
		*code = "missing_field";
		*field = sv == NULL ? "specversion" : "data";
		return NULL;
	}
	if (!json_is_string(sv) || strcmp(json_string_value(sv), "1.0") != 0) {
		*code = json_is_string(sv) ? "bad_value" : "wrong_type";
		*field = "specversion";
		return NULL;
	}
	if (!json_is_object(data)) {
		*code = "wrong_type";
		*field = "data";
		return NULL;
	}
	return data;
}

/*
 * Judge item i: 0 with *ev filled (strings borrowed from item), or -1
 * after listing its rejection. In a CloudEvent the fields of the usage
 * event are named from the CloudEvent ("data.tenant_id").
 */
static int judge(tally_relay *r, const tally_relay__req *rq, json_t *rejected,
		 size_t i, const json_t *item, tally_usage_event *ev)
{
	const json_t *obj = item;
	tally_codec_error ce;
	const char *code, *field;
	char path[64];

	if (rq->kind != K_JSON) {
		obj = cloudevent_data(item, &code, &field);
		if (obj == NULL) {
			reject(r, rejected, i, code, field);
			return -1;
		}
	}
	memset(&ce, 0, sizeof(ce));
	if (tally_codec_usage_from_json(ev, obj, &ce) != 0) {
		if (rq->kind != K_JSON)
			snprintf(path, sizeof(path), "data%s%s",
				 ce.field[0] ? "." : "", ce.field);
		else
			snprintf(path, sizeof(path), "%s", ce.field);
		reject(r, rejected, i, ce.reason, path);
		return -1;
	}
	if (memcmp(ev->tenant_id, rq->tenant, 16) != 0) {
		reject(r, rejected, i, "tenant_mismatch",
		       rq->kind != K_JSON ? "data.tenant_id" : "tenant_id");
		return -1;
	}
	return 0;
}

/* Whether the body is an array of events (else root is the one event);
 * *ok false when its shape does not fit its Content-Type. */
static bool is_batch(const tally_relay__req *rq, const json_t *root,
		     bool *ok)
{
	*ok = true;
	switch (rq->kind) {
	case K_CE:
		*ok = json_is_object(root);
		return false;
	case K_CE_BATCH:
		*ok = json_is_array(root);
		return true;
	default:
		*ok = json_is_object(root) || json_is_array(root);
		return json_is_array(root);
	}
}

/* Produce the accepted events; the connection is suspended. Each queued
 * event holds one count of rq->outstanding until its report. The events
 * are encoded into a buffer of this request's own, so the HTTP threads
 * do not queue behind one lock of the producer. */
static void produce(tally_relay *r, tally_relay__req *rq,
		    const tally_usage_event *evs, size_t n)
{
	tally_error err = { 0 };
	msgpack_sbuffer sb;
	size_t i;
	int rc;

	msgpack_sbuffer_init(&sb);
	for (i = 0; i < n; i++) {
		atomic_fetch_add(&rq->outstanding, 1);
		rc = tally_producer_send_usage_sb(r->usage, &evs[i], &sb, rq,
						  &err);
		if (rc != 0) {
			if (rc == TALLY_ERROR) /* fatal: exit, be restarted */
				atomic_store(&r->fatal, 1);
			atomic_fetch_sub(&rq->outstanding, 1);
			atomic_store(&rq->failed, 1);
			tally_counter_add(r->events_unavailable, n - i);
			tally_log(TALLY_WARN, "relay.intake_produce_failed",
				  TALLY_KV_STR("error", err.msg));
			break;
		}
	}
	msgpack_sbuffer_destroy(&sb);
}

/* One report less; the last one answers. */
static void release(tally_relay__req *rq)
{
	tally_relay__outcome o;

	if (atomic_fetch_sub(&rq->outstanding, 1) != 1)
		return;
	rq->reported_ns = tally_mono_ns();
	o = atomic_load(&rq->failed) ? O_KAFKA
				     : (tally_relay__outcome)atomic_load(
					       &rq->result);
	tally_relay__finish(rq, o);
}

void tally_relay__intake_delivered(const tally_delivery *dr, void *payload)
{
	tally_relay *r = payload;
	tally_relay__req *rq = dr->opaque;

	tally_histogram_observe(r->produce_lat,
				(uint64_t)(tally_mono_ns() - rq->produce_ns) /
					1000);
	if (dr->code != 0) {
		if (dr->code == TALLY_ERROR) /* fatal producer error */
			atomic_store(&r->fatal, 1);
		tally_counter_add(r->events_unavailable, 1);
		if (atomic_exchange(&rq->failed, 1) == 0)
			tally_log(TALLY_WARN, "relay.produce_failed",
				  TALLY_KV_STR("topic", dr->topic),
				  TALLY_KV_STR("error", dr->errstr));
	} else {
		tally_counter_add(r->events_accepted, 1);
	}
	release(rq);
}

static const char *const stage_names[ST__COUNT] = {
	[ST_READ] = "read",	  [ST_VALIDATE] = "validate",
	[ST_PRODUCE] = "produce", [ST_KAFKA] = "kafka",
	[ST_ANSWER] = "answer",	  [ST_TOTAL] = "total",
};

void tally_relay__intake_metrics(tally_relay *r)
{
	/* fine around the 1-100 ms an answer takes */
	static const uint64_t bounds_us[] = {
		100,   250,    500,    1000,   2000,    5000,    10000,
		20000, 50000,  100000, 200000, 500000,  1000000, 2500000,
		5000000, 10000000,
	};
	char labels[32];
	int i;

	for (i = 0; i < ST__COUNT; i++) {
		snprintf(labels, sizeof(labels), "stage=\"%s\"",
			 stage_names[i]);
		r->intake_lat[i] = tally_metrics_histogram(
			r->m, "tally_relay_intake_seconds", labels,
			"Intake requests answered 202/207, by stage: read "
			"(headers to whole body), validate (parse and judge), "
			"produce (queue every event), kafka (to the last "
			"delivery report), answer (to the answer queued), "
			"total.",
			bounds_us, sizeof(bounds_us) / sizeof(bounds_us[0]));
	}
}

static void observe(tally_histogram *h, int64_t from_ns, int64_t to_ns)
{
	tally_histogram_observe(h, to_ns > from_ns
					   ? (uint64_t)(to_ns - from_ns) / 1000
					   : 0);
}

void tally_relay__intake_observe(tally_relay *r, const tally_relay__req *rq)
{
	int64_t now = tally_mono_ns();

	if (rq->reported_ns == 0) /* answered without producing */
		return;
	observe(r->intake_lat[ST_READ], rq->start_ns, rq->body_ns);
	observe(r->intake_lat[ST_VALIDATE], rq->body_ns, rq->produce_ns);
	observe(r->intake_lat[ST_PRODUCE], rq->produce_ns, rq->queued_ns);
	/* the last report may come before the last event is queued */
	observe(r->intake_lat[ST_KAFKA], rq->queued_ns, rq->reported_ns);
	observe(r->intake_lat[ST_ANSWER], rq->reported_ns, now);
	observe(r->intake_lat[ST_TOTAL], rq->start_ns, now);
}

/* The answer's body: {"accepted":N,"rejected":[...]} */
static void answer_body(tally_relay__req *rq, size_t accepted,
			json_t *rejected)
{
	json_t *o = json_pack("{s:I,s:O}", "accepted", (json_int_t)accepted,
			      "rejected", rejected);
	char *s = json_dumps(o, JSON_COMPACT);

	tally_strbuf_puts(&rq->answer, s);
	tally_strbuf_puts(&rq->answer, "\n");
	free(s);
	json_decref(o);
}

enum MHD_Result tally_relay__intake(tally_relay *r,
				    struct MHD_Connection *conn,
				    tally_relay__req *rq)
{
	json_error_t jerr;
	json_t *root, *rejected;
	tally_usage_event *evs;
	tally_relay__outcome o;
	size_t n, i, nacc = 0;
	bool batch, ok;

	rq->body_ns = tally_mono_ns();
	root = json_loadb(tally_strbuf_cstr(&rq->body), rq->body.len,
			  JSON_REJECT_DUPLICATES, &jerr);
	batch = is_batch(rq, root, &ok);
	if (root == NULL || !ok) {
		json_decref(root);
		return tally_relay__respond(r, conn, O_MALFORMED_BODY, rq,
					    NULL, 0);
	}
	n = batch ? json_array_size(root) : 1;
	if (n > r->intake_max_events) {
		json_decref(root);
		return tally_relay__respond(r, conn, O_TOO_MANY_EVENTS, rq,
					    NULL, 0);
	}
	evs = tally_xcalloc(n ? n : 1, sizeof(*evs));
	rejected = json_array();
	for (i = 0; i < n; i++)
		if (judge(r, rq, rejected, i,
			  batch ? json_array_get(root, i) : root,
			  &evs[nacc]) == 0)
			nacc++;
	o = json_array_size(rejected) > 0 ? O_PARTIAL : O_ACCEPTED;
	answer_body(rq, nacc, rejected);
	json_decref(rejected);
	rq->accepted = (int)nacc;
	if (nacc == 0 || !tally_relay__hold(r, rq)) {
		json_decref(root);
		free(evs);
		return tally_relay__respond(r, conn,
					    nacc == 0 ? o : O_DRAINING, rq,
					    NULL, 0);
	}
	atomic_store(&rq->result, (int)o);
	atomic_store(&rq->outstanding, 1); /* ours until all are queued */
	atomic_store(&rq->state, S_WAITING);
	MHD_suspend_connection(conn);
	rq->produce_ns = tally_mono_ns();
	produce(r, rq, evs, nacc);
	rq->queued_ns = tally_mono_ns();
	json_decref(root);
	free(evs);
	release(rq); /* rq may be gone from here on */
	return MHD_YES;
}
