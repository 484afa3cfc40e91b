/*
 * sync_invoices.c - the invoices mirror: an invoice version upserted when
 * newer than the one held, its lines, and the usage period a finalized
 * subscription-cycle invoice closes for tally-aggregate.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/period_close.h"
#include "stripe/sync_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mirror_lines(tally_stripe_sync *ss, const ss_tenant *t,
			const char *invoice_id, const json_t *lines,
			tally_error *err)
{
	const json_t *line;
	size_t i;
	int rc;

	rc = tally_ss__ex(ss, NULL, err,
			  "DELETE FROM invoice_lines WHERE tenant_id = $1"
			  " AND invoice_id = $2",
			  2, t->id, invoice_id);
	json_array_foreach(lines, i, line) {
		const json_t *parent = json_object_get(line, "parent");
		const json_t *sid =
		    tally_ss__jpath(parent, "subscription_item_details", NULL);
		const json_t *iid =
		    tally_ss__jpath(parent, "invoice_item_details", NULL);
		const char *price, *sub;
		bool proration;
		ss_numbuf a, q, ps, pe;

		if (rc != 0)
			break;
		price = tally_ss__jpstr(json_object_get(line, "pricing"),
			      "price_details", "price");
		if (price == NULL)
			price = tally_stripe_jid(line, "price");
		sub = tally_stripe_jid(line, "subscription");
		if (sub == NULL && sid)
			sub = tally_stripe_jstr(sid, "subscription");
		proration =
		    json_is_true(json_object_get(line, "proration")) ||
		    json_is_true(tally_ss__jpath(sid, "proration", NULL)) ||
		    json_is_true(tally_ss__jpath(iid, "proration", NULL));
		rc = tally_ss__ex(
		    ss, NULL, err,
		    "INSERT INTO invoice_lines (tenant_id, invoice_id, "
		    "line_id, amount, currency, description, quantity, "
		    "price_id, subscription_id, proration, period_start, "
		    "period_end) VALUES ($1, $2, $3, $4::numeric, "
		    "upper($5), $6, $7::bigint, $8, $9, $10::boolean, "
		    "to_timestamp($11::bigint), to_timestamp($12::bigint))"
		    " ON CONFLICT DO NOTHING",
		    12, t->id, invoice_id, tally_stripe_jstr(line, "id"),
		    tally_ss__jnum(a, line, "amount") ? a : "0",
		    tally_stripe_jstr(line, "currency"),
		    tally_stripe_jstr(line, "description"),
		    tally_ss__jnum(q, line, "quantity"), price, sub,
		    proration ? "true" : "false",
		    tally_ss__jnum(ps, json_object_get(line, "period"),
				   "start"),
		    tally_ss__jnum(pe, json_object_get(line, "period"), "end"));
	}
	return rc;
}

/*
 * A finalized subscription-cycle invoice closes the usage period it bills
 * for tally-aggregate: its period_start .. period_end (a subscription
 * invoice looks back one period) becomes an 'invoiced' billing_periods row,
 * so usage of that period arriving later goes into usage_adjustments for
 * the next invoice instead of rewriting the invoiced period
 * (docs/aggregate.md, "Closing a period"). The closer's protocol: the
 * tenant row FOR UPDATE first -- it waits for the batches that may have
 * read the period as open, and later batches wait for this commit -- then
 * the row, in one statement. Drafts (still changing), other billing
 * reasons (a mid-period update or threshold invoice does not end the
 * period) and empty periods close nothing; a period already closed keeps
 * its first invoice and takes no lock (reconcile --apply passes every
 * cycle invoice here).
 */
int tally_ss__close_period(tally_stripe_sync *ss, const ss_tenant *t,
			const json_t *inv, const char *invoice_id,
			tally_error *err)
{
	const char *st = tally_stripe_jstr(inv, "status");
	const char *why = tally_stripe_jstr(inv, "billing_reason");
	ss_numbuf ps, pe;

	if (st == NULL || strcmp(st, "draft") == 0 || why == NULL ||
	    strcmp(why, "subscription_cycle") != 0 ||
	    tally_ss__jnum(ps, inv, "period_start") == NULL ||
	    tally_ss__jnum(pe, inv, "period_end") == NULL ||
	    tally_stripe_jint(inv, "period_end") <=
		    tally_stripe_jint(inv, "period_start"))
		return 0;
	return tally_period_close(ss->pg, t->id,
				  tally_stripe_jint(inv, "period_start"),
				  tally_stripe_jint(inv, "period_end"),
				  invoice_id, err);
}

/* One upsert: its SQL and 24 parameters are most of the length. */
int tally_ss__mirror_invoice(tally_stripe_sync *ss, ss_tenant *t,
			  const json_t *inv, int64_t as_of, int rank,
			  const char *event_id, bool failed_event,
			  const json_t *all_lines, bool *applied,
			  tally_error *err)
{
	PGresult *res = NULL;
	const char *id = tally_stripe_jstr(inv, "id");
	const json_t *lines;
	ss_numbuf due, paid, rem, sub, tot, att, ps, pe, dd, npa, pat, cr, asb,
		rb, fa;
	int rc;

	*applied = false;
	if (id == NULL)
		return 0; /* invoice.upcoming previews have no id */
	rc = tally_ss__ex(
	    ss, &res, err,
	    "INSERT INTO invoices AS i (tenant_id, invoice_id, customer_id,"
	    " subscription_id, number, status, billing_reason, currency, "
	    "amount_due, amount_paid, amount_remaining, subtotal, total, "
	    "attempt_count, period_start, period_end, due_date, "
	    "next_payment_attempt, paid_at, payment_failed_at, "
	    "stripe_created, as_of, as_of_rank, last_event_id) VALUES "
	    "($1, $2, $3, $4, $5, $6, $7, upper($8), $9::numeric, "
	    "$10::numeric, $11::numeric, $12::numeric, $13::numeric, "
	    "coalesce($14::integer, 0), to_timestamp($15::bigint), "
	    "to_timestamp($16::bigint), to_timestamp($17::bigint), "
	    "to_timestamp($18::bigint), to_timestamp($19::bigint), "
	    "to_timestamp($20::bigint), "
	    "coalesce(to_timestamp($21::bigint), to_timestamp($22::bigint)),"
	    " to_timestamp($22::bigint), $23::smallint, $24) "
	    "ON CONFLICT (tenant_id, invoice_id) DO UPDATE SET "
	    "customer_id = EXCLUDED.customer_id, "
	    "subscription_id = EXCLUDED.subscription_id, "
	    "number = EXCLUDED.number, status = EXCLUDED.status, "
	    "billing_reason = EXCLUDED.billing_reason, "
	    "currency = EXCLUDED.currency, "
	    "amount_due = EXCLUDED.amount_due, "
	    "amount_paid = EXCLUDED.amount_paid, "
	    "amount_remaining = EXCLUDED.amount_remaining, "
	    "subtotal = EXCLUDED.subtotal, total = EXCLUDED.total, "
	    "attempt_count = EXCLUDED.attempt_count, "
	    "period_start = EXCLUDED.period_start, "
	    "period_end = EXCLUDED.period_end, "
	    "due_date = EXCLUDED.due_date, "
	    "next_payment_attempt = EXCLUDED.next_payment_attempt, "
	    "paid_at = EXCLUDED.paid_at, "
	    "payment_failed_at = coalesce(EXCLUDED.payment_failed_at, "
	    "  i.payment_failed_at), "
	    "as_of = EXCLUDED.as_of, as_of_rank = EXCLUDED.as_of_rank, "
	    "last_event_id = EXCLUDED.last_event_id, updated_at = now() "
	    "WHERE (i.as_of, i.as_of_rank) < "
	    "(EXCLUDED.as_of, EXCLUDED.as_of_rank) RETURNING 1",
	    24, t->id, id, tally_stripe_jid(inv, "customer"),
	    tally_stripe_invoice_subscription(inv),
	    tally_stripe_jstr(inv, "number"), tally_stripe_jstr(inv, "status"),
	    tally_stripe_jstr(inv, "billing_reason"),
	    tally_stripe_jstr(inv, "currency"),
	    tally_ss__jnum(due, inv, "amount_due") ? due : "0",
	    tally_ss__jnum(paid, inv, "amount_paid") ? paid : "0",
	    tally_ss__jnum(rem, inv, "amount_remaining") ? rem : "0",
	    tally_ss__jnum(sub, inv, "subtotal"),
	    tally_ss__jnum(tot, inv, "total"),
	    tally_ss__jnum(att, inv, "attempt_count"),
	    tally_ss__jnum(ps, inv, "period_start"),
	    tally_ss__jnum(pe, inv, "period_end"),
	    tally_ss__jnum(dd, inv, "due_date"),
	    tally_ss__jnum(npa, inv, "next_payment_attempt"),
	    tally_ss__jnum(pat, json_object_get(inv, "status_transitions"),
			   "paid_at"),
	    failed_event ? tally_ss__i64s(fa, as_of) : NULL,
	    tally_ss__jnum(cr, inv, "created"), tally_ss__i64s(asb, as_of),
	    tally_ss__i64s(rb, rank), event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc == 0)
		rc = tally_ss__close_period(ss, t, inv, id, err);
	if (rc != 0 || !*applied)
		return rc;
	lines = all_lines ? all_lines : tally_ss__jpath(inv, "lines", "data");
	if (json_is_array(lines))
		rc = mirror_lines(ss, t, id, lines, err);
	return rc;
}

int tally_ss__invoice_event(ss_event *x, ss_tenant *t, bool *applied,
			    tally_error *err)
{
	bool failed = strcmp(x->type, "invoice.payment_failed") == 0;
	int rc;

	if (strcmp(x->type, "invoice.upcoming") == 0) {
		x->outcome = "ignored";
		return 0;
	}
	rc = tally_ss__mirror_invoice(x->ss, t, x->obj, x->created,
				      tally_stripe_invoice_rank(x->obj), x->id,
				      failed, x->lines, applied, err);
	if (rc == 0 && *applied)
		rc = tally_ss__invoice_dunning(x->ss, t, x->obj, x->type,
					       x->created, x->id, err);
	return rc;
}
