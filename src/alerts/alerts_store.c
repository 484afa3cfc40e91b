/*
 * alerts_store.c - the batch transaction of tally-alerts in PostgreSQL:
 * the position fence, totals version high-water marks, the rules' context
 * (plan price, earlier periods) and the alert inserts; the insert of
 * what a periodic scan found (silence, revenue).
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/event.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_TS(p) "(timestamptz 'epoch' + " p "::bigint * interval '1 ms')"
#define TS_MS(c) "(extract(epoch FROM " c ") * 1000)::bigint"

/* 1: newer version recorded; 0: stale */
static int totals_fresh(tally_alerts *a, const tally_totals *t, int *fresh,
			tally_error *err)
{
	PGresult *res = NULL;
	char tid[37], ps[24], v[24];
	const char *params[3];
	int rc;

	tally_uuid_fmt(tid, t->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, t->period_start_ms);
	snprintf(v, sizeof(v), "%" PRId64, t->version);
	params[0] = tid;
	params[1] = ps;
	params[2] = v;
	rc = tally_pg_exec(a->pg, &res,
		"INSERT INTO alert_totals_versions AS x (tenant_id,"
		" period_start, version) VALUES ($1::uuid, " MS_TS("$2")
		", $3::bigint) ON CONFLICT (tenant_id, period_start) DO"
		" UPDATE SET version = EXCLUDED.version, updated_at = now()"
		" WHERE x.version < EXCLUDED.version RETURNING 1",
		3, params, err);
	if (rc == 0)
		*fresh = PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

static int64_t pico_or(const char *s, int64_t dflt)
{
	int64_t v;

	if (tally_money_parse(&v, s, strlen(s)) != 0)
		return dflt;
	return v;
}

/* Plan price and the two periods before the totals' one. */
static int load_context(tally_alerts *a, const tally_totals *t,
			tally_alert_context *ctx, char *plan, size_t plansz,
			tally_error *err)
{
	PGresult *res = NULL;
	char tid[37], ps[24];
	const char *params[2];
	int64_t s0 = 0, e0 = 0, s1 = 0, e1 = 0;
	int rc;

	tally_alert_context_init(ctx);
	tally_uuid_fmt(tid, t->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, t->period_start_ms);
	params[0] = tid;
	params[1] = ps;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT p.monthly_price::text, p.id FROM tenants t"
		" JOIN plans p ON p.id = t.subscription_plan"
		" WHERE t.id = $1::uuid", 1, params, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) == 1) {
		ctx->plan_price_pico = pico_or(PQgetvalue(res, 0, 0), -1);
		snprintf(plan, plansz, "%s", PQgetvalue(res, 0, 1));
		ctx->plan = plan;
	}
	PQclear(res);
	res = NULL;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT " TS_MS("period_start") ", " TS_MS("period_end")
		", cost::text FROM tenant_period_usage WHERE tenant_id ="
		" $1::uuid AND period_start < " MS_TS("$2")
		" ORDER BY period_start DESC LIMIT 2", 2, params, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) >= 1 &&
	    tally_parse_i64(&s0, PQgetvalue(res, 0, 0)) == 0 &&
	    tally_parse_i64(&e0, PQgetvalue(res, 0, 1)) == 0 &&
	    e0 == t->period_start_ms) {
		ctx->prev_start_ms = s0;
		ctx->prev_cost_pico = pico_or(PQgetvalue(res, 0, 2), -1);
		if (PQntuples(res) == 2 &&
		    tally_parse_i64(&s1, PQgetvalue(res, 1, 0)) == 0 &&
		    tally_parse_i64(&e1, PQgetvalue(res, 1, 1)) == 0 &&
		    e1 == s0) {
			ctx->prev2_start_ms = s1;
			ctx->prev2_cost_pico =
				pico_or(PQgetvalue(res, 1, 2), -1);
		}
		if (ctx->prev_cost_pico < 0 || ctx->prev2_cost_pico < 0)
			ctx->prev_start_ms = ctx->prev2_start_ms = -1;
	}
cleanup:
	PQclear(res);
	return rc;
}

static int insert_alert(tally_alerts *a, const tally_alert *al,
			tally_error *err)
{
	PGresult *res = NULL;
	char id[37], tid[37], ps[24], th[16];
	const char *params[6];
	int rc;

	tally_uuid_fmt(id, al->id);
	tally_uuid_fmt(tid, al->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, al->period_start_ms);
	snprintf(th, sizeof(th), "%d", al->threshold);
	params[0] = id;
	params[1] = tid;
	params[2] = tally_alert_kind_name(al->kind);
	params[3] = ps;
	params[4] = th;
	params[5] = al->payload;
	rc = tally_pg_exec(a->pg, &res,
		"INSERT INTO alerts (id, tenant_id, kind, period_start,"
		" threshold, payload) VALUES ($1::uuid, $2::uuid, $3, "
		MS_TS("$4") ", $5::int, $6::jsonb) ON CONFLICT DO NOTHING"
		" RETURNING " ALERT_JSON, 6, params, err);
	if (rc == 0 && PQntuples(res) == 1)
		tally_alerts__out_push(a, tid, id, PQgetvalue(res, 0, 0));
	else if (rc == 0)
		a->existing++;
	PQclear(res);
	return rc;
}

int tally_alerts__batch_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_alerts *a = payload;
	size_t i, j;
	int rc;

	(void)pg;
	/* a retry starts from scratch: nothing of a rolled-back try stays */
	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	a->stale = a->existing = 0;
	rc = tally_positions_fence(a->pos, a->pg, a->parts, a->nparts, err);
	for (i = 0; i < a->nitems && rc == 0; i++) {
		tally_alerts_item *it = &a->items[i];

		tally_alert_list_clear(&a->list);
		if (it->type == IT_TOTALS) {
			tally_alert_context ctx;
			char plan[64];
			int fresh = 0;

			rc = totals_fresh(a, &it->totals, &fresh, err);
			if (rc != 0)
				break;
			if (!fresh) {
				a->stale++;
				continue;
			}
			rc = load_context(a, &it->totals, &ctx, plan,
					  sizeof(plan), err);
			if (rc != 0)
				break;
			tally_alerts_eval_totals(&a->list, &it->totals, &ctx,
						 &a->th);
		} else if (it->type == IT_SIGNAL) {
			tally_alerts_eval_signal(&a->list, &it->signal);
		} else {
			continue; /* dead letters: mirrored below */
		}
		for (j = 0; j < a->list.n && rc == 0; j++)
			rc = insert_alert(a, &a->list.v[j], err);
	}
	tally_alert_list_clear(&a->list);
	if (rc == 0)
		rc = tally_alerts__mirror_dead(a, err);
	return rc;
}

/* The scan's transaction: insert a->list, keep the rows inserted. */
static int list_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_alerts *a = payload;
	size_t i;
	int rc = 0;

	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	for (i = 0; i < a->list.n && rc == 0; i++) {
		const tally_alert *al = &a->list.v[i];
		PGresult *res = NULL;
		char id[37], tid[37], ps[24], th[16];
		const char *params[7] = { id, tid,
					  tally_alert_kind_name(al->kind), ps,
					  th, al->subject, al->payload };

		tally_uuid_fmt(id, al->id);
		tally_uuid_fmt(tid, al->tenant_id);
		snprintf(ps, sizeof(ps), "%" PRId64, al->period_start_ms);
		snprintf(th, sizeof(th), "%d", al->threshold);
		rc = tally_pg_exec(pg, &res,
			"INSERT INTO alerts (id, tenant_id, kind, period_start,"
			" threshold, subject, payload) VALUES ($1::uuid,"
			" $2::uuid, $3, " MS_TS("$4") ", $5::int, $6, $7::jsonb)"
			" ON CONFLICT DO NOTHING RETURNING " ALERT_JSON,
			7, params, err);
		if (rc == 0 && PQntuples(res) == 1)
			tally_alerts__out_push(a, tid, id,
					       PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	return rc;
}

int tally_alerts__raise_list(tally_alerts *a, const char *reason,
			     int *raised, tally_error *err)
{
	size_t k, produced = 0;
	int rc = 0;

	if (a->list.n > 0)
		rc = tally_pg_txn(a->pg, list_txn, a, 0, err);
	if (rc != 0)
		return rc;
	for (k = 0; k < a->nout; k++) {
		const char *kind = "";
		size_t j;

		for (j = 0; j < a->list.n; j++) {
			char id[37];

			tally_uuid_fmt(id, a->list.v[j].id);
			if (strcmp(id, a->out[k].id) == 0)
				kind = tally_alert_kind_name(a->list.v[j].kind);
		}
		tally_alerts__count_kind(a, kind);
		tally_log(TALLY_INFO, "alerts.raised",
			  TALLY_KV_STR("alert_id", a->out[k].id),
			  TALLY_KV_STR("tenant_id", a->out[k].tenant),
			  TALLY_KV_STR("kind", kind),
			  TALLY_KV_STR("reason", reason));
	}
	if (raised != NULL)
		*raised = (int)a->nout;
	/* a failed produce is not a failed scan: the sweep redoes it */
	if (tally_alerts__produce_rows(a, &produced, err) != 0) {
		tally_log(TALLY_WARN, "alerts.mark_produced_failed",
			  TALLY_KV_STR("error", err->msg));
		tally_error_clear(err);
	}
	return 0;
}
