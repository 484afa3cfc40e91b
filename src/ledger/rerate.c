/*
 * rerate.c - `tally rerate`: price ledger rows again with the
 * current book and move the differences into the aggregates.
 *
 * Key design decision: idempotence comes from comparing, not from
 * bookkeeping. A row changes only when the book now gives another cost or
 * price_id; the delta (new - old) is applied in the same transaction as the
 * row update, so a second run finds nothing to change, and a run that dies
 * half-way leaves whole days either done or untouched. Rows are read with
 * a cursor and the changed ones sent to the day's stage in pieces
 * (tally_rerate_opts.stage_bytes), so memory stays bounded whatever the
 * range and however many rows a day has.
 *
 * tally-aggregate may run at the same time. A day's transaction locks its
 * ledger rows (the cursor), then its tenants' rows FOR UPDATE in id order,
 * and only then the aggregates. A consumer batch holds its tenants' rows
 * FOR KEY SHARE from its start to its commit, so the two never write one
 * tenant's aggregates at once: rerate waits for the batches in flight,
 * later batches of those tenants wait for the day's commit, and neither
 * waits while holding aggregate rows — no deadlock, whatever order
 * PostgreSQL gives the consumer's data-modifying CTEs (not a fixed one).
 *
 * Storage snapshot rows are not re-priced (their ledger cost is always 0):
 * the storage charge is the period's GB-months
 * (tenant_period_usage.storage_cost). After the days, unless a model is
 * given, tally_agg__storage_reprice recomputes the storage charge of
 * every period that overlaps the range with the same book, as a batch
 * would (docs/aggregate.md, "Re-pricing").
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/aggregate.h"
#include "aggregate_int.h"
#include "rerate_sql.h"
#include "base/model_names.h"
#include "base/strbuf.h"
#include "tally/event.h"
#include "tally/log.h"
#include "tally/money.h"
#include "tally/pricebook.h"
#include "tally/rating.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS INT64_C(86400000)
#define FETCH_ROWS 10000

/* Run statistics: a slice's go into the run's only once it committed. */
typedef struct rr_counts {
	int64_t seen, changed, unpriced, adjusted;
	tally_money128 delta;
} rr_counts;

typedef struct rr {
	const tally_pricebook *pb;
	const tally_rerate_opts *o;
	tally_rate_ctx *ctx;
	int64_t from, to; /* this transaction's slice */
	tally_strbuf copy; /* changed rows for the stage (COPY text) */
	rr_counts n; /* this transaction's (an attempt's) counts */
	tally_pg *pg;
	struct tperiod { uint8_t id[16]; int64_t cps, cpe; } *tp; /* cache */
	size_t ntp, captp;
	int err_rc;
	tally_error err;
} rr;

/*
 * The tenant's current period (0, 0: none, calendar months), cached for
 * the run: the fallback period of a re-rated row whose period has no
 * tenant_period_usage row yet.
 */
static int tenant_period(rr *r, const uint8_t *id, int64_t *cps, int64_t *cpe)
{
	PGresult *res = NULL;
	const char *params[1];
	char tid[37];
	size_t i;
	int rc;

	for (i = 0; i < r->ntp; i++)
		if (memcmp(r->tp[i].id, id, 16) == 0) {
			*cps = r->tp[i].cps;
			*cpe = r->tp[i].cpe;
			return 0;
		}
	tally_uuid_fmt(tid, id);
	params[0] = tid;
	rc = tally_pg_exec(r->pg, &res,
			   "SELECT (extract(epoch FROM current_period_start)"
			   " * 1000)::bigint, (extract(epoch FROM"
			   " current_period_end) * 1000)::bigint FROM tenants"
			   " WHERE id = $1::uuid AND current_period_start IS NOT"
			   " NULL AND current_period_end > current_period_start",
			   1, params, &r->err);
	if (rc != 0)
		return rc;
	*cps = *cpe = 0;
	if (PQntuples(res) == 1 &&
	    (tally_parse_i64(cps, PQgetvalue(res, 0, 0)) != 0 ||
	     tally_parse_i64(cpe, PQgetvalue(res, 0, 1)) != 0))
		*cps = *cpe = 0;
	PQclear(res);
	if (r->ntp == r->captp) {
		r->captp = r->captp ? r->captp * 2 : 16;
		r->tp = tally_xrealloc(r->tp, r->captp * sizeof(*r->tp));
	}
	memcpy(r->tp[r->ntp].id, id, 16);
	r->tp[r->ntp].cps = *cps;
	r->tp[r->ntp].cpe = *cpe;
	r->ntp++;
	return 0;
}

/* Rate one fetched row; append it to the stage when it changes. */
static void rate_row(rr *r, PGresult *res, int i)
{
	tally_usage_event ev;
	tally_rated_event re;
	tally_error err;
	int64_t meter = 0, qty = 0, old_cost = 0, old_pid = 0, reasoning = -1,
		ms = 0;
	char line[320], nc[48], oc[48];
	int64_t cps = 0, cpe = 0, ps = 0, pe = 0;
	int rc, n;

	memset(&ev, 0, sizeof(ev));
	r->n.seen++;
	if (tally_uuid_parse(ev.tenant_id, PQgetvalue(res, i, 0), 36) != 0 ||
	    tally_parse_i64(&ms, PQgetvalue(res, i, 2)) != 0 ||
	    tally_parse_i64(&meter, PQgetvalue(res, i, 3)) != 0 ||
	    tally_parse_i64(&qty, PQgetvalue(res, i, 6)) != 0 ||
	    tally_parse_i64(&ev.input_tokens, PQgetvalue(res, i, 7)) != 0 ||
	    tally_parse_i64(&ev.output_tokens, PQgetvalue(res, i, 8)) != 0 ||
	    tally_parse_i64(&ev.cache_read_tokens, PQgetvalue(res, i, 9)) != 0 ||
	    tally_parse_i64(&ev.cache_write_tokens, PQgetvalue(res, i, 10)) != 0 ||
	    tally_parse_i64(&reasoning, PQgetvalue(res, i, 11)) != 0 ||
	    tally_parse_i64(&ev.steps, PQgetvalue(res, i, 12)) != 0 ||
	    tally_money_parse(&old_cost, PQgetvalue(res, i, 13),
			      (size_t)PQgetlength(res, i, 13)) != 0 ||
	    tally_parse_i64(&old_pid, PQgetvalue(res, i, 14)) != 0) {
		r->n.unpriced++;
		return;
	}
	ev.time_ms = ms;
	ev.meter = (tally_meter)meter;
	ev.id.ptr = "rerate";
	ev.id.len = 6;
	ev.source.ptr = "rerate";
	ev.source.len = 6;
	ev.provider.ptr = PQgetvalue(res, i, 4);
	ev.provider.len = (uint32_t)PQgetlength(res, i, 4);
	ev.model.ptr = PQgetvalue(res, i, 5);
	ev.model.len = (uint32_t)PQgetlength(res, i, 5);
	if (reasoning >= 0) {
		ev.reasoning_tokens = reasoning;
		ev.has_reasoning = true;
	}
	switch (ev.meter) {
	case TALLY_METER_WORKFLOW: ev.complexity = qty; break;
	case TALLY_METER_STORAGE: ev.bytes = qty; break;
	case TALLY_METER_API_CALL: ev.count = qty; break;
	default: break;
	}
	rc = tally_rate_event(&re, r->pb, &ev, r->ctx, &err);
	if (rc != 0) {
		/* no price now (or impossible row): never zero a cost by it */
		r->n.unpriced++;
		return;
	}
	if (re.cost == old_cost && re.price_id == old_pid)
		return;
	if (tenant_period(r, ev.tenant_id, &cps, &cpe) != 0) {
		r->err_rc = -1;
		return;
	}
	tally_agg_period(&ps, &pe, cps, cpe, ms);
	r->n.changed++;
	r->n.delta += (tally_money128)re.cost - old_cost;
	tally_money_fmt(nc, sizeof(nc), re.cost);
	tally_money_fmt(oc, sizeof(oc), old_cost);
	n = snprintf(line, sizeof(line),
		     "%s\t%s\t%" PRId64 "\t%s\t%s\t%" PRId64 "\t%" PRId64
		     "\t%" PRId64 "\n",
		     PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), ms, oc, nc,
		     re.price_id, ps, pe);
	tally_strbuf_add(&r->copy, line, (size_t)n);
}

/*
 * The cursor's rows priced again; the changed ones go to the stage in
 * pieces of stage_bytes (bounded memory), the last piece stays in r->copy.
 * *staged: bytes sent already.
 */
static int rerate_fetch(tally_pg *pg, rr *r, size_t *staged, tally_error *err)
{
	size_t chunk = r->o->stage_bytes ? r->o->stage_bytes : 8u << 20;
	PGresult *res = NULL;
	int rc, i;

	for (;;) {
		rc = tally_pg_exec(pg, &res, "FETCH 10000 FROM rr_cur", 0, NULL,
				   err);
		if (rc != 0 || PQntuples(res) == 0)
			break;
		for (i = 0; i < PQntuples(res) && r->err_rc == 0; i++)
			rate_row(r, res, i);
		if (r->err_rc != 0) {
			rc = r->err.code != 0 ? r->err.code : TALLY_ERROR;
			if (err != NULL)
				*err = r->err;
			r->err_rc = 0;
			break;
		}
		PQclear(res);
		res = NULL;
		if (r->copy.len >= chunk) {
			rc = tally_pg_copy(pg, "COPY rr_stage FROM STDIN",
					   r->copy.p, r->copy.len, err);
			*staged += r->copy.len;
			tally_strbuf_reset(&r->copy);
			if (rc != 0)
				break;
		}
	}
	PQclear(res);
	return rc;
}

/* The staged changes into the ledger and the aggregates, locks first. */
static int rerate_apply(tally_pg *pg, rr *r, const char *const *params,
			tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(pg, NULL, DELTA_TABLE_SQL, 0, NULL, err);
	if (rc == 0 && r->copy.len > 0)
		rc = tally_pg_copy(pg, "COPY rr_stage FROM STDIN", r->copy.p,
				   r->copy.len, err);
	/* tenants first: no consumer batch of theirs in flight after it */
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, TENANT_LOCK_SQL, 0, NULL, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, LEDGER_SQL, 2, params, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, HOURLY_LOCK_SQL, 0, NULL, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, HOURLY_SQL, 0, NULL, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, PERIOD_SQL, 0, NULL, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, &res, ADJUST_SQL, 0, NULL, err);
	if (rc == 0 &&
	    tally_parse_i64(&r->n.adjusted, PQgetvalue(res, 0, 1)) != 0)
		r->n.adjusted = 0;
	PQclear(res);
	return rc;
}

/*
 * One transaction: a UTC day of the range. Counts go to r->n, which the
 * caller resets before each attempt and adds to the run's only after the
 * COMMIT (a failed attempt, COMMIT included, is retried from scratch).
 */
static int rerate_slice(tally_pg *pg, void *payload, tally_error *err)
{
	rr *r = payload;
	char from[24], to[24], tid[37], storage[8], model[TALLY_ID_MAX + 1];
	const char *params[5];
	size_t staged = 0;
	int rc;

	memset(&r->n, 0, sizeof(r->n));
	tally_strbuf_reset(&r->copy);
	snprintf(from, sizeof(from), "%" PRId64, r->from);
	snprintf(to, sizeof(to), "%" PRId64, r->to);
	snprintf(storage, sizeof(storage), "%d", (int)TALLY_METER_STORAGE);
	params[0] = from;
	params[1] = to;
	params[2] = NULL;
	if (r->o->tenant_id != NULL) {
		tally_uuid_fmt(tid, r->o->tenant_id);
		params[2] = tid;
	}
	params[3] = r->o->model == NULL ? NULL : model;
	if (r->o->model != NULL) /* in its canonical form, as stored */
		tally_model_name_norm(model, sizeof(model), r->o->model,
				      strlen(r->o->model));
	params[4] = storage;
	rc = tally_pg_exec(pg, NULL, SELECT_SQL, 5, params, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, STAGE_SQL, 0, NULL, err);
	if (rc == 0)
		rc = rerate_fetch(pg, r, &staged, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, "CLOSE rr_cur", 0, NULL, err);
	if (rc != 0 || (r->copy.len == 0 && staged == 0))
		return rc;
	return rerate_apply(pg, r, params, err);
}

/* One transaction per UTC day of the range (partitions are days). */
static int rerate_days(tally_pg *pg, rr *r, rr_counts *run, tally_error *err)
{
	const tally_rerate_opts *opts = r->o;
	int64_t day;
	int rc = 0;

	for (day = opts->from_ms - ((opts->from_ms % DAY_MS) + DAY_MS) % DAY_MS;
	     day < opts->to_ms && rc == 0; day += DAY_MS) {
		r->from = day > opts->from_ms ? day : opts->from_ms;
		r->to = day + DAY_MS < opts->to_ms ? day + DAY_MS : opts->to_ms;
		rc = tally_pg_txn(pg, rerate_slice, r, 0, err);
		if (rc == 0) {
			/* committed: only now are the slice's counts true */
			run->seen += r->n.seen;
			run->changed += r->n.changed;
			run->unpriced += r->n.unpriced;
			run->adjusted += r->n.adjusted;
			run->delta += r->n.delta;
		}
	}
	return rc;
}

/* The storage charges of the range priced again (an aggregator of its own). */
static int rerate_storage(tally_pg *pg, const tally_pricebook *pb,
			  const tally_rerate_opts *opts,
			  tally_agg_reprice_stats *sto, tally_error *err)
{
	tally_agg_opts ao = { 0 };
	tally_agg *agg = NULL;
	int rc;

	ao.group = "tally-rerate";
	ao.pricebook = pb;
	ao.recent_keys = 1;
	rc = tally_agg_new(&agg, pg, &ao, err);
	if (rc == 0)
		rc = tally_agg__storage_reprice(agg, opts->from_ms, opts->to_ms,
						opts->tenant_id, tally_now_ms(),
						sto, err);
	tally_agg_free(agg);
	return rc;
}

/* The run into rerate_runs (deltas: exact decimals). */
static int record_run(tally_pg *pg, const tally_rerate_opts *opts,
		      const rr_counts *run, const tally_agg_reprice_stats *sto,
		      const char *delta, const char *sdelta, tally_error *err)
{
	char from[24], to[24], tid[37], seen[24], changed[24], speriods[24];
	const char *params[9];

	snprintf(from, sizeof(from), "%" PRId64, opts->from_ms);
	snprintf(to, sizeof(to), "%" PRId64, opts->to_ms);
	snprintf(seen, sizeof(seen), "%" PRId64, run->seen);
	snprintf(changed, sizeof(changed), "%" PRId64, run->changed);
	params[0] = from;
	params[1] = to;
	params[2] = NULL;
	if (opts->tenant_id != NULL) {
		tally_uuid_fmt(tid, opts->tenant_id);
		params[2] = tid;
	}
	params[3] = opts->model;
	params[4] = seen;
	params[5] = changed;
	params[6] = delta;
	snprintf(speriods, sizeof(speriods), "%" PRId64, sto->periods);
	params[7] = speriods;
	params[8] = sdelta;
	return tally_pg_exec(pg, NULL,
			     "INSERT INTO rerate_runs (range_from, range_to,"
			     " tenant_id, model, rows_seen, rows_changed,"
			     " cost_delta, storage_periods,"
			     " storage_cost_delta) VALUES (timestamptz"
			     " 'epoch' + $1::bigint * interval"
			     " '1 millisecond', timestamptz 'epoch' +"
			     " $2::bigint * interval '1 millisecond',"
			     " $3::uuid, $4, $5, $6, $7, $8, $9)",
			     9, params, err);
}

static void fill_stats(tally_rerate_stats *stats, const rr_counts *run,
		       const tally_agg_reprice_stats *sto, const char *delta,
		       const char *sdelta)
{
	stats->rows_seen = run->seen;
	stats->rows_changed = run->changed;
	stats->unpriced = run->unpriced;
	stats->adjusted = run->adjusted;
	snprintf(stats->cost_delta, sizeof(stats->cost_delta), "%s", delta);
	stats->storage_periods = sto->periods;
	stats->storage_adjusted = sto->adjusted;
	stats->storage_unpriced = sto->unpriced;
	stats->storage_too_old = sto->too_old;
	snprintf(stats->storage_delta, sizeof(stats->storage_delta), "%s",
		 sdelta);
}

int tally_agg_rerate(tally_pg *pg, const tally_pricebook *pb,
		     const tally_rerate_opts *opts, tally_rerate_stats *stats,
		     tally_error *err)
{
	rr r;
	rr_counts run;
	PGresult *res = NULL;
	tally_agg_reprice_stats sto;
	tally_error e2;
	char delta[48], sdelta[48];
	int rc;

	/* bounded, so that a day + DAY_MS never overflows */
	if (opts->from_ms < 0 || opts->to_ms > TALLY_RERATE_TIME_MAX ||
	    opts->from_ms >= opts->to_ms)
		return tally_error_set(err, TALLY_EINVALID,
				       "rerate: the range [%" PRId64 ", %" PRId64
				       ") must not be empty and lie within"
				       " 1970..9999", opts->from_ms,
				       opts->to_ms);
	memset(&r, 0, sizeof(r));
	memset(&run, 0, sizeof(run));
	memset(&sto, 0, sizeof(sto));
	r.pb = pb;
	r.o = opts;
	r.ctx = tally_rate_ctx_new();
	r.pg = pg;
	rc = tally_pg_exec(pg, &res, "SELECT pg_try_advisory_lock(7245880104)",
			   0, NULL, err);
	if (rc != 0)
		goto cleanup;
	if (PQgetvalue(res, 0, 0)[0] != 't') {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "another tally rerate is running");
		goto cleanup;
	}
	rc = rerate_days(pg, &r, &run, err);
	if (rc == 0 && opts->model == NULL)
		rc = rerate_storage(pg, pb, opts, &sto, err);
	tally_money_fmt128(delta, sizeof(delta), run.delta);
	tally_money_fmt128(sdelta, sizeof(sdelta), sto.delta);
	if (rc == 0)
		rc = record_run(pg, opts, &run, &sto, delta, sdelta, err);
	if (tally_pg_exec(pg, NULL, "SELECT pg_advisory_unlock(7245880104)",
			  0, NULL, &e2) != 0) {
		/* the session ends soon anyway */
	}
	if (stats != NULL)
		fill_stats(stats, &run, &sto, delta, sdelta);
cleanup:
	PQclear(res);
	tally_rate_ctx_free(r.ctx);
	tally_strbuf_free(&r.copy);
	free(r.tp);
	return rc;
}
