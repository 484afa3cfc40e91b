/*
 * stripe_event.c - a Stripe webhook event read into what tally-stripe
 * applies: the envelope, the family of its type, and the ranks that order
 * versions of the mirrored objects. No I/O: fuzzed on its own
 * (tests/fuzz/fuzz_stripe_event.c).
 */
#include "tally/stripe_event.h"

#include <string.h>

const char *tally_stripe_jstr(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

int64_t tally_stripe_jint(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

const char *tally_stripe_jid(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_object(v))
		return tally_stripe_jstr(v, "id");
	return NULL;
}

static int has_prefix(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

tally_stripe_family tally_stripe_event_family(const char *type)
{
	if (has_prefix(type, "customer.subscription."))
		return TALLY_STRIPE_EVENT_SUBSCRIPTION;
	if (has_prefix(type, "invoice."))
		return TALLY_STRIPE_EVENT_INVOICE;
	if (has_prefix(type, "payment_intent.") || has_prefix(type, "charge."))
		return TALLY_STRIPE_EVENT_PAYMENT;
	if (strcmp(type, "customer.deleted") == 0 ||
	    strcmp(type, "customer.updated") == 0 ||
	    strcmp(type, "customer.created") == 0)
		return TALLY_STRIPE_EVENT_CUSTOMER;
	return TALLY_STRIPE_EVENT_IGNORED;
}

int tally_stripe_event_parse(tally_stripe_event *ev, const char *body,
			     size_t len)
{
	const json_t *data;

	memset(ev, 0, sizeof(*ev));
	ev->root = json_loadb(body, len, 0, NULL);
	data = json_object_get(ev->root, "data");
	ev->obj = json_object_get(data, "object");
	ev->id = tally_stripe_jstr(ev->root, "id");
	ev->type = tally_stripe_jstr(ev->root, "type");
	ev->object = tally_stripe_jstr(ev->obj, "object");
	ev->created = tally_stripe_jint(ev->root, "created");
	if (ev->id == NULL || ev->type == NULL || !json_is_object(ev->obj) ||
	    ev->object == NULL || ev->created <= 0) {
		tally_stripe_event_free(ev);
		return TALLY_EINVALID;
	}
	ev->family = tally_stripe_event_family(ev->type);
	return 0;
}

void tally_stripe_event_free(tally_stripe_event *ev)
{
	json_decref(ev->root);
	memset(ev, 0, sizeof(*ev));
}

int tally_stripe_invoice_rank(const json_t *inv)
{
	const char *st = tally_stripe_jstr(inv, "status");
	int64_t attempts = tally_stripe_jint(inv, "attempt_count");

	if (attempts > 99)
		attempts = 99;
	if (st == NULL || strcmp(st, "draft") == 0)
		return 0;
	if (strcmp(st, "open") == 0)
		return 100 + (int)attempts;
	if (strcmp(st, "uncollectible") == 0)
		return 200 + (int)attempts;
	return 300; /* paid, void: final */
}

const char *tally_stripe_invoice_subscription(const json_t *inv)
{
	const char *s = tally_stripe_jid(inv, "subscription");
	const json_t *details;

	if (s == NULL) {
		details = json_object_get(json_object_get(inv, "parent"),
					  "subscription_details");
		s = tally_stripe_jstr(details, "subscription");
	}
	return s;
}

int tally_stripe_payment_rank(const char *object, const char *status,
			      const char *type)
{
	static const char *const pi[] = {
		"requires_payment_method", "requires_confirmation",
		"requires_action", "processing", "requires_capture",
		"canceled", "succeeded", NULL,
	};
	int i;

	if (strcmp(object, "payment_intent") == 0) {
		for (i = 0; status && pi[i]; i++)
			if (strcmp(pi[i], status) == 0)
				return i;
		return 0;
	}
	if (strcmp(object, "charge") == 0)
		return strcmp(type, "charge.refunded") == 0 ? 3
			: status && strcmp(status, "pending") == 0 ? 0 : 1;
	/* dispute: open states, then closed ones */
	if (status && (strcmp(status, "won") == 0 ||
		       strcmp(status, "lost") == 0))
		return 5;
	return strcmp(type, "charge.dispute.closed") == 0 ? 5 : 1;
}

int tally_stripe_subscription_event_rank(const char *type)
{
	if (strcmp(type, "customer.subscription.created") == 0)
		return 0;
	if (strcmp(type, "customer.subscription.deleted") == 0)
		return 3;
	return 1;
}

const char *tally_stripe_tenant_status_for(const char *sub_status)
{
	static const char *const map[][2] = {
		{ "trialing", "trialing" }, { "active", "active" },
		{ "past_due", "past_due" }, { "unpaid", "suspended" },
		{ "canceled", "cancelled" }, { "incomplete", "incomplete" },
		{ "incomplete_expired", "cancelled" },
		{ "paused", "suspended" },
	};
	size_t i;

	for (i = 0; sub_status && i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i][0], sub_status) == 0)
			return map[i][1];
	return NULL;
}
