/*
 * rollover.c - storage rollover: a row for the period of every tenant that
 * holds storage and whose period no event has created.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/log.h"
#include "tally/signals.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* periods looked at per tenant, the current one included (with monthly
 * periods and a 35-day window, two are inside) */
#define ROLLOVER_BACK 8

/*
 * Of the (tenant, current period) pairs, those whose period has no row
 * yet and opens with storage: the last snapshot before it holds bytes.
 * Both tests are index probes per pair (scalar subqueries: as NOT EXISTS
 * the planner may scan tenant_period_usage, see SEGMENTS_SQL).
 */
static const char ROLLOVER_TARGETS_SQL[] =
	"SELECT x.t, x.ps, x.pe FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[]) AS x(t, ps, pe)"
	" WHERE (SELECT true FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = timestamptz 'epoch'"
	"   + x.ps * interval '1 ms') IS NULL"
	" AND (SELECT s.bytes FROM storage_snapshots s"
	"   WHERE s.tenant_id = x.t AND s.occurred_at < timestamptz 'epoch'"
	"   + x.ps * interval '1 ms'"
	"   ORDER BY s.occurred_at DESC, s.bytes DESC LIMIT 1) > 0"
	" ORDER BY 1, 2";

typedef struct rollover {
	tally_agg *agg;
	int64_t now_ms;
	bool first;           /* no chunk committed yet */
	char after[37];       /* last tenant of the committed chunks */
	char last[37];        /* last tenant of this chunk */
	size_t ntenants;      /* tenants in this chunk */
	size_t rows;          /* rows this chunk wrote */
} rollover;

/*
 * The candidates of the chunk's tenants (array literals ids, a2, a3: tenant,
 * period start, end): each tenant's period containing now and the earlier
 * ones that end inside the lateness window (a period that began and ended
 * while tally-aggregate was down has no row either), unless closed.
 */
static size_t rollover_candidates(tally_agg *agg, int64_t now_ms,
				  int64_t bound, tally_strbuf *ids,
				  tally_strbuf *a2, tally_strbuf *a3)
{
	size_t i, n = 0;

	tally_strbuf_reset(ids);
	tally_strbuf_puts(ids, "{");
	tally_strbuf_puts(a2, "{");
	tally_strbuf_puts(a3, "{");
	for (i = 0; i < agg->ntenants; i++) {
		int64_t t = now_ms, ps, pe;
		bool closed;
		int back;

		for (back = 0; back < ROLLOVER_BACK; back++, t = ps - 1) {
			agg_period_of(agg, &agg->tenants[i], t, &ps, &pe,
				      &closed);
			if (back > 0 && pe <= bound)
				break;
			if (closed)
				continue;
			agg_uuid_arr(ids, agg->tenants[i].id, n == 0);
			tally_strbuf_printf(a2, "%s%" PRId64, n ? "," : "", ps);
			tally_strbuf_printf(a3, "%s%" PRId64, n ? "," : "", pe);
			n++;
		}
	}
	tally_strbuf_puts(ids, "}");
	tally_strbuf_puts(a2, "}");
	tally_strbuf_puts(a3, "}");
	return n;
}

/* The targets (tenant, ps, pe per row of res) into tg, indexed by th. */
static int rollover_targets(const PGresult *res, starget *tg,
			    tally_hashset *th, size_t *ntg, tally_error *err)
{
	int r;

	*ntg = 0;
	tally_hashset_init(th, (size_t)PQntuples(res));
	for (r = 0; r < PQntuples(res); r++) {
		starget *t = &tg[*ntg];

		if (tally_uuid_parse(t->tenant, PQgetvalue(res, r, 0),
				     36) != 0 ||
		    tally_parse_i64(&t->ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t->pe, PQgetvalue(res, r, 2)) != 0)
			return tally_error_set(err, TALLY_ERROR,
					       "bad storage rollover row");
		if (tally_hashset_put(th, (const uint8_t *)tg, sizeof(*tg),
				      STARGET_KEY, (uint32_t)*ntg) == *ntg)
			(*ntg)++;
	}
	return 0;
}

/* One chunk: AGG_STORAGE_CHUNK tenants with snapshots after ro->after. */
static int rollover_txn(tally_pg *pg, void *payload, tally_error *err)
{
	rollover *ro = payload;
	tally_agg *agg = ro->agg;
	PGresult *res = NULL;
	tally_strbuf ids = TALLY_STRBUF_INIT, a2 = TALLY_STRBUF_INIT,
		     a3 = TALLY_STRBUF_INIT, at = TALLY_STRBUF_INIT,
		     ap = TALLY_STRBUF_INIT;
	starget *tg = NULL;
	tally_hashset th = { 0 };
	const char *params[3];
	size_t ntg = 0, naff = 0;
	int64_t bound;
	int rc;

	(void)pg;
	agg_clear_totals(agg);
	ro->ntenants = ro->rows = 0;
	agg->storage_unpriced = 0;
	rc = agg_storage_tenants(agg, ro->first ? NULL : ro->after, &res, err);
	if (rc != 0)
		goto cleanup;
	rc = agg_chunk_tenants(agg, res, &ids, ro->last, err);
	ro->ntenants = agg->ntenants;
	PQclear(res);
	res = NULL;
	if (rc != 0 || ro->ntenants == 0)
		goto cleanup;
	bound = ro->now_ms - agg->lateness_ms;
	rc = agg_load_tenant_rows(agg, ids.p, bound, err);
	if (rc != 0 ||
	    rollover_candidates(agg, ro->now_ms, bound, &ids, &a2, &a3) == 0)
		goto cleanup;
	params[0] = ids.p;
	params[1] = a2.p;
	params[2] = a3.p;
	rc = tally_pg_exec(agg->pg, &res, ROLLOVER_TARGETS_SQL, 3, params, err);
	if (rc != 0 || PQntuples(res) == 0)
		goto cleanup;
	tg = tally_xcalloc((size_t)PQntuples(res), sizeof(*tg));
	rc = rollover_targets(res, tg, &th, &ntg, err);
	if (rc != 0)
		goto cleanup;
	/* as a batch's targets: the integral, the price, the row */
	tally_strbuf_puts(&at, "{");
	tally_strbuf_puts(&ap, "{");
	/* create only: a row a batch wrote meanwhile wins (it may carry a
	 * snapshot this statement's snapshot did not see) */
	rc = agg_storage_write(agg, tg, ntg, &th, ro->now_ms, SW_CREATE, &at,
			       &ap, &naff, err);
	if (rc != 0 || naff == 0)
		goto cleanup;
	rc = agg_bump_versions(agg, &at, &ap, NULL, &ro->rows, err);
cleanup:
	PQclear(res);
	free(tg);
	tally_hashset_free(&th);
	tally_strbuf_free(&ids);
	tally_strbuf_free(&a2);
	tally_strbuf_free(&a3);
	tally_strbuf_free(&at);
	tally_strbuf_free(&ap);
	return rc;
}

int tally_agg_storage_rollover(tally_agg *agg, int64_t now_ms, size_t *out,
			       tally_error *err)
{
	rollover ro;
	int rc = 0;

	memset(&ro, 0, sizeof(ro));
	ro.agg = agg;
	ro.now_ms = now_ms;
	ro.first = true;
	if (out != NULL)
		*out = 0;
	do {
		/* a deadlock with a batch is retried; an outage fails fast
		 * (the caller tries again later) */
		rc = tally_pg_txn(agg->pg, rollover_txn, &ro, 3, err);
		if (rc != 0)
			break;
		if (agg->storage_unpriced > 0)
			tally_log(TALLY_WARN, "aggregate.storage_unpriced",
				  TALLY_KV_INT("segments",
					       agg->storage_unpriced));
		agg_publish_totals(agg);
		agg_clear_totals(agg);
		if (out != NULL)
			*out += ro.rows;
		memcpy(ro.after, ro.last, sizeof(ro.after));
		ro.first = false;
		/* a stop waits for this chunk only, not the whole run */
	} while (ro.ntenants == AGG_STORAGE_CHUNK &&
		 !tally_signals_stop_requested());
	agg_clear_totals(agg);
	agg->ntenants = 0;
	agg->nbps = 0;
	return rc;
}
