/*
 * invoice_sync.c - a drafted subscription_cycle invoice gets the usage
 * period's lines as invoice items, each exactly once.
 *
 * Order: compute and record the lines in PostgreSQL first (one
 * transaction, invoice_usage.c), then call Stripe outside any transaction.
 * Each call is preceded by attempts + 1 (committed) and followed by the
 * item id (status created, or pending_item when the item went to the next
 * invoice). A line with attempts > 0 and no item id may exist on Stripe
 * (crash after Stripe answered, before the UPDATE): the customer's invoice
 * items are listed and matched on metadata (tenant_id, invoice_id,
 * line_key) before anything is POSTed again; the Idempotency-Key covers
 * the 24 hours in which Stripe remembers it.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/invoice_sync.h"
#include "tally/log.h"
#include "stripe/invoice_usage.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tally_usage_billing_parse(const char *s, tally_usage_billing *out)
{
	if (s == NULL || *s == '\0' || strcmp(s, "invoice_items") == 0)
		*out = TALLY_USAGE_BILLING_INVOICE_ITEMS;
	else if (strcmp(s, "meters") == 0)
		*out = TALLY_USAGE_BILLING_METERS;
	else if (strcmp(s, "off") == 0)
		*out = TALLY_USAGE_BILLING_OFF;
	else
		return TALLY_EINVALID;
	return 0;
}

tally_usage_billing tally_usage_billing_of(const tally_config *cfg)
{
	tally_usage_billing m = TALLY_USAGE_BILLING_INVOICE_ITEMS;

	if (cfg && tally_usage_billing_parse(tally_config_str(
			   cfg, "stripe.usage_billing"), &m) != 0) {
		tally_log(TALLY_ERR, "stripe.usage_billing_invalid",
			  TALLY_KV_STR("value", tally_config_str(
				  cfg, "stripe.usage_billing")));
		m = TALLY_USAGE_BILLING_OFF;
	}
	return m;
}

/* ---- the lines still to send ------------------------------------------- */

typedef struct push_ctx {
	tally_pg *pg;
	tally_stripe *stripe;
	const char *tenant_id;
	const char *invoice_id;
	char customer[256];
	char ps[24], pe[24];
	char computed[24]; /* run's computed_at, unix seconds */
	bool draft;        /* the invoice still takes items */
	int sent;
} push_ctx;

static int run_of(push_ctx *c, bool *found, tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(c->pg, &res,
		"SELECT coalesce(t.stripe_customer_id, ''), "
		"extract(epoch FROM r.period_start)::bigint::text, "
		"extract(epoch FROM r.period_end)::bigint::text, "
		"extract(epoch FROM r.computed_at)::bigint::text "
		"FROM invoice_usage_runs r JOIN tenants t ON t.id = r.tenant_id"
		" WHERE r.tenant_id = $1 AND r.invoice_id = $2", 2,
		(const char *[]){ c->tenant_id, c->invoice_id }, err);
	*found = rc == 0 && PQntuples(res) == 1;
	if (*found) {
		snprintf(c->customer, sizeof(c->customer), "%s",
			 PQgetvalue(res, 0, 0));
		snprintf(c->ps, sizeof(c->ps), "%s", PQgetvalue(res, 0, 1));
		snprintf(c->pe, sizeof(c->pe), "%s", PQgetvalue(res, 0, 2));
		snprintf(c->computed, sizeof(c->computed), "%s",
			 PQgetvalue(res, 0, 3));
	}
	PQclear(res);
	return rc;
}

static int pending_lines(push_ctx *c, PGresult **res, tally_error *err)
{
	return tally_pg_exec(c->pg, res,
		"SELECT line_key, description, amount_minor::text, "
		"lower(currency), attempts, resends FROM invoice_usage_lines "
		"WHERE tenant_id = $1 AND invoice_id = $2 AND status = "
		"'pending' ORDER BY line_key", 2,
		(const char *[]){ c->tenant_id, c->invoice_id }, err);
}

/* The line is now the Stripe item `item` (found or created). */
static int mark_item(push_ctx *c, const char *key, const json_t *item,
		     tally_error *err)
{
	const char *inv = tally_stripe_jid(item, "invoice");

	return tally_pg_exec(c->pg, NULL,
		"UPDATE invoice_usage_lines SET status = CASE WHEN $4 = '' "
		"THEN 'pending_item' ELSE 'created' END, stripe_item_id = $5,"
		" attached_invoice = nullif($4, ''), updated_at = now() "
		"WHERE tenant_id = $1 AND invoice_id = $2 AND line_key = $3",
		5, (const char *[]){ c->tenant_id, c->invoice_id, key,
				     inv ? inv : "",
				     tally_stripe_jstr(item, "id") }, err);
}

/* Whether Stripe still lets items be added to the invoice. */
static int invoice_is_draft(push_ctx *c, tally_error *err)
{
	tally_stripe_error se;
	json_t *inv = NULL;
	char path[320];
	int rc;

	snprintf(path, sizeof(path), "/v1/invoices/%s", c->invoice_id);
	rc = tally_stripe_request(c->stripe, &inv, "GET", path, NULL, NULL,
				  &se, err);
	c->draft = rc == 0 && tally_stripe_jstr(inv, "status") &&
		   strcmp(tally_stripe_jstr(inv, "status"), "draft") == 0;
	json_decref(inv);
	if (rc == TALLY_ENOTFOUND) /* a deleted draft: next invoice */
		return 0;
	if (rc == TALLY_EINVALID && se.http_status == 401)
		rc = TALLY_ETRANSIENT; /* tally's key, not the invoice */
	return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
}

/* Items of this invoice's lines already on Stripe (created before a
 * crash): recorded instead of created again. */
static int adopt_item(json_t *item, void *payload)
{
	push_ctx *c = payload;
	const json_t *md = json_object_get(item, "metadata");
	const char *t = tally_stripe_jstr(md, "tenant_id");
	const char *inv = tally_stripe_jstr(md, "invoice_id");
	const char *key = tally_stripe_jstr(md, "line_key");
	PGresult *res = NULL;
	tally_error err;
	bool adopted;

	if (t == NULL || inv == NULL || key == NULL ||
	    strcmp(t, c->tenant_id) != 0 || strcmp(inv, c->invoice_id) != 0)
		return 0;
	if (tally_pg_exec(c->pg, &res,
		"UPDATE invoice_usage_lines SET status = CASE WHEN $4 = '' "
		"THEN 'pending_item' ELSE 'created' END, stripe_item_id = $5,"
		" attached_invoice = nullif($4, ''), updated_at = now() "
		"WHERE tenant_id = $1 AND invoice_id = $2 AND line_key = $3 "
		"AND status = 'pending'", 5, (const char *[]){ c->tenant_id,
		c->invoice_id, key, tally_stripe_jid(item, "invoice")
		? tally_stripe_jid(item, "invoice") : "",
		tally_stripe_jstr(item, "id") }, &err) != 0)
		return TALLY_ETRANSIENT;
	adopted = strcmp(PQcmdTuples(res), "1") == 0;
	PQclear(res);
	if (adopted)
		tally_log(TALLY_INFO, "stripe.usage_item_adopted",
			  TALLY_KV_STR("tenant_id", c->tenant_id),
			  TALLY_KV_STR("invoice_id", c->invoice_id),
			  TALLY_KV_STR("line_key", key),
			  TALLY_KV_STR("item_id",
				       tally_stripe_jstr(item, "id")));
	return 0;
}

static int adopt_existing(push_ctx *c, tally_error *err)
{
	tally_stripe_error se;
	char since[24];
	json_t *q;
	int rc;

	/* items are created after the run was computed; a day of margin
	 * for clock differences */
	snprintf(since, sizeof(since), "%" PRId64,
		 (int64_t)strtoll(c->computed, NULL, 10) - 86400);
	q = json_pack("{s:s, s:{s:s}}", "customer", c->customer, "created",
		      "gte", since);
	rc = tally_stripe_list(c->stripe, "/v1/invoiceitems", q, adopt_item,
			       c, &se, err);
	json_decref(q);
	if (rc == TALLY_ETRANSIENT && err->msg[0] == '\0')
		tally_error_set(err, rc, "recording an adopted item failed");
	return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
}

/* ---- one line ------------------------------------------------------------ */

static json_t *item_params(push_ctx *c, PGresult *res, int i)
{
	json_t *p = json_pack("{s:s, s:s, s:I, s:s, s:{s:s, s:s}, "
			      "s:{s:s, s:s, s:s, s:s}}",
		"customer", c->customer,
		"currency", PQgetvalue(res, i, 3),
		"amount", (json_int_t)strtoll(PQgetvalue(res, i, 2), NULL, 10),
		"description", PQgetvalue(res, i, 1),
		"period", "start", c->ps, "end", c->pe,
		"metadata", "tenant_id", c->tenant_id,
		"period_start", c->ps, "invoice_id", c->invoice_id,
		"line_key", PQgetvalue(res, i, 0));

	if (p && c->draft)
		json_object_set_new(p, "invoice", json_string(c->invoice_id));
	return p;
}

static int post_line(push_ctx *c, PGresult *res, int i, tally_error *err)
{
	const char *key = PQgetvalue(res, i, 0);
	tally_stripe_error se;
	char idem[256], id[600], step[300];
	json_t *params, *item = NULL;
	int rc;

	rc = tally_pg_exec(c->pg, NULL,
		"UPDATE invoice_usage_lines SET attempts = attempts + 1, "
		"updated_at = now() WHERE tenant_id = $1 AND invoice_id = $2 "
		"AND line_key = $3", 3,
		(const char *[]){ c->tenant_id, c->invoice_id, key }, err);
	if (rc != 0)
		return rc;
	/* the tenant is part of every key: ids are only unique per tenant */
	snprintf(id, sizeof(id), "%s-%s", c->tenant_id, c->invoice_id);
	snprintf(step, sizeof(step), "%s%s%s%s", c->draft ? "" : "next:", key,
		 strcmp(PQgetvalue(res, i, 5), "0") ? ":r" : "",
		 strcmp(PQgetvalue(res, i, 5), "0") ? PQgetvalue(res, i, 5)
						     : "");
	tally_stripe_idempotency_key(idem, "inv", id, step);
	params = item_params(c, res, i);
	if (params == NULL)
		return tally_error_set(err, TALLY_ERROR, "out of memory");
	rc = tally_stripe_request(c->stripe, &item, "POST", "/v1/invoiceitems",
				  params, idem, &se, err);
	json_decref(params);
	if (rc == TALLY_EINVALID && se.http_status == 401)
		rc = TALLY_ETRANSIENT; /* tally's key, not the line */
	if (rc == 0) {
		rc = mark_item(c, key, item, err);
		c->sent += rc == 0;
	} else if (rc == TALLY_EINVALID || rc == TALLY_ENOTFOUND) {
		tally_log(TALLY_WARN, "stripe.usage_item_rejected",
			  TALLY_KV_STR("tenant_id", c->tenant_id),
			  TALLY_KV_STR("invoice_id", c->invoice_id),
			  TALLY_KV_STR("line_key", key),
			  TALLY_KV_INT("http_status", se.http_status),
			  TALLY_KV_STR("code", se.code),
			  TALLY_KV_STR("message", se.message));
	}
	json_decref(item);
	return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
}

/* Send every pending line. A rejection on the draft (finalized meanwhile)
 * asks Stripe again and sends the rest as pending items. */
static int send_lines(push_ctx *c, tally_error *err)
{
	PGresult *res = NULL;
	int rc, i, n, rejected = 0;

	rc = pending_lines(c, &res, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		bool was_draft = c->draft;

		rc = post_line(c, res, i, err);
		if (rc == TALLY_EINVALID && was_draft) {
			rc = invoice_is_draft(c, err);
			if (rc == 0 && !c->draft)
				rc = post_line(c, res, i, err);
		}
		if (rc == TALLY_EINVALID || rc == TALLY_ENOTFOUND) {
			rejected++;
			rc = 0; /* stays pending: reconcile --apply */
		}
	}
	PQclear(res);
	if (rc == 0 && rejected > 0)
		rc = tally_error_set(err, TALLY_EINVALID,
				     "%d usage line(s) rejected by Stripe",
				     rejected);
	return rc;
}

int tally_invoice_sync_push(tally_pg *pg, tally_stripe *stripe,
			    const char *tenant_id, const char *invoice_id,
			    int *sent, tally_error *err)
{
	push_ctx c = { .pg = pg, .stripe = stripe, .tenant_id = tenant_id,
		       .invoice_id = invoice_id };
	PGresult *res = NULL;
	bool found, retried = false;
	int rc, i, n;

	if (sent)
		*sent = 0;
	rc = run_of(&c, &found, err);
	if (rc != 0 || !found)
		return rc;
	rc = pending_lines(&c, &res, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; i < n; i++)
		retried |= strcmp(PQgetvalue(res, i, 4), "0") != 0;
	PQclear(res);
	if (rc != 0 || n == 0)
		return rc;
	if (c.customer[0] == '\0')
		return tally_error_set(err, TALLY_EINVALID,
				       "tenant %s has no Stripe customer",
				       tenant_id);
	rc = invoice_is_draft(&c, err);
	if (rc == 0 && retried)
		rc = adopt_existing(&c, err);
	if (rc == 0)
		rc = send_lines(&c, err);
	if (!c.draft && c.sent > 0)
		tally_log(TALLY_WARN, "stripe.usage_pending_items",
			  TALLY_KV_STR("tenant_id", tenant_id),
			  TALLY_KV_STR("invoice_id", invoice_id),
			  TALLY_KV_INT("items", c.sent));
	if (sent)
		*sent = c.sent;
	return rc;
}

/* ---- the event ----------------------------------------------------------- */

static bool cycle_invoice(const json_t *obj, invoice_period *p)
{
	const char *why = tally_stripe_jstr(obj, "billing_reason");
	const char *id = tally_stripe_jstr(obj, "id");
	const char *cus = tally_stripe_jid(obj, "customer");
	const char *cur = tally_stripe_jstr(obj, "currency");
	size_t i;

	memset(p, 0, sizeof(*p));
	if (why == NULL || strcmp(why, "subscription_cycle") != 0 ||
	    id == NULL || cus == NULL || cur == NULL || strlen(cur) != 3 ||
	    strlen(id) >= sizeof(p->invoice_id) ||
	    strlen(cus) >= sizeof(p->customer))
		return false;
	p->period_start = tally_stripe_jint(obj, "period_start");
	p->period_end = tally_stripe_jint(obj, "period_end");
	if (p->period_end <= p->period_start)
		return false;
	memcpy(p->invoice_id, id, strlen(id) + 1);
	memcpy(p->customer, cus, strlen(cus) + 1);
	for (i = 0; i < 3; i++)
		p->currency[i] = (char)toupper((unsigned char)cur[i]);
	return true;
}

int tally_invoice_sync_event(tally_pg *pg, tally_stripe *stripe,
			     const tally_config *cfg, const char *type,
			     const json_t *obj, tally_error *err)
{
	tally_usage_grouping g;
	invoice_period p;
	invoice_usage_run run;
	int rc, sent = 0;

	if (stripe == NULL || type == NULL ||
	    strcmp(type, "invoice.created") != 0 ||
	    tally_usage_billing_of(cfg) != TALLY_USAGE_BILLING_INVOICE_ITEMS ||
	    !cycle_invoice(obj, &p))
		return 0;
	if (tally_usage_grouping_parse(cfg ? tally_config_str(cfg,
				"stripe.invoice_grouping") : "", &g) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe.invoice_grouping: per_model, "
				       "per_meter or single");
	rc = invoice_usage_tenant(pg, p.customer, p.tenant_id, err);
	if (rc != 0 || p.tenant_id[0] == '\0')
		return rc; /* unknown tenant: the event records it */
	rc = invoice_usage_compute(pg, &p, g, &run, err);
	if (rc == 0 && run.mismatch) {
		/* no line: tally converts no currency; the event is still
		 * mirrored and reconcile reports the run */
		if (run.fresh)
			tally_log(TALLY_ERR, "stripe.usage_currency_mismatch",
				  TALLY_KV_STR("tenant_id", p.tenant_id),
				  TALLY_KV_STR("invoice_id", p.invoice_id),
				  TALLY_KV_STR("invoice_currency", p.currency),
				  TALLY_KV_STR("tenant_currency",
					       run.tenant_currency));
		return 0;
	}
	if (rc == 0)
		rc = tally_invoice_sync_push(pg, stripe, p.tenant_id,
					     p.invoice_id, &sent, err);
	if (rc == TALLY_EINVALID) {
		/* logged; recorded lines wait for reconcile --apply, and the
		 * event is still mirrored */
		tally_log(TALLY_ERR, "stripe.usage_lines_not_sent",
			  TALLY_KV_STR("tenant_id", p.tenant_id),
			  TALLY_KV_STR("invoice_id", p.invoice_id),
			  TALLY_KV_INT("computed_now", run.fresh),
			  TALLY_KV_STR("error", err->msg));
		return 0;
	}
	if (rc == 0)
		tally_log(TALLY_INFO, "stripe.usage_invoiced",
			  TALLY_KV_STR("tenant_id", p.tenant_id),
			  TALLY_KV_STR("invoice_id", p.invoice_id),
			  TALLY_KV_INT("items", sent));
	return rc;
}
