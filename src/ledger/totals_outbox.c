/*
 * totals_outbox.c - billing.totals: versions bumped in the batch's
 * transaction, published after the commit, marked published once the
 * broker acknowledges them; the outbox republishes what is not marked.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void agg_clear_totals(tally_agg *agg)
{
	size_t i;

	for (i = 0; i < agg->ntotals; i++) {
		free(agg->totals[i]);
		free(agg->totals_key[i]);
	}
	agg->ntotals = 0;
}

/*
 * The columns of a totals message (tenant_period_usage u, tenants t); the
 * JSON is built in C by totals_json() (in SQL, json_build_object and
 * to_char cost ~10 ms per 1 000 rows: a third of the statement).
 */
#define TOTALS_COLS \
	" u.tenant_id::text," \
	" (extract(epoch FROM u.period_start) * 1000)::bigint," \
	" (extract(epoch FROM u.period_end) * 1000)::bigint," \
	" u.version, u.ai_requests, t.max_ai_requests_per_month," \
	" u.workflow_executions, u.workflows, u.workflow_complexity_units," \
	" t.max_workflows, u.users, t.max_users, u.input_tokens," \
	" u.output_tokens, u.cache_read_tokens, u.cache_write_tokens," \
	" u.reasoning_tokens, u.api_calls, u.storage_gb_months::text," \
	" u.cost::text," \
	" t.monthly_budget::text, coalesce(t.currency, 'USD'), u.budget_state," \
	" floor(extract(epoch FROM u.updated_at) * 1000)::bigint"

/*
 * Bump versions and budget state; return the totals to publish. The
 * batch's workflows ($3..$5; a repeated one is a conflict with the first,
 * skipped) go into tenant_period_workflows and its distinct users ($6..$8,
 * already distinct: users.c) into tenant_period_users here too, both in
 * the order C gives (key order: no sort or hash here), and the new ones
 * are counted into workflows and users: one update of each tenant's row
 * instead of three.
 */
static const char TOTALS_SQL[] =
	"WITH ins AS (INSERT INTO tenant_period_workflows"
	" (tenant_id, period_start, workflow_id)"
	" SELECT t, timestamptz 'epoch' + p * interval '1 millisecond',"
	" w FROM unnest($3::uuid[], $4::bigint[], $5::text[]) x(t, p, w)"
	" ON CONFLICT DO NOTHING RETURNING tenant_id, period_start),"
	" wc AS (SELECT tenant_id, period_start, count(*) AS n FROM ins"
	" GROUP BY 1, 2),"
	" uins AS (INSERT INTO tenant_period_users"
	" (tenant_id, period_start, subject)"
	" SELECT t, timestamptz 'epoch' + p * interval '1 millisecond', s"
	" FROM unnest($6::uuid[], $7::bigint[], $8::text[]) x(t, p, s)"
	" ON CONFLICT DO NOTHING RETURNING tenant_id, period_start),"
	" uc AS (SELECT tenant_id, period_start, count(*) AS n FROM uins"
	" GROUP BY 1, 2)"
	" UPDATE tenant_period_usage u SET version = u.version + 1,"
	" workflows = u.workflows + coalesce(wc.n, 0),"
	" users = u.users + coalesce(uc.n, 0),"
	" updated_at = now(), budget_state ="
	TALLY_AGG_BUDGET_STATE_SQL("u.cost", "t.monthly_budget")
	" FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::bigint[])"
	"  x(tid, ps)) a"
	" LEFT JOIN tenants t ON t.id = a.tid"
	" LEFT JOIN wc ON wc.tenant_id = a.tid AND wc.period_start ="
	"  timestamptz 'epoch' + a.ps * interval '1 millisecond'"
	" LEFT JOIN uc ON uc.tenant_id = a.tid AND uc.period_start ="
	"  timestamptz 'epoch' + a.ps * interval '1 millisecond'"
	" WHERE u.tenant_id = a.tid AND u.period_start = timestamptz 'epoch'"
	"  + a.ps * interval '1 millisecond'"
" RETURNING" TOTALS_COLS;

/* The outbox: totals whose latest version is not known delivered. */
static const char UNPUBLISHED_SQL[] =
	"SELECT" TOTALS_COLS " FROM tenant_period_usage u"
	" LEFT JOIN tenants t ON t.id = u.tenant_id"
	" WHERE u.published_version < u.version"
	" ORDER BY u.tenant_id, u.period_start LIMIT 10000";

/* Delivered versions (acknowledged by the broker) move the mark. */
static const char MARK_PUBLISHED_SQL[] =
	"UPDATE tenant_period_usage u SET published_version = x.v"
	" FROM (SELECT t, ps, max(v) AS v FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[]) y(t, ps, v) GROUP BY 1, 2) x"
	" WHERE u.tenant_id = x.t AND u.period_start = timestamptz 'epoch'"
	"  + x.ps * interval '1 ms' AND u.published_version < x.v";

/* the value of column c: integer, or JSON null when SQL NULL */
static json_t *col_int_or_null(PGresult *res, int r, int c)
{
	int64_t v;

	if (PQgetisnull(res, r, c) ||
	    tally_parse_i64(&v, PQgetvalue(res, r, c)) != 0)
		return json_null();
	return json_integer((json_int_t)v);
}

static json_t *col_time(PGresult *res, int r, int c)
{
	char ts[32];
	int64_t ms = 0;

	if (tally_parse_i64(&ms, PQgetvalue(res, r, c)) != 0)
		return json_null();
	tally_fmt_time_ms(ts, ms);
	return json_string(ts);
}

static json_t *col_str_or_null(PGresult *res, int r, int c)
{
	if (PQgetisnull(res, r, c))
		return json_null();
	return json_string(PQgetvalue(res, r, c));
}

/* schemas/totals.md, from the TOTALS_COLS of row r */
static char *totals_json(PGresult *res, int r)
{
	static const char *const keys[] = {
		"schema", "tenant_id", "period_start", "period_end", "version",
		"ai_requests", "max_ai_requests_per_month",
		"workflow_executions", "workflows",
		"workflow_complexity_units", "max_workflows", "users",
		"max_users", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
		"reasoning_tokens", "api_calls", "storage_gb_months", "cost",
		"monthly_budget", "currency", "budget_state", "updated_at"
	};
	json_t *o = json_object();
	char *out;
	size_t i;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		json_t *v;

		if (i == 0)
			v = json_string("tally.totals/1");
		else if (i == 1)
			v = json_string(PQgetvalue(res, r, 0));
		else if (i == 2 || i == 3)
			v = col_time(res, r, (int)i - 1);
		else if (i <= 18)       /* columns 3..17: integers */
			v = col_int_or_null(res, r, (int)i - 1);
		else if (i <= 23)       /* columns 18..22: text */
			v = col_str_or_null(res, r, (int)i - 1);
		else
			v = col_time(res, r, 23);
		json_object_set_new(o, keys[i], v != NULL ? v : json_null());
	}
	out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return out != NULL ? out : tally_xstrdup("{}");
}

/* Keep one totals row of res (TOTALS_COLS) for publishing. */
static void add_total(tally_agg *agg, PGresult *res, int r)
{
	if (agg->ntotals == agg->cap_totals) {
		agg->cap_totals = agg->cap_totals ? agg->cap_totals * 2 : 64;
		agg->totals = tally_xrealloc(agg->totals, agg->cap_totals *
					     sizeof(*agg->totals));
		agg->totals_key = tally_xrealloc(agg->totals_key,
						 agg->cap_totals *
						 sizeof(*agg->totals_key));
		agg->totals_ack = tally_xrealloc(agg->totals_ack,
						 agg->cap_totals *
						 sizeof(*agg->totals_ack));
	}
	agg->totals[agg->ntotals] = totals_json(res, r);
	agg->totals_key[agg->ntotals] = tally_xstrdup(PQgetvalue(res, r, 0));
	{
		totals_ack *k = &agg->totals_ack[agg->ntotals];

		memset(k, 0, sizeof(*k));
		/* cannot fail; if it did, the row is just not marked */
		k->valid = tally_uuid_parse(k->tenant, PQgetvalue(res, r, 0),
					    36) == 0 &&
			   tally_parse_i64(&k->ps, PQgetvalue(res, r, 1)) == 0 &&
			   tally_parse_i64(&k->version,
					   PQgetvalue(res, r, 3)) == 0;
	}
	agg->ntotals++;
}

/* Acknowledged totals not marked yet. */
size_t agg_acks_pending(const tally_agg *agg)
{
	size_t n = 0;

	if (agg->outbox != NULL)
		(void)tally_outbox_acked(agg->outbox, &n);
	return n;
}

/* Mark the versions whose delivery the broker acknowledged. */
int agg_mark_published(tally_agg *agg, tally_error *err)
{
	tally_strbuf a1 = TALLY_STRBUF_INIT, a2 = TALLY_STRBUF_INIT,
		     a3 = TALLY_STRBUF_INIT;
	const totals_ack *acks = NULL;
	const char *params[3];
	size_t i, n = 0;
	int rc;

	if (agg->outbox != NULL)
		acks = tally_outbox_acked(agg->outbox, &n);
	agg->nacks_marking = n;
	if (n == 0)
		return 0;
	tally_strbuf_puts(&a1, "{");
	tally_strbuf_puts(&a2, "{");
	tally_strbuf_puts(&a3, "{");
	for (i = 0; i < n; i++) {
		agg_uuid_arr(&a1, acks[i].tenant, i == 0);
		tally_strbuf_printf(&a2, "%s%" PRId64, i ? "," : "",
				    acks[i].ps);
		tally_strbuf_printf(&a3, "%s%" PRId64, i ? "," : "",
				    acks[i].version);
	}
	tally_strbuf_puts(&a1, "}");
	tally_strbuf_puts(&a2, "}");
	tally_strbuf_puts(&a3, "}");
	params[0] = a1.p;
	params[1] = a2.p;
	params[2] = a3.p;
	rc = tally_pg_exec(agg->pg, NULL, MARK_PUBLISHED_SQL, 3, params, err);
	tally_strbuf_free(&a1);
	tally_strbuf_free(&a2);
	tally_strbuf_free(&a3);
	return rc;
}

/* After a commit: forget the acknowledgements it marked. */
void agg_acks_committed(tally_agg *agg)
{
	if (agg->outbox != NULL)
		tally_outbox_forget(agg->outbox, agg->nacks_marking);
	agg->nacks_marking = 0;
}

void agg_publish_totals(tally_agg *agg)
{
	tally_error err;
	size_t i;

	if (agg->outbox == NULL)
		return;
	for (i = 0; i < agg->ntotals; i++) {
		tally_outbox_msg m = { 0 };

		m.key = agg->totals_key[i];
		m.key_len = strlen(agg->totals_key[i]);
		m.value = agg->totals[i];
		m.len = strlen(agg->totals[i]);
		m.ident = agg->totals_ack[i].valid ? &agg->totals_ack[i] : NULL;
		if (tally_outbox_produce(agg->outbox, &m, &err) != 0)
			/* left unpublished: the outbox sweep sends it again */
			tally_log(TALLY_WARN, "aggregate.totals_failed",
				  TALLY_KV_STR("error", err.msg));
		else
			agg->st.published++;
	}
	rd_kafka_poll(agg->producer, 0);
}

void tally_agg_delivered(tally_agg *agg, const rd_kafka_message_t *rkm)
{
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR && rkm->rkt != NULL &&
	    strcmp(rd_kafka_topic_name(rkm->rkt), agg->dlq_topic) == 0)
		agg->dlq_failed++;
	if (agg->outbox != NULL)
		(void)tally_outbox_delivered(agg->outbox, rkm);
}

size_t tally_agg_inflight(const tally_agg *agg)
{
	return agg->outbox != NULL ? tally_outbox_inflight(agg->outbox) : 0;
}

static int flush_txn(tally_pg *pg, void *payload, tally_error *err)
{
	(void)pg;
	return agg_mark_published(payload, err);
}

int tally_agg_outbox(tally_agg *agg, bool republish, tally_error *err)
{
	PGresult *res = NULL;
	int rc = 0, r;

	if (agg_acks_pending(agg) > 0) {
		rc = tally_pg_txn(agg->pg, flush_txn, agg, 0, err);
		if (rc != 0)
			return rc;
		agg_acks_committed(agg);
	}
	/* while versions are in flight their acknowledgement is pending */
	if (!republish || agg->outbox == NULL ||
	    tally_outbox_inflight(agg->outbox) > 0)
		return 0;
	rc = tally_pg_exec(agg->pg, &res, UNPUBLISHED_SQL, 0, NULL, err);
	if (rc != 0)
		return rc;
	agg_clear_totals(agg);
	for (r = 0; r < PQntuples(res); r++)
		add_total(agg, res, r);
	PQclear(res);
	if (agg->ntotals > 0)
		tally_log(TALLY_INFO, "aggregate.totals_republish",
			  TALLY_KV_INT("count", agg->ntotals));
	agg_publish_totals(agg);
	agg_clear_totals(agg);
	return 0;
}

/*
 * The rows (tenants *at, period starts *ap: array literals still open)
 * a batch, the storage rollover or re-pricing wrote: versions and budget
 * states bumped, the distinct workflows and users dist (tenants, period
 * starts, ids; tenants, period starts, subjects: array literals; NULL:
 * none) counted in, their totals collected for
 * agg_publish_totals(). *rows (may be NULL): how many.
 */
int agg_bump_versions(tally_agg *agg, tally_strbuf *at, tally_strbuf *ap,
		      const char *const dist[6], size_t *rows,
		      tally_error *err)
{
	PGresult *res = NULL;
	const char *params[8];
	int rc, r, k;

	tally_strbuf_puts(at, "}");
	tally_strbuf_puts(ap, "}");
	params[0] = at->p;
	params[1] = ap->p;
	for (k = 0; k < 6; k++)
		params[2 + k] = dist != NULL ? dist[k] : "{}";
	rc = tally_pg_exec(agg->pg, &res, TOTALS_SQL, 8, params, err);
	if (rc == 0) {
		for (r = 0; r < PQntuples(res); r++)
			add_total(agg, res, r);
		if (rows != NULL)
			*rows = (size_t)PQntuples(res);
	}
	PQclear(res);
	return rc;
}
