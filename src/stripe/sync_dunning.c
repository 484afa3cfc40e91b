/*
 * sync_dunning.c - dunning: the tenant's status reacting to invoice payment
 * failures and recoveries, and the automatic suspension of tenants past due
 * for longer than stripe.auto_suspend_days.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Dunning reaction to a newer invoice version. */
static int invoice_dunning_(tally_stripe_sync *ss, ss_tenant *t,
			   const json_t *inv, const char *type, int64_t as_of,
			   const char *event_id, tally_error *err)
{
	const char *id = tally_stripe_jstr(inv, "id");
	const char *status = tally_stripe_jstr(inv, "status");
	char cause[300];
	ss_numbuf amt;
	int rc = 0;

	(void)event_id;
	if (strcmp(type, "invoice.payment_failed") == 0 && status &&
	    strcmp(status, "open") == 0) {
		snprintf(cause, sizeof(cause), "payment_failed:%s:%" PRId64,
			 id, tally_stripe_jint(inv, "attempt_count"));
		rc = tally_ss__signal_emit(
		    ss, t->id, "payment_failed", cause, as_of,
		    json_pack(
			"{s:s, s:s?, s:s, s:I, s:I}", "invoice_id", id,
			"subscription_id", tally_stripe_invoice_subscription(inv),
			"amount_due",
			tally_ss__jnum(amt, inv, "amount_due") ? amt : "0",
			"attempt_count",
			(json_int_t)tally_stripe_jint(inv, "attempt_count"),
			"next_payment_attempt",
			(json_int_t)tally_stripe_jint(inv,
						      "next_payment_attempt")),
		    err);
		if (rc == 0 && (strcmp(t->status, "active") == 0 ||
				strcmp(t->status, "trialing") == 0 ||
				strcmp(t->status, "incomplete") == 0)) {
			snprintf(cause, sizeof(cause), "payment_failed:%s", id);
			rc = tally_ss__transition(ss, t, "past_due",
						  "payment_failed", cause,
						  as_of, err);
		}
		return rc;
	}
	if (status && (strcmp(status, "paid") == 0 ||
		       strcmp(status, "void") == 0)) {
		int64_t open = 0;

		if (strcmp(status, "paid") == 0) {
			snprintf(cause, sizeof(cause), "paid:%s", id);
			rc = tally_ss__signal_emit(
			    ss, t->id, "payment_succeeded", cause, as_of,
			    json_pack("{s:s, s:s?, s:s}", "invoice_id", id,
				      "subscription_id",
				      tally_stripe_invoice_subscription(inv),
				      "amount_paid",
				      tally_ss__jnum(amt, inv, "amount_paid")
					  ? amt
					  : "0"),
			    err);
		}
		if (rc != 0)
			return rc;
		if (strcmp(t->status, "past_due") != 0 &&
		    strcmp(t->status, "suspended") != 0)
			return 0;
		rc = tally_ss__failed_open_invoices(ss, t->id, id, &open, err);
		if (rc != 0 || open > 0)
			return rc;
		snprintf(cause, sizeof(cause), "%s:%s", status, id);
		rc = tally_ss__transition(ss, t, "active", status, cause, as_of,
					  err);
	}
	return rc;
}

int tally_ss__invoice_dunning(tally_stripe_sync *ss, ss_tenant *t,
			   const json_t *inv, const char *type, int64_t as_of,
			   const char *event_id, tally_error *err)
{
	int rc = invoice_dunning_(ss, t, inv, type, as_of, event_id, err);

	/* past due since the oldest failure still unpaid, whatever the
	 * order in which the invoices' events arrived */
	if (rc == 0 && strcmp(t->status, "past_due") == 0)
		rc = tally_ss__ex(ss, NULL, err,
			"UPDATE tenants SET past_due_since = coalesce(("
			"SELECT min(payment_failed_at) FROM invoices WHERE "
			"tenant_id = $1 AND status = 'open' AND "
			"payment_failed_at IS NOT NULL), past_due_since) "
			"WHERE id = $1", 1, t->id);
	return rc;
}

int tally_stripe_sync_dunning(tally_stripe_sync *ss, int *n, tally_error *err)
{
	PGresult *res = NULL;
	ss_numbuf now, days;
	int rc, i, made = 0;

	if (n)
		*n = 0;
	rc = tally_ss__ex(ss, &res, err,
		"SELECT id::text, extract(epoch FROM past_due_since)::bigint "
		"FROM tenants WHERE status = 'past_due' AND past_due_since "
		"IS NOT NULL AND past_due_since <= to_timestamp($1::bigint) - "
		"make_interval(days => $2::integer)", 2,
		tally_ss__i64s(now, tally_ss__now_ms(ss) / 1000),
		tally_ss__i64s(days, tally_config_int(ss->cfg,
					    "stripe.auto_suspend_days")));
	if (rc != 0)
		goto cleanup;
	for (i = 0; i < PQntuples(res) && rc == 0; i++) {
		ss_tenant t;
		char cause[128];
		int64_t now_s = tally_ss__now_ms(ss) / 1000;

		rc = tally_ss__ex(ss, NULL, err, "BEGIN", 0);
		if (rc != 0)
			break;
		rc = tally_ss__tenant_load(ss, &t, "WHERE t.id = $1::uuid",
				 PQgetvalue(res, i, 0), true, err);
		if (rc == 0 && t.found && strcmp(t.status, "past_due") == 0) {
			snprintf(cause, sizeof(cause), "auto_suspend:%s",
				 PQgetvalue(res, i, 1));
			rc = tally_ss__transition(ss, &t, "suspended",
						  "auto_suspend", cause, now_s,
						  err);
			if (rc == 0 && strcmp(t.status, "suspended") == 0)
				made++;
		}
		if (rc == 0)
			rc = tally_ss__ex(ss, NULL, err, "COMMIT", 0);
		else {
			tally_error e2;

			(void)tally_ss__ex(ss, NULL, &e2, "ROLLBACK", 0);
		}
	}
	if (n)
		*n = made;
cleanup:
	PQclear(res);
	return rc;
}
