/*
 * sync_reconcile.c - reconcile: list Stripe's subscriptions and invoices,
 * report where PostgreSQL differs and, with apply, mirror Stripe's version.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/event.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct recon {
	tally_stripe_sync *ss;
	bool apply;
	FILE *out;
	int ndiff;
	tally_error *err;
	int rc;
} recon;

static int recon_tenant(recon *r, const json_t *obj, ss_tenant *t)
{
	const char *cus = tally_stripe_jid(obj, "customer");
	const json_t *md = json_object_get(obj, "metadata");
	int rc = 0;

	memset(t, 0, sizeof(*t));
	if (cus)
		rc = tally_ss__tenant_load(r->ss, t,
					   "WHERE t.stripe_customer_id = $1",
					   cus, false, r->err);
	if (rc == 0 && !t->found && json_is_object(md) &&
	    tally_stripe_jstr(md, "tenant_id")) {
		const char *tid = tally_stripe_jstr(md, "tenant_id");
		uint8_t u[16];

		if (tally_uuid_parse(u, tid, (uint32_t)strlen(tid)) == 0)
			rc = tally_ss__tenant_load(r->ss, t,
						   "WHERE t.id = $1::uuid", tid,
						   false, r->err);
	}
	return rc;
}

static void diff(recon *r, const char *kind, const char *id,
		 const char *what, const char *pg, const char *stripe)
{
	r->ndiff++;
	fprintf(r->out, "%s\t%s\t%s\tpostgres=%s\tstripe=%s\n", kind, id,
		what, pg ? pg : "-", stripe ? stripe : "-");
}

static int recon_sub(json_t *sub, void *payload)
{
	recon *r = payload;
	PGresult *res = NULL;
	ss_tenant t;
	ss_sub_view v;
	bool differs = false, applied;
	const char *id = tally_stripe_jstr(sub, "id");

	r->rc = recon_tenant(r, sub, &t);
	if (r->rc != 0)
		return r->rc;
	if (!t.found) {
		diff(r, "subscription", id, "unknown_customer", NULL,
		     tally_stripe_jid(sub, "customer"));
		return 0;
	}
	tally_ss__sub_view_of(r->ss, &v, sub);
	r->rc = tally_ss__ex(r->ss, &res, r->err,
		   "SELECT status, coalesce(extract(epoch FROM "
		   "current_period_end)::bigint::text, ''), coalesce(plan, '')"
		   " FROM subscriptions WHERE tenant_id = $1 AND "
		   "subscription_id = $2", 2, t.id, id);
	if (r->rc != 0)
		goto cleanup;
	if (PQntuples(res) == 0) {
		diff(r, "subscription", id, "missing", NULL, v.status);
		differs = true;
	} else {
		if (strcmp(PQgetvalue(res, 0, 0), v.status) != 0) {
			diff(r, "subscription", id, "status",
			     PQgetvalue(res, 0, 0), v.status);
			differs = true;
		}
		if (strcmp(PQgetvalue(res, 0, 1), v.pcpe ? v.pcpe : "") != 0) {
			diff(r, "subscription", id, "period_end",
			     PQgetvalue(res, 0, 1), v.pcpe);
			differs = true;
		}
		if (v.plan && strcmp(PQgetvalue(res, 0, 2), v.plan) != 0) {
			diff(r, "subscription", id, "plan",
			     PQgetvalue(res, 0, 2), v.plan);
			differs = true;
		}
	}
	if (differs && r->apply) {
		char tid[37];

		/* tenant_load clears t: keep the id apart */
		tally_ss__cpy(tid, sizeof(tid), t.id);
		/* discounts named by id are read before the transaction */
		r->rc = tally_ss__expand_sub_discounts(r->ss, sub, NULL,
						       r->err);
		if (r->rc != 0)
			goto cleanup;
		r->rc = tally_ss__ex(r->ss, NULL, r->err, "BEGIN", 0);
		if (r->rc == 0)
			r->rc = tally_ss__tenant_load(r->ss, &t,
						      "WHERE t.id = $1::uuid",
						      tid, true, r->err);
		if (r->rc == 0)
			r->rc = tally_ss__mirror_subscription(
			    r->ss, &t, sub, tally_ss__now_ms(r->ss) / 1000,
			    API_READ_RANK, NULL, &applied, r->err);
		if (r->rc == 0)
			r->rc = tally_ss__ex(r->ss, NULL, r->err, "COMMIT", 0);
		else
			(void)tally_ss__ex(r->ss, NULL, NULL, "ROLLBACK", 0);
	}
cleanup:
	PQclear(res);
	return r->rc;
}

static int recon_inv(json_t *inv, void *payload)
{
	recon *r = payload;
	PGresult *res = NULL;
	ss_tenant t;
	ss_numbuf due, paid;
	bool differs = false, applied;
	const char *id = tally_stripe_jstr(inv, "id");
	const char *st = tally_stripe_jstr(inv, "status");

	r->rc = recon_tenant(r, inv, &t);
	if (r->rc != 0)
		return r->rc;
	if (!t.found) {
		diff(r, "invoice", id, "unknown_customer", NULL,
		     tally_stripe_jid(inv, "customer"));
		return 0;
	}
	tally_ss__jnum(due, inv, "amount_due");
	tally_ss__jnum(paid, inv, "amount_paid");
	r->rc = tally_ss__ex(r->ss, &res, r->err,
		   "SELECT coalesce(status, ''), amount_due::text, "
		   "amount_paid::text FROM invoices WHERE tenant_id = $1 AND "
		   "invoice_id = $2", 2, t.id, id);
	if (r->rc != 0)
		goto cleanup;
	if (PQntuples(res) == 0) {
		diff(r, "invoice", id, "missing", NULL, st);
		differs = true;
	} else {
		if (strcmp(PQgetvalue(res, 0, 0), st ? st : "") != 0) {
			diff(r, "invoice", id, "status", PQgetvalue(res, 0, 0),
			     st);
			differs = true;
		}
		if (strcmp(PQgetvalue(res, 0, 1), due) != 0 ||
		    strcmp(PQgetvalue(res, 0, 2), paid) != 0) {
			char a[64], b[64];

			snprintf(a, sizeof(a), "%s/%s", PQgetvalue(res, 0, 1),
				 PQgetvalue(res, 0, 2));
			snprintf(b, sizeof(b), "%s/%s", due, paid);
			diff(r, "invoice", id, "amount_due/paid", a, b);
			differs = true;
		}
	}
	if (differs && r->apply)
		r->rc = tally_ss__mirror_invoice(
		    r->ss, &t, inv, tally_ss__now_ms(r->ss) / 1000,
		    tally_stripe_invoice_rank(inv), NULL, false, NULL, &applied,
		    r->err);
	else if (r->apply)
		/* mirrored before periods were closed: close it now */
		r->rc = tally_ss__close_period(r->ss, &t, inv, id, r->err);
cleanup:
	PQclear(res);
	return r->rc;
}

int tally_stripe_sync_reconcile(tally_stripe_sync *ss, bool apply, FILE *out,
				int *ndiff, tally_error *err)
{
	recon r = { ss, apply, out, 0, err, 0 };
	tally_stripe_error se;
	json_t *q;
	int rc;

	if (ss->stripe == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "reconcile: no Stripe client");
	q = json_pack("{s:s}", "status", "all");
	rc = tally_stripe_list(ss->stripe, "/v1/subscriptions", q, recon_sub,
			       &r, &se, err);
	json_decref(q);
	if (rc == 0)
		rc = tally_stripe_list(ss->stripe, "/v1/invoices", NULL,
				       recon_inv, &r, &se, err);
	if (ndiff)
		*ndiff = r.ndiff;
	return rc;
}
