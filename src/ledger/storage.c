/*
 * storage.c - storage GB-months and their cost per billing period
 * (docs/aggregate.md, "Storage"): segments from the snapshots, priced per
 * segment, open periods set, closed ones adjusted.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/rating.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Storage GB-months and their cost (docs/aggregate.md, "Storage"): each
 * snapshot's bytes hold from its time until the next snapshot, the last
 * one until the period end; the period opens with the last snapshot before
 * it. PostgreSQL returns the segments of the target periods; C prices each
 * segment with tally_rate_storage_cost() at the price in force at the
 * segment's start (rounded half-even per segment) and sums exactly.
 * A carry target ($4) is a period the batch touched without a snapshot of
 * its own: it counts only if its row has no storage yet (a row the batch
 * created, or one that missed its carried-over snapshot), and it has
 * segments only if the tenant has a snapshot before the period (an index
 * probe): the rows of tenants without storage cost one look-up each. The
 * row test is a scalar subquery, a primary-key probe per carry target: as
 * EXISTS it became a semi-join that scanned tenant_period_usage.
 */
static const char SEGMENTS_SQL[] =
	"WITH a AS (SELECT x.tenant_id, x.ps_ms, timestamptz 'epoch' + x.ps_ms"
	"  * interval '1 ms' AS ps, timestamptz 'epoch' + x.pe_ms"
	"  * interval '1 ms' AS pe FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[], $4::boolean[]) AS x(tenant_id, ps_ms, pe_ms, carry)"
	"  WHERE NOT x.carry OR (SELECT u.storage_snapshots = 0"
	"   AND u.storage_byte_ms = 0 AND u.storage_cost = 0"
	"   FROM tenant_period_usage u WHERE u.tenant_id = x.tenant_id"
	"   AND u.period_start = timestamptz 'epoch' + x.ps_ms"
	"   * interval '1 ms')),"
	" pts AS ("
	"  SELECT a.tenant_id, a.ps_ms, a.pe, s.occurred_at AS t, 1 AS rk,"
	"   s.bytes FROM a JOIN storage_snapshots s ON s.tenant_id = a.tenant_id"
	"   AND s.occurred_at >= a.ps AND s.occurred_at < a.pe"
	"  UNION ALL"
	"  SELECT a.tenant_id, a.ps_ms, a.pe, a.ps, 0, c.bytes FROM a"
	"  CROSS JOIN LATERAL (SELECT s.bytes FROM storage_snapshots s"
	"   WHERE s.tenant_id = a.tenant_id AND s.occurred_at < a.ps"
	"   ORDER BY s.occurred_at DESC, s.bytes DESC LIMIT 1) c),"
	" seg AS (SELECT tenant_id, ps_ms, bytes, t, lead(t, 1, pe) OVER"
	"  (PARTITION BY tenant_id, ps_ms ORDER BY t, rk, bytes) AS t2"
	"  FROM pts)"
	" SELECT tenant_id, ps_ms, (extract(epoch FROM t) * 1000)::bigint,"
	"  (extract(epoch FROM t2 - t) * 1000)::bigint, bytes FROM seg"
	" WHERE t2 > t";

/*
 * Open periods: set the integral and the storage cost (part of cost). A
 * period without a row gets one if it has begun ($6) and holds storage
 * (the period after a snapshot's, before any other usage there), as the
 * batch's own periods get theirs; the caller bumps the version of every
 * row returned (changed or new), so billing.totals carries it.
 */
#define STORAGE_OPEN_INSERT \
	"INSERT INTO tenant_period_usage AS u (tenant_id, period_start," \
	" period_end, storage_byte_ms, storage_gb_months, storage_cost, cost)" \
	" SELECT x.t, x.ps, x.pe, x.b, round(x.b / 2592000000000000000, 12)," \
	"  x.c, x.c" \
	" FROM (SELECT t, timestamptz 'epoch' + ps * interval '1 ms' AS ps," \
	"  timestamptz 'epoch' + pe * interval '1 ms' AS pe, b, c, ins" \
	"  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::numeric[]," \
	"  $5::numeric[], $6::boolean[]) AS y(t, ps, pe, b, c, ins)) x" \
	" WHERE (x.ins AND (x.b <> 0 OR x.c <> 0)) OR EXISTS (SELECT 1" \
	"  FROM tenant_period_usage v WHERE v.tenant_id = x.t" \
	"  AND v.period_start = x.ps)" \
	" ORDER BY 1, 2"
#define STORAGE_OPEN_RETURNING \
	" RETURNING u.tenant_id, (extract(epoch FROM u.period_start)" \
	"  * 1000)::bigint"

static const char STORAGE_OPEN_SQL[] =
	STORAGE_OPEN_INSERT
	" ON CONFLICT (tenant_id, period_start) DO UPDATE SET"
	" storage_byte_ms = EXCLUDED.storage_byte_ms,"
	" storage_gb_months = EXCLUDED.storage_gb_months,"
	" cost = u.cost - u.storage_cost + EXCLUDED.storage_cost,"
	" storage_cost = EXCLUDED.storage_cost"
	" WHERE u.storage_byte_ms <> EXCLUDED.storage_byte_ms"
	"  OR u.storage_cost <> EXCLUDED.storage_cost"
	STORAGE_OPEN_RETURNING;

/*
 * The storage rollover only creates rows: a row that exists was written by a
 * batch (possibly with a snapshot the rollover did not see) and wins.
 */
static const char STORAGE_CREATE_SQL[] =
	STORAGE_OPEN_INSERT
	" ON CONFLICT (tenant_id, period_start) DO NOTHING"
	STORAGE_OPEN_RETURNING;

/*
 * Closed periods are never rewritten: the difference between the integral
 * now and what the period recorded plus earlier storage adjustments goes
 * into usage_adjustments (kind 'storage') for the next invoice.
 */
static const char STORAGE_CLOSED_SQL[] =
	"INSERT INTO usage_adjustments (tenant_id, period_start, period_end,"
	" kind, meter, storage_byte_ms, storage_gb_months, cost)"
	" SELECT x.t, x.ps, x.pe, 'storage', 'storage.snapshot', x.b - o.b,"
	"  round(x.b / 2592000000000000000, 12) - o.g, x.c - o.c"
	" FROM (SELECT t, timestamptz 'epoch' + ps * interval '1 ms' AS ps,"
	"  timestamptz 'epoch' + pe * interval '1 ms' AS pe, b, c"
	"  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::numeric[],"
	"  $5::numeric[]) AS y(t, ps, pe, b, c)) x"
	" CROSS JOIN LATERAL (SELECT"
	"  coalesce((SELECT u.storage_byte_ms FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.storage_byte_ms) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS b,"
	"  coalesce((SELECT u.storage_gb_months FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.storage_gb_months) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS g,"
	"  coalesce((SELECT u.storage_cost FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.cost) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS c) o"
	" WHERE x.b <> o.b OR x.c <> o.c";

static void fmt_i128(char *out, size_t len, __int128 v)
{
	char tmp[48];
	size_t n = 0, i;
	bool neg = v < 0;
	unsigned __int128 u = neg ? (unsigned __int128)0 - (unsigned __int128)v
				  : (unsigned __int128)v;

	do {
		tmp[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u != 0 && n < sizeof(tmp));
	i = 0;
	if (neg && i + 1 < len)
		out[i++] = '-';
	while (n > 0 && i + 1 < len)
		out[i++] = tmp[--n];
	out[i] = '\0';
}

/* The batch's storage targets, written by agg_storage_write(). */
int agg_storage_recompute(tally_agg *agg, tally_strbuf *at, tally_strbuf *ap,
			     size_t *naff, tally_error *err)
{
	starget *tg = NULL;
	tally_hashset th = { 0 };      /* index of tg by (tenant, ps) */
	size_t ntg = 0, cap, i;
	int rc = 0;

	cap = 2 * (agg->period.n + agg->adj.n) + 2;
	tg = tally_xcalloc(cap, sizeof(*tg));
	tally_hashset_init(&th, cap);
	/*
	 * targets: each period with new snapshots, and the one after it (its
	 * opening value); then, as carry targets, the other open periods the
	 * batch touched: a row the batch created opens with the last snapshot
	 * before it, whether or not the period has a snapshot of its own
	 */
	for (i = 0; i < agg->period.n + agg->adj.n; i++) {
		const acc *a = i < agg->period.n ? &agg->period.v[i]
			       : &agg->adj.v[i - agg->period.n];
		uint32_t k;
		int step;

		if (i < agg->period.n ? a->ss == 0
				      : a->k.meter != TALLY_METER_STORAGE)
			continue;
		k = tally_hashset_find(&agg->tenant_h,
				       (const uint8_t *)agg->tenants,
				       sizeof(tenant_info), 16, a->k.tenant);
		assert(k != UINT32_MAX);
		for (step = 0; step < 2; step++) {
			starget *t = &tg[ntg];

			memset(t, 0, sizeof(*t));
			memcpy(t->tenant, a->k.tenant, 16);
			if (step == 0) {
				t->ps = a->k.t;
				t->pe = a->pe;
				t->closed = i >= agg->period.n;
			} else {
				agg_period_of(agg, &agg->tenants[k], a->pe, &t->ps,
					  &t->pe, &t->closed);
			}
			if (tally_hashset_put(&th, (const uint8_t *)tg, sizeof(*tg),
				     STARGET_KEY, (uint32_t)ntg) == ntg)
				ntg++; /* new */
		}
	}
	for (i = 0; i < agg->period.n; i++) {
		const acc *a = &agg->period.v[i];
		starget *t = &tg[ntg];

		if (a->ss != 0)
			continue;
		memset(t, 0, sizeof(*t));
		memcpy(t->tenant, a->k.tenant, 16);
		t->ps = a->k.t;
		t->pe = a->pe;
		t->carry = true;
		if (tally_hashset_put(&th, (const uint8_t *)tg, sizeof(*tg),
			     STARGET_KEY, (uint32_t)ntg) == ntg)
			ntg++; /* new; else already a target */
	}
	if (ntg > 0)
		rc = agg_storage_write(agg, tg, ntg, &th, agg->now_ms, SW_BATCH, at,
				   ap, naff, err);
	free(tg);
	free(th.slot);
	return rc;
}

/* Start the array literals a[0, n) ("{"), or close them ("}"). */
static void arrays_open(tally_strbuf *a, int n)
{
	int k;

	for (k = 0; k < n; k++) {
		tally_strbuf_reset(&a[k]);
		tally_strbuf_puts(&a[k], "{");
	}
}

static void arrays_close(tally_strbuf *a, int n)
{
	int k;

	for (k = 0; k < n; k++)
		tally_strbuf_puts(&a[k], "}");
}

/*
 * The segments of the targets (SEGMENTS_SQL) summed into each target's
 * integral and priced with agg's book into its cost; a segment without a
 * price marks its target unpriced.
 */
static int storage_segments(tally_agg *agg, starget *tg, size_t ntg,
			    const tally_hashset *th, tally_strbuf *a,
			    tally_error *err)
{
	uint8_t key[STARGET_KEY];
	PGresult *res = NULL;
	const char *params[4];
	size_t j;
	int rc, r;

	arrays_open(a, 4);
	for (j = 0; j < ntg; j++) {
		agg_uuid_arr(&a[0], tg[j].tenant, j == 0);
		tally_strbuf_printf(&a[1], "%s%" PRId64, j ? "," : "", tg[j].ps);
		tally_strbuf_printf(&a[2], "%s%" PRId64, j ? "," : "", tg[j].pe);
		tally_strbuf_printf(&a[3], "%s%c", j ? "," : "",
				    tg[j].carry ? 't' : 'f');
	}
	arrays_close(a, 4);
	for (j = 0; j < 4; j++)
		params[j] = a[j].p;
	rc = tally_pg_exec(agg->pg, &res, SEGMENTS_SQL, 4, params, err);
	for (r = 0; rc == 0 && r < PQntuples(res); r++) {
		uint8_t id[16];
		int64_t ps = 0, t = 0, dur = 0, bytes = 0, c = 0, pid = 0;
		tally_error e2;
		int src;

		if (tally_uuid_parse(id, PQgetvalue(res, r, 0), 36) != 0 ||
		    tally_parse_i64(&ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t, PQgetvalue(res, r, 2)) != 0 ||
		    tally_parse_i64(&dur, PQgetvalue(res, r, 3)) != 0 ||
		    tally_parse_i64(&bytes, PQgetvalue(res, r, 4)) != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "bad storage segment row");
			break;
		}
		memcpy(key, id, 16);
		memcpy(key + 16, &ps, sizeof(ps));
		j = tally_hashset_find(th, (const uint8_t *)tg, sizeof(*tg),
				       STARGET_KEY, key);
		if (j == UINT32_MAX)
			continue;
		tg[j].seen = true;
		tg[j].bms += (__int128)bytes * dur;
		if (agg->pb == NULL)
			continue;
		src = tally_rate_storage_cost(&c, &pid, agg->pb, id, t, bytes,
					      dur, &e2);
		if (src == TALLY_ENOTFOUND) {
			agg->storage_unpriced++;
			tg[j].unpriced = true;
			continue;
		}
		if (src != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "storage cost: %s", e2.msg);
			break;
		}
		tg[j].cost += c;
	}
	PQclear(res);
	return rc;
}

/*
 * Open periods set (SW_CREATE: only created): a row is created only for
 * a period that has begun by now_ms; the rows written go into at, ap.
 */
static int storage_set_open(tally_agg *agg, const starget *tg, size_t ntg,
			    int64_t now_ms, int mode, tally_strbuf *a,
			    tally_strbuf *at, tally_strbuf *ap, size_t *naff,
			    tally_error *err)
{
	PGresult *res = NULL;
	const char *params[6];
	size_t j, nopen = 0;
	int rc, r;

	arrays_open(a, 6);
	for (j = 0; j < ntg; j++) {
		char b[64], c[64];

		/* a carry target without segments is not to be set */
		if (tg[j].closed || (tg[j].carry && !tg[j].seen) ||
		    (mode == SW_REPRICE && tg[j].unpriced))
			continue;
		fmt_i128(b, sizeof(b), tg[j].bms);
		tally_money_fmt128(c, sizeof(c), tg[j].cost);
		agg_uuid_arr(&a[0], tg[j].tenant, nopen == 0);
		tally_strbuf_printf(&a[1], "%s%" PRId64, nopen ? "," : "",
				    tg[j].ps);
		tally_strbuf_printf(&a[2], "%s%" PRId64, nopen ? "," : "",
				    tg[j].pe);
		tally_strbuf_printf(&a[3], "%s%s", nopen ? "," : "", b);
		tally_strbuf_printf(&a[4], "%s%s", nopen ? "," : "", c);
		tally_strbuf_printf(&a[5], "%s%c", nopen ? "," : "",
				    tg[j].ps <= now_ms ? 't' : 'f');
		nopen++;
	}
	arrays_close(a, 6);
	if (nopen == 0)
		return 0;
	for (j = 0; j < 6; j++)
		params[j] = a[j].p;
	rc = tally_pg_exec(agg->pg, &res, mode == SW_CREATE ?
			   STORAGE_CREATE_SQL : STORAGE_OPEN_SQL, 6, params,
			   err);
	for (r = 0; rc == 0 && r < PQntuples(res); r++) {
		tally_strbuf_printf(at, "%s%s", *naff ? "," : "",
				    PQgetvalue(res, r, 0));
		tally_strbuf_printf(ap, "%s%s", *naff ? "," : "",
				    PQgetvalue(res, r, 1));
		(*naff)++;
	}
	PQclear(res);
	return rc;
}

/* Closed periods: the difference into usage_adjustments. */
static int storage_adjust_closed(tally_agg *agg, const starget *tg,
				 size_t ntg, int mode, tally_strbuf *a,
				 tally_error *err)
{
	const char *params[5];
	size_t j, nclosed = 0;

	arrays_open(a, 5);
	for (j = 0; j < ntg; j++) {
		char b[64], c[64];

		if (!tg[j].closed || (mode == SW_REPRICE && tg[j].unpriced))
			continue;
		fmt_i128(b, sizeof(b), tg[j].bms);
		tally_money_fmt128(c, sizeof(c), tg[j].cost);
		agg_uuid_arr(&a[0], tg[j].tenant, nclosed == 0);
		tally_strbuf_printf(&a[1], "%s%" PRId64, nclosed ? "," : "",
				    tg[j].ps);
		tally_strbuf_printf(&a[2], "%s%" PRId64, nclosed ? "," : "",
				    tg[j].pe);
		tally_strbuf_printf(&a[3], "%s%s", nclosed ? "," : "", b);
		tally_strbuf_printf(&a[4], "%s%s", nclosed ? "," : "", c);
		nclosed++;
	}
	arrays_close(a, 5);
	if (nclosed == 0)
		return 0;
	for (j = 0; j < 5; j++)
		params[j] = a[j].p;
	return tally_pg_exec(agg->pg, NULL, STORAGE_CLOSED_SQL, 5, params,
			     err);
}

/*
 * The storage of the targets tg[0, ntg) (th indexes them by tenant and
 * ps): their segments from SEGMENTS_SQL, priced and summed; open periods
 * set (a row created for one that has begun by now_ms), closed ones
 * adjusted. The rows changed or created are appended to at and ap (the
 * array bodies of the totals statement) and counted in naff.
 */
int agg_storage_write(tally_agg *agg, starget *tg, size_t ntg,
		      const tally_hashset *th, int64_t now_ms, int mode,
		      tally_strbuf *at, tally_strbuf *ap, size_t *naff,
		      tally_error *err)
{
	tally_strbuf a[6] = { TALLY_STRBUF_INIT, TALLY_STRBUF_INIT,
			      TALLY_STRBUF_INIT, TALLY_STRBUF_INIT,
			      TALLY_STRBUF_INIT, TALLY_STRBUF_INIT };
	int rc, k;

	rc = storage_segments(agg, tg, ntg, th, a, err);
	if (rc == 0)
		rc = storage_set_open(agg, tg, ntg, now_ms, mode, a, at, ap,
				      naff, err);
	if (rc == 0)
		rc = storage_adjust_closed(agg, tg, ntg, mode, a, err);
	for (k = 0; k < 6; k++)
		tally_strbuf_free(&a[k]);
	return rc;
}
