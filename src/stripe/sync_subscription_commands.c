/*
 * sync_subscription_commands.c - the commands that act on a tenant's
 * subscription: create, change plan (now, or at the period end through a
 * subscription schedule), cancel, and sync from Stripe.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tally_ss__do_create_subscription(ss_cmd *c, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	const char *price = tally_ss__price_for_plan(ss, c->plan);
	int64_t trial = c->cmd->trial_days;
	int64_t maxd = tally_config_int(ss->cfg, "stripe.max_trial_days");
	json_t *p = NULL, *sub = NULL, *pm = NULL;
	bool done = false;
	int rc;

	if (*price == '\0')
		return tally_ss__fail_done(c, "price_not_configured",
				"no Stripe price configured for the plan", err);
	if (trial < 0)
		trial = tally_config_int(ss->cfg, "stripe.default_trial_days");
	if (trial > maxd)
		trial = maxd;
	rc = tally_ss__step_done(c, "subscription", &done, err);
	if (rc != 0)
		return rc;
	if (!done && c->t.subscription[0] &&
	    strcmp(c->t.status, "cancelled") != 0)
		return tally_ss__fail_done(c, "subscription_exists",
				"tenant already has a subscription", err);
	rc = tally_ss__ensure_customer(c, err);
	if (rc != 0)
		return rc;
	if (c->pm[0]) {
		char path[320];

		snprintf(path, sizeof(path), "/v1/payment_methods/%s/attach",
			 c->pm);
		p = json_pack("{s:s}", "customer", c->t.customer);
		rc = tally_ss__step_post(c, "attach", "POST", path, p,
			       "/v1/payment_methods/", &pm, err);
		json_decref(p);
		json_decref(pm);
		if (rc != 0)
			return rc;
	}
	p = json_pack("{s:s, s:[{s:s, s:i}], s:{s:s, s:s, s:s}}",
		      "customer", c->t.customer, "items", "price", price,
		      "quantity", 1, "metadata", "tenant_id", c->tenant_id,
		      "plan", c->plan, "command_id", c->id);
	if (trial > 0)
		json_object_set_new(p, "trial_period_days",
				    json_integer(trial));
	if (c->pm[0])
		json_object_set_new(p, "default_payment_method",
				    json_string(c->pm));
	rc = tally_ss__step_post(c, "subscription", "POST", "/v1/subscriptions",
				 p, "/v1/subscriptions/", &sub, err);
	json_decref(p);
	if (rc != 0)
		return rc;
	/* the tenant adopts this subscription (even replacing a cancelled) */
	c->t.subscription[0] = '\0';
	rc = tally_ss__adopt_subscription(c, sub, err);
	if (rc == 0) {
		tally_ss__cpy(c->object_id, sizeof(c->object_id),
		    tally_stripe_jstr(sub, "id"));
		c->result = json_pack("{s:s, s:s, s:s?, s:I}",
				      "subscription_id", c->object_id,
				      "customer_id", c->t.customer, "status",
				      tally_stripe_jstr(sub, "status"),
				      "trial_days", (json_int_t)trial);
	}
	json_decref(sub);
	return rc;
}

static int get_subscription(ss_cmd *c, json_t **sub, tally_error *err)
{
	char path[300];
	json_t *params;
	int rc;

	snprintf(path, sizeof(path), "/v1/subscriptions/%s",
		 c->t.subscription);
	/* its discounts as objects: the subscription's version records them */
	params = json_pack("{s:[s,s]}", "expand", "discounts",
			   "items.data.discounts");
	rc = tally_stripe_request(c->ss->stripe, sub, "GET", path, params,
				  NULL, &c->se, err);
	json_decref(params);
	return rc != 0 ? tally_ss__cmd_stripe_error(c, rc, err) : 0;
}

/* An upgrade (or a downgrade the command wants now): the item's price is
 * switched with the command's proration. */
static int change_now(ss_cmd *c, const ss_sub_view *v, const char *price,
		      tally_error *err)
{
	const char *proration = tally_ss__proration_name(c->cmd->proration);
	json_t *p, *out = NULL;
	char path[320];
	int rc;

	snprintf(path, sizeof(path), "/v1/subscriptions/%s",
		 c->t.subscription);
	p = json_pack("{s:[{s:s, s:s}], s:s, s:{s:s}}", "items", "id",
		      v->item, "price", price, "proration_behavior",
		      proration, "metadata", "plan", c->plan);
	rc = tally_ss__step_post(c, "change", "POST", path, p,
				 "/v1/subscriptions/", &out, err);
	if (rc == 0) {
		rc = tally_ss__adopt_subscription(c, out, err);
		c->result = json_pack("{s:s, s:s, s:s, s:b}", "plan_from",
				      c->t.plan, "plan_to", c->plan,
				      "proration", proration, "immediate", 1);
	}
	json_decref(p);
	json_decref(out);
	return rc;
}

/* A downgrade at the period end: a subscription schedule whose second
 * phase switches the price, then releases; signalled now. */
static int change_at_period_end(ss_cmd *c, const json_t *sub,
				const ss_sub_view *v, const char *price,
				tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	const char *sched = tally_stripe_jid(sub, "schedule");
	json_t *p, *s2 = NULL, *out = NULL;
	char path[320], cause[512];
	int rc;

	if (sched == NULL) {
		p = json_pack("{s:s}", "from_subscription", c->t.subscription);
		rc = tally_ss__step_post(c, "schedule", "POST",
					 "/v1/subscription_schedules", p,
					 "/v1/subscription_schedules/", &s2,
					 err);
		json_decref(p);
		if (rc != 0)
			return rc;
		sched = tally_stripe_jstr(s2, "id");
	}
	snprintf(path, sizeof(path), "/v1/subscription_schedules/%s",
		 sched ? sched : "");
	p = json_pack("{s:s, s:[{s:[{s:s, s:i}], s:I, s:I},"
		      " {s:[{s:s, s:i}], s:i, s:s}]}",
		      "end_behavior", "release", "phases",
		      "items", "price", v->price, "quantity", 1,
		      "start_date", (json_int_t)tally_ss__to_i64(v->pcps),
		      "end_date", (json_int_t)v->cpe_s,
		      "items", "price", price, "quantity", 1,
		      "iterations", 1, "proration_behavior", "none");
	json_decref(s2);
	rc = tally_ss__step_post(c, "phases", "POST", path, p,
				 "/v1/subscription_schedules/", &out, err);
	json_decref(p);
	if (rc != 0)
		return rc;
	snprintf(cause, sizeof(cause), "downgrade:%s:%s:scheduled:%s",
		 c->t.subscription, c->plan, c->id);
	rc = tally_ss__signal_emit(ss, c->tenant_id, "downgrade", cause,
		tally_ss__now_ms(ss) / 1000, json_pack(
		"{s:s, s:s, s:s, s:b, s:I}", "plan_from",
		c->t.plan, "plan_to", c->plan,
		"subscription_id", c->t.subscription,
		"at_period_end", 1, "effective_at",
		(json_int_t)v->cpe_s), err);
	c->result = json_pack("{s:s, s:s, s:b, s:I, s:s?}",
			      "plan_from", c->t.plan, "plan_to",
			      c->plan, "at_period_end", 1,
			      "effective_at", (json_int_t)v->cpe_s,
			      "schedule_id", tally_stripe_jstr(out, "id"));
	json_decref(out);
	return rc;
}

int tally_ss__do_change_plan(ss_cmd *c, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	const char *price = tally_ss__price_for_plan(ss, c->plan);
	json_t *sub = NULL;
	ss_sub_view v;
	int rc, new_rank = 0;
	bool downgrade, at_end;

	if (*price == '\0')
		return tally_ss__fail_done(c, "price_not_configured",
				"no Stripe price configured for the plan", err);
	if (c->t.subscription[0] == '\0')
		return tally_ss__fail_done(c, "no_subscription",
				"tenant has no subscription", err);
	rc = tally_ss__rank_of(ss, c->plan, &new_rank, err);
	if (rc != 0)
		return rc;
	rc = get_subscription(c, &sub, err);
	if (rc != 0)
		return rc;
	tally_ss__sub_view_of(ss, &v, sub);
	downgrade = new_rank < c->t.rank;
	/* upgrades apply now; downgrades wait for the period end unless the
	 * command says otherwise */
	at_end = downgrade && (!c->cmd->has_at_period_end ||
			       c->cmd->at_period_end);
	if (v.item == NULL || v.price == NULL) {
		rc = tally_ss__fail_done(c, "subscription_without_items",
					 "subscription has no item", err);
	} else if (strcmp(v.price, price) == 0) {
		c->result = json_pack("{s:s, s:b}", "plan", c->plan,
				      "unchanged", 1);
		rc = tally_ss__adopt_subscription(c, sub, err);
	} else {
		rc = at_end ? change_at_period_end(c, sub, &v, price, err)
			    : change_now(c, &v, price, err);
		if (rc == 0)
			tally_ss__cpy(c->object_id, sizeof(c->object_id),
				      c->t.subscription);
	}
	json_decref(sub);
	return rc;
}

int tally_ss__do_cancel(ss_cmd *c, tally_error *err)
{
	bool at_end = !c->cmd->has_at_period_end || c->cmd->at_period_end;
	char path[320];
	json_t *p = NULL, *out = NULL;
	int rc;

	if (c->t.subscription[0] == '\0')
		return tally_ss__fail_done(c, "no_subscription",
				"tenant has no subscription", err);
	snprintf(path, sizeof(path), "/v1/subscriptions/%s",
		 c->t.subscription);
	if (at_end) {
		p = json_pack("{s:b}", "cancel_at_period_end", 1);
		rc = tally_ss__step_post(c, "cancel", "POST", path, p,
			       "/v1/subscriptions/", &out, err);
	} else {
		rc = tally_ss__step_post(c, "cancel_now", "DELETE", path, NULL,
			       "/v1/subscriptions/", &out, err);
	}
	if (rc == 0)
		rc = tally_ss__adopt_subscription(c, out, err);
	if (rc == 0 && !at_end) {
		/* whatever state the answer showed, the tenant is cancelled */
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription_cancelled:%s",
			 c->t.subscription);
		rc = tally_ss__signal_emit(
		    c->ss, c->tenant_id, "subscription_cancelled", cause,
		    tally_ss__now_ms(c->ss) / 1000,
		    json_pack("{s:s, s:b}", "subscription_id",
			      c->t.subscription, "at_period_end", 0),
		    err);
		if (rc == 0)
			rc = tally_ss__transition(
			    c->ss, &c->t, "cancelled", "command", cause,
			    tally_ss__now_ms(c->ss) / 1000, err);
	}
	if (rc == 0) {
		tally_ss__cpy(c->object_id, sizeof(c->object_id),
			      c->t.subscription);
		c->result = json_pack("{s:s, s:b}", "subscription_id",
				      c->t.subscription, "at_period_end",
				      at_end);
	}
	json_decref(p);
	json_decref(out);
	return rc;
}

static int mirror_invoice_now(json_t *inv, void *payload);

typedef struct list_ctx {
	tally_stripe_sync *ss;
	ss_tenant *t;
	tally_error *err;
	int rc;
} list_ctx;

static int mirror_invoice_now(json_t *inv, void *payload)
{
	list_ctx *l = payload;
	bool applied;

	l->rc = tally_ss__mirror_invoice(
	    l->ss, l->t, inv, tally_ss__now_ms(l->ss) / 1000,
	    tally_stripe_invoice_rank(inv), NULL, false, NULL, &applied, l->err);
	return l->rc;
}

int tally_ss__do_sync_tenant(ss_cmd *c, tally_error *err)
{
	json_t *sub = NULL, *q = NULL;
	list_ctx l = { c->ss, &c->t, err, 0 };
	int rc = 0, n = 0;

	if (c->t.subscription[0]) {
		rc = get_subscription(c, &sub, err);
		if (rc == 0)
			rc = tally_ss__adopt_subscription(c, sub, err);
		json_decref(sub);
		if (rc != 0)
			return rc;
		n++;
	}
	if (c->t.customer[0]) {
		q = json_pack("{s:s}", "customer", c->t.customer);
		rc = tally_stripe_list(c->ss->stripe, "/v1/invoices", q,
				       mirror_invoice_now, &l, &c->se, err);
		json_decref(q);
		if (rc != 0 && l.rc == 0)
			return tally_ss__cmd_stripe_error(c, rc, err);
		if (rc != 0)
			return l.rc;
	}
	tally_ss__cpy(c->object_id, sizeof(c->object_id), c->t.subscription);
	c->result = json_pack("{s:s, s:s, s:s}", "customer_id", c->t.customer,
			      "subscription_id", c->t.subscription, "status",
			      c->t.status);
	(void)n;
	return 0;
}
