/*
 * sync_signals.c - the billing.signals outbox: signals are written to
 * billing_signals_outbox inside the transaction of the fact they announce
 * (tally_ss__signal_emit) and published from there with a per-message
 * delivery report (tally_stripe_sync_publish).
 */
#define _POSIX_C_SOURCE 200809L
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

bool tally_stripe_sync_on_delivery(const rd_kafka_message_t *rkm)
{
	ss_sig_slot *slot = rkm->_private;

	if (slot == NULL || slot->magic != SLOT_MAGIC)
		return false;
	slot->kerr = rkm->err;
	slot->state = rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 1 : -1;
	return true;
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

/* Mark delivered slots published, drop failed ones (their rows stay
 * unpublished and are produced again). Stops at the first PG error, leaving
 * the remaining settled slots for the next call. */
static int settle(tally_stripe_sync *ss, int *marked, int *failed,
		  tally_error *err)
{
	ss_sig_slot **pp = &ss->inflight;
	int rc = 0;

	while (*pp != NULL) {
		ss_sig_slot *s = *pp;

		if (s->state == 0) {
			pp = &s->next;
			continue;
		}
		if (s->state > 0) {
			rc = tally_ss__ex(ss, NULL, err,
				"UPDATE billing_signals_outbox SET "
				"published_at = now() WHERE tenant_id = "
				"$1::uuid AND signal_id = $2::uuid AND "
				"published_at IS NULL", 2, s->tenant_id,
				s->signal_id);
			if (rc != 0)
				return rc;
			(*marked)++;
		} else {
			ss->signals_failed++;
			(*failed)++;
			tally_log(TALLY_WARN, "stripe.signal_not_delivered",
				  TALLY_KV_STR("signal_id", s->signal_id),
				  TALLY_KV_STR("error", rd_kafka_err2str(
						       s->kerr)));
		}
		*pp = s->next;
		ss->ninflight--;
		free(s);
	}
	return 0;
}

/* The signal ids still in flight, as a uuid[] literal: never produced a
 * second time while their report is pending. */
static void inflight_ids(const tally_stripe_sync *ss, tally_strbuf *b)
{
	const ss_sig_slot *s;

	tally_strbuf_puts(b, "{");
	for (s = ss->inflight; s != NULL; s = s->next) {
		if (s != ss->inflight)
			tally_strbuf_puts(b, ",");
		tally_strbuf_puts(b, s->signal_id);
	}
	tally_strbuf_puts(b, "}");
}

/* Produce each outbox row of res (tenant, signal id, kind, payload) with
 * its own slot as opaque; a slot joins ss->inflight once produced. */
static int produce_rows(tally_stripe_sync *ss, rd_kafka_t *producer,
			const char *topic, PGresult *res, tally_error *err)
{
	int i, rows = PQntuples(res);

	for (i = 0; i < rows; i++) {
		const char *tid = PQgetvalue(res, i, 0);
		const char *val = PQgetvalue(res, i, 3);
		ss_sig_slot *s = tally_xcalloc(1, sizeof(*s));
		rd_kafka_resp_err_t ke;

		s->magic = SLOT_MAGIC;
		tally_ss__cpy(s->tenant_id, sizeof(s->tenant_id), tid);
		tally_ss__cpy(s->signal_id, sizeof(s->signal_id),
			      PQgetvalue(res, i, 1));
		ke = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic),
			RD_KAFKA_V_KEY(tid, strlen(tid)),
			RD_KAFKA_V_VALUE((void *)val, strlen(val)),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(s),
			RD_KAFKA_V_HEADER("content-type", "application/json",
					  -1),
			RD_KAFKA_V_HEADER("signal-id", s->signal_id, -1),
			RD_KAFKA_V_HEADER("signal-kind", PQgetvalue(res, i, 2),
					  -1),
			RD_KAFKA_V_END);
		if (ke != RD_KAFKA_RESP_ERR_NO_ERROR) {
			free(s);
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "signals: produce: %s",
					       rd_kafka_err2str(ke));
		}
		s->next = ss->inflight; /* now owned by the in-flight list */
		ss->inflight = s;
		ss->ninflight++;
	}
	return 0;
}

/* Wait (up to publish_wait_ms) for the reports of everything in flight. */
static void wait_reports(tally_stripe_sync *ss, rd_kafka_t *producer)
{
	int64_t deadline = tally_mono_ns() +
			   (int64_t)ss->publish_wait_ms * 1000000;

	for (;;) {
		const ss_sig_slot *s;
		bool pending = false;

		for (s = ss->inflight; s != NULL && !pending; s = s->next)
			pending = s->state == 0;
		if (!pending || tally_mono_ns() >= deadline)
			break;
		rd_kafka_poll(producer, 50);
	}
}

int tally_stripe_sync_publish(tally_stripe_sync *ss, rd_kafka_t *producer,
			      const char *topic, int *n, tally_error *err)
{
	PGresult *res = NULL;
	tally_strbuf skip = TALLY_STRBUF_INIT;
	int rc, rc2, marked = 0, failed = 0;

	if (n)
		*n = 0;
	/* reports that arrived since the last call (late ones included) */
	rd_kafka_poll(producer, 0);
	rc = settle(ss, &marked, &failed, err);
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
	rc = produce_rows(ss, producer, topic, res, err);
	wait_reports(ss, producer);
	rc2 = settle(ss, &marked, &failed, rc == 0 ? err : NULL);
	if (rc == 0)
		rc = rc2;
	if (rc == 0 && (failed > 0 || ss->ninflight > 0))
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "signals: %d deliveries failed, %d not "
				     "confirmed yet", failed, ss->ninflight);
cleanup:
	if (n)
		*n = marked;
	tally_strbuf_free(&skip);
	PQclear(res);
	return rc;
}

int tally_stripe_sync_signals_in_flight(const tally_stripe_sync *ss)
{
	return ss->ninflight;
}
