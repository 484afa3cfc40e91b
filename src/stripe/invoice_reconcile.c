/*
 * invoice_reconcile.c - `tally stripe reconcile`, usage part: the lines
 * tally computed for an invoice against the invoice items Stripe holds
 * for them (matched on metadata), per tenant and invoice; and the runs
 * that billed nothing because the invoice is not in the tenant's currency.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/invoice_sync.h"
#include "stripe/invoice_usage.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct recon_ctx {
	tally_pg *pg;
	tally_stripe *stripe;
	bool apply;
	FILE *out;
	int ndiff;
	json_t *items; /* the customer's invoice items, borrowed per run */
} recon_ctx;

static int collect(json_t *obj, void *payload)
{
	return json_array_append(payload, obj) == 0 ? 0 : TALLY_ERROR;
}

/* Stripe's item for (tenant, invoice, line key), or NULL. */
static const json_t *item_for(const json_t *items, const char *tenant,
			      const char *invoice, const char *key)
{
	const json_t *it;
	size_t i;

	json_array_foreach(items, i, it) {
		const json_t *md = json_object_get(it, "metadata");
		const char *t = tally_stripe_jstr(md, "tenant_id");
		const char *inv = tally_stripe_jstr(md, "invoice_id");
		const char *k = tally_stripe_jstr(md, "line_key");

		if (t && inv && k && strcmp(t, tenant) == 0 &&
		    strcmp(inv, invoice) == 0 && strcmp(k, key) == 0)
			return it;
	}
	return NULL;
}

/* Compare the lines of one run; *missing counts lines to send again. */
static int recon_run(recon_ctx *r, const char *tenant, const char *invoice,
		     int *missing, tally_error *err)
{
	PGresult *res = NULL;
	int rc, i, n;

	*missing = 0;
	rc = tally_pg_exec(r->pg, &res,
		"SELECT line_key, amount_minor::text, status FROM "
		"invoice_usage_lines WHERE tenant_id = $1 AND invoice_id = $2 "
		"AND status <> 'zero' ORDER BY line_key", 2,
		(const char *[]){ tenant, invoice }, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		const char *key = PQgetvalue(res, i, 0);
		const char *want = PQgetvalue(res, i, 1);
		const json_t *it = item_for(r->items, tenant, invoice, key);
		char got[24];

		if (it == NULL) {
			fprintf(r->out, "usage_line_missing\t%s\t%s\t%s\t"
				"postgres=%s\tstripe=-\n", tenant, invoice,
				key, want);
			r->ndiff++;
			(*missing)++;
			if (r->apply)
				rc = tally_pg_exec(r->pg, NULL,
					"UPDATE invoice_usage_lines SET status ="
					" 'pending', resends = resends + 1 - "
					"(status = 'pending')::int, "
					"stripe_item_id = NULL, "
					"attached_invoice = NULL, updated_at = "
					"now() WHERE tenant_id = $1 AND "
					"invoice_id = $2 AND line_key = $3", 3,
					(const char *[]){ tenant, invoice, key },
					err);
			continue;
		}
		snprintf(got, sizeof(got), "%" PRId64,
			 tally_stripe_jint(it, "amount"));
		if (strcmp(got, want) != 0) {
			fprintf(r->out, "usage_line_amount\t%s\t%s\t%s\t"
				"postgres=%s\tstripe=%s\n", tenant, invoice,
				key, want, got);
			r->ndiff++;
		}
	}
	PQclear(res);
	return rc;
}

/* The customer's invoice items since a day before the run. */
static int list_items(recon_ctx *r, const char *customer,
		      const char *since, tally_error *err)
{
	tally_stripe_error se;
	json_t *q = json_pack("{s:s, s:{s:s}}", "customer", customer,
			      "created", "gte", since);
	int rc;

	json_array_clear(r->items);
	rc = tally_stripe_list(r->stripe, "/v1/invoiceitems", q, collect,
			       r->items, &se, err);
	json_decref(q);
	return rc;
}

/* The runs with lines to compare, and since when their items exist. */
static const char runs_sql[] =
	"SELECT r.tenant_id, r.invoice_id, t.stripe_customer_id, "
	"(extract(epoch FROM r.computed_at)::bigint - 86400)::text "
	"FROM invoice_usage_runs r JOIN tenants t ON t.id = r.tenant_id"
	" WHERE t.stripe_customer_id IS NOT NULL AND EXISTS (SELECT 1 "
	"FROM invoice_usage_lines l WHERE l.tenant_id = r.tenant_id AND"
	" l.invoice_id = r.invoice_id AND l.status <> 'zero') "
	"ORDER BY r.tenant_id, r.computed_at";

/* Every currency_mismatch run; with apply, the runs whose tenant's
 * currency is now the invoice's are computed and sent. */
static int recon_currency(recon_ctx *r, tally_error *err)
{
	PGresult *res = NULL;
	int rc, i, n;

	rc = tally_pg_exec(r->pg, &res,
		"SELECT r.tenant_id, r.invoice_id, upper(t.currency), "
		"upper(r.currency) FROM invoice_usage_runs r JOIN tenants t ON "
		"t.id = r.tenant_id WHERE r.status = 'currency_mismatch' "
		"ORDER BY r.tenant_id, r.computed_at", 0, NULL, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		const char *tenant = PQgetvalue(res, i, 0);
		const char *invoice = PQgetvalue(res, i, 1);
		invoice_usage_run run;

		fprintf(r->out, "usage_currency_mismatch\t%s\t%s\tcurrency\t"
			"postgres=%s\tstripe=%s\n", tenant, invoice,
			PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
		r->ndiff++;
		if (!r->apply ||
		    strcmp(PQgetvalue(res, i, 2), PQgetvalue(res, i, 3)) != 0)
			continue;
		rc = invoice_usage_redo(r->pg, tenant, invoice, &run, err);
		if (rc == 0 && run.fresh)
			rc = tally_invoice_sync_push(r->pg, r->stripe, tenant,
						     invoice, NULL, err);
	}
	PQclear(res);
	return rc;
}

int tally_invoice_reconcile(tally_pg *pg, tally_stripe *stripe, bool apply,
			    FILE *out, int *ndiff, tally_error *err)
{
	recon_ctx r = { pg, stripe, apply, out, 0, json_array() };
	PGresult *res = NULL;
	int rc, i, n, missing;

	/* first: the lines it sends are then compared like the others */
	rc = recon_currency(&r, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, &res, runs_sql, 0, NULL, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		const char *tenant = PQgetvalue(res, i, 0);
		const char *invoice = PQgetvalue(res, i, 1);

		rc = list_items(&r, PQgetvalue(res, i, 2),
				PQgetvalue(res, i, 3), err);
		if (rc == 0)
			rc = recon_run(&r, tenant, invoice, &missing, err);
		if (rc == 0 && apply && missing > 0)
			rc = tally_invoice_sync_push(pg, stripe, tenant,
						     invoice, NULL, err);
	}
	PQclear(res);
	json_decref(r.items);
	if (ndiff)
		*ndiff = r.ndiff;
	return rc;
}
