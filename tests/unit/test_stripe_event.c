/*
 * test_stripe_event.c - a Stripe webhook body read into what tally-stripe
 * applies (tally/stripe_event.h): the envelope of every fixture event,
 * the bodies refused, the family of each type and the version ranks.
 * Pure: links tally_pure alone.
 */
#include "check_main.h"
#include "tally/stripe_event.h"

#include <string.h>

#define EVENTS TALLY_SOURCE_DIR "/tests/fixtures/stripe/events.json"

static int parse_str(tally_stripe_event *ev, const char *body)
{
	return tally_stripe_event_parse(ev, body, strlen(body));
}

START_TEST(test_stripe_event_fixtures)
{
	json_error_t jerr;
	json_t *all = json_load_file(EVENTS, 0, &jerr), *e;
	size_t i;

	ck_assert_msg(json_is_array(all), "%s: %s", EVENTS, jerr.text);
	json_array_foreach(all, i, e) {
		char *body = json_dumps(e, JSON_COMPACT);
		tally_stripe_event ev;
		const char *type = json_string_value(json_object_get(e, "type"));

		ck_assert_int_eq(parse_str(&ev, body), 0);
		ck_assert_str_eq(ev.type, type);
		ck_assert_ptr_nonnull(ev.id);
		ck_assert(ev.created > 0);
		ck_assert(json_is_object(ev.obj));
		ck_assert_int_ne(ev.family, TALLY_STRIPE_EVENT_IGNORED);
		if (strncmp(type, "invoice.", 8) == 0) {
			ck_assert_int_eq(ev.family, TALLY_STRIPE_EVENT_INVOICE);
			ck_assert_str_eq(ev.object, "invoice");
		}
		tally_stripe_event_free(&ev);
		ck_assert_ptr_null(ev.root);
		free(body);
	}
	json_decref(all);
}
END_TEST

START_TEST(test_stripe_event_refused)
{
	static const char *const bad[] = {
		"",
		"not json",
		"[]",
		"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1}",
		"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
		"\"data\":{\"object\":[]}}",
		"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,"
		"\"data\":{\"object\":{\"id\":\"in_1\"}}}",
		"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":0,"
		"\"data\":{\"object\":{\"object\":\"invoice\"}}}",
		"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":\"1\","
		"\"data\":{\"object\":{\"object\":\"invoice\"}}}",
		"{\"id\":1,\"type\":\"invoice.paid\",\"created\":1,"
		"\"data\":{\"object\":{\"object\":\"invoice\"}}}",
		"{\"id\":\"evt_1\",\"type\":null,\"created\":1,"
		"\"data\":{\"object\":{\"object\":\"invoice\"}}}",
	};
	tally_stripe_event ev;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(parse_str(&ev, bad[i]) == TALLY_EINVALID,
			      "accepted: %s", bad[i]);
		ck_assert_ptr_null(ev.root);
	}
}
END_TEST

START_TEST(test_stripe_event_families)
{
	ck_assert_int_eq(tally_stripe_event_family("customer.subscription.paused"),
			 TALLY_STRIPE_EVENT_SUBSCRIPTION);
	ck_assert_int_eq(tally_stripe_event_family("invoice.upcoming"),
			 TALLY_STRIPE_EVENT_INVOICE);
	ck_assert_int_eq(tally_stripe_event_family("charge.dispute.created"),
			 TALLY_STRIPE_EVENT_PAYMENT);
	ck_assert_int_eq(tally_stripe_event_family("payment_intent.succeeded"),
			 TALLY_STRIPE_EVENT_PAYMENT);
	ck_assert_int_eq(tally_stripe_event_family("customer.updated"),
			 TALLY_STRIPE_EVENT_CUSTOMER);
	ck_assert_int_eq(tally_stripe_event_family("customer.discount.created"),
			 TALLY_STRIPE_EVENT_IGNORED);
	ck_assert_int_eq(tally_stripe_event_family("invoice"),
			 TALLY_STRIPE_EVENT_IGNORED);
	ck_assert_int_eq(tally_stripe_event_family(""),
			 TALLY_STRIPE_EVENT_IGNORED);
}
END_TEST

START_TEST(test_stripe_event_ranks)
{
	json_t *draft = json_pack("{s:s}", "status", "draft");
	json_t *open2 = json_pack("{s:s,s:i}", "status", "open",
				  "attempt_count", 2);
	json_t *bad = json_pack("{s:s,s:i}", "status", "uncollectible",
				"attempt_count", 1000);
	json_t *paid = json_pack("{s:s,s:{s:{s:s}}}", "status", "paid",
				 "parent", "subscription_details",
				 "subscription", "sub_1");

	ck_assert_int_eq(tally_stripe_invoice_rank(draft), 0);
	ck_assert_int_eq(tally_stripe_invoice_rank(open2), 102);
	ck_assert_int_eq(tally_stripe_invoice_rank(bad), 299);
	ck_assert_int_eq(tally_stripe_invoice_rank(paid), 300);
	ck_assert_str_eq(tally_stripe_invoice_subscription(paid), "sub_1");
	ck_assert_ptr_null(tally_stripe_invoice_subscription(draft));
	ck_assert_int_lt(tally_stripe_payment_rank("payment_intent", "processing",
						   "payment_intent.processing"),
			 tally_stripe_payment_rank("payment_intent", "succeeded",
						   "payment_intent.succeeded"));
	ck_assert_int_eq(tally_stripe_payment_rank("dispute", "lost",
						   "charge.dispute.updated"), 5);
	ck_assert_int_eq(tally_stripe_subscription_event_rank(
				 "customer.subscription.deleted"), 3);
	ck_assert_str_eq(tally_stripe_tenant_status_for("unpaid"), "suspended");
	ck_assert_ptr_null(tally_stripe_tenant_status_for("nonsense"));
	ck_assert_ptr_null(tally_stripe_tenant_status_for(NULL));
	json_decref(draft);
	json_decref(open2);
	json_decref(bad);
	json_decref(paid);
}
END_TEST

static Suite *tally_stripe_event_suite(void)
{
	Suite *s = suite_create("stripe_event");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_stripe_event_fixtures);
	tcase_add_test(tc, test_stripe_event_refused);
	tcase_add_test(tc, test_stripe_event_families);
	tcase_add_test(tc, test_stripe_event_ranks);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_event_suite)
