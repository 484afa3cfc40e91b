/*
 * rerate_storage.c - `tally rerate`'s storage part: the storage charges of
 * the periods of a range priced again with the current book.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The periods of the chunk's tenants that overlap [$2, $3), with the
 * storage charge they carry now in pico (the row's, plus for a closed
 * period the storage adjustments made since): what the re-pricing is
 * measured against, and whether it starts at or after the retention
 * bound: retention drops partitions and the snapshots older than its bound
 * (keeping each tenant's last one before it), so a period before that no
 * longer has all its segments and is left as it was (counted). The bound
 * is the later of the oldest ledger partition (usage_ledger_pYYYYMMDD) and
 * the one maintenance recorded (ledger_retention, migration 0012: a longer
 * retention recreates older partitions, not older snapshots). No partition
 * at all: none is re-priced.
 */
static const char REPRICE_TARGETS_SQL[] =
	"WITH p AS (SELECT min(to_date(substr(c.relname, 15), 'YYYYMMDD'))"
	"  ::timestamp AT TIME ZONE 'UTC' AS b FROM pg_inherits i"
	"  JOIN pg_class c ON c.oid = i.inhrelid"
	"  WHERE i.inhparent = 'usage_ledger'::regclass"
	"  AND c.relname ~ '^usage_ledger_p[0-9]{8}$'),"
	" lb AS (SELECT CASE WHEN p.b IS NOT NULL THEN greatest(p.b,"
	"  (SELECT snapshots_thinned_before FROM ledger_retention)) END AS b"
	"  FROM p)"
	" SELECT u.tenant_id, (extract(epoch FROM u.period_start) * 1000)::bigint,"
	" (extract(epoch FROM u.period_end) * 1000)::bigint,"
	" (u.storage_cost * 1000000000000)::numeric(60, 0),"
	" (coalesce((SELECT sum(a.cost) FROM usage_adjustments a"
	"  WHERE a.tenant_id = u.tenant_id AND a.period_start = u.period_start"
	"  AND a.kind = 'storage'), 0) * 1000000000000)::numeric(60, 0)"
	"  , coalesce(u.period_start >= lb.b, false)"
	" FROM tenant_period_usage u, lb WHERE u.tenant_id = ANY($1::uuid[])"
	" AND u.period_start < timestamptz 'epoch' + $3::bigint * interval '1 ms'"
	" AND u.period_end > timestamptz 'epoch' + $2::bigint * interval '1 ms'"
	" ORDER BY 1, 2";

/* A decimal integer (optionally signed) of at most 2^127 - 1. */
static int parse_i128(tally_money128 *out, const char *s)
{
	const unsigned __int128 max = ((unsigned __int128)1 << 127) - 1;
	unsigned __int128 u = 0;
	bool neg = *s == '-';

	if (neg)
		s++;
	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		unsigned d = (unsigned)(*s - '0');

		if (*s < '0' || *s > '9' || u > (max - d) / 10)
			return -1;
		u = u * 10 + d;
	}
	*out = neg ? -(tally_money128)u : (tally_money128)u;
	return 0;
}

typedef struct reprice {
	tally_agg *agg;
	int64_t from_ms, to_ms, now_ms;
	const uint8_t *tenant;  /* NULL: every tenant with snapshots */
	bool first;
	char after[37], last[37];
	size_t ntenants;
	tally_agg_reprice_stats n; /* this chunk's (an attempt's) */
} reprice;

/*
 * The chunk's tenants (rp->tenant alone, or the next AGG_STORAGE_CHUNK
 * with snapshots) as a batch's, locked FOR UPDATE in id order, with their
 * periods; *ids their array literal.
 */
static int reprice_tenants(reprice *rp, tally_strbuf *ids, tally_error *err)
{
	tally_agg *agg = rp->agg;
	PGresult *res = NULL;
	const char *params[1];
	char one[40];
	int rc;

	if (rp->tenant != NULL) {
		tally_uuid_fmt(one, rp->tenant);
		params[0] = one;
		rc = tally_pg_exec(agg->pg, &res, "SELECT $1::uuid", 1, params,
				   err);
	} else {
		rc = agg_storage_tenants(agg, rp->first ? NULL : rp->after,
					 &res, err);
	}
	if (rc != 0)
		return rc;
	rc = agg_chunk_tenants(agg, res, ids, rp->last, err);
	rp->ntenants = agg->ntenants;
	PQclear(res);
	if (rc != 0 || rp->ntenants == 0)
		return rc;
	params[0] = ids->p;
	rc = tally_pg_exec(agg->pg, NULL, "SELECT 1 FROM tenants WHERE"
			   " id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", 1,
			   params, err);
	if (rc == 0)
		rc = agg_load_tenant_rows(agg, ids->p, rp->from_ms, err);
	return rc;
}

/*
 * The periods of res (REPRICE_TARGETS_SQL) into tg (indexed by th) with
 * the storage charge each carries now in old; those before the retention
 * bound are only counted.
 */
static int reprice_targets(reprice *rp, const PGresult *res, starget *tg,
			   tally_money128 *old, tally_hashset *th, size_t *ntg,
			   tally_error *err)
{
	tally_agg *agg = rp->agg;
	int r;

	*ntg = 0;
	tally_hashset_init(th, (size_t)PQntuples(res));
	for (r = 0; r < PQntuples(res); r++) {
		starget *t = &tg[*ntg];
		tally_money128 c = 0, adj = 0;
		uint32_t k;

		if (PQgetvalue(res, r, 5)[0] != 't') {
			rp->n.too_old++; /* before the retention bound */
			continue;
		}
		if (tally_uuid_parse(t->tenant, PQgetvalue(res, r, 0),
				     36) != 0 ||
		    tally_parse_i64(&t->ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t->pe, PQgetvalue(res, r, 2)) != 0 ||
		    parse_i128(&c, PQgetvalue(res, r, 3)) != 0 ||
		    parse_i128(&adj, PQgetvalue(res, r, 4)) != 0)
			return tally_error_set(err, TALLY_ERROR,
					       "bad storage re-pricing row");
		k = tally_hashset_find(&agg->tenant_h,
				       (const uint8_t *)agg->tenants,
				       sizeof(tenant_info), 16, t->tenant);
		if (k != UINT32_MAX) {
			int64_t ps, pe;
			bool closed;

			/* closed: billing_periods says so for this period */
			agg_period_of(agg, &agg->tenants[k], t->ps, &ps, &pe,
				      &closed);
			t->closed = closed && ps == t->ps;
		}
		old[*ntg] = t->closed ? c + adj : c;
		if (tally_hashset_put(th, (const uint8_t *)tg, sizeof(*tg),
				      STARGET_KEY, (uint32_t)*ntg) == *ntg)
			(*ntg)++;
	}
	return 0;
}

/* Count what re-pricing the targets changed (this attempt's counts). */
static void reprice_count(reprice *rp, const starget *tg,
			  const tally_money128 *old, size_t ntg)
{
	size_t i;

	for (i = 0; i < ntg; i++) {
		if (tg[i].unpriced) {
			rp->n.unpriced++;
			continue;
		}
		if (tg[i].cost == old[i])
			continue;
		rp->n.periods++;
		if (tg[i].closed)
			rp->n.adjusted++;
		rp->n.delta += tg[i].cost - old[i];
	}
}

/*
 * One chunk of tenants: locked FOR UPDATE in id order (as tally rerate
 * locks its tenants: a batch of theirs holds FOR KEY SHARE until its
 * commit, so the snapshots read here are complete and no batch writes
 * their rows meanwhile), each period of theirs that overlaps the range
 * recomputed as a batch would with the current book: open periods set,
 * closed ones adjusted (kind 'storage'), a period with a segment the book
 * has no price for now left alone.
 */
static int reprice_txn(tally_pg *pg, void *payload, tally_error *err)
{
	reprice *rp = payload;
	tally_agg *agg = rp->agg;
	PGresult *res = NULL;
	tally_strbuf ids = TALLY_STRBUF_INIT, at = TALLY_STRBUF_INIT,
		     ap = TALLY_STRBUF_INIT;
	starget *tg = NULL;
	tally_money128 *old = NULL;
	tally_hashset th = { 0 };
	const char *params[3];
	char from[24], to[24];
	size_t ntg = 0, naff = 0;
	int rc;

	(void)pg;
	agg_clear_totals(agg);
	memset(&rp->n, 0, sizeof(rp->n));
	rp->ntenants = 0;
	agg->storage_unpriced = 0;
	rc = reprice_tenants(rp, &ids, err);
	if (rc != 0 || rp->ntenants == 0)
		goto cleanup;
	snprintf(from, sizeof(from), "%" PRId64, rp->from_ms);
	snprintf(to, sizeof(to), "%" PRId64, rp->to_ms);
	params[0] = ids.p;
	params[1] = from;
	params[2] = to;
	rc = tally_pg_exec(agg->pg, &res, REPRICE_TARGETS_SQL, 3, params, err);
	if (rc != 0 || PQntuples(res) == 0)
		goto cleanup;
	tg = tally_xcalloc((size_t)PQntuples(res), sizeof(*tg));
	old = tally_xcalloc((size_t)PQntuples(res), sizeof(*old));
	rc = reprice_targets(rp, res, tg, old, &th, &ntg, err);
	if (rc != 0)
		goto cleanup;
	tally_strbuf_puts(&at, "{");
	tally_strbuf_puts(&ap, "{");
	rc = agg_storage_write(agg, tg, ntg, &th, rp->now_ms, SW_REPRICE, &at,
			       &ap, &naff, err);
	if (rc != 0)
		goto cleanup;
	reprice_count(rp, tg, old, ntg);
	/* without a producer (tally rerate) the outbox publishes them */
	if (naff > 0)
		rc = agg_bump_versions(agg, &at, &ap, NULL, NULL, err);
cleanup:
	PQclear(res);
	free(tg);
	free(old);
	tally_hashset_free(&th);
	tally_strbuf_free(&ids);
	tally_strbuf_free(&at);
	tally_strbuf_free(&ap);
	return rc;
}

int tally_agg__storage_reprice(tally_agg *agg, int64_t from_ms, int64_t to_ms,
			       const uint8_t *tenant, int64_t now_ms,
			       tally_agg_reprice_stats *out, tally_error *err)
{
	reprice rp;
	int rc = 0;

	memset(&rp, 0, sizeof(rp));
	memset(out, 0, sizeof(*out));
	rp.agg = agg;
	rp.from_ms = from_ms;
	rp.to_ms = to_ms;
	rp.now_ms = now_ms;
	rp.tenant = tenant;
	rp.first = true;
	do {
		rc = tally_pg_txn(agg->pg, reprice_txn, &rp, 0, err);
		if (rc != 0)
			break;
		/* committed: only now are the chunk's counts true */
		out->periods += rp.n.periods;
		out->adjusted += rp.n.adjusted;
		out->unpriced += rp.n.unpriced;
		out->too_old += rp.n.too_old;
		out->delta += rp.n.delta;
		agg_publish_totals(agg);
		agg_clear_totals(agg);
		memcpy(rp.after, rp.last, sizeof(rp.after));
		rp.first = false;
	} while (tenant == NULL && rp.ntenants == AGG_STORAGE_CHUNK);
	agg_clear_totals(agg);
	agg->ntenants = 0;
	agg->nbps = 0;
	return rc;
}
