/*
 * sync_signals.c - the billing.signals outbox: signals are written to
 * billing_signals_outbox inside the transaction of the fact they announce
 * (tally_ss__signal_emit) and published from there through the shared
 * outbox (io/outbox.h), each row marked on its own delivery report
 * (tally_stripe_sync_publish).
 */
#define _POSIX_C_SOURCE 200809L
#include "io/outbox.h"
#include "stripe/sync_int.h"
#include "tally/event.h"
#include "tally/log.h"

#include "base/strbuf.h"

#include <openssl/sha.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A stable UUID (v5-style layout) from a string. */
static void stable_uuid(char out[37], const char *s)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	uint8_t u[16];

	SHA256((const unsigned char *)s, strlen(s), md);
	memcpy(u, md, 16);
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x50);
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
	tally_uuid_fmt(out, u);
}

/*
 * Write a signal to the outbox. Its id derives from (kind, cause), so the
 * same fact announced twice (from a command and from its webhook) is one
 * signal. fields is stolen.
 */
int tally_ss__signal_emit(tally_stripe_sync *ss, const char *tenant_id,
		       const char *kind, const char *cause, int64_t time_s,
		       json_t *fields, tally_error *err)
{
	char id[37], seed[600], tbuf[32];
	json_t *p = fields ? fields : json_object();
	char *text = NULL;
	int rc;

	snprintf(seed, sizeof(seed), "%s|%s|%s", tenant_id, kind, cause);
	stable_uuid(id, seed);
	tally_fmt_time_ms(tbuf, time_s * 1000);
	json_object_set_new(p, "id", json_string(id));
	json_object_set_new(p, "kind", json_string(kind));
	json_object_set_new(p, "tenant_id", json_string(tenant_id));
	json_object_set_new(p, "time", json_integer(time_s * 1000));
	json_object_set_new(p, "occurred_at", json_string(tbuf));
	json_object_set_new(p, "cause", json_string(cause));
	json_object_set_new(p, "version", json_integer(1));
	text = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
	rc = tally_ss__ex(ss, NULL, err,
		"INSERT INTO billing_signals_outbox (tenant_id, signal_id, "
		"kind, payload) VALUES ($1, $2, $3, $4::jsonb) "
		"ON CONFLICT DO NOTHING", 4, tenant_id, id, kind, text);
	free(text);
	json_decref(p);
	return rc;
}

/* A signal's identity in the outbox: its outbox row's key, as text. */
typedef struct sig_ident {
	char tenant_id[37];
	char signal_id[37];
} sig_ident;

bool tally_stripe_sync_on_delivery(const rd_kafka_message_t *rkm)
{
	return tally_outbox_report(rkm);
}

static void default_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
			  void *opaque)
{
	(void)rk;
	(void)opaque;
	(void)tally_stripe_sync_on_delivery(rkm);
}

void tally_stripe_sync_producer_conf(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, default_dr_cb);
}

static void log_failed(const void *ident, rd_kafka_resp_err_t kerr,
		       void *ctx)
{
	const sig_ident *id = ident;

	(void)ctx;
	tally_log(TALLY_WARN, "stripe.signal_not_delivered",
		  TALLY_KV_STR("signal_id", id->signal_id),
		  TALLY_KV_STR("error", rd_kafka_err2str(kerr)));
}

/* The outbox of (producer, topic): made by the first publish; one
 * tally_stripe_sync publishes with one producer to one topic. */
static int signals_outbox(tally_stripe_sync *ss, rd_kafka_t *producer,
			  const char *topic, tally_error *err)
{
	if (ss->signals == NULL) {
		ss->signals = tally_outbox_new(producer, topic,
					       sizeof(sig_ident));
		tally_outbox_on_failure(ss->signals, log_failed, NULL);
		ss->signals_producer = producer;
		ss->signals_topic = tally_xstrdup(topic);
	}
	if (producer != ss->signals_producer ||
	    strcmp(topic, ss->signals_topic) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "signals: published with one producer"
				       " to %s already", ss->signals_topic);
	return 0;
}

/* Mark the acknowledged signals published (failed ones stay unpublished
 * and are produced again). On a PG error the acknowledgements stay for
 * the next call. */
static int settle(tally_stripe_sync *ss, int *marked, tally_error *err)
{
	tally_strbuf tids = TALLY_STRBUF_INIT, sids = TALLY_STRBUF_INIT;
	const sig_ident *acks;
	size_t i, n = 0;
	int rc;

	acks = tally_outbox_acked(ss->signals, &n);
	if (n == 0)
		return 0;
	tally_strbuf_puts(&tids, "{");
	tally_strbuf_puts(&sids, "{");
	for (i = 0; i < n; i++) {
		tally_strbuf_printf(&tids, "%s%s", i ? "," : "",
				    acks[i].tenant_id);
		tally_strbuf_printf(&sids, "%s%s", i ? "," : "",
				    acks[i].signal_id);
	}
	tally_strbuf_puts(&tids, "}");
	tally_strbuf_puts(&sids, "}");
	rc = tally_ss__ex(ss, NULL, err,
		"UPDATE billing_signals_outbox o SET published_at = now() "
		"FROM unnest($1::uuid[], $2::uuid[]) x(t, s) "
		"WHERE o.tenant_id = x.t AND o.signal_id = x.s "
		"AND o.published_at IS NULL", 2, tally_strbuf_cstr(&tids),
		tally_strbuf_cstr(&sids));
	if (rc == 0) {
		tally_outbox_forget(ss->signals, n);
		*marked += (int)n;
	}
	tally_strbuf_free(&tids);
	tally_strbuf_free(&sids);
	return rc;
}

static void skip_id(const void *ident, void *ctx)
{
	const sig_ident *id = ident;
	tally_strbuf *b = ctx;

	tally_strbuf_puts(b, b->len > 1 ? "," : "");
	tally_strbuf_puts(b, id->signal_id);
}

/* The signal ids still in flight, as a uuid[] literal: never produced a
 * second time while their report is pending. */
static void inflight_ids(const tally_stripe_sync *ss, tally_strbuf *b)
{
	tally_strbuf_puts(b, "{");
	tally_outbox_each_inflight(ss->signals, skip_id, b);
	tally_strbuf_puts(b, "}");
}

/* Produce each outbox row of res (tenant, signal id, kind, payload). */
static int produce_rows(tally_stripe_sync *ss, PGresult *res,
			tally_error *err)
{
	int i, rc, rows = PQntuples(res);

	for (i = 0; i < rows; i++) {
		const char *tid = PQgetvalue(res, i, 0);
		const char *val = PQgetvalue(res, i, 3);
		const char *headers[7] = { "content-type", "application/json",
					   "signal-id", NULL, "signal-kind",
					   PQgetvalue(res, i, 2), NULL };
		tally_outbox_msg m = { 0 };
		sig_ident id;

		tally_ss__cpy(id.tenant_id, sizeof(id.tenant_id), tid);
		tally_ss__cpy(id.signal_id, sizeof(id.signal_id),
			      PQgetvalue(res, i, 1));
		headers[3] = id.signal_id;
		m.key = tid;
		m.key_len = strlen(tid);
		m.value = val;
		m.len = strlen(val);
		m.ident = &id;
		m.headers = headers;
		rc = tally_outbox_produce(ss->signals, &m, err);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int tally_stripe_sync_publish(tally_stripe_sync *ss, rd_kafka_t *producer,
			      const char *topic, int *n, tally_error *err)
{
	PGresult *res = NULL;
	tally_strbuf skip = TALLY_STRBUF_INIT;
	int rc, rc2, marked = 0, failed, inflight;

	if (n)
		*n = 0;
	rc = signals_outbox(ss, producer, topic, err);
	if (rc != 0)
		return rc;
	/* reports that arrived since the last call (late ones included) */
	rd_kafka_poll(producer, 0);
	rc = settle(ss, &marked, err);
	if (rc != 0)
		goto cleanup;
	inflight_ids(ss, &skip);
	rc = tally_ss__ex(ss, &res, err,
		"SELECT tenant_id::text, signal_id::text, kind, payload::text "
		"FROM billing_signals_outbox WHERE published_at IS NULL "
		"AND signal_id <> ALL ($1::uuid[]) "
		"ORDER BY created_at, signal_id LIMIT 1000", 1,
		tally_strbuf_cstr(&skip));
	if (rc != 0)
		goto cleanup;
	rc = produce_rows(ss, res, err);
	(void)tally_outbox_wait(ss->signals, ss->publish_wait_ms);
	rc2 = settle(ss, &marked, rc == 0 ? err : NULL);
	if (rc == 0)
		rc = rc2;
	/* failures reported since the last call */
	failed = (int)(tally_outbox_failed(ss->signals) - ss->signals_failed);
	ss->signals_failed = tally_outbox_failed(ss->signals);
	inflight = tally_stripe_sync_signals_in_flight(ss);
	if (rc == 0 && (failed > 0 || inflight > 0))
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "signals: %d deliveries failed, %d not "
				     "confirmed yet", failed, inflight);
cleanup:
	if (n)
		*n = marked;
	tally_strbuf_free(&skip);
	PQclear(res);
	return rc;
}

int tally_stripe_sync_signals_in_flight(const tally_stripe_sync *ss)
{
	return ss->signals != NULL ? (int)tally_outbox_inflight(ss->signals)
				   : 0;
}
