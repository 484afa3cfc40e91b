/*
 * hourly.c - the batch's usage_hourly cells: upserted by the apply
 * statement, or, when new to the table, inserted plainly before it.
 *
 * An upsert of a new cell costs about twice a plain insert (the
 * speculative insertion and its confirmation; docs/aggregate.md, "How far
 * one backend goes"). The lane keeps, per tenant, the latest hour of
 * usage_hourly it knows written: read once from PostgreSQL, then moved on
 * by its own commits. A batch's cells after that hour are taken as new
 * and inserted inside a savepoint; the others are upserted. A cell that
 * someone else wrote meanwhile (another lane or instance, for a tenant
 * whose events reach several partitions) fails that insert with a unique
 * violation: the savepoint is rolled back, every cell is upserted as
 * before, the marks are read again, and the next 1, 2, 4 ... 64 batches
 * upsert everything while such failures follow each other.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "pg_binary.h"

#include <stdlib.h>
#include <string.h>

/* tenants with a mark; the marks start again empty when full */
#define MARKS_MAX (1u << 16)

static const char *const HOURLY_TYPES[APPLY_HOURLY_COLS] = {
	"uuid", "bigint", "int", "int", "int", "bigint", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "numeric"
};

/* The cells with fresh == `fresh` as arrays in b[0..12]; how many. */
static size_t hourly_arrays(const tally_agg *agg, tally_strbuf *b, bool fresh)
{
	size_t i, n = 0;

	cols_begin(b, HOURLY_TYPES, APPLY_HOURLY_COLS);
	for (i = 0; i < agg->hourly.n; i++) {
		const acc *a = &agg->hourly.v[i];

		if (a->fresh != fresh)
			continue;
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
		n++;
	}
	cols_end(b, APPLY_HOURLY_COLS, n);
	return n;
}

/* INSERT of the cells in parameters $first.. (names joined from ids) */
static void hourly_insert(tally_strbuf *q, int first)
{
	tally_strbuf_puts(q, "INSERT INTO usage_hourly AS h (tenant_id, hour,"
		" meter, provider, model, events, quantity, input_tokens,"
		" output_tokens, cache_read_tokens, cache_write_tokens,"
		" reasoning_tokens, cost)"
		" SELECT v.t, timestamptz 'epoch' + v.hr * interval '1 ms',"
		" mt.name, coalesce(p.name, ''), coalesce(m.name, ''), v.e, v.q,"
		" v.i, v.o, v.cr, v.cw, v.rs, v.c FROM ");
	unnest_args(q, first, HOURLY_TYPES, APPLY_HOURLY_COLS);
	tally_strbuf_puts(q, " v(t, hr, mid, pid, moid, e, q, i, o, cr, cw, rs, c)"
		" JOIN meters mt ON mt.id = v.mid"
		" LEFT JOIN providers p ON p.id = v.pid"
		" LEFT JOIN models m ON m.id = v.moid"
		" ORDER BY 1, 2, 3, 4, 5");
}

/*
 * The apply statement's usage_hourly CTE for the cells not inserted
 * already, parameters from np + 1 (agg->cols + np); returns np after them
 * (unchanged when there is no such cell).
 */
int agg_apply_hourly(tally_agg *agg, tally_strbuf *q, const char **sep,
		     int np)
{
	if (hourly_arrays(agg, agg->cols + np, false) == 0)
		return np;
	tally_strbuf_puts(q, *sep);
	*sep = ", ";
	tally_strbuf_puts(q, "hourly AS (");
	hourly_insert(q, np + 1);
	tally_strbuf_puts(q, " ON CONFLICT (tenant_id, hour, meter, provider, model)"
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
	return np + APPLY_HOURLY_COLS;
}

static void marks_reset(tally_agg *agg)
{
	agg->nmarks = 0;
	if (agg->capmarks > 0)
		tally_hashset_init(&agg->marks_h, agg->capmarks);
}

static uint32_t mark_find(const tally_agg *agg, const uint8_t *tenant)
{
	if (agg->nmarks == 0)
		return UINT32_MAX;
	return tally_hashset_find(&agg->marks_h, (const uint8_t *)agg->marks,
				  sizeof(hour_mark), 16, tenant);
}

/* tenant's mark set to hour (added if new) */
static void mark_set(tally_agg *agg, const uint8_t *tenant, int64_t hour)
{
	uint32_t k = mark_find(agg, tenant);
	size_t i;

	if (k != UINT32_MAX) {
		agg->marks[k].hour = hour;
		return;
	}
	if (agg->nmarks == MARKS_MAX)
		marks_reset(agg);
	if (agg->nmarks == agg->capmarks) {
		agg->capmarks = agg->capmarks ? agg->capmarks * 2 : 1024;
		agg->marks = tally_xrealloc(agg->marks,
					    agg->capmarks * sizeof(hour_mark));
		tally_hashset_init(&agg->marks_h, agg->capmarks);
		for (i = 0; i < agg->nmarks; i++)
			tally_hashset_put(&agg->marks_h,
					  (const uint8_t *)agg->marks,
					  sizeof(hour_mark), 16, (uint32_t)i);
	}
	memcpy(agg->marks[agg->nmarks].tenant, tenant, 16);
	agg->marks[agg->nmarks].hour = hour;
	tally_hashset_put(&agg->marks_h, (const uint8_t *)agg->marks,
			  sizeof(hour_mark), 16, (uint32_t)agg->nmarks);
	agg->nmarks++;
}

/* The latest hour in usage_hourly of the batch's tenants without a mark
 * (INT64_MIN: none). */
static int load_marks(tally_agg *agg, tally_error *err)
{
	tally_strbuf *ids = &agg->q2;
	PGresult *res = NULL;
	const char *param;
	size_t i, n = 0;
	int rc, r;

	tally_strbuf_reset(ids);
	tally_strbuf_puts(ids, "{");
	for (i = 0; i < agg->hourly.n; i++) {
		const uint8_t *t = agg->hourly.v[i].k.tenant;

		if (mark_find(agg, t) != UINT32_MAX)
			continue;
		agg_uuid_arr(ids, t, n == 0);
		n++;
	}
	tally_strbuf_puts(ids, "}");
	if (n == 0)
		return 0;
	param = ids->p;
	rc = tally_pg_exec(agg->pg, &res,
			   "SELECT x.t, (SELECT (extract(epoch FROM max(h.hour))"
			   " * 1000)::bigint FROM usage_hourly h"
			   " WHERE h.tenant_id = x.t)"
			   " FROM (SELECT DISTINCT t FROM unnest($1::uuid[]) t) x(t)",
			   1, &param, err);
	for (r = 0; rc == 0 && r < PQntuples(res); r++) {
		uint8_t t[16];
		int64_t hour = INT64_MIN;

		if (tally_uuid_parse(t, PQgetvalue(res, r, 0),
				     (uint32_t)PQgetlength(res, r, 0)) != 0 ||
		    (!PQgetisnull(res, r, 1) &&
		     tally_parse_i64(&hour, PQgetvalue(res, r, 1)) != 0)) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "hourly: bad mark row");
			break;
		}
		mark_set(agg, t, hour);
	}
	PQclear(res);
	return rc;
}

/* The fresh cells by plain INSERT in a savepoint; *taken: it succeeded. */
static int insert_fresh(tally_agg *agg, bool *taken, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	tally_strbuf *q = &agg->q2;
	const char *params[APPLY_HOURLY_COLS];
	int lengths[APPLY_HOURLY_COLS], formats[APPLY_HOURLY_COLS];
	const char *state;
	PGresult *res;
	int k, rc;

	*taken = false;
	(void)hourly_arrays(agg, agg->cols, true);
	for (k = 0; k < APPLY_HOURLY_COLS; k++) {
		params[k] = agg->cols[k].p;
		lengths[k] = (int)agg->cols[k].len;
		formats[k] = 1;
	}
	tally_strbuf_reset(q);
	hourly_insert(q, 1);
	rc = tally_pg_exec_script(agg->pg, "SAVEPOINT agg_hourly", err);
	if (rc != 0)
		return rc;
	res = PQexecParams(conn, q->p, APPLY_HOURLY_COLS, NULL, params,
			   lengths, formats, 0);
	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
		PQclear(res);
		*taken = true;
		return 0;
	}
	state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL || strcmp(state, "23505") != 0) {
		rc = tally_pg__classify(conn, res, err);
		PQclear(res);
		return rc;
	}
	PQclear(res);
	return tally_pg_exec_script(agg->pg,
				    "ROLLBACK TO SAVEPOINT agg_hourly", err);
}

/*
 * Before the apply statement: mark the cells new to usage_hourly and
 * insert them (acc.fresh), or, after a unique violation, none.
 */
int agg_hourly_fresh(tally_agg *agg, tally_error *err)
{
	size_t i, nfresh = 0;
	bool taken;
	int rc;

	for (i = 0; i < agg->hourly.n; i++)
		agg->hourly.v[i].fresh = false;
	if (agg->hourly.n == 0)
		return 0;
	if (agg->hourly_slow > 0) {
		agg->hourly_slow--;
		return 0;
	}
	rc = load_marks(agg, err);
	if (rc != 0)
		return rc;
	for (i = 0; i < agg->hourly.n; i++) {
		acc *a = &agg->hourly.v[i];
		uint32_t k = mark_find(agg, a->k.tenant);

		if (k != UINT32_MAX && a->k.t > agg->marks[k].hour) {
			a->fresh = true;
			nfresh++;
		}
	}
	if (nfresh == 0)
		return 0;
	rc = insert_fresh(agg, &taken, err);
	if (rc != 0 || taken) {
		if (rc == 0)
			agg->hourly_streak = 0;
		return rc;
	}
	for (i = 0; i < agg->hourly.n; i++)
		agg->hourly.v[i].fresh = false;
	marks_reset(agg);
	agg->hourly_slow = 1 << (agg->hourly_streak < 6 ? agg->hourly_streak : 6);
	agg->hourly_streak++;
	agg->st.hourly_fallbacks++;
	return 0;
}

/* After the commit: each marked tenant's mark moves to its latest cell. */
void agg_hourly_committed(tally_agg *agg)
{
	size_t i;

	for (i = 0; i < agg->hourly.n; i++) {
		const acc *a = &agg->hourly.v[i];
		uint32_t k = mark_find(agg, a->k.tenant);

		if (k != UINT32_MAX && a->k.t > agg->marks[k].hour)
			agg->marks[k].hour = a->k.t;
	}
}

void agg_hourly_free(tally_agg *agg)
{
	free(agg->marks);
	tally_hashset_free(&agg->marks_h);
}
