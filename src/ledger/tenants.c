/*
 * tenants.c - the batch's tenants, locked FOR KEY SHARE, with their current
 * and recorded billing periods; each event's period.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void agg_uuid_arr(tally_strbuf *b, const uint8_t *id, bool first)
{
	char s[37];

	tally_uuid_fmt(s, id);
	if (!first)
		tally_strbuf_add(b, ",", 1);
	tally_strbuf_add(b, s, 36);
}

static int64_t parse_ms(const char *s)
{
	int64_t v = 0;

	if (tally_parse_i64(&v, s) != 0)
		return 0;
	return v;
}

/* Tenants of the batch with their current period and recorded periods. */
int agg_load_tenants(tally_agg *agg, tally_error *err)
{
	tally_strbuf *ids = &agg->q1;
	int64_t mint = INT64_MAX;
	size_t i;

	agg->ntenants = 0;
	agg->nbps = 0;
	if (agg->cap_tenants < agg->n + 1) {
		agg->cap_tenants = agg->n + 1;
		agg->tenants = tally_xrealloc(agg->tenants, agg->cap_tenants *
					      sizeof(*agg->tenants));
	}
	tally_hashset_init(&agg->tenant_h, agg->n + 1);
	tally_strbuf_reset(ids);
	tally_strbuf_puts(ids, "{");
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		tenant_info *ti;

		if (it->status != ST_OK)
			continue;
		if (it->re.ev.time_ms < mint)
			mint = it->re.ev.time_ms;
		ti = &agg->tenants[agg->ntenants];
		memset(ti, 0, sizeof(*ti));
		memcpy(ti->id, it->key, 16);
		if (tally_hashset_put(&agg->tenant_h, (const uint8_t *)agg->tenants,
			     sizeof(tenant_info), 16, (uint32_t)agg->ntenants) ==
		    (uint32_t)agg->ntenants) {
			agg_uuid_arr(ids, ti->id, agg->ntenants == 0);
			agg->ntenants++;
		}
	}
	tally_strbuf_puts(ids, "}");
	if (agg->ntenants == 0)
		return 0;
	return agg_load_tenant_rows(agg, ids->p, mint, err);
}

/* The tenant of row r's column 0 in agg->tenants, or UINT32_MAX. */
static uint32_t row_tenant(const tally_agg *agg, const PGresult *res, int r)
{
	uint8_t id[16];

	if (tally_uuid_parse(id, PQgetvalue(res, r, 0), 36) != 0)
		return UINT32_MAX;
	return tally_hashset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
				  sizeof(tenant_info), 16, id);
}

/* The tenants' current periods (params[0]: their ids), locked. */
static int load_current_periods(tally_agg *agg, const char *const *params,
				tally_error *err)
{
	PGresult *res = NULL;
	int rc, r;

	/*
	 * FOR KEY SHARE, in id order, until the commit: whoever closes a
	 * period locks the tenant row FOR UPDATE first, so it waits for the
	 * batches that may have read the period as open, and the batches
	 * after it wait for its commit and then read billing_periods (next
	 * statement) closed (docs/aggregate.md, "Closing a period"). Does
	 * not block tenant updates that leave the keys alone.
	 */
	rc = tally_pg_exec(agg->pg, &res,
			   "SELECT id, (extract(epoch FROM current_period_start)"
			   " * 1000)::bigint, (extract(epoch FROM"
			   " current_period_end) * 1000)::bigint,"
			   " current_period_end > current_period_start FROM tenants"
			   " WHERE id = ANY($1::uuid[]) ORDER BY id FOR KEY SHARE",
			   1, params, err);
	for (r = 0; rc == 0 && r < PQntuples(res); r++) {
		uint32_t k;

		if (PQgetisnull(res, r, 3) ||
		    strcmp(PQgetvalue(res, r, 3), "t") != 0)
			continue; /* no current period: calendar months */
		k = row_tenant(agg, res, r);
		if (k == UINT32_MAX)
			continue; /* cannot happen: we asked for these ids */
		agg->tenants[k].cps = parse_ms(PQgetvalue(res, r, 1));
		agg->tenants[k].cpe = parse_ms(PQgetvalue(res, r, 2));
	}
	PQclear(res);
	return rc;
}

/* The tenants' recorded periods (ids params[0]) ending after params[1]. */
static int load_billing_periods(tally_agg *agg, const char *const *params,
				tally_error *err)
{
	PGresult *res = NULL;
	int rc, r;

	rc = tally_pg_exec(agg->pg, &res,
			   "SELECT tenant_id, (extract(epoch FROM period_start)"
			   " * 1000)::bigint, (extract(epoch FROM period_end)"
			   " * 1000)::bigint, status <> 'open'"
			   " FROM billing_periods WHERE tenant_id = ANY($1::uuid[])"
			   " AND period_end > timestamptz 'epoch' + $2::bigint"
			   " * interval '1 millisecond'"
			   " ORDER BY tenant_id, period_start",
			   2, params, err);
	if (rc == 0 && agg->cap_bps < (size_t)PQntuples(res)) {
		agg->cap_bps = (size_t)PQntuples(res);
		agg->bps = tally_xrealloc(agg->bps, agg->cap_bps * sizeof(bperiod));
	}
	for (r = 0; rc == 0 && r < PQntuples(res); r++) {
		uint32_t k = row_tenant(agg, res, r);

		if (k == UINT32_MAX)
			continue;
		if (agg->tenants[k].bp_n == 0)
			agg->tenants[k].bp_first = agg->nbps;
		agg->tenants[k].bp_n++;
		agg->bps[agg->nbps].start = parse_ms(PQgetvalue(res, r, 1));
		agg->bps[agg->nbps].end = parse_ms(PQgetvalue(res, r, 2));
		agg->bps[agg->nbps].closed = PQgetvalue(res, r, 3)[0] == 't';
		agg->nbps++;
	}
	PQclear(res);
	return rc;
}

/*
 * The current period and the recorded periods ending after mint of the
 * tenants in agg->tenants (indexed by tenant_h), whose ids are the array
 * literal ids. Used by batches and by the storage rollover.
 */
int agg_load_tenant_rows(tally_agg *agg, const char *ids, int64_t mint,
			 tally_error *err)
{
	const char *params[2];
	char minbuf[24];
	int rc;

	params[0] = ids;
	rc = load_current_periods(agg, params, err);
	if (rc != 0)
		return rc;
	snprintf(minbuf, sizeof(minbuf), "%" PRId64, mint);
	params[1] = minbuf;
	return load_billing_periods(agg, params, err);
}

void agg_assign_periods(tally_agg *agg)
{
	size_t i, b;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		tenant_info *ti;
		int64_t t = it->re.ev.time_ms;
		uint32_t k;
		bool found = false;

		if (it->status != ST_OK)
			continue;
		k = tally_hashset_find(&agg->tenant_h,
				       (const uint8_t *)agg->tenants,
				       sizeof(tenant_info), 16, it->key);
		assert(k != UINT32_MAX);
		ti = &agg->tenants[k];
		it->closed = false;
		for (b = 0; b < ti->bp_n; b++) {
			bperiod *bp = &agg->bps[ti->bp_first + b];
			if (bp->start <= t && t < bp->end) {
				it->ps = bp->start;
				it->pe = bp->end;
				it->closed = bp->closed;
				found = true;
				break;
			}
		}
		if (!found)
			tally_agg_period(&it->ps, &it->pe, ti->cps, ti->cpe, t);
	}
}

/* The period of tenant ti containing t (as agg_assign_periods decides). */
void agg_period_of(const tally_agg *agg, const tenant_info *ti, int64_t t,
		      int64_t *ps, int64_t *pe, bool *closed)
{
	size_t b;

	for (b = 0; b < ti->bp_n; b++) {
		const bperiod *bp = &agg->bps[ti->bp_first + b];

		if (bp->start <= t && t < bp->end) {
			*ps = bp->start;
			*pe = bp->end;
			*closed = bp->closed;
			return;
		}
	}
	*closed = false;
	tally_agg_period(ps, pe, ti->cps, ti->cpe, t);
}

/*
 * The tenants of a chunk (one id per row of res) as a batch's: agg->tenants
 * and tenant_h set, *ids their array literal, last the last id.
 */
int agg_chunk_tenants(tally_agg *agg, const PGresult *res, tally_strbuf *ids,
			 char last[37], tally_error *err)
{
	size_t n = (size_t)PQntuples(res);
	int r;

	agg->ntenants = 0;
	agg->nbps = 0;
	if (n == 0)
		return 0;
	if (agg->cap_tenants < n) {
		agg->cap_tenants = n;
		agg->tenants = tally_xrealloc(agg->tenants, agg->cap_tenants *
					      sizeof(*agg->tenants));
	}
	tally_hashset_init(&agg->tenant_h, n);
	tally_strbuf_puts(ids, "{");
	for (r = 0; r < PQntuples(res); r++) {
		tenant_info *ti = &agg->tenants[agg->ntenants];

		memset(ti, 0, sizeof(*ti));
		if (tally_uuid_parse(ti->id, PQgetvalue(res, r, 0), 36) != 0) {
			agg->ntenants = 0;
			return tally_error_set(err, TALLY_ERROR,
					       "bad storage tenant id");
		}
		(void)tally_hashset_put(&agg->tenant_h, (const uint8_t *)agg->tenants,
			       sizeof(tenant_info), 16,
			       (uint32_t)agg->ntenants);
		agg_uuid_arr(ids, ti->id, agg->ntenants == 0);
		agg->ntenants++;
	}
	tally_strbuf_puts(ids, "}");
	snprintf(last, 37, "%s", PQgetvalue(res, PQntuples(res) - 1, 0));
	return 0;
}

/*
 * The next tenants with snapshots after $1 (NULL: from the first), in id
 * order: a loose index scan of the primary key, one probe per tenant
 * however many snapshots each has.
 */
static const char STORAGE_TENANTS_SQL[] =
	"WITH RECURSIVE t AS ("
	" (SELECT tenant_id FROM storage_snapshots"
	"  WHERE $1::uuid IS NULL OR tenant_id > $1::uuid"
	"  ORDER BY tenant_id LIMIT 1)"
	" UNION ALL"
	" SELECT (SELECT s.tenant_id FROM storage_snapshots s"
	"  WHERE s.tenant_id > t.tenant_id ORDER BY s.tenant_id LIMIT 1)"
	" FROM t WHERE t.tenant_id IS NOT NULL)"
	" SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL LIMIT $2::int";

int agg_storage_tenants(tally_agg *agg, const char *after, PGresult **res,
			tally_error *err)
{
	const char *params[2];
	char lim[16];

	snprintf(lim, sizeof(lim), "%d", AGG_STORAGE_CHUNK);
	params[0] = after;
	params[1] = lim;
	return tally_pg_exec(agg->pg, res, STORAGE_TENANTS_SQL, 2, params, err);
}
