/*
 * invoice_usage.c - a usage period's charges, computed once per invoice in
 * PostgreSQL and recorded as invoice_usage_lines.
 *
 * The period's own usage per meter/provider/model is what it held when it
 * was closed: usage_hourly for the whole hours inside the period plus the
 * ledger for the partial hours at its edges (periods start at any second),
 * minus the adjustments booked for that period since it closed (late usage
 * and re-pricing also move usage_hourly and the ledger, and are billed as
 * adjustments instead). Storage is the period's storage_cost. Every
 * adjustment not yet invoiced is taken by the same statement that marks it
 * with this invoice, so each is billed exactly once. All of it runs in the
 * closer's transaction (tenant row FOR UPDATE), so no batch writes into
 * the period between the close and the computation.
 *
 * tally converts no currency: the usage is in the tenant's currency
 * (tenants.currency, the currency of the prices that rated it). An invoice
 * in another currency gets a currency_mismatch run and no line; nothing
 * is taken from the period, so reconcile --apply can bill it once the
 * tenant's currency is the invoice's (invoice_usage_redo).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/period_close.h"
#include "stripe/invoice_usage.h"
#include "tally/money.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct compute_ctx {
	const invoice_period *p;
	tally_usage_grouping g;
	bool redo; /* a currency_mismatch run may be computed again */
	invoice_usage_run *out;
} compute_ctx;

typedef char numbuf[24];

static const char *i64s(numbuf b, int64_t v)
{
	snprintf(b, sizeof(numbuf), "%" PRId64, v);
	return b;
}

int invoice_usage_tenant(tally_pg *pg, const char *customer,
			 char tenant_id[37], tally_error *err)
{
	const char *prm[1] = { customer };
	PGresult *res = NULL;
	int rc;

	tenant_id[0] = '\0';
	rc = tally_pg_exec(pg, &res, "SELECT id FROM tenants WHERE "
			   "stripe_customer_id = $1", 1, prm, err);
	if (rc == 0 && PQntuples(res) == 1)
		snprintf(tenant_id, 37, "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	return rc;
}

/* The period's own usage, as closed (see the file comment). $1 tenant,
 * $2/$3 period, $4/$5 the whole hours inside it ($4 = $5: none), $6
 * whether the period has partial hours (else the ledger is not read). */
static const char period_usage_sql[] =
	"WITH u AS ("
	" SELECT meter, provider, model, cost FROM usage_hourly"
	"  WHERE tenant_id = $1 AND hour >= to_timestamp($4::bigint)"
	"  AND hour < to_timestamp($5::bigint)"
	" UNION ALL"
	" SELECT meter, coalesce(provider, ''), coalesce(model, ''), cost"
	"  FROM usage_ledger_named WHERE $6::boolean AND tenant_id = $1 AND"
	"  ((occurred_at >= to_timestamp($2::bigint) AND"
	"    occurred_at < to_timestamp($4::bigint)) OR"
	"   (occurred_at >= to_timestamp($5::bigint) AND"
	"    occurred_at < to_timestamp($3::bigint)))"
	" UNION ALL"
	" SELECT meter, provider, model, -cost FROM usage_adjustments"
	"  WHERE tenant_id = $1 AND period_start = to_timestamp($2::bigint)"
	"  AND kind IN ('late_usage', 'rerate'))"
	" SELECT 'usage', meter, provider, model, sum(cost)::text FROM u"
	" WHERE meter <> 'storage.snapshot'"
	" GROUP BY meter, provider, model HAVING sum(cost) <> 0"
	" UNION ALL"
	" SELECT 'usage', 'storage.snapshot', '', '', storage_cost::text"
	" FROM tenant_period_usage WHERE tenant_id = $1 AND"
	" period_start = to_timestamp($2::bigint) AND storage_cost <> 0";

static const char take_adjustments_sql[] =
	"UPDATE usage_adjustments SET invoiced_at = now(), invoice_id = $2"
	" WHERE tenant_id = $1 AND invoiced_at IS NULL"
	" RETURNING kind, meter, provider, model, cost::text";

/* Append the rows of res (kind, meter, provider, model, amount) to v. */
static int add_charges(PGresult *res, tally_usage_charge **v, size_t *n,
		       tally_error *err)
{
	int i, rows = PQntuples(res);

	*v = tally_xrealloc(*v, (*n + (size_t)rows + 1) * sizeof(**v));
	for (i = 0; i < rows; i++) {
		tally_usage_charge *c = &(*v)[(*n)++];
		const char *amt = PQgetvalue(res, i, 4);
		int64_t pico;

		if (tally_money_parse(&pico, amt, strlen(amt)) != 0)
			return tally_error_set(err, TALLY_EINVALID,
					       "usage amount %.40s is not exact "
					       "in pico-units", amt);
		c->kind = PQgetvalue(res, i, 0);
		c->meter = PQgetvalue(res, i, 1);
		c->provider = PQgetvalue(res, i, 2);
		c->model = PQgetvalue(res, i, 3);
		c->pico = pico;
	}
	return 0;
}

static int included_pico(tally_pg *pg, const char *tenant_id,
			 tally_money128 *out, tally_error *err)
{
	const char *prm[1] = { tenant_id };
	PGresult *res = NULL;
	int64_t v = 0;
	int rc;

	*out = 0;
	rc = tally_pg_exec(pg, &res, "SELECT p.included_usage::text FROM "
			   "tenants t JOIN plans p ON p.id = t.subscription_plan"
			   " WHERE t.id = $1 AND p.included_usage IS NOT NULL",
			   1, prm, err);
	if (rc == 0 && PQntuples(res) == 1 &&
	    tally_money_parse(&v, PQgetvalue(res, 0, 0),
			      (size_t)PQgetlength(res, 0, 0)) != 0)
		rc = tally_error_set(err, TALLY_EINVALID,
				     "plans.included_usage is not exact");
	PQclear(res);
	*out = v;
	return rc;
}

static int record_line(tally_pg *pg, const invoice_period *p,
		       const tally_usage_line *l, tally_error *err)
{
	char exact[64];
	numbuf minor;
	const char *prm[7];

	tally_money_fmt128(exact, sizeof(exact), l->exact_pico);
	prm[0] = p->tenant_id;
	prm[1] = p->invoice_id;
	prm[2] = l->key;
	prm[3] = l->description;
	prm[4] = exact;
	prm[5] = i64s(minor, l->minor);
	prm[6] = p->currency;
	return tally_pg_exec(pg, NULL,
		"INSERT INTO invoice_usage_lines (tenant_id, invoice_id, "
		"line_key, description, exact_amount, amount_minor, currency,"
		" status) VALUES ($1, $2, $3, $4, $5::numeric, $6::bigint, $7,"
		" CASE WHEN $6::bigint = 0 THEN 'zero' ELSE 'pending' END)",
		7, prm, err);
}

/* The run of (tenant, invoice) in *done; out->mismatch when it is a
 * currency_mismatch run. */
static int run_status(tally_pg *pg, const invoice_period *p, bool *done,
		      invoice_usage_run *out, tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(pg, &res, "SELECT status FROM invoice_usage_runs"
			   " WHERE tenant_id = $1 AND invoice_id = $2", 2,
			   (const char *[]){ p->tenant_id, p->invoice_id }, err);
	*done = rc == 0 && PQntuples(res) == 1;
	out->mismatch = *done &&
			strcmp(PQgetvalue(res, 0, 0), "currency_mismatch") == 0;
	PQclear(res);
	return rc;
}

/* Lock the tenant (its currency into x->out), close the period; *done
 * when this invoice was computed before. A redo drops a currency_mismatch
 * run whose currencies now agree, to compute it. */
static int lock_and_close(tally_pg *pg, compute_ctx *x, bool *done,
			  tally_error *err)
{
	const invoice_period *p = x->p;
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(pg, &res, "SELECT upper(currency) FROM tenants "
			   "WHERE id = $1 FOR UPDATE", 1,
			   (const char *[]){ p->tenant_id }, err);
	if (rc == 0 && PQntuples(res) != 1)
		rc = tally_error_set(err, TALLY_EINVALID, "tenant %s is gone",
				     p->tenant_id);
	if (rc == 0)
		snprintf(x->out->tenant_currency,
			 sizeof(x->out->tenant_currency), "%s",
			 PQgetvalue(res, 0, 0));
	PQclear(res);
	if (rc == 0)
		rc = run_status(pg, p, done, x->out, err);
	if (rc == 0 && *done && x->redo && x->out->mismatch &&
	    strcmp(x->out->tenant_currency, p->currency) == 0) {
		*done = false;
		rc = tally_pg_exec(pg, NULL, "DELETE FROM invoice_usage_runs "
				   "WHERE tenant_id = $1 AND invoice_id = $2",
				   2, (const char *[]){ p->tenant_id,
							 p->invoice_id }, err);
	}
	if (rc != 0 || *done)
		return rc;
	/* the closer's row (docs/aggregate.md); the tenant is locked */
	return tally_period_close(pg, p->tenant_id, p->period_start,
				  p->period_end, p->invoice_id, err);
}

static int record_run(tally_pg *pg, const compute_ctx *x,
		      const char *status, tally_error *err)
{
	numbuf ps, pe;

	return tally_pg_exec(pg, NULL,
		"INSERT INTO invoice_usage_runs (tenant_id, invoice_id,"
		" period_start, period_end, currency, grouping, status) VALUES"
		" ($1, $2, to_timestamp($3::bigint), to_timestamp($4::bigint),"
		" $5, $6, $7)", 7,
		(const char *[]){ x->p->tenant_id, x->p->invoice_id,
				  i64s(ps, x->p->period_start),
				  i64s(pe, x->p->period_end), x->p->currency,
				  tally_usage_grouping_name(x->g), status },
		err);
}

static int compute_txn(tally_pg *pg, void *payload, tally_error *err)
{
	compute_ctx *x = payload;
	const invoice_period *p = x->p;
	int64_t h0 = (p->period_start + 3599) / 3600 * 3600;
	int64_t h1 = p->period_end / 3600 * 3600;
	numbuf ps, pe, a, b;
	PGresult *r1 = NULL, *r2 = NULL;
	tally_usage_charge *ch = NULL;
	tally_usage_line *lines = NULL;
	size_t nch = 0, nl = 0, i;
	tally_money128 incl = 0;
	bool done;
	int rc, digits = tally_currency_minor_digits(p->currency);

	memset(x->out, 0, sizeof(*x->out)); /* the transaction may run again */
	if (digits < 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "invoice %s: unknown currency %s",
				       p->invoice_id, p->currency);
	if (h0 >= h1)
		h0 = h1 = p->period_start; /* no whole hour: all from ledger */
	rc = lock_and_close(pg, x, &done, err);
	if (rc != 0 || done)
		return rc;
	if (strcmp(x->out->tenant_currency, p->currency) != 0) {
		/* nothing converted, nothing taken (the file comment) */
		rc = record_run(pg, x, "currency_mismatch", err);
		x->out->fresh = x->out->mismatch = rc == 0;
		return rc;
	}
	rc = tally_pg_exec(pg, &r1, period_usage_sql, 6, (const char *[]){
		p->tenant_id, i64s(ps, p->period_start),
		i64s(pe, p->period_end), i64s(a, h0), i64s(b, h1),
		h0 == p->period_start && h1 == p->period_end ? "false" : "true"
		}, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, &r2, take_adjustments_sql, 2,
				   (const char *[]){ p->tenant_id,
						     p->invoice_id }, err);
	if (rc == 0)
		rc = add_charges(r1, &ch, &nch, err);
	if (rc == 0)
		rc = add_charges(r2, &ch, &nch, err);
	if (rc == 0)
		rc = included_pico(pg, p->tenant_id, &incl, err);
	if (rc == 0)
		rc = tally_usage_lines_build(ch, nch, x->g, incl, digits,
					     &lines, &nl, err);
	for (i = 0; rc == 0 && i < nl; i++)
		rc = record_line(pg, p, &lines[i], err);
	if (rc == 0)
		rc = record_run(pg, x, "computed", err);
	x->out->fresh = rc == 0;
	free(lines);
	free(ch);
	PQclear(r1);
	PQclear(r2);
	return rc;
}

int invoice_usage_compute(tally_pg *pg, const invoice_period *p,
			  tally_usage_grouping g, invoice_usage_run *out,
			  tally_error *err)
{
	compute_ctx x = { p, g, false, out };
	bool done;
	int rc;

	memset(out, 0, sizeof(*out));
	/* a redelivery takes no tenant lock (batches would wait for it) */
	rc = run_status(pg, p, &done, out, err);
	if (rc != 0 || done)
		return rc;
	return tally_pg_txn(pg, compute_txn, &x, 0, err);
}

int invoice_usage_redo(tally_pg *pg, const char *tenant_id,
		       const char *invoice_id, invoice_usage_run *out,
		       tally_error *err)
{
	invoice_period p;
	compute_ctx x = { &p, TALLY_GROUP_PER_MODEL, true, out };
	PGresult *res = NULL;
	int rc;

	memset(out, 0, sizeof(*out));
	memset(&p, 0, sizeof(p));
	rc = tally_pg_exec(pg, &res, "SELECT extract(epoch FROM period_start)"
		"::bigint::text, extract(epoch FROM period_end)::bigint::text,"
		" upper(currency), grouping FROM invoice_usage_runs WHERE "
		"tenant_id = $1 AND invoice_id = $2 AND status = "
		"'currency_mismatch'", 2,
		(const char *[]){ tenant_id, invoice_id }, err);
	if (rc != 0 || PQntuples(res) != 1) {
		PQclear(res);
		return rc; /* computed meanwhile: nothing to redo */
	}
	snprintf(p.tenant_id, sizeof(p.tenant_id), "%s", tenant_id);
	snprintf(p.invoice_id, sizeof(p.invoice_id), "%s", invoice_id);
	snprintf(p.currency, sizeof(p.currency), "%s", PQgetvalue(res, 0, 2));
	p.period_start = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	p.period_end = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	if (tally_usage_grouping_parse(PQgetvalue(res, 0, 3), &x.g) != 0)
		rc = tally_error_set(err, TALLY_EINVALID,
				     "run %s: unknown grouping", invoice_id);
	PQclear(res);
	return rc != 0 ? rc : tally_pg_txn(pg, compute_txn, &x, 0, err);
}
