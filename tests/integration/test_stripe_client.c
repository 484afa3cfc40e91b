/*
 * test_stripe_client.c - the Stripe client against stripe-mock (ops/services):
 * each request passes stripe-mock's OpenAPI validation and the answer is
 * parsed; Stripe's error object is surfaced; lists are paged; the secret
 * key never shows up in an error.
 */
#include "check_main.h"
#include "tally/stripe.h"

#include <stdlib.h>
#include <string.h>

static tally_stripe *client(void)
{
	tally_stripe_opts o = { 0 };
	tally_stripe *s = NULL;
	tally_error err;

	o.api_base = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	o.secret_key = getenv("STRIPE_SECRET_KEY") ? getenv("STRIPE_SECRET_KEY")
						   : "sk_test_123";
	o.api_version = "2024-06-20";
	o.timeout_ms = 10000;
	o.max_retries = 2;
	o.backoff_base_ms = 10;
	ck_assert_msg(tally_stripe_new(&s, &o, &err) == 0, "client: %s",
		      err.msg);
	return s;
}

START_TEST(test_stripe_client_create_and_get_customer)
{
	tally_stripe *s = client();
	json_t *p, *cus = NULL, *got = NULL;
	tally_stripe_error se;
	tally_error err;
	char key[256];
	int rc;

	p = json_pack("{s:s, s:{s:s, s:s}, s:[s]}", "name", "Acme Corp",
		      "metadata", "tenant_id",
		      "6f1c1b8e-3d55-4a8e-9a4e-0c5b3a4a2f10", "slug", "acme",
		      "expand", "tax");
	tally_stripe_idempotency_key(key, "cmd", "client-test-1", "customer");
	rc = tally_stripe_request(s, &cus, "POST", "/v1/customers", p, key,
				  &se, &err);
	ck_assert_msg(rc == 0, "POST /v1/customers should pass validation: %s",
		      err.msg);
	ck_assert_msg(strncmp(tally_stripe_jstr(cus, "id"), "cus_", 4) == 0,
		      "a customer id starts with cus_");
	ck_assert_str_eq(tally_stripe_jstr(cus, "object"), "customer");
	ck_assert_str_eq(se.request_id, "req_123");

	rc = tally_stripe_request(s, &got, "GET", "/v1/customers/cus_test42",
				  NULL, NULL, &se, &err);
	ck_assert_msg(rc == 0, "GET customer: %s", err.msg);
	ck_assert_str_eq(tally_stripe_jstr(got, "id"), "cus_test42");
	ck_assert_uint_eq(tally_stripe_requests_sent(s), 2);
	json_decref(p);
	json_decref(cus);
	json_decref(got);
	tally_stripe_free(s);
}
END_TEST

START_TEST(test_stripe_client_error_object)
{
	tally_stripe *s = client();
	json_t *p = json_pack("{s:s}", "not_a_stripe_param", "x");
	tally_stripe_error se;
	tally_error err;
	int rc;

	rc = tally_stripe_request(s, NULL, "POST", "/v1/customers", p,
				  "tally-test-bad-param", &se, &err);
	ck_assert_msg(rc == TALLY_EINVALID,
		      "a 400 from Stripe is final (EINVALID), got %d", rc);
	ck_assert_int_eq(se.http_status, 400);
	ck_assert_str_eq(se.type, "invalid_request_error");
	ck_assert_msg(se.message[0] != '\0', "Stripe's message is surfaced");
	ck_assert_int_eq(se.attempts, 1);
	ck_assert_msg(strstr(err.msg, "invalid_request_error") != NULL,
		      "error text names the Stripe error type: %s", err.msg);
	ck_assert_msg(strstr(err.msg, "sk_test") == NULL,
		      "the secret key must never be in an error");

	rc = tally_stripe_request(s, NULL, "GET", "/v1/no_such_thing", NULL,
				  NULL, &se, &err);
	ck_assert_msg(rc == TALLY_ENOTFOUND, "404 is ENOTFOUND, got %d", rc);
	json_decref(p);
	tally_stripe_free(s);
}
END_TEST

static int count_obj(json_t *obj, void *payload)
{
	int *n = payload;

	ck_assert_msg(tally_stripe_jstr(obj, "id") != NULL,
		      "list items have ids");
	(*n)++;
	return 0;
}

START_TEST(test_stripe_client_list)
{
	tally_stripe *s = client();
	json_t *q = json_pack("{s:s}", "status", "all");
	tally_stripe_error se;
	tally_error err;
	int n = 0, rc;

	rc = tally_stripe_list(s, "/v1/subscriptions", q, count_obj, &n, &se,
			       &err);
	ck_assert_msg(rc == 0, "list subscriptions: %s", err.msg);
	ck_assert_msg(n >= 1, "stripe-mock lists at least one subscription");
	n = 0;
	rc = tally_stripe_list(s, "/v1/invoices", NULL, count_obj, &n, &se,
			       &err);
	ck_assert_msg(rc == 0, "list invoices: %s", err.msg);
	n = 0;
	rc = tally_stripe_list(s, "/v1/invoices/in_123/lines", NULL, count_obj,
			       &n, &se, &err);
	ck_assert_msg(rc == 0, "list invoice lines: %s", err.msg);
	json_decref(q);
	tally_stripe_free(s);
}
END_TEST

START_TEST(test_stripe_client_meter_event)
{
	tally_stripe *s = client();
	json_t *p, *ev = NULL;
	tally_stripe_error se;
	tally_error err;
	int rc;

	p = json_pack("{s:s, s:s, s:I, s:{s:s, s:s}}", "event_name",
		      "ai_tokens", "identifier", "tly-abc-0", "timestamp",
		      (json_int_t)1700000000, "payload", "stripe_customer_id",
		      "cus_123", "value", "1200");
	rc = tally_stripe_request(s, &ev, "POST", "/v1/billing/meter_events",
				  p, "tally-meter-tly-abc-0", &se, &err);
	ck_assert_msg(rc == 0, "meter event: %s", err.msg);
	ck_assert_str_eq(tally_stripe_jstr(ev, "object"),
			 "billing.meter_event");
	json_decref(ev);
	json_decref(p);
	tally_stripe_free(s);
}
END_TEST

static Suite *tally_stripe_client_suite(void)
{
	Suite *s = suite_create("stripe_client");
	TCase *tc = tcase_create("StripeMock");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_stripe_client_create_and_get_customer);
	tcase_add_test(tc, test_stripe_client_error_object);
	tcase_add_test(tc, test_stripe_client_list);
	tcase_add_test(tc, test_stripe_client_meter_event);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_client_suite)
