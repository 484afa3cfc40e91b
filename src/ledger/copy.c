/*
 * copy.c - the batch's rows to PostgreSQL by binary COPY (dedupe keys,
 * ledger rows, the agg_stage staging table), streamed in pieces.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "pg_binary.h"

#include <stdlib.h>
#include <string.h>

/*
 * The staging table lives as long as the connection: created once (the
 * first batch after a connect), emptied by every COMMIT. Binary COPY: no
 * text to format in C or to parse in PostgreSQL.
 */
static const char STAGING_SQL[] =
	"SET LOCAL client_min_messages = warning;"
	"CREATE TEMP TABLE IF NOT EXISTS agg_stage ("
	" idx integer, tenant_id uuid, digest uuid, occurred_at timestamptz,"
	" meter_id smallint, provider_id smallint, model_id integer,"
	" price_id bigint, quantity bigint, input_tokens bigint,"
	" output_tokens bigint, cache_read_tokens bigint,"
	" cache_write_tokens bigint, reasoning_tokens bigint, steps integer,"
	" cost numeric) ON COMMIT DELETE ROWS";

#define STAGE_COLS 16

int64_t agg_item_qty(const agg_event *ev)
{
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS: return 1;
	case TALLY_METER_WORKFLOW: return ev->complexity;
	case TALLY_METER_STORAGE: return ev->bytes;
	case TALLY_METER_API_CALL: return ev->count;
	default: return 0;
	}
}

/* memcmp's order of the 32-byte keys, a big-endian word at a time */
static int cmp_key(const void *a, const void *b)
{
	const item *x = *(const item *const *)a, *y = *(const item *const *)b;
	int w;

	for (w = 0; w < 32; w += 8) {
		uint64_t u, v;

		memcpy(&u, x->key + w, 8);
		memcpy(&v, y->key + w, 8);
		if (u != v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
			u = __builtin_bswap64(u);
			v = __builtin_bswap64(v);
#endif
			return u < v ? -1 : 1;
		}
	}
	return 0;
}

/*
 * The batch's new-looking events go to PostgreSQL by binary COPY, in key
 * order, streamed in pieces of ~64 KiB as the rows are encoded: no
 * batch-sized buffer here or in libpq. What a COPY sends (copy_kind):
 *
 *   COPY_DEDUPE   their keys, straight into usage_dedupe (the fast path)
 *   COPY_LEDGER   their ledger rows, straight into usage_ledger (after it)
 *   COPY_STAGE    everything into agg_stage (the ON CONFLICT path: the
 *                 stage is where duplicates are found and removed)
 *   COPY_SNAPSHOTS the storage events only into agg_stage (the fast path:
 *                 the apply statement's storage_snapshots insert reads it)
 *
 * (docs/aggregate.md, "Part 5": the fast path writes each row once; the
 * stage cost a write and two reads of every row.)
 */
#define COPY_PIECE (1 << 16)

static const char *const COPY_SQL[] = {
	[COPY_DEDUPE] = "COPY usage_dedupe (tenant_id, digest, occurred_at)"
			" FROM STDIN (FORMAT binary)",
	[COPY_LEDGER] = "COPY usage_ledger (tenant_id, digest, occurred_at,"
			" meter_id, provider_id, model_id, price_id, quantity,"
			" input_tokens, output_tokens, cache_read_tokens,"
			" cache_write_tokens, reasoning_tokens, steps, cost)"
			" FROM STDIN (FORMAT binary)",
	[COPY_STAGE] = "COPY agg_stage FROM STDIN (FORMAT binary)",
	[COPY_SNAPSHOTS] = "COPY agg_stage FROM STDIN (FORMAT binary)",
};

void tally_agg_order_decoded(tally_agg_decoded *d)
{
	size_t i;

	if (d->cap_order < d->n) {
		free(d->order);
		d->cap_order = d->n;
		d->order = tally_xmalloc(d->n * sizeof(item *));
	}
	d->norder = 0;
	for (i = 0; i < d->n; i++)
		if (!d->items[i].bad)
			d->order[d->norder++] = &d->items[i];
	qsort(d->order, d->norder, sizeof(item *), cmp_key);
	d->ordered = true;
}

/* The batch's accepted-so-far items in key order: agg->sorted[0, *n). In
 * key order, the dedupe index takes the batch in one ordered pass over
 * its leaf pages instead of random hops. A batch ordered ahead
 * (tally_agg_order_decoded) is only filtered. */
void agg_sort_batch(tally_agg *agg, size_t *n)
{
	const tally_agg_decoded *d = agg->dec;
	size_t i, nsort = 0;

	if (agg->cap_sorted < agg->n) {
		free(agg->sorted);
		agg->cap_sorted = agg->n;
		agg->sorted = tally_xmalloc(agg->n * sizeof(item *));
	}
	if (d != NULL && d->ordered && d->items == agg->items) {
		for (i = 0; i < d->norder; i++)
			if (d->order[i]->status == ST_OK)
				agg->sorted[nsort++] = d->order[i];
	} else {
		for (i = 0; i < agg->n; i++)
			if (agg->items[i].status == ST_OK)
				agg->sorted[nsort++] = &agg->items[i];
		qsort(agg->sorted, nsort, sizeof(item *), cmp_key);
	}
	agg->nsorted = nsort;
	*n = nsort;
}

static void put_row(tally_strbuf *c, const tally_agg *agg, const item *it,
		    enum copy_kind kind)
{
	const agg_rated *re = &it->re;
	const agg_event *ev = &re->ev;
	bool ai = ev->meter == TALLY_METER_AI_TOKENS;

	/* worst case per row, so the helpers never reallocate */
	tally_strbuf_reserve(c, 2 + STAGE_COLS * 4 + 16 + 16 + 8 * 10 + 2 * 2 +
		   4 * 3 + TALLY_PGNUMERIC_LEN);
	if (kind == COPY_DEDUPE) {
		be16(c, 3);
		f_uuid(c, it->key);
		f_uuid(c, it->key + 16);
		f_ts(c, ev->time_ms);
		return;
	}
	if (kind == COPY_LEDGER) {
		be16(c, STAGE_COLS - 1);
	} else {
		be16(c, STAGE_COLS);
		f_i32(c, (int64_t)(it - agg->items));
	}
	f_uuid(c, it->key);
	f_uuid(c, it->key + 16);
	f_ts(c, ev->time_ms);
	f_i16(c, (int64_t)ev->meter);
	if (ai) {
		f_i16(c, it->provider_id);
		f_i32(c, it->model_id);
	} else {
		f_null(c);
		f_null(c);
	}
	if (re->unpriced || re->price_id <= 0)
		f_null(c);
	else
		f_i64(c, re->price_id);
	f_i64(c, agg_item_qty(ev));
	if (ai) {
		f_i64(c, ev->input_tokens);
		f_i64(c, ev->output_tokens);
		f_i64(c, ev->cache_read_tokens);
		f_i64(c, ev->cache_write_tokens);
		f_i64(c, ev->reasoning_tokens);
	} else {
		f_null(c);
		f_null(c);
		f_null(c);
		f_null(c);
		f_null(c);
	}
	if (ev->meter == TALLY_METER_WORKFLOW)
		f_i32(c, ev->steps);
	else
		f_null(c);
	f_money(c, re->cost);
}

/* Make sure agg_stage exists on this connection (once per connection). */
static int ensure_stage(tally_agg *agg, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	int pid = PQbackendPID(conn);

	if (agg->stage_conn == conn && agg->stage_pid == pid)
		return 0;
	/*
	 * Inside the batch's transaction: if it rolls back the table is gone
	 * again, so it only counts as created once the batch commits
	 * (stage_pending, confirmed in tally_agg_process).
	 */
	agg->stage_pending = true;
	return tally_pg_exec_script(agg->pg, STAGING_SQL, err);
}

/*
 * COPY agg->sorted (as agg_sort_batch left it; COPY_SNAPSHOTS: its storage
 * events only) as `kind`. The result of the COPY is left to the caller:
 * *res is PQgetResult's after the end (NULL if the connection failed
 * before), so that the fast path can tell a unique violation from the
 * rest. *rows: the rows sent (0: nothing to send, no COPY, *res NULL).
 * meanwhile (may be NULL) runs after the end is sent, before the result
 * is read: the rows still in the socket are PostgreSQL's work, so C's
 * work runs beside it instead of after it.
 */
int agg_copy_rows(tally_agg *agg, enum copy_kind kind, size_t *rows,
		     PGresult **res, agg_meanwhile meanwhile, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	tally_strbuf *c = &agg->copy;
	size_t i, n = 0;
	int rc;

	*res = NULL;
	*rows = 0;
	for (i = 0; i < agg->nsorted; i++)
		if (kind != COPY_SNAPSHOTS ||
		    agg->sorted[i]->re.ev.meter == TALLY_METER_STORAGE)
			n++;
	if (n == 0)
		return 0;
	if (kind == COPY_STAGE || kind == COPY_SNAPSHOTS) {
		rc = ensure_stage(agg, err);
		if (rc != 0)
			return rc;
	}
	rc = tally_pg_copy_begin(agg->pg, COPY_SQL[kind], err);
	if (rc != 0)
		return rc;
	tally_strbuf_reset(c);
	tally_strbuf_add(c, "PGCOPY\n\377\r\n\0", 11);
	be32(c, 0); /* flags */
	be32(c, 0); /* header extension */
	for (i = 0; i < agg->nsorted; i++) {
		const item *it = agg->sorted[i];

		if (kind == COPY_SNAPSHOTS &&
		    it->re.ev.meter != TALLY_METER_STORAGE)
			continue;
		if (c->len >= COPY_PIECE) {
			/* a failure here is the connection's: PostgreSQL
			 * reports a rejected row after the end */
			if (PQputCopyData(conn, c->p, (int)c->len) != 1)
				return tally_pg__classify(conn, NULL, err);
			tally_strbuf_reset(c);
		}
		put_row(c, agg, it, kind);
	}
	be16(c, -1);
	if (PQputCopyData(conn, c->p, (int)c->len) != 1 ||
	    PQputCopyEnd(conn, NULL) != 1)
		return tally_pg__classify(conn, NULL, err);
	*rows = n;
	if (meanwhile != NULL)
		meanwhile(agg);
	*res = PQgetResult(conn);
	return 0;
}

/* agg_copy_rows whose every failure is the batch's (the result drained) */
int agg_copy_all(tally_agg *agg, enum copy_kind kind, size_t *rows,
		    agg_meanwhile meanwhile, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res, *more;
	int rc = agg_copy_rows(agg, kind, rows, &res, meanwhile, err);

	if (rc != 0 || *rows == 0)
		return rc;
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = tally_pg__classify(conn, res, err);
	PQclear(res);
	while ((more = PQgetResult(conn)) != NULL)
		PQclear(more);
	return rc;
}

