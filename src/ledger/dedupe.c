/*
 * dedupe.c - the batch's keys into usage_dedupe: the ring of keys committed
 * lately, the fast path (plain COPY) and the ON CONFLICT path through the
 * stage.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"

#include <stdlib.h>
#include <string.h>

void agg_seen_init(seen_ring *r, size_t cap)
{
	if (cap == 0)
		cap = 65536;
	if (cap > (1u << 24))
		cap = 1u << 24;
	memset(r, 0, sizeof(*r));
	r->cap = (uint32_t)cap;
}

bool agg_seen_has(const seen_ring *r, const item *it)
{
	return r->keys != NULL &&
	       tally_hashset_find_h(&r->h, (const uint8_t *)r->keys, 32, 32,
				    it->key, it->khash) != UINT32_MAX;
}

/* the item's key as committed; the oldest key makes room when full */
void agg_seen_add(seen_ring *r, const item *it)
{
	uint32_t pos;

	if (r->keys == NULL) {
		r->keys = tally_xcalloc(r->cap, sizeof(*r->keys));
		r->hashes = tally_xcalloc(r->cap, sizeof(*r->hashes));
		tally_hashset_init(&r->h, r->cap);
	}
	if (agg_seen_has(r, it))
		return;
	pos = r->head;
	if (r->n == r->cap)
		tally_hashset_del_h(&r->h, pos, r->hashes);
	else
		r->n++;
	memcpy(r->keys[pos], it->key, 32);
	r->hashes[pos] = it->khash;
	(void)tally_hashset_put_h(&r->h, (const uint8_t *)r->keys, 32, 32, pos,
				  it->khash);
	r->head = (pos + 1) % r->cap;
}

/*
 * The dedupe insert: INSERT ... ON CONFLICT DO NOTHING RETURNING the keys
 * it inserted, as binary (16-byte uuids). C finds each returned key's
 * staged event (the batch's key hash); the staged events not returned were
 * seen before: they are marked duplicates (the deltas leave them out) and,
 * if there are any, deleted from the stage by index in a second statement.
 * Measured against the earlier optimistic variant (SAVEPOINT + plain
 * INSERT; on unique_violation ROLLBACK TO SAVEPOINT, then ON CONFLICT DO
 * NOTHING RETURNING joined with the stage in SQL): with 5 % re-sent events
 * nearly every batch took the fallback, did the insert twice and wrote an
 * ERROR line to the server log; this is faster there and logs nothing
 * (docs/aggregate.md).
 */
static const char DEDUPE_SQL[] =
	"INSERT INTO usage_dedupe (tenant_id, digest, occurred_at)"
	" SELECT tenant_id, digest, occurred_at FROM agg_stage"
	" ON CONFLICT DO NOTHING RETURNING tenant_id, digest";

/*
 * The fast path: the keys by COPY straight into usage_dedupe, inside a
 * savepoint; then the ledger rows by COPY straight into usage_ledger (and
 * the storage events into the stage for storage_snapshots). With the keys
 * of the last batches already filtered out in C (agg_seen_has), the key COPY
 * nearly always succeeds; each row is then written once (measured in
 * docs/aggregate.md, "Part 5"). A unique violation -- a key older than
 * the ring (the ring counts keys of all partitions, and one partition can
 * lag far behind the others), or written by another instance -- rolls
 * back to the savepoint and the batch goes the ON CONFLICT way through
 * the stage. So do the next 0, 1, 3, 7 ... 63 batches while fallbacks follow
 * each other (after a restart, while the ring is empty); one fast success
 * resets that. *done: the batch's rows are written.
 */
static int write_fast(tally_agg *agg, bool *done, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res, *more;
	const char *state;
	size_t rows;
	int rc;

	*done = false;
	rc = tally_pg_exec_script(agg->pg, "SAVEPOINT agg_dedupe", err);
	if (rc == 0)
		rc = agg_copy_rows(agg, COPY_DEDUPE, &rows, &res,
				   agg_apply_ahead, err);
	if (rc != 0)
		return rc;
	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
		PQclear(res);
		while ((more = PQgetResult(conn)) != NULL)
			PQclear(more);
		*done = true;
		agg->dedupe_streak = 0;
		rc = agg_copy_all(agg, COPY_LEDGER, &rows, agg_collect_ahead,
				  err);
		if (rc == 0)
			rc = agg_copy_all(agg, COPY_SNAPSHOTS, &rows, NULL, err);
		return rc;
	}
	state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL || strcmp(state, "23505") != 0) {
		rc = tally_pg__classify(conn, res, err);
		PQclear(res);
		while ((more = PQgetResult(conn)) != NULL)
			PQclear(more);
		return rc;
	}
	PQclear(res);
	while ((more = PQgetResult(conn)) != NULL)
		PQclear(more);
	agg->apply_ready = false; /* built for keys that were not all new */
	agg->dedupe_slow = 1 << (agg->dedupe_streak < 6 ? agg->dedupe_streak : 6);
	agg->dedupe_streak++;
	agg->st.dedupe_fallbacks++;
	return tally_pg_exec_script(agg->pg, "ROLLBACK TO SAVEPOINT agg_dedupe",
				    err);
}

static int dedupe(tally_agg *agg, size_t rows, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res;
	const char *param;
	tally_strbuf ids = { 0 };
	size_t i, ndup = 0;
	int rc = 0, r;

	res = PQexecParams(conn, DEDUPE_SQL, 0, NULL, NULL, NULL, NULL, 1);
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = tally_pg__classify(conn, res, err);
		PQclear(res);
		return rc;
	}
	if ((size_t)PQntuples(res) == rows) {
		PQclear(res); /* nothing seen before: the common case */
		return 0;
	}
	for (i = 0; i < agg->n; i++)
		if (agg->items[i].status == ST_OK)
			agg->items[i].dup_db = true;
	for (r = 0; r < PQntuples(res); r++) {
		uint8_t key[32];
		uint32_t k;

		if (PQgetlength(res, r, 0) != 16 || PQgetlength(res, r, 1) != 16) {
			rc = tally_error_set(err, TALLY_ERROR, "dedupe: bad key");
			break;
		}
		memcpy(key, PQgetvalue(res, r, 0), 16);
		memcpy(key + 16, PQgetvalue(res, r, 1), 16);
		k = tally_hashset_find(&agg->dedupe, (const uint8_t *)agg->items,
			      sizeof(item), 32, key);
		if (k == UINT32_MAX || agg->items[k].status != ST_OK) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "dedupe: unknown key returned");
			break;
		}
		agg->items[k].dup_db = false;
	}
	PQclear(res);
	if (rc != 0)
		return rc;
	tally_strbuf_puts(&ids, "{");
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		if (it->status != ST_OK || !it->dup_db)
			continue;
		it->status = ST_DUP;
		tally_strbuf_printf(&ids, "%s%zu", ndup++ ? "," : "", i);
	}
	tally_strbuf_puts(&ids, "}");
	param = ids.p;
	if (ndup > 0)
		rc = tally_pg_exec(agg->pg, NULL, "DELETE FROM agg_stage"
				   " WHERE idx = ANY($1::integer[])", 1, &param,
				   err);
	free(ids.p);
	return rc;
}

/*
 * The batch's rows (agg->sorted, `rows` of them) into usage_dedupe and
 * usage_ledger: the fast path's COPYs, or through the stage with
 * ON CONFLICT (which also marks and removes the duplicates). Sets
 * agg->ledger_staged: the apply statement inserts the ledger from the
 * stage.
 */
int agg_write_batch(tally_agg *agg, size_t rows, tally_error *err)
{
	size_t n;
	int rc;

	agg->ledger_staged = false;
	agg->apply_ready = agg->collected = false;
	if (agg->dedupe_slow == 0) {
		bool done;

		rc = write_fast(agg, &done, err);
		if (rc != 0 || done)
			return rc;
	}
	agg->ledger_staged = true;
	rc = agg_copy_all(agg, COPY_STAGE, &n, NULL, err);
	if (rc == 0)
		rc = dedupe(agg, rows, err);
	return rc;
}
