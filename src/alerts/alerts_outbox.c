/*
 * alerts_outbox.c - publishing of committed alerts to billing.alerts
 * through the shared outbox (io/outbox.h): the rows a batch inserted, and
 * the sweep of rows whose produce never completed (produced_at NULL). A
 * row is marked produced_at only after its delivery report.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "base/strbuf.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* How long a round waits for its delivery reports. */
#define PRODUCE_WAIT_MS 30000

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	(void)rk;
	(void)opaque;
	(void)tally_outbox_report(m);
}

void tally_alerts_producer_conf(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
}

/* Mark the acknowledged rows (identities: alert_ident) produced_at. */
static int mark_produced(tally_alerts *a, const alert_ident *acks, size_t n,
			 tally_error *err)
{
	tally_strbuf tids = TALLY_STRBUF_INIT, ids = TALLY_STRBUF_INIT;
	const char *params[2];
	size_t i;
	int rc;

	tally_strbuf_puts(&tids, "{");
	tally_strbuf_puts(&ids, "{");
	for (i = 0; i < n; i++) {
		if (i > 0) {
			tally_strbuf_puts(&tids, ",");
			tally_strbuf_puts(&ids, ",");
		}
		tally_strbuf_add(&tids, acks[i].tenant, 36);
		tally_strbuf_add(&ids, acks[i].id, 36);
	}
	tally_strbuf_puts(&tids, "}");
	tally_strbuf_puts(&ids, "}");
	params[0] = tids.p;
	params[1] = ids.p;
	rc = tally_pg_exec(a->pg, NULL,
		"UPDATE alerts a SET produced_at = now() FROM"
		" unnest($1::uuid[], $2::uuid[]) x(t, i)"
		" WHERE a.tenant_id = x.t AND a.id = x.i",
		2, params, err);
	tally_strbuf_free(&tids);
	tally_strbuf_free(&ids);
	return rc;
}

/* Produce the rows in a->out; mark the delivered ones produced_at. */
int tally_alerts__produce_rows(tally_alerts *a, size_t *produced,
			       tally_error *err)
{
	const alert_ident *acks;
	size_t i, ok = 0;
	int rc = 0;

	*produced = 0;
	if (a->outbox == NULL || a->nout == 0)
		return 0;
	for (i = 0; i < a->nout; i++) {
		tally_alerts_outrow *o = &a->out[i];
		tally_outbox_msg m = { 0 };
		alert_ident id;
		tally_error perr;
		int prc;

		memcpy(id.tenant, o->tenant, 36);
		memcpy(id.id, o->id, 36);
		m.key = o->tenant;
		m.key_len = 36;
		m.value = o->json;
		m.len = strlen(o->json);
		m.ident = &id;
		/* refused: counted as failed below; the sweep retries it */
		prc = tally_outbox_produce(a->outbox, &m, &perr);
		(void)prc;
	}
	if (tally_outbox_wait(a->outbox, PRODUCE_WAIT_MS) > 0) {
		/*
		 * Still unreported: purge them so that every report is in
		 * before the round ends (a row in flight would be produced
		 * twice by the sweep); the sweep produces them again later.
		 */
		rd_kafka_purge(a->producer, RD_KAFKA_PURGE_F_QUEUE |
					    RD_KAFKA_PURGE_F_INFLIGHT);
		while (tally_outbox_inflight(a->outbox) > 0)
			rd_kafka_poll(a->producer, 100);
	}
	acks = tally_outbox_acked(a->outbox, &ok);
	tally_alerts__cadd(a->c_produced, ok);
	tally_alerts__cadd(a->c_produce_failed, a->nout - ok);
	if (ok > 0)
		rc = mark_produced(a, acks, ok, err);
	/* a failed mark leaves the rows to the sweep */
	tally_outbox_forget(a->outbox, ok);
	*produced = ok;
	return rc;
}

int tally_alerts_sweep(tally_alerts *a, int64_t min_age_ms, int *n,
		       tally_error *err)
{
	PGresult *res = NULL;
	char age[24];
	const char *params[1];
	size_t produced = 0;
	int rc, r;

	if (n != NULL)
		*n = 0;
	if (a->outbox == NULL)
		return 0;
	tally_alerts__clear_batch(a);
	snprintf(age, sizeof(age), "%" PRId64, min_age_ms);
	params[0] = age;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT tenant_id::text, id::text, " ALERT_JSON
		" FROM alerts WHERE produced_at IS NULL AND raised_at <="
		" now() - $1::bigint * interval '1 ms'"
		" ORDER BY raised_at LIMIT 1000", 1, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++)
		tally_alerts__out_push(a, PQgetvalue(res, r, 0),
				       PQgetvalue(res, r, 1),
				       PQgetvalue(res, r, 2));
	rc = tally_alerts__produce_rows(a, &produced, err);
	if (produced > 0)
		tally_log(TALLY_INFO, "alerts.swept",
			  TALLY_KV_INT("produced", (int64_t)produced));
	if (n != NULL)
		*n = (int)produced;
cleanup:
	PQclear(res);
	tally_alerts__clear_batch(a);
	return rc;
}
