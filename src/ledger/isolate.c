/*
 * isolate.c - the events PostgreSQL refuses, found after a batch failed
 * with a data error (an int64 sum out of range, a value a trigger or a
 * constraint refuses): the batch's rows are applied again by halves in one
 * transaction, each half under a savepoint, kept when it succeeds and split
 * when it fails, down to single events. The events that fail alone are
 * dead-lettered and the transaction is rolled back; the caller then
 * commits the batch without them. A half is applied after the halves
 * before it were kept, so an event is refused exactly when its addition to
 * what precedes it fails. Only runs after such a failure: the normal path
 * is untouched. With k refused events among n, about 2 k log2(n) probes.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/log.h"

#include <stdlib.h>
#include <string.h>

/* The SQLSTATE of a tally_pg error ("postgres XXXXX: ..."), or "". */
static void sqlstate(const tally_error *err, char out[6])
{
	out[0] = '\0';
	if (strncmp(err->msg, "postgres ", 9) == 0 &&
	    strlen(err->msg) >= 9 + 5 && err->msg[14] == ':') {
		memcpy(out, err->msg + 9, 5);
		out[5] = '\0';
	}
}

/*
 * Whether err is PostgreSQL refusing data: class 22 (data exception) or
 * 23 (integrity), except 23505 (unique: the dedupe's own signal) and 23514
 * (check: also a missing ledger partition, which maintenance creates).
 * Transient errors (connection, serialisation, deadlock) are not: they
 * are retried.
 */
bool agg_refused_for_data(const tally_error *err)
{
	char st[6];

	if (err->code != TALLY_EINVALID)
		return false;
	sqlstate(err, st);
	if (strncmp(st, "22", 2) == 0)
		return true;
	return strncmp(st, "23", 2) == 0 && strcmp(st, "23505") != 0 &&
	       strcmp(st, "23514") != 0;
}

typedef struct probe_state {
	size_t *bad;    /* indexes of the events refused alone */
	size_t nbad, cap;
	tally_error *why; /* their errors */
} probe_state;

static int exec(tally_agg *agg, const char *sql, tally_error *err)
{
	return tally_pg_exec_script(agg->pg, sql, err);
}

/* Rows a kept probe left in agg_stage must not go in again with the next. */
static int clear_stage(tally_agg *agg, tally_error *err)
{
	return exec(agg, "DO $$ BEGIN IF to_regclass('pg_temp.agg_stage')"
		    " IS NOT NULL THEN EXECUTE 'DELETE FROM agg_stage'; END IF;"
		    " END $$", err);
}

/* Apply the events idx[0..n) (held ones): kept, or split when refused. */
static int probe(tally_agg *agg, const size_t *idx, size_t n,
		 probe_state *ps, tally_error *err)
{
	tally_error why;
	size_t i;
	int rc;

	for (i = 0; i < n; i++)
		agg->items[idx[i]].status = ST_OK;
	rc = exec(agg, "SAVEPOINT agg_isolate", err);
	if (rc != 0)
		return rc;
	rc = agg_apply_rows(agg, &why);
	if (rc == 0) {
		rc = clear_stage(agg, err);
		if (rc == 0)
			rc = exec(agg, "RELEASE SAVEPOINT agg_isolate", err);
		for (i = 0; i < n; i++) /* applied: out of the later probes */
			if (agg->items[idx[i]].status == ST_OK)
				agg->items[idx[i]].status = ST_HOLD;
		return rc;
	}
	if (!agg_refused_for_data(&why)) {
		*err = why;
		return rc;
	}
	rc = exec(agg, "ROLLBACK TO SAVEPOINT agg_isolate", err);
	for (i = 0; i < n; i++) {
		agg->items[idx[i]].status = ST_HOLD;
		agg->items[idx[i]].dup_db = false;
	}
	if (rc != 0)
		return rc;
	if (n == 1) {
		if (ps->nbad == ps->cap) {
			ps->cap = ps->cap ? ps->cap * 2 : 16;
			ps->bad = tally_xrealloc(ps->bad,
						 ps->cap * sizeof(*ps->bad));
			ps->why = tally_xrealloc(ps->why,
						 ps->cap * sizeof(*ps->why));
		}
		ps->bad[ps->nbad] = idx[0];
		ps->why[ps->nbad] = why;
		ps->nbad++;
		return 0;
	}
	rc = probe(agg, idx, n / 2, ps, err);
	if (rc == 0)
		rc = probe(agg, idx + n / 2, n - n / 2, ps, err);
	return rc;
}

/* The dead-letter reason of a refusal: out_of_range for a sum or value
 * out of its type's range (22003) or a sequence at its end (2200H: ids),
 * rejected_by_database otherwise. */
const char *agg_refusal_reason(const tally_error *err)
{
	char st[6];

	sqlstate(err, st);
	return strcmp(st, "22003") == 0 || strcmp(st, "2200H") == 0
		       ? "out_of_range"
		       : "rejected_by_database";
}

/* The refused events become dead letters. */
static void dead_letter(tally_agg *agg, const probe_state *ps)
{
	size_t k;

	for (k = 0; k < ps->nbad; k++) {
		item *it = &agg->items[ps->bad[k]];

		it->status = ST_DLQ;
		it->reason = agg_refusal_reason(&ps->why[k]);
		agg_item_set_detail(agg, it, "%.150s", ps->why[k].msg);
		tally_log(TALLY_WARN, "aggregate.event_refused",
			  TALLY_KV_STR("topic", agg->msgs[ps->bad[k]].topic),
			  TALLY_KV_INT("partition",
				       agg->msgs[ps->bad[k]].partition),
			  TALLY_KV_INT("offset", agg->msgs[ps->bad[k]].offset),
			  TALLY_KV_STR("error", ps->why[k].msg));
	}
}

/*
 * After the batch's transaction failed with agg_refused_for_data: find the
 * events refused alone (one transaction, rolled back) and make them dead
 * letters (*found of them; 0: no single event is refused, the failure is
 * the batch's). The other items are as they were.
 */
int agg_isolate(tally_agg *agg, size_t *found, tally_error *err)
{
	probe_state ps = { 0 };
	size_t *idx = tally_xmalloc((agg->n + 1) * sizeof(*idx));
	size_t i, n = 0;
	tally_error e2;
	int rc;

	*found = 0;
	rc = exec(agg, "BEGIN", err);
	if (rc == 0)
		rc = agg_apply_prepare(agg, err);
	if (rc == 0) {
		for (i = 0; i < agg->n; i++)
			if (agg->items[i].status == ST_OK) {
				agg->items[i].status = ST_HOLD;
				idx[n++] = i;
			}
		if (n > 0)
			rc = probe(agg, idx, n, &ps, err);
	}
	if (PQstatus(tally_pg_conn(agg->pg)) == CONNECTION_OK)
		(void)exec(agg, "ROLLBACK", &e2);
	agg->stage_conn = NULL; /* created in a rolled-back transaction? */
	agg_clear_totals(agg);
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		if (it->status == ST_HOLD || it->dup_db) {
			it->status = ST_OK;
			it->dup_db = false;
		}
	}
	if (rc == 0) {
		dead_letter(agg, &ps);
		*found = ps.nbad;
	}
	free(idx);
	free(ps.bad);
	free(ps.why);
	return rc;
}
