/*
 * fuzz_stripe_event.c - libFuzzer target for the pure part of tally-stripe's
 * webhook handling (include/tally/stripe_event.h): the event envelope, the
 * family of its type and the version ranks and fields the mirrors take
 * from data.object. A body is rejected or parsed into an envelope whose
 * every field holds what the header promises; ranks stay in their ranges.
 * Run: tests/fuzz/run.sh 60 stripe_event
 */
#include "fuzz.h"
#include "tally/stripe_event.h"

static void object_fields(const tally_stripe_event *ev)
{
	const char *status = tally_stripe_jstr(ev->obj, "status");
	const char *s;
	int r;

	(void)tally_stripe_jid(ev->obj, "customer");
	(void)tally_stripe_jid(ev->obj, "charge");
	switch (ev->family) {
	case TALLY_STRIPE_EVENT_SUBSCRIPTION:
		r = tally_stripe_subscription_event_rank(ev->type);
		if (r != 0 && r != 1 && r != 3)
			abort();
		s = tally_stripe_tenant_status_for(status);
		if (s != NULL && status == NULL)
			abort();
		break;
	case TALLY_STRIPE_EVENT_INVOICE:
		r = tally_stripe_invoice_rank(ev->obj);
		if (r < 0 || r > 300)
			abort();
		s = tally_stripe_invoice_subscription(ev->obj);
		if (s != NULL && strlen(s) > 1u << 24)
			abort();
		break;
	case TALLY_STRIPE_EVENT_PAYMENT:
		r = tally_stripe_payment_rank(ev->object, status, ev->type);
		if (r < 0 || r > 6)
			abort();
		break;
	case TALLY_STRIPE_EVENT_CUSTOMER:
	case TALLY_STRIPE_EVENT_IGNORED:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tally_stripe_event ev;

	if (tally_stripe_event_parse(&ev, (const char *)data, size) != 0) {
		if (ev.root != NULL)
			abort();
		return 0;
	}
	if (ev.id == NULL || ev.type == NULL || ev.object == NULL ||
	    !json_is_object(ev.obj) || ev.created <= 0 ||
	    ev.family != tally_stripe_event_family(ev.type))
		abort();
	object_fields(&ev);
	tally_stripe_event_free(&ev);
	if (ev.root != NULL)
		abort();
	return 0;
}
