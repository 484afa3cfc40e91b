/*
 * apply.c - a batch's transaction: fence, dead-letter mirror, tenants,
 * rows, then ledger, snapshots and deltas in one statement of chained
 * data-modifying CTEs (parameters as binary arrays), storage, totals.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "pg_binary.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The deltas go to PostgreSQL as parameters: one array per column, in
 * PostgreSQL's binary array format (array_send), unnested in SQL. Nothing
 * is formatted as text in C or parsed in PostgreSQL, and the statement
 * text is short and the same for every batch of the same shape. (A VALUES
 * list of literals, one row per key, cost ~400 ms of parse, analysis and
 * planning per 10 000 keys; text arrays ~25 ms of formatting in C plus
 * their parsing: see docs/aggregate.md, "Performance".)
 *
 * An array: ndim, has-nulls flag, element type OID, then per dimension its
 * length and lower bound, then each element as length + bytes. The header
 * is written when the first element is (col_begin) and its length patched
 * at the end (col_end); an array with no element is sent with ndim 0.
 */
#define OID_INT8 20
#define OID_INT4 23
#define OID_UUID 2950
#define OID_NUMERIC 1700

static void col_begin(tally_strbuf *b, uint32_t oid)
{
	tally_strbuf_reset(b);
	be32(b, 1);         /* ndim */
	be32(b, 0);         /* no NULLs */
	be32(b, oid);
	be32(b, 0);         /* dimension length: patched by col_end */
	be32(b, 1);         /* lower bound */
}

static void col_end(tally_strbuf *b, size_t n)
{
	if (n == 0) {
		b->len = 0;
		be32(b, 0);
		be32(b, 0);
		be32(b, 0);
	} else {
		put32_at(b, 12, (int64_t)n);
	}
}

static void col_i64(tally_strbuf *b, int64_t v) { f_i64(b, v); }
static void col_i32(tally_strbuf *b, int64_t v) { f_i32(b, v); }
static void col_uuid(tally_strbuf *b, const uint8_t *id) { f_uuid(b, id); }

static void col_cost(tally_strbuf *b, tally_money128 c) { f_money(b, c); }

/* $first .. $(first + n - 1) cast to the given types, comma-separated */
static void unnest_args(tally_strbuf *q, int first, const char *const *types,
			int n)
{
	int i;

	tally_strbuf_puts(q, "unnest(");
	for (i = 0; i < n; i++)
		tally_strbuf_printf(q, "%s$%d::%s[]", i ? ", " : "", first + i, types[i]);
	tally_strbuf_puts(q, ")");
}

static const char *const HOURLY_TYPES[APPLY_HOURLY_COLS] = {
	"uuid", "bigint", "int", "int", "int", "bigint", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "numeric"
};
static const char *const PERIOD_TYPES[APPLY_PERIOD_COLS] = {
	"uuid", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "numeric"
};
static const char *const ADJ_TYPES[APPLY_ADJ_COLS] = {
	"uuid", "bigint", "bigint", "int", "int", "int", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "bigint", "numeric"
};

static uint32_t type_oid(const char *t)
{
	if (strcmp(t, "uuid") == 0)
		return OID_UUID;
	if (strcmp(t, "int") == 0)
		return OID_INT4;
	if (strcmp(t, "numeric") == 0)
		return OID_NUMERIC;
	return OID_INT8;
}

static void cols_begin(tally_strbuf *b, const char *const *types, int n)
{
	int j;

	for (j = 0; j < n; j++)
		col_begin(&b[j], type_oid(types[j]));
}

static void cols_end(tally_strbuf *b, int n, size_t rows)
{
	int j;

	for (j = 0; j < n; j++)
		col_end(&b[j], rows);
}

/*
 * The usage_hourly CTE and its parameters, numbered from np + 1: returns
 * np after them (so do the next two).
 */
static int apply_hourly(tally_agg *agg, tally_strbuf *q, const char **sep,
		        int np)
{
	tally_strbuf *b = agg->cols + np;
	size_t i;

	cols_begin(b, HOURLY_TYPES, APPLY_HOURLY_COLS);
	for (i = 0; i < agg->hourly.n; i++) {
		const acc *a = &agg->hourly.v[i];

		col_uuid(&b[0], a->k.tenant);
		col_i64(&b[1], a->k.t);
		col_i32(&b[2], a->k.meter);
		col_i32(&b[3], a->k.provider_id);
		col_i32(&b[4], a->k.model_id);
		col_i64(&b[5], a->events);
		col_i64(&b[6], a->quantity);
		col_i64(&b[7], a->in);
		col_i64(&b[8], a->out);
		col_i64(&b[9], a->cr);
		col_i64(&b[10], a->cw);
		col_i64(&b[11], a->rs);
		col_cost(&b[12], a->cost);
	}
	tally_strbuf_puts(q, *sep);
	*sep = ", ";
	tally_strbuf_puts(q, "hourly AS ("
		" INSERT INTO usage_hourly AS h (tenant_id, hour, meter,"
		"  provider, model, events, quantity, input_tokens,"
		"  output_tokens, cache_read_tokens, cache_write_tokens,"
		"  reasoning_tokens, cost)"
		" SELECT v.t, timestamptz 'epoch' + v.hr * interval '1 ms',"
		"  mt.name, coalesce(p.name, ''),"
		"  coalesce(m.name, ''), v.e, v.q, v.i, v.o, v.cr, v.cw,"
		"  v.rs, v.c FROM ");
	cols_end(b, APPLY_HOURLY_COLS, agg->hourly.n);
	unnest_args(q, np + 1, HOURLY_TYPES, APPLY_HOURLY_COLS);
	np += APPLY_HOURLY_COLS;
	tally_strbuf_puts(q, " v(t, hr, mid, pid, moid, e, q, i, o, cr, cw, rs, c)"
		" JOIN meters mt ON mt.id = v.mid"
		" LEFT JOIN providers p ON p.id = v.pid"
		" LEFT JOIN models m ON m.id = v.moid"
		" ORDER BY 1, 2, 3, 4, 5"
		" ON CONFLICT (tenant_id, hour, meter, provider, model)"
		" DO UPDATE SET events = h.events + EXCLUDED.events,"
		" quantity = CASE WHEN h.meter = 'storage.snapshot'"
		"  THEN greatest(h.quantity, EXCLUDED.quantity)"
		"  ELSE h.quantity + EXCLUDED.quantity END,"
		" input_tokens = h.input_tokens + EXCLUDED.input_tokens,"
		" output_tokens = h.output_tokens + EXCLUDED.output_tokens,"
		" cache_read_tokens = h.cache_read_tokens"
		"  + EXCLUDED.cache_read_tokens,"
		" cache_write_tokens = h.cache_write_tokens"
		"  + EXCLUDED.cache_write_tokens,"
		" reasoning_tokens = h.reasoning_tokens"
		"  + EXCLUDED.reasoning_tokens,"
		" cost = h.cost + EXCLUDED.cost)");
	return np;
}

/* The open periods' tenant_period_usage CTE (parameters from np on). */
static int apply_period(tally_agg *agg, tally_strbuf *q, const char **sep,
		        int np)
{
	tally_strbuf *b = agg->cols + np;
	size_t i;

	cols_begin(b, PERIOD_TYPES, APPLY_PERIOD_COLS);
	for (i = 0; i < agg->period.n; i++) {
		const acc *a = &agg->period.v[i];

		col_uuid(&b[0], a->k.tenant);
		col_i64(&b[1], a->k.t);
		col_i64(&b[2], a->pe);
		col_i64(&b[3], a->ai);
		col_i64(&b[4], a->in);
		col_i64(&b[5], a->out);
		col_i64(&b[6], a->cr);
		col_i64(&b[7], a->cw);
		col_i64(&b[8], a->rs);
		col_i64(&b[9], a->wf);
		col_i64(&b[10], a->wu);
		col_i64(&b[11], a->api);
		col_i64(&b[12], a->ss);
		col_cost(&b[13], a->cost);
	}
	tally_strbuf_puts(q, *sep);
	*sep = ", ";
	tally_strbuf_puts(q, "period AS ("
		" INSERT INTO tenant_period_usage AS u (tenant_id,"
		"  period_start, period_end, ai_requests, input_tokens,"
		"  output_tokens, cache_read_tokens, cache_write_tokens,"
		"  reasoning_tokens, workflow_executions,"
		"  workflow_complexity_units, api_calls, storage_snapshots,"
		"  cost) SELECT v.t, timestamptz 'epoch' + v.ps"
		"  * interval '1 ms', timestamptz 'epoch' + v.pe"
		"  * interval '1 ms', v.ai, v.i, v.o, v.cr, v.cw, v.rs,"
		"  v.wf, v.wu, v.api, v.ss, v.c FROM ");
	cols_end(b, APPLY_PERIOD_COLS, agg->period.n);
	unnest_args(q, np + 1, PERIOD_TYPES, APPLY_PERIOD_COLS);
	np += APPLY_PERIOD_COLS;
	tally_strbuf_puts(q, " v(t, ps, pe, ai, i, o, cr, cw, rs, wf, wu, api, ss,"
		" c) ORDER BY 1, 2"
		" ON CONFLICT (tenant_id, period_start) DO UPDATE SET"
		" ai_requests = u.ai_requests + EXCLUDED.ai_requests,"
		" input_tokens = u.input_tokens + EXCLUDED.input_tokens,"
		" output_tokens = u.output_tokens + EXCLUDED.output_tokens,"
		" cache_read_tokens = u.cache_read_tokens"
		"  + EXCLUDED.cache_read_tokens,"
		" cache_write_tokens = u.cache_write_tokens"
		"  + EXCLUDED.cache_write_tokens,"
		" reasoning_tokens = u.reasoning_tokens"
		"  + EXCLUDED.reasoning_tokens,"
		" workflow_executions = u.workflow_executions"
		"  + EXCLUDED.workflow_executions,"
		" workflow_complexity_units = u.workflow_complexity_units"
		"  + EXCLUDED.workflow_complexity_units,"
		" api_calls = u.api_calls + EXCLUDED.api_calls,"
		" storage_snapshots = u.storage_snapshots"
		"  + EXCLUDED.storage_snapshots,"
		" cost = u.cost + EXCLUDED.cost)");
	return np;
}

/* The closed periods' usage_adjustments CTE (parameters from np on). */
static int apply_adj(tally_agg *agg, tally_strbuf *q, const char **sep,
		     int np)
{
	tally_strbuf *b = agg->cols + np;
	size_t i;

	cols_begin(b, ADJ_TYPES, APPLY_ADJ_COLS);
	for (i = 0; i < agg->adj.n; i++) {
		const acc *a = &agg->adj.v[i];

		col_uuid(&b[0], a->k.tenant);
		col_i64(&b[1], a->k.t);
		col_i64(&b[2], a->pe);
		col_i32(&b[3], a->k.meter);
		col_i32(&b[4], a->k.provider_id);
		col_i32(&b[5], a->k.model_id);
		col_i64(&b[6], a->events);
		col_i64(&b[7], a->quantity);
		col_i64(&b[8], a->in);
		col_i64(&b[9], a->out);
		col_i64(&b[10], a->cr);
		col_i64(&b[11], a->cw);
		col_i64(&b[12], a->rs);
		col_cost(&b[13], a->cost);
	}
	tally_strbuf_puts(q, *sep);
	*sep = ", ";
	tally_strbuf_puts(q, "adj AS ("
		" INSERT INTO usage_adjustments (tenant_id, period_start,"
		"  period_end, kind, meter, provider, model, events,"
		"  quantity, input_tokens, output_tokens, cache_read_tokens,"
		"  cache_write_tokens, reasoning_tokens, cost)"
		" SELECT v.t, timestamptz 'epoch' + v.ps * interval '1 ms',"
		"  timestamptz 'epoch' + v.pe * interval '1 ms',"
		"  'late_usage', mt.name,"
		"  coalesce(p.name, ''), coalesce(m.name, ''), v.e, v.q,"
		"  v.i, v.o, v.cr, v.cw, v.rs, v.c FROM ");
	cols_end(b, APPLY_ADJ_COLS, agg->adj.n);
	unnest_args(q, np + 1, ADJ_TYPES, APPLY_ADJ_COLS);
	np += APPLY_ADJ_COLS;
	tally_strbuf_puts(q, " v(t, ps, pe, mid, pid, moid, e, q, i, o, cr, cw,"
		" rs, c) JOIN meters mt ON mt.id = v.mid"
		" LEFT JOIN providers p ON p.id = v.pid"
		" LEFT JOIN models m ON m.id = v.moid)");
	return np;
}

/*
 * Ledger, snapshots and the pre-aggregated deltas in one statement. The
 * delta arrays are built here from integers and bytes (uuids, numbers;
 * names come in as ids and are joined in SQL), never from event strings.
 * Sets agg->ncols and agg->colp[] (the parameters, in order).
 */
static void build_apply(tally_agg *agg, tally_strbuf *q)
{
	const char *sep = "WITH ";
	tally_strbuf *c = agg->cols;
	int k, np = 0;

	tally_strbuf_reset(q);
	if (agg->ledger_staged) {
		tally_strbuf_puts(q, sep);
		sep = ", ";
		tally_strbuf_puts(q,
		"led AS ("
		" INSERT INTO usage_ledger (occurred_at, price_id, quantity,"
		"  input_tokens, output_tokens, cache_read_tokens,"
		"  cache_write_tokens, reasoning_tokens, tenant_id, digest,"
		"  model_id, steps, meter_id, provider_id, cost)"
		" SELECT occurred_at, price_id, quantity, input_tokens,"
		"  output_tokens, cache_read_tokens, cache_write_tokens,"
		"  reasoning_tokens, tenant_id, digest, model_id, steps, meter_id,"
		"  provider_id, cost FROM agg_stage)");
	}
	/* the stage has the storage events on either path */
	if (agg->nstorage > 0) {
		tally_strbuf_puts(q, sep);
		sep = ", ";
		tally_strbuf_puts(q, "snap AS ("
			" INSERT INTO storage_snapshots (tenant_id, occurred_at,"
			"  digest, bytes) SELECT tenant_id, occurred_at, digest,"
			"  quantity FROM agg_stage WHERE meter_id = 3"
			" ON CONFLICT DO NOTHING)");
	}
	if (agg->hourly.n > 0)
		np = apply_hourly(agg, q, &sep, np);
	if (agg->period.n > 0)
		np = apply_period(agg, q, &sep, np);
	if (agg->adj.n > 0)
		np = apply_adj(agg, q, &sep, np);
	tally_strbuf_puts(q, " SELECT 1");
	for (k = 0; k < np; k++) {
		agg->colp[k] = c[k].p;
		agg->coll[k] = (int)c[k].len;
		agg->colf[k] = 1;
	}
	agg->ncols = np;
}

/* the key (tenant, period, id) known committed: not to be sent again */
bool agg_known(tally_agg *agg, int kind, const item *it,
	       const tally_str *id)
{
	uint8_t d[16];

	if (agg->known.nbuckets == 0)
		return false;
	tally_known_digest(&agg->known, d, kind, it->key, it->ps,
			   id->ptr, id->len);
	if (!tally_known_check(&agg->known, d))
		return false;
	agg->st.known_skipped++;
	return true;
}

/*
 * Distinct workflows per tenant and open period (migrations/0007): the ids
 * of this batch's accepted workflow executions go in once each; only ids
 * new to the period raise tenant_period_usage.workflows. Closed periods are
 * left alone (their invoice is out).
 */
static void collect_workflows(tally_agg *agg)
{
	tally_strbuf *t = &agg->wf_t, *p = &agg->wf_p, *w = &agg->wf_w;
	size_t i, n = 0;

	tally_strbuf_reset(t);
	tally_strbuf_reset(p);
	tally_strbuf_reset(w);
	tally_strbuf_puts(t, "{");
	tally_strbuf_puts(p, "{");
	tally_strbuf_puts(w, "{");
	/* in key order, as the users (users.c) */
	for (i = 0; i < agg->nsorted; i++) {
		const item *it = agg->sorted[i];
		const agg_event *ev = &it->re.ev;

		if (it->status != ST_OK || it->closed ||
		    ev->meter != TALLY_METER_WORKFLOW ||
		    ev->workflow_id.len == 0 ||
		    agg_known(agg, TALLY_KNOWN_WORKFLOW, it, &ev->workflow_id))
			continue;
		agg_uuid_arr(t, it->key, n == 0);
		tally_strbuf_printf(p, "%s%" PRId64, n ? "," : "", it->ps);
		if (n > 0)
			tally_strbuf_add(w, ",", 1);
		tally_strbuf_pg_array_elem(w, ev->workflow_id.ptr, ev->workflow_id.len);
		n++;
	}
	tally_strbuf_puts(t, "}");
	tally_strbuf_puts(p, "}");
	tally_strbuf_puts(w, "}");
	agg->nwf = n;
}

void agg_trace(tally_agg *agg, int phase)
{
	int64_t t;

	if (!agg->trace)
		return;
	t = tally_mono_ns();
	agg->phase_us[phase] += (t - agg->phase_t) / 1000;
	agg->phase_t = t;
}

/*
 * The batch's first statements: the fence, the dead-letter mirror, the
 * retention gaps, the tenants (locked) and their periods.
 */
int agg_apply_prepare(tally_agg *agg, tally_error *err)
{
	size_t i;
	int rc;

	agg_clear_totals(agg);
	agg->st.accepted = agg->st.adjusted = 0;
	/* a retried transaction starts again from the batch as classified */
	for (i = 0; i < agg->n; i++)
		if (agg->items[i].dup_db) {
			agg->items[i].dup_db = false;
			agg->items[i].status = ST_OK;
		}
	rc = agg_fence(agg, err);
	if (rc != 0)
		return rc;
	rc = agg_mirror_dead_letters(agg, err);
	/*
	 * Acknowledged totals are marked by tally_agg_outbox (every 10 s, at
	 * start-up and at shutdown), not by every batch: marking here moved
	 * each tenant's row once more per batch (docs/aggregate.md). Only a
	 * long backlog of acknowledgements is marked here, to bound memory.
	 */
	agg->nacks_marking = 0;
	if (rc == 0 && agg->st.gaps > 0)
		rc = agg_record_gaps(agg, err);
	if (rc != 0)
		return rc;
	rc = agg_load_tenants(agg, err);
	/* after the tenant locks: a batch takes no aggregate row before its
	 * tenants, so it never waits for a rerate holding them while holding
	 * a row that rerate wants */
	if (rc == 0 && agg_acks_pending(agg) >= ACKS_MARK_IN_BATCH)
		rc = agg_mark_published(agg, err);
	if (rc == 0)
		agg_assign_periods(agg);
	return rc;
}

/*
 * After the apply statement: the storage of the touched periods, then
 * versions, budget states, workflows and users of every row the batch
 * changed
 * (at, ap: the open periods' keys; storage adds the rows it wrote).
 */
static int apply_totals(tally_agg *agg, tally_error *err)
{
	tally_strbuf at = TALLY_STRBUF_INIT, ap = TALLY_STRBUF_INIT;
	const char *dist[6];
	size_t i, naff = 0, nst = 0;
	int rc = 0;

	tally_strbuf_puts(&at, "{");
	tally_strbuf_puts(&ap, "{");
	for (i = 0; i < agg->period.n; i++) {
		const acc *a = &agg->period.v[i];

		agg_uuid_arr(&at, a->k.tenant, naff == 0);
		tally_strbuf_printf(&ap, "%s%" PRId64, naff ? "," : "", a->k.t);
		naff++;
	}
	for (i = 0; i < agg->adj.n; i++)
		if (agg->adj.v[i].k.meter == TALLY_METER_STORAGE)
			nst++;
	for (i = 0; i < agg->period.n; i++)
		if (agg->period.v[i].ss > 0)
			nst++;
	/* snapshots, or open periods that may open with an earlier one */
	if (nst > 0 || agg->period.n > 0)
		rc = agg_storage_recompute(agg, &at, &ap, &naff, err);
	agg_trace(agg, 4);
	if (rc == 0 && naff > 0) {
		dist[0] = agg->wf_t.p;
		dist[1] = agg->wf_p.p;
		dist[2] = agg->wf_w.p;
		dist[3] = agg->us_t.p;
		dist[4] = agg->us_p.p;
		dist[5] = agg->us_s.p;
		rc = agg_bump_versions(agg, &at, &ap, dist, NULL, err);
	} else {
		tally_known_reset_pending(&agg->known); /* nothing was sent */
	}
	tally_strbuf_free(&at);
	tally_strbuf_free(&ap);
	return rc;
}

/*
 * The deltas and the apply statement of the batch's accepted events. The
 * fast path runs it while PostgreSQL finishes the dedupe keys' COPY, for
 * the batch as it is if every key is new; the COPY's failure (a key seen
 * before) clears apply_ready and the ON CONFLICT path runs it again after
 * the dedupe.
 */
void agg_apply_ahead(tally_agg *agg)
{
	agg_accumulate(agg);
	build_apply(agg, &agg->q3);
	agg->apply_ready = true;
}

/* The batch's new workflows and users, once its accepted events are
 * final: on the fast path while PostgreSQL finishes the ledger's COPY. */
void agg_collect_ahead(tally_agg *agg)
{
	collect_workflows(agg);
	agg_collect_users(agg);
	agg->collected = true;
}

/*
 * The batch's rows (its items ST_OK) after agg_apply_prepare: dedupe keys,
 * ledger, deltas, storage, versions and totals. The fast path builds the
 * deltas, the apply statement and the workflows and users while its COPYs
 * finish (agg_apply_ahead, agg_collect_ahead); the ON CONFLICT path here.
 */
int agg_apply_rows(tally_agg *agg, tally_error *err)
{
	size_t i, rows;
	int rc;

	agg_sort_batch(agg, &rows);
	if (rows == 0)
		return 0;
	agg_trace(agg, 1);
	rc = agg_write_batch(agg, rows, err);
	if (rc != 0)
		return rc;
	agg_trace(agg, 2);
	if (!agg->apply_ready)
		agg_apply_ahead(agg);
	for (i = 0; i < agg->period.n; i++)
		agg->st.accepted += agg->period.v[i].accepted;
	for (i = 0; i < agg->adj.n; i++) {
		agg->st.accepted += agg->adj.v[i].accepted;
		agg->st.adjusted += agg->adj.v[i].accepted;
	}
	if (agg->st.accepted == 0)
		return 0;
	rc = tally_pg_exec_bin(agg->pg, NULL, agg->q3.p, agg->ncols,
			       (const char *const *)agg->colp, agg->coll,
			       agg->colf, err);
	if (rc != 0)
		return rc;
	if (!agg->collected)
		agg_collect_ahead(agg);
	agg_trace(agg, 3);
	rc = apply_totals(agg, err);
	if (rc == 0)
		agg_trace(agg, 5);
	return rc;
}

int agg_apply_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_agg *agg = payload;
	int rc;

	(void)pg;
	agg_trace(agg, 6);
	tally_known_reset_pending(&agg->known);
	agg->st.known_skipped = 0;
	rc = agg_apply_prepare(agg, err);
	if (rc != 0)
		return rc;
	agg_trace(agg, 0);
	return agg_apply_rows(agg, err);
}
