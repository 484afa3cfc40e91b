/*
 * sync_tenants.c - tenant rows as the Stripe sync sees them: loading (by id
 * or Stripe customer, optionally locked), plan ranks, status transitions
 * (recorded once per cause, signalled) and open failed invoices.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char tenant_cols[] =
	"SELECT t.id::text, t.name, t.slug, t.status, t.subscription_plan, "
	"p.rank, coalesce(t.stripe_customer_id, ''), "
	"coalesce(t.stripe_subscription_id, ''), "
	"coalesce(t.billing_email, '') "
	"FROM tenants t JOIN plans p ON p.id = t.subscription_plan ";

static void tenant_from_row(ss_tenant *t, PGresult *res)
{
	int64_t rank = 0;

	t->found = true;
	tally_ss__cpy(t->id, sizeof(t->id), PQgetvalue(res, 0, 0));
	tally_ss__cpy(t->name, sizeof(t->name), PQgetvalue(res, 0, 1));
	tally_ss__cpy(t->slug, sizeof(t->slug), PQgetvalue(res, 0, 2));
	tally_ss__cpy(t->status, sizeof(t->status), PQgetvalue(res, 0, 3));
	tally_ss__cpy(t->plan, sizeof(t->plan), PQgetvalue(res, 0, 4));
	if (tally_parse_i64(&rank, PQgetvalue(res, 0, 5)) != 0)
		rank = 0;
	t->rank = (int)rank;
	tally_ss__cpy(t->customer, sizeof(t->customer), PQgetvalue(res, 0, 6));
	tally_ss__cpy(t->subscription, sizeof(t->subscription),
		      PQgetvalue(res, 0, 7));
	tally_ss__cpy(t->email, sizeof(t->email), PQgetvalue(res, 0, 8));
}

/* where: "WHERE t.id = $1" etc. lock: append FOR UPDATE OF t. */
int tally_ss__tenant_load(tally_stripe_sync *ss, ss_tenant *t,
			  const char *where, const char *arg, bool lock,
			  tally_error *err)
{
	char sql[512];
	PGresult *res = NULL;
	int rc;

	memset(t, 0, sizeof(*t));
	snprintf(sql, sizeof(sql), "%s%s%s", tenant_cols, where,
		 lock ? " FOR UPDATE OF t" : "");
	rc = tally_ss__ex(ss, &res, err, sql, 1, arg);
	if (rc == 0 && PQntuples(res) == 1)
		tenant_from_row(t, res);
	PQclear(res);
	return rc;
}

int tally_ss__rank_of(tally_stripe_sync *ss, const char *plan, int *out,
		   tally_error *err)
{
	PGresult *res = NULL;
	int64_t r = 0;
	int rc;

	*out = 0;
	rc = tally_ss__ex(ss, &res, err, "SELECT rank FROM plans WHERE id = $1",
			  1, plan);
	if (rc == 0 && PQntuples(res) == 1 &&
	    tally_parse_i64(&r, PQgetvalue(res, 0, 0)) == 0)
		*out = (int)r;
	PQclear(res);
	return rc;
}

/*
 * Move a tenant to status `to`, once per (cause, to): records the
 * transition, updates tenants (past_due_since, cancelled_at) and signals it.
 */
int tally_ss__transition(tally_stripe_sync *ss, ss_tenant *t, const char *to,
		      const char *reason, const char *cause, int64_t at_s,
		      tally_error *err)
{
	PGresult *res = NULL;
	ss_numbuf at;
	bool inserted;
	int rc;

	if (strcmp(t->status, to) == 0)
		return 0;
	tally_ss__i64s(at, at_s);
	rc = tally_ss__ex(ss, &res, err,
		"INSERT INTO tenant_status_transitions (tenant_id, from_status,"
		" to_status, reason, cause, stripe_time) VALUES ($1, $2, $3, "
		"$4, $5, to_timestamp($6::bigint)) ON CONFLICT DO NOTHING "
		"RETURNING id", 6, t->id, t->status, to, reason, cause, at);
	inserted = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0 || !inserted)
		return rc;
	rc = tally_ss__ex(ss, NULL, err,
		"UPDATE tenants SET status = $2::text, updated_at = now(), "
		"past_due_since = CASE WHEN $2::text = 'past_due' THEN "
		"  coalesce(past_due_since, to_timestamp($3::bigint)) "
		"  WHEN $2::text IN ('active', 'trialing') THEN NULL "
		"  ELSE past_due_since END, "
		"cancelled_at = CASE WHEN $2::text = 'cancelled' THEN "
		"  coalesce(cancelled_at, to_timestamp($3::bigint)) "
		"  ELSE cancelled_at END WHERE id = $1", 3, t->id, to, at);
	if (rc == 0) {
		bool dunning = strcmp(reason, "payment_failed") == 0 ||
			       strcmp(reason, "auto_suspend") == 0;

		rc = tally_ss__signal_emit(ss, t->id, dunning ? "dunning"
						    : "status_changed",
				 cause, at_s,
				 json_pack("{s:s, s:s, s:s}", "status_from",
					   t->status, "status_to", to,
					   "reason", reason), err);
	}
	if (rc == 0) {
		tally_log(TALLY_INFO, "stripe.tenant_status",
			  TALLY_KV_STR("tenant_id", t->id),
			  TALLY_KV_STR("from", t->status),
			  TALLY_KV_STR("to", to),
			  TALLY_KV_STR("reason", reason));
		tally_ss__cpy(t->status, sizeof(t->status), to);
	}
	return rc;
}

/* Open invoices whose payment failed and that are still unpaid. */
int tally_ss__failed_open_invoices(tally_stripe_sync *ss, const char *tenant_id,
				const char *except, int64_t *n,
				tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	*n = 0;
	rc = tally_ss__ex(ss, &res, err,
		"SELECT count(*) FROM invoices WHERE tenant_id = $1 AND "
		"status = 'open' AND payment_failed_at IS NOT NULL AND "
		"invoice_id <> $2", 2, tenant_id, except ? except : "");
	if (rc == 0 && tally_parse_i64(n, PQgetvalue(res, 0, 0)) != 0)
		*n = 0;
	PQclear(res);
	return rc;
}
