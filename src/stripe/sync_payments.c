/*
 * sync_payments.c - the payments mirror (payment intents, charges,
 * disputes) and the charge lookup a dispute needs to find its tenant.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/event.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tally_ss__mirror_payment(tally_stripe_sync *ss, ss_tenant *t,
			     const json_t *o, const char *object,
			     const char *type, int64_t as_of,
			     const char *event_id, bool *applied,
			     tally_error *err)
{
	PGresult *res = NULL;
	const char *status = tally_stripe_jstr(o, "status");
	const json_t *lpe = json_object_get(o, "last_payment_error");
	const char *pi = NULL, *charge = NULL, *fcode, *fmsg;
	ss_numbuf amt, rec, ref, cr, asb, rb;
	int rc;

	*applied = false;
	if (strcmp(object, "payment_intent") == 0) {
		pi = tally_stripe_jstr(o, "id");
		charge = tally_stripe_jid(o, "latest_charge");
		fcode = json_is_object(lpe) ? tally_stripe_jstr(lpe, "code")
					    : NULL;
		fmsg = json_is_object(lpe)
			? tally_stripe_jstr(lpe, "message") : NULL;
	} else if (strcmp(object, "charge") == 0) {
		pi = tally_stripe_jid(o, "payment_intent");
		charge = tally_stripe_jstr(o, "id");
		fcode = tally_stripe_jstr(o, "failure_code");
		fmsg = tally_stripe_jstr(o, "failure_message");
	} else {
		pi = tally_stripe_jid(o, "payment_intent");
		charge = tally_stripe_jid(o, "charge");
		fcode = NULL;
		fmsg = NULL;
	}
	rc = tally_ss__ex(
	    ss, &res, err,
	    "INSERT INTO payments AS p (tenant_id, stripe_id, object, "
	    "customer_id, invoice_id, payment_intent_id, charge_id, status,"
	    " amount, amount_received, amount_refunded, currency, "
	    "failure_code, failure_message, dispute_reason, stripe_created,"
	    " as_of, as_of_rank, last_event_id) VALUES ($1, $2, $3, $4, "
	    "$5, $6, $7, $8, coalesce($9::numeric, 0), $10::numeric, "
	    "$11::numeric, upper($12), $13, $14, $15, "
	    "coalesce(to_timestamp($16::bigint), to_timestamp($17::bigint)),"
	    " to_timestamp($17::bigint), $18::smallint, $19) "
	    "ON CONFLICT (tenant_id, stripe_id) DO UPDATE SET "
	    "customer_id = coalesce(EXCLUDED.customer_id, p.customer_id), "
	    "invoice_id = coalesce(EXCLUDED.invoice_id, p.invoice_id), "
	    "payment_intent_id = EXCLUDED.payment_intent_id, "
	    "charge_id = EXCLUDED.charge_id, status = EXCLUDED.status, "
	    "amount = EXCLUDED.amount, "
	    "amount_received = EXCLUDED.amount_received, "
	    "amount_refunded = EXCLUDED.amount_refunded, "
	    "currency = EXCLUDED.currency, "
	    "failure_code = EXCLUDED.failure_code, "
	    "failure_message = EXCLUDED.failure_message, "
	    "dispute_reason = EXCLUDED.dispute_reason, "
	    "as_of = EXCLUDED.as_of, as_of_rank = EXCLUDED.as_of_rank, "
	    "last_event_id = EXCLUDED.last_event_id, updated_at = now() "
	    "WHERE (p.as_of, p.as_of_rank) < "
	    "(EXCLUDED.as_of, EXCLUDED.as_of_rank) RETURNING 1",
	    19, t->id, tally_stripe_jstr(o, "id"), object,
	    tally_stripe_jid(o, "customer"), tally_stripe_jid(o, "invoice"), pi,
	    charge, status ? status : "unknown",
	    tally_ss__jnum(amt, o, "amount"),
	    tally_ss__jnum(rec, o, "amount_received"),
	    tally_ss__jnum(ref, o, "amount_refunded"),
	    tally_stripe_jstr(o, "currency"), fcode, fmsg,
	    strcmp(object, "dispute") == 0 ? tally_stripe_jstr(o, "reason")
					   : NULL,
	    tally_ss__jnum(cr, o, "created"), tally_ss__i64s(asb, as_of),
	    tally_ss__i64s(rb, tally_stripe_payment_rank(object, status, type)), event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

/*
 * A dispute carries no customer, only its charge. When PostgreSQL knows no
 * payment for that charge yet (the dispute arrived before the charge's own
 * events), fetch the charge (GET /v1/charges/{id}) for its customer, before
 * the transaction (no network inside it). Not found: left to
 * unknown_tenant; transient: the event is retried.
 */
int tally_ss__dispute_charge(ss_event *x, tally_error *err)
{
	tally_stripe_sync *ss = x->ss;
	const json_t *chobj = json_object_get(x->obj, "charge");
	const char *ch = tally_stripe_jid(x->obj, "charge");
	const char *pi = tally_stripe_jid(x->obj, "payment_intent");
	tally_stripe_error se;
	PGresult *res = NULL;
	json_t *charge = NULL;
	const json_t *md;
	char path[320];
	bool known;
	uint8_t u[16];
	int rc;

	if (ch == NULL)
		return 0;
	if (json_is_object(chobj) && tally_stripe_jid(chobj, "customer")) {
		tally_ss__cpy(x->charge_customer, sizeof(x->charge_customer),
		    tally_stripe_jid(chobj, "customer"));
		return 0; /* expanded: nothing to fetch */
	}
	rc = tally_ss__ex(ss, &res, err,
		"SELECT 1 FROM payments WHERE stripe_id = $1 OR charge_id = $1"
		" OR ($2::text IS NOT NULL AND payment_intent_id = $2) "
		"LIMIT 1", 2, ch, pi);
	known = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0 || known || ss->stripe == NULL)
		return rc;
	snprintf(path, sizeof(path), "/v1/charges/%s", ch);
	rc = tally_stripe_request(ss->stripe, &charge, "GET", path, NULL, NULL,
				  &se, err);
	if (rc == TALLY_ENOTFOUND || rc == TALLY_EINVALID) {
		tally_log(TALLY_WARN, "stripe.dispute_charge_unavailable",
			  TALLY_KV_STR("event_id", x->id),
			  TALLY_KV_STR("charge_id", ch),
			  TALLY_KV_INT("http_status", se.http_status),
			  TALLY_KV_STR("code", se.code));
		return 0;
	}
	if (rc != 0)
		return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
	if (tally_stripe_jid(charge, "customer"))
		tally_ss__cpy(x->charge_customer, sizeof(x->charge_customer),
		    tally_stripe_jid(charge, "customer"));
	md = json_object_get(charge, "metadata");
	if (json_is_object(md) && tally_stripe_jstr(md, "tenant_id") &&
	    tally_uuid_parse(u, tally_stripe_jstr(md, "tenant_id"),
			     (uint32_t)strlen(tally_stripe_jstr(
				     md, "tenant_id"))) == 0)
		tally_uuid_fmt(x->charge_tenant, u);
	json_decref(charge);
	return 0;
}

/* A dispute opened or closed: always signalled (a fact, even if stale). */
static int dispute_signal(ss_event *x, ss_tenant *t, tally_error *err)
{
	bool closed = strcmp(x->type, "charge.dispute.closed") == 0;
	char cause[300];
	ss_numbuf amt;

	snprintf(cause, sizeof(cause), "%s:%s",
		 closed ? "dispute_closed" : "dispute_opened",
		 tally_stripe_jstr(x->obj, "id"));
	return tally_ss__signal_emit(x->ss, t->id, "dispute", cause,
		x->created, json_pack("{s:s, s:s?, s:s?, s:s?,"
		" s:s, s:b}", "dispute_id",
		tally_stripe_jstr(x->obj, "id"), "charge_id",
		tally_stripe_jid(x->obj, "charge"), "status",
		tally_stripe_jstr(x->obj, "status"), "reason",
		tally_stripe_jstr(x->obj, "reason"), "amount",
		tally_ss__jnum(amt, x->obj, "amount") ? amt : "0",
		"closed", closed), err);
}

static int refund_signal(ss_event *x, ss_tenant *t, tally_error *err)
{
	char cause[300];
	ss_numbuf amt;

	snprintf(cause, sizeof(cause), "refund:%s:%s",
		 tally_stripe_jstr(x->obj, "id"),
		 tally_ss__jnum(amt, x->obj, "amount_refunded") ? amt : "0");
	return tally_ss__signal_emit(x->ss, t->id, "refund", cause,
		x->created, json_pack("{s:s, s:s}", "charge_id",
		tally_stripe_jstr(x->obj, "id"), "amount_refunded", amt),
		err);
}

int tally_ss__payment_event(ss_event *x, ss_tenant *t, bool *applied,
			    tally_error *err)
{
	const char *obj = strcmp(x->object, "dispute") == 0
		? "dispute" : x->object;
	int rc;

	rc = tally_ss__mirror_payment(x->ss, t, x->obj, obj, x->type,
				      x->created, x->id, applied, err);
	if (rc == 0 && strcmp(obj, "dispute") == 0)
		rc = dispute_signal(x, t, err);
	else if (rc == 0 && strcmp(x->type, "charge.refunded") == 0)
		rc = refund_signal(x, t, err);
	return rc;
}
