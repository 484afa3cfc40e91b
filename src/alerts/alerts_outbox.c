/*
 * alerts_outbox.c - publishing of committed alerts to billing.alerts: the
 * rows a batch inserted, and the sweep of rows whose produce never
 * completed (produced_at NULL). A row is marked produced_at only after its
 * delivery report.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	int *status = m->_private;

	(void)rk;
	(void)opaque;
	if (status != NULL)
		*status = m->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 1 : -1;
}

void tally_alerts_producer_conf(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
}

static size_t pending_after_wait(const tally_alerts *a)
{
	size_t k, pending = 0;

	for (k = 0; k < a->nout; k++)
		pending += a->out[k].status == 0;
	return pending;
}

/* Produce the rows in a->out; mark the delivered ones produced_at. */
int tally_alerts__produce_rows(tally_alerts *a, size_t *produced,
			       tally_error *err)
{
	size_t i, ok = 0, pi, pt, cap;
	char *ids = NULL, *tids = NULL;
	int rc = 0;

	*produced = 0;
	if (a->producer == NULL || a->alerts_topic == NULL || a->nout == 0)
		return 0;
	for (i = 0; i < a->nout; i++) {
		tally_alerts_outrow *o = &a->out[i];
		rd_kafka_resp_err_t e = rd_kafka_producev(
			a->producer, RD_KAFKA_V_TOPIC(a->alerts_topic),
			RD_KAFKA_V_KEY(o->tenant, 36),
			RD_KAFKA_V_VALUE(o->json, strlen(o->json)),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(&o->status), RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
			o->status = -1;
	}
	/* every opaque points into a->out: wait until each is reported */
	for (i = 0; i < 30 && pending_after_wait(a) > 0; i++)
		rd_kafka_flush(a->producer, 1000);
	if (pending_after_wait(a) > 0) {
		/*
		 * Still unreported after 30 s: purge them so no delivery
		 * report can arrive after a->out is reused; the sweep
		 * produces them again later.
		 */
		rd_kafka_purge(a->producer, RD_KAFKA_PURGE_F_QUEUE |
					    RD_KAFKA_PURGE_F_INFLIGHT);
		while (pending_after_wait(a) > 0)
			rd_kafka_poll(a->producer, 100);
	}
	cap = a->nout * 37 + 3;
	ids = tally_xmalloc(cap);
	tids = tally_xmalloc(cap);
	pi = pt = 0;
	ids[pi++] = '{';
	tids[pt++] = '{';
	for (i = 0; i < a->nout; i++) {
		if (a->out[i].status != 1)
			continue;
		if (ok > 0) {
			ids[pi++] = ',';
			tids[pt++] = ',';
		}
		memcpy(ids + pi, a->out[i].id, 36);
		memcpy(tids + pt, a->out[i].tenant, 36);
		pi += 36;
		pt += 36;
		ok++;
	}
	ids[pi++] = '}';
	tids[pt++] = '}';
	ids[pi] = '\0';
	tids[pt] = '\0';
	tally_alerts__cadd(a->c_produced, ok);
	tally_alerts__cadd(a->c_produce_failed, a->nout - ok);
	if (ok > 0) {
		const char *params[2] = { tids, ids };

		rc = tally_pg_exec(a->pg, NULL,
			"UPDATE alerts a SET produced_at = now() FROM"
			" unnest($1::uuid[], $2::uuid[]) x(t, i)"
			" WHERE a.tenant_id = x.t AND a.id = x.i",
			2, params, err);
	}
	*produced = ok;
	free(ids);
	free(tids);
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
	if (a->producer == NULL || a->alerts_topic == NULL)
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
