/*
 * sync_events.c - Stripe webhook events: verification, decoding, the work
 * done before the transaction (paging invoice lines, a dispute's charge),
 * then one transaction with the stripe_events dedupe row, the tenant
 * resolution and the dispatch to the mirror of the event's object.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/invoice_sync.h"
#include "stripe/sync_int.h"
#include "tally/event.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int resolve_tenant(ss_event *x, ss_tenant *t, tally_error *err)
{
	tally_stripe_sync *ss = x->ss;
	const char *cus = NULL;
	const json_t *md;
	int rc;

	memset(t, 0, sizeof(*t));
	if (strcmp(x->object, "customer") == 0)
		cus = tally_stripe_jstr(x->obj, "id");
	else
		cus = tally_stripe_jid(x->obj, "customer");
	if (cus) {
		rc = tally_ss__tenant_load(
		    ss, t, "WHERE t.stripe_customer_id = $1", cus, true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	if (strcmp(x->object, "dispute") == 0 ||
	    (cus == NULL && strcmp(x->object, "charge") == 0)) {
		PGresult *res = NULL;
		const char *ch = tally_stripe_jid(x->obj, "charge");
		const char *pi = tally_stripe_jid(x->obj, "payment_intent");

		if (ch == NULL)
			ch = tally_stripe_jstr(x->obj, "id");
		rc = tally_ss__ex(ss, &res, err,
			"SELECT tenant_id::text FROM payments WHERE "
			"stripe_id = $1 OR charge_id = $1 OR "
			"($2::text IS NOT NULL AND payment_intent_id = $2) "
			"LIMIT 1", 2, ch ? ch : "", pi);
		if (rc == 0 && PQntuples(res) == 1)
			rc = tally_ss__tenant_load(
			    ss, t, "WHERE t.id = $1::uuid",
			    PQgetvalue(res, 0, 0), true, err);
		PQclear(res);
		if (rc != 0 || t->found)
			return rc;
	}
	/* the charge as Stripe has it (a dispute that came before any
	 * event of its charge): its customer, else its metadata ss_tenant */
	if (x->charge_customer[0]) {
		rc = tally_ss__tenant_load(ss, t,
					   "WHERE t.stripe_customer_id = $1",
					   x->charge_customer, true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	if (x->charge_tenant[0]) {
		rc = tally_ss__tenant_load(ss, t, "WHERE t.id = $1::uuid",
				 x->charge_tenant, true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	md = json_object_get(x->obj, "metadata");
	if (json_is_object(md) && tally_stripe_jstr(md, "tenant_id")) {
		const char *tid = tally_stripe_jstr(md, "tenant_id");
		uint8_t u[16];

		if (tally_uuid_parse(u, tid, (uint32_t)strlen(tid)) == 0)
			return tally_ss__tenant_load(
			    ss, t, "WHERE t.id = $1::uuid", tid, true, err);
	}
	return 0;
}

/* customer.created / updated / deleted: the tenant's customer id. */
static int customer_event(ss_event *x, ss_tenant *t, tally_error *err)
{
	if (strcmp(x->type, "customer.deleted") == 0)
		return tally_ss__ex(x->ss, NULL, err,
			"UPDATE tenants SET stripe_customer_id = NULL, "
			"updated_at = now() WHERE id = $1 AND "
			"stripe_customer_id = $2", 2, t->id,
			tally_stripe_jstr(x->obj, "id"));
	return tally_ss__ex(x->ss, NULL, err,
		"UPDATE tenants SET stripe_customer_id = $2, "
		"updated_at = now() WHERE id = $1 AND "
		"stripe_customer_id IS NULL", 2, t->id,
		tally_stripe_jstr(x->obj, "id"));
}

/* The event's effects for tenant t, by the family of its type; sets
 * x->outcome to "ignored" for types the sync does not mirror. */
static int dispatch(ss_event *x, ss_tenant *t, bool *applied,
		    tally_error *err)
{
	switch (x->family) {
	case TALLY_STRIPE_EVENT_SUBSCRIPTION:
		return tally_ss__subscription_event(x, t, applied, err);
	case TALLY_STRIPE_EVENT_INVOICE:
		return tally_ss__invoice_event(x, t, applied, err);
	case TALLY_STRIPE_EVENT_PAYMENT:
		return tally_ss__payment_event(x, t, applied, err);
	case TALLY_STRIPE_EVENT_CUSTOMER:
		*applied = true;
		return customer_event(x, t, err);
	case TALLY_STRIPE_EVENT_IGNORED:
		break;
	}
	x->outcome = "ignored";
	return 0;
}

static int apply_event(tally_pg *pg, void *payload, tally_error *err)
{
	ss_event *x = payload;
	tally_stripe_sync *ss = x->ss;
	PGresult *res = NULL;
	ss_tenant t;
	ss_numbuf cr;
	bool applied = false, fresh;
	int rc;

	(void)pg;
	x->outcome = NULL;
	x->tenant_id[0] = '\0';
	tally_ss__i64s(cr, x->created);
	{
		char why[300];

		/* the audit trail's reason for what the event changes */
		snprintf(why, sizeof(why), "stripe event %s (%s)", x->id,
			 x->type);
		rc = tally_ss__audit_why(ss, "billing.stripe-events", why,
					 true, err);
		if (rc != 0)
			return rc;
	}
	/* an event left unresolved (unknown tenant) may be tried again */
	rc = tally_ss__ex(ss, &res, err,
		"INSERT INTO stripe_events AS e (event_id, type, object_id, "
		"event_created, outcome) VALUES ($1, $2, $3, "
		"to_timestamp($4::bigint), 'processing') ON CONFLICT (event_id)"
		" DO UPDATE SET outcome = 'processing', processed_at = now() "
		"WHERE e.outcome = 'unknown_tenant' RETURNING 1", 4, x->id,
		x->type, tally_stripe_jstr(x->obj, "id"), cr);
	fresh = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0)
		return rc;
	if (!fresh) {
		x->outcome = "duplicate";
		return 0;
	}
	rc = resolve_tenant(x, &t, err);
	if (rc != 0)
		return rc;
	if (!t.found) {
		x->outcome = "unknown_tenant";
	} else {
		tally_ss__cpy(x->tenant_id, sizeof(x->tenant_id), t.id);
		rc = dispatch(x, &t, &applied, err);
		if (rc != 0)
			return rc;
		if (x->outcome == NULL)
			x->outcome = applied ? "applied" : "stale";
	}
	return tally_ss__ex(ss, NULL, err,
		  "UPDATE stripe_events SET outcome = $2, tenant_id = "
		  "nullif($3, '')::uuid, processed_at = now() "
		  "WHERE event_id = $1", 3, x->id, x->outcome, x->tenant_id);
}

static int collect_line(json_t *obj, void *payload)
{
	json_array_append(payload, obj);
	return 0;
}

int tally_stripe_sync_event(tally_stripe_sync *ss, const char *body,
			    size_t len, const char *sig_header,
			    const char **outcome, tally_error *err)
{
	ss_event x;
	tally_stripe_event pe;
	tally_webhook_reason why;
	int rc;

	memset(&x, 0, sizeof(x));
	x.ss = ss;
	if (outcome)
		*outcome = NULL;
	if (ss->nsecrets > 0 &&
	    tally_webhook_verify(sig_header, body, len, ss->secrets,
				 ss->nsecrets, tally_ss__now_ms(ss) / 1000, -1,
				 &why) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe event: signature: %s",
				       tally_webhook_reason_name(why));
	if (tally_stripe_event_parse(&pe, body, len) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe event: not an event object");
	x.ev = pe.root; /* freed with x */
	x.obj = pe.obj;
	x.id = pe.id;
	x.type = pe.type;
	x.object = pe.object;
	x.created = pe.created;
	x.family = pe.family;
	/* page the rest of an invoice's lines before the transaction */
	if (x.family == TALLY_STRIPE_EVENT_INVOICE && ss->stripe &&
	    json_is_true(tally_ss__jpath(x.obj, "lines", "has_more")) &&
	    tally_stripe_jstr(x.obj, "id")) {
		char path[300];
		tally_stripe_error se;

		snprintf(path, sizeof(path), "/v1/invoices/%s/lines",
			 tally_stripe_jstr(x.obj, "id"));
		x.lines = json_array();
		rc = tally_stripe_list(ss->stripe, path, NULL, collect_line,
				       x.lines, &se, err);
		if (rc != 0)
			goto cleanup;
	}
	if (strcmp(x.object, "dispute") == 0) {
		rc = tally_ss__dispute_charge(&x, err);
		if (rc != 0)
			goto cleanup;
	}
	if (strcmp(x.object, "subscription") == 0) {
		rc = tally_ss__expand_sub_discounts(ss,
			json_object_get(json_object_get(x.ev, "data"), "object"),
			x.id, err);
		if (rc != 0)
			goto cleanup;
	}
	/* a drafted cycle invoice gets the period's usage (invoice_sync.c);
	 * before the event is recorded, so a failure is delivered again */
	rc = tally_invoice_sync_event(ss->pg, ss->stripe, ss->cfg, x.type,
				      x.obj, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_pg_txn(ss->pg, apply_event, &x, 0, err);
	if (rc == 0 && strcmp(x.outcome, "duplicate") == 0)
		rc = TALLY_EDUPLICATE;
	if (rc == 0 || rc == TALLY_EDUPLICATE)
		tally_log(TALLY_DEBUG, "stripe.event", TALLY_KV_STR("id", x.id),
			  TALLY_KV_STR("type", x.type),
			  TALLY_KV_STR("outcome", x.outcome));
	if (outcome && x.outcome)
		*outcome = strcmp(x.outcome, "applied") == 0 ? "applied"
			: strcmp(x.outcome, "stale") == 0 ? "stale"
			: strcmp(x.outcome, "ignored") == 0 ? "ignored"
			: strcmp(x.outcome, "unknown_tenant") == 0
			? "unknown_tenant" : "duplicate";
cleanup:
	json_decref(x.lines);
	json_decref(x.ev);
	return rc;
}
