/*
 * sync_subscriptions.c - the subscriptions mirror: a Stripe subscription
 * version upserted when newer than the one held, and the tenant following
 * its own subscription (plan and limits, period, trial, status, signals).
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const json_t *first_item(const json_t *o, const char *k)
{
	const json_t *d = tally_ss__jpath(o, k, "data");

	return json_is_array(d) && json_array_size(d) > 0
		? json_array_get(d, 0) : NULL;
}

void tally_ss__sub_view_of(tally_stripe_sync *ss, ss_sub_view *v,
			   const json_t *sub)
{
	const json_t *item = first_item(sub, "items");
	const json_t *md = json_object_get(sub, "metadata");

	memset(v, 0, sizeof(*v));
	v->id = tally_stripe_jstr(sub, "id");
	v->customer = tally_stripe_jid(sub, "customer");
	v->status = tally_stripe_jstr(sub, "status");
	v->item = item ? tally_stripe_jstr(item, "id") : NULL;
	v->price = item ? tally_stripe_jid(item, "price") : NULL;
	v->plan = tally_ss__plan_for_price(ss, v->price);
	if (v->plan == NULL && md)
		v->plan = tally_stripe_jstr(md, "plan");
	v->pqty = item ? tally_ss__jnum(v->qty, item, "quantity") : NULL;
	/* current_period_* moved onto items in API 2025-03-31 */
	v->pcps = tally_ss__jnum(v->cps, sub, "current_period_start");
	if (v->pcps == NULL && item)
		v->pcps = tally_ss__jnum(v->cps, item, "current_period_start");
	v->pcpe = tally_ss__jnum(v->cpe, sub, "current_period_end");
	if (v->pcpe == NULL && item)
		v->pcpe = tally_ss__jnum(v->cpe, item, "current_period_end");
	v->cpe_s = tally_ss__to_i64(v->pcpe);
	v->pts = tally_ss__jnum(v->ts, sub, "trial_start");
	v->pte = tally_ss__jnum(v->te, sub, "trial_end");
	v->pcancel_at = tally_ss__jnum(v->cancel_at, sub, "cancel_at");
	v->pcanceled_at = tally_ss__jnum(v->canceled_at, sub, "canceled_at");
	v->pended_at = tally_ss__jnum(v->ended_at, sub, "ended_at");
	v->pcreated = tally_ss__jnum(v->created, sub, "created");
	v->cancel_at_period_end =
		json_is_true(json_object_get(sub, "cancel_at_period_end"));
}

/* Upsert the subscription version in v; *applied: it was newer than the
 * one PostgreSQL held. */
static int upsert(tally_stripe_sync *ss, const ss_tenant *t,
		  const ss_sub_view *v, const json_t *sub, int64_t as_of,
		  int rank, const char *event_id, bool *applied,
		  tally_error *err)
{
	PGresult *res = NULL;
	ss_numbuf asb, rb;
	int rc;

	rc = tally_ss__ex(ss, &res, err,
		"INSERT INTO subscriptions AS s (tenant_id, subscription_id, "
		"customer_id, status, plan, price_id, item_id, quantity, "
		"currency, current_period_start, current_period_end, "
		"trial_start, trial_end, cancel_at_period_end, cancel_at, "
		"canceled_at, ended_at, stripe_created, as_of, as_of_rank, "
		"last_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, "
		"$8::bigint, upper($9), to_timestamp($10::bigint), "
		"to_timestamp($11::bigint), to_timestamp($12::bigint), "
		"to_timestamp($13::bigint), $14::boolean, "
		"to_timestamp($15::bigint), to_timestamp($16::bigint), "
		"to_timestamp($17::bigint), "
		"coalesce(to_timestamp($18::bigint), to_timestamp($19::bigint)),"
		" to_timestamp($19::bigint), $20::smallint, $21) "
		"ON CONFLICT (tenant_id, subscription_id) DO UPDATE SET "
		"customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
		"plan = EXCLUDED.plan, price_id = EXCLUDED.price_id, "
		"item_id = EXCLUDED.item_id, quantity = EXCLUDED.quantity, "
		"currency = EXCLUDED.currency, "
		"current_period_start = EXCLUDED.current_period_start, "
		"current_period_end = EXCLUDED.current_period_end, "
		"trial_start = EXCLUDED.trial_start, "
		"trial_end = EXCLUDED.trial_end, "
		"cancel_at_period_end = EXCLUDED.cancel_at_period_end, "
		"cancel_at = EXCLUDED.cancel_at, "
		"canceled_at = EXCLUDED.canceled_at, "
		"ended_at = EXCLUDED.ended_at, as_of = EXCLUDED.as_of, "
		"as_of_rank = EXCLUDED.as_of_rank, "
		"last_event_id = EXCLUDED.last_event_id, updated_at = now() "
		"WHERE (s.as_of, s.as_of_rank) < "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank) OR "
		/* an API read (rank 9) is the current object: it also
		 * replaces a read or an event of the same second */
		"(EXCLUDED.as_of_rank = 9 AND (s.as_of, s.as_of_rank) <= "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank)) RETURNING 1",
		21, t->id, v->id, v->customer, v->status, v->plan, v->price,
		v->item, v->pqty, tally_stripe_jstr(sub, "currency"), v->pcps,
		v->pcpe, v->pts, v->pte, v->cancel_at_period_end ? "true"
							      : "false",
		v->pcancel_at, v->pcanceled_at, v->pended_at, v->pcreated,
		tally_ss__i64s(asb, as_of), tally_ss__i64s(rb, rank), event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

/* The tenant follows its subscription: plan and limits, period, trial;
 * a lower-ranked plan is signalled as a downgrade. */
static int tenant_follows(tally_stripe_sync *ss, ss_tenant *t,
			  const ss_sub_view *v, int64_t as_of,
			  tally_error *err)
{
	ss_numbuf asb;
	int rc, new_rank = 0;

	if (v->plan) {
		rc = tally_ss__rank_of(ss, v->plan, &new_rank, err);
		if (rc != 0)
			return rc;
	}
	tally_ss__i64s(asb, as_of);
	rc = tally_ss__ex(ss, NULL, err,
		"UPDATE tenants t SET stripe_subscription_id = $2, "
		"stripe_customer_id = coalesce(t.stripe_customer_id, $3), "
		"subscription_plan = p.id, "
		"max_users = coalesce(p.max_users, -1), "
		"max_workflows = coalesce(p.max_workflows, -1), "
		"max_ai_requests_per_month = p.max_ai_requests_per_month, "
		"monthly_budget = CASE WHEN t.subscription_plan <> p.id "
		"  THEN p.monthly_price ELSE t.monthly_budget END, "
		"current_period_start = to_timestamp($5::bigint), "
		"current_period_end = to_timestamp($6::bigint), "
		"trial_end = to_timestamp($7::bigint), "
		"cancel_at_period_end = $8::boolean, "
		"stripe_updated_at = greatest(t.stripe_updated_at, "
		"  to_timestamp($9::bigint)), updated_at = now() "
		"FROM plans p WHERE t.id = $1 AND "
		"p.id = coalesce($4, t.subscription_plan)",
		9, t->id, v->id, v->customer, v->plan, v->pcps, v->pcpe, v->pte,
		v->cancel_at_period_end ? "true" : "false", asb);
	if (rc != 0)
		return rc;
	tally_ss__cpy(t->subscription, sizeof(t->subscription), v->id);
	if (v->plan && new_rank > 0 && new_rank < t->rank) {
		char cause[512];

		snprintf(cause, sizeof(cause), "downgrade:%s:%s:%" PRId64,
			 v->id, v->plan, as_of);
		rc = tally_ss__signal_emit(ss, t->id, "downgrade", cause, as_of,
				 json_pack("{s:s, s:s, s:s}", "plan_from",
					   t->plan, "plan_to", v->plan,
					   "subscription_id", v->id), err);
		if (rc != 0)
			return rc;
	}
	if (v->plan) {
		tally_ss__cpy(t->plan, sizeof(t->plan), v->plan);
		t->rank = new_rank;
	}
	return 0;
}

/* The tenant's status follows the subscription's; cancellations are
 * signalled. Dunning keeps past_due/suspended while failed invoices are
 * open. */
static int status_follows(tally_stripe_sync *ss, ss_tenant *t,
			  const ss_sub_view *v, int64_t as_of,
			  tally_error *err)
{
	const char *tstatus;
	int rc;

	if (v->cancel_at_period_end && strcmp(v->status, "canceled") != 0) {
		char cause[300];

		snprintf(cause, sizeof(cause), "cancel_at_period_end:%s",
			 v->id);
		rc = tally_ss__signal_emit(
		    ss, t->id, "subscription_cancelled", cause, as_of,
		    json_pack("{s:s, s:b, s:I}", "subscription_id", v->id,
			      "at_period_end", 1, "effective_at",
			      (json_int_t)v->cpe_s),
		    err);
		if (rc != 0)
			return rc;
	}
	tstatus = tally_stripe_tenant_status_for(v->status);
	if (tstatus == NULL)
		return 0;
	if (strcmp(tstatus, "cancelled") == 0) {
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription_cancelled:%s",
			 v->id);
		rc = tally_ss__signal_emit(
		    ss, t->id, "subscription_cancelled", cause, as_of,
		    json_pack("{s:s, s:b}", "subscription_id", v->id,
			      "at_period_end", 0),
		    err);
		if (rc == 0)
			rc = tally_ss__transition(ss, t, "cancelled",
						  "subscription", cause, as_of,
						  err);
		return rc;
	}
	/* dunning owns past_due/suspended while failed invoices are open */
	if ((strcmp(tstatus, "active") == 0 ||
	     strcmp(tstatus, "trialing") == 0) &&
	    (strcmp(t->status, "past_due") == 0 ||
	     strcmp(t->status, "suspended") == 0)) {
		int64_t open = 0;

		rc =
		    tally_ss__failed_open_invoices(ss, t->id, NULL, &open, err);
		if (rc != 0 || open > 0)
			return rc;
	}
	if (strcmp(tstatus, "past_due") == 0 &&
	    strcmp(t->status, "suspended") == 0)
		return 0;
	{
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription:%s:%s:%" PRId64,
			 v->id, v->status, as_of);
		rc = tally_ss__transition(ss, t, tstatus, "subscription", cause,
					  as_of, err);
	}
	return rc;
}

/*
 * Upsert a subscription version; *applied tells whether it was newer than
 * what PostgreSQL held. When applied and it is the tenant's subscription,
 * the tenant follows: plan (and limits), period, trial, status.
 */
int tally_ss__mirror_subscription(tally_stripe_sync *ss, ss_tenant *t,
				  const json_t *sub, int64_t as_of, int rank,
				  const char *event_id, bool *applied,
				  tally_error *err)
{
	ss_sub_view v;
	int rc;

	*applied = false;
	tally_ss__sub_view_of(ss, &v, sub);
	if (v.id == NULL || v.customer == NULL || v.status == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "subscription without id/customer");
	rc = upsert(ss, t, &v, sub, as_of, rank, event_id, applied, err);
	if (rc == 0)
		rc = tally_ss__record_sub_version(ss, t, sub, as_of, rank, err);
	if (rc != 0 || !*applied)
		return rc;
	/* the tenant follows its own subscription only */
	if (t->subscription[0] && strcmp(t->subscription, v.id) != 0)
		return 0;
	rc = tenant_follows(ss, t, &v, as_of, err);
	if (rc == 0)
		rc = status_follows(ss, t, &v, as_of, err);
	return rc;
}

int tally_ss__subscription_event(ss_event *x, ss_tenant *t, bool *applied,
				 tally_error *err)
{
	char cause[300];
	ss_numbuf te;
	int rc;

	rc = tally_ss__mirror_subscription(x->ss, t, x->obj, x->created,
					   tally_stripe_subscription_event_rank(x->type), x->id,
					   applied, err);
	/* facts are signalled even when the state is stale */
	if (rc != 0 ||
	    strcmp(x->type, "customer.subscription.trial_will_end") != 0)
		return rc;
	snprintf(cause, sizeof(cause), "trial_will_end:%s:%s",
		 tally_stripe_jstr(x->obj, "id"),
		 tally_ss__jnum(te, x->obj, "trial_end") ? te : "");
	return tally_ss__signal_emit(x->ss, t->id, "trial_ending", cause,
		x->created, json_pack("{s:s, s:I}", "subscription_id",
		tally_stripe_jstr(x->obj, "id"), "trial_end",
		(json_int_t)tally_stripe_jint(x->obj, "trial_end")), err);
}
