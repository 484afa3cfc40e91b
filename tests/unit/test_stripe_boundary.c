/*
 * test_stripe_boundary.c - what the Stripe client lets through to the
 * network: ids in request paths (tally_stripe_id_valid,
 * tally_stripe_path_valid), the API base the secret key is sent to, and
 * the status class an answer is counted under.
 * No network.
 */
#include "check_main.h"
#include "tally/stripe.h"

#include <string.h>

START_TEST(test_stripe_id_valid)
{
	char longest[300];

	ck_assert(tally_stripe_id_valid("pm_card_visa", "pm_"));
	ck_assert(tally_stripe_id_valid("cus_NffrFeUfNV2Hib", "cus_"));
	ck_assert(tally_stripe_id_valid("sub_sched_1Mr3YcLkdIwHu7ix",
					"sub_sched_"));
	ck_assert(tally_stripe_id_valid("ii_1", "ii_"));
	ck_assert(tally_stripe_id_valid("price_1", "price_"));
	ck_assert(tally_stripe_id_valid("prod_1", "prod_"));
	ck_assert(tally_stripe_id_valid("in_1", "in_"));
	ck_assert(tally_stripe_id_valid("ch_1", "ch_"));
	ck_assert(tally_stripe_id_valid("sub_1", "sub_"));

	ck_assert(!tally_stripe_id_valid("x/../../customers/cus_X#", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x/../../customers/cus_X", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x#", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x?a=b", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x%2F", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x.y", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_x y", "pm_"));
	ck_assert(!tally_stripe_id_valid("pm_", "pm_"));
	ck_assert(!tally_stripe_id_valid("", "pm_"));
	ck_assert(!tally_stripe_id_valid(NULL, "pm_"));
	ck_assert(!tally_stripe_id_valid("cus_1", "pm_"));
	ck_assert(!tally_stripe_id_valid("PM_1", "pm_"));
	memset(longest, 'a', sizeof(longest));
	memcpy(longest, "cus_", 4);
	longest[255] = '\0';
	ck_assert(tally_stripe_id_valid(longest, "cus_"));
	longest[255] = 'a';
	longest[256] = '\0';
	ck_assert(!tally_stripe_id_valid(longest, "cus_"));
}
END_TEST

START_TEST(test_stripe_path_valid)
{
	ck_assert(tally_stripe_path_valid("/v1/customers"));
	ck_assert(tally_stripe_path_valid("/v1/customers/cus_1"));
	ck_assert(tally_stripe_path_valid("/v1/payment_methods/pm_1/attach"));
	ck_assert(tally_stripe_path_valid("/v1/invoices/in_1/lines"));
	ck_assert(tally_stripe_path_valid("/v1/subscription_schedules/"
					  "sub_sched_1"));
	ck_assert(tally_stripe_path_valid("/v1/billing/meter_events"));
	ck_assert(tally_stripe_path_valid("/v1/charges/ch_1"));

	ck_assert(!tally_stripe_path_valid(
		"/v1/payment_methods/x/../../customers/cus_X#/attach"));
	ck_assert(!tally_stripe_path_valid("/v1/payment_methods/cus_1/attach"));
	ck_assert(!tally_stripe_path_valid("/v1/subscriptions/cus_1"));
	ck_assert(!tally_stripe_path_valid("/v1/subscription_schedules/sub_1"));
	ck_assert(!tally_stripe_path_valid("/v1/invoices/in_1%2F..%2Fx"));
	ck_assert(!tally_stripe_path_valid("/v1/customers/"));
	ck_assert(!tally_stripe_path_valid("/v1/customers//x"));
	ck_assert(!tally_stripe_path_valid("/v1/customers?email=x"));
	ck_assert(!tally_stripe_path_valid("/v2/customers"));
	ck_assert(!tally_stripe_path_valid("https://evil.example/v1/x"));
	ck_assert(!tally_stripe_path_valid(NULL));
}
END_TEST

static int new_with_base(const char *base)
{
	tally_stripe_opts o = { .api_base = base,
				.secret_key = "sk_test_boundary" };
	tally_stripe *s = NULL;
	tally_error err;
	int rc = tally_stripe_new(&s, &o, &err);

	if (rc != 0) {
		ck_assert_ptr_null(s);
		ck_assert_msg(strstr(err.msg, "stripe.api_base") != NULL &&
			      strstr(err.msg, "sk_test") == NULL,
			      "a clear error without the key: %s", err.msg);
	}
	tally_stripe_free(s);
	return rc;
}

/* The secret key travels in every request: https, or http to this host. */
START_TEST(test_stripe_api_base_https_or_loopback)
{
	ck_assert_int_eq(new_with_base("https://api.stripe.com"), 0);
	ck_assert_int_eq(new_with_base("https://api.stripe.com/"), 0);
	ck_assert_int_eq(new_with_base("http://127.0.0.1:12111"), 0);
	ck_assert_int_eq(new_with_base("http://127.1.2.3:12111"), 0);
	ck_assert_int_eq(new_with_base("http://localhost:12111"), 0);
	ck_assert_int_eq(new_with_base("http://[::1]:12111"), 0);

	ck_assert_int_eq(new_with_base("http://api.stripe.com"),
			 TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("http://stripe-mock:12111"),
			 TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("http://127.0.0.1.evil.example"),
			 TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("http://10.0.0.1:12111"),
			 TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("http://[::2]:12111"), TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("ftp://127.0.0.1"), TALLY_EINVALID);
	ck_assert_int_eq(new_with_base("not a url"), TALLY_EINVALID);
}
END_TEST

START_TEST(test_stripe_status_class)
{
	static const struct {
		long status;
		const char *cls;
	} cases[] = {
		{ 200, "2xx" }, { 204, "2xx" }, { 429, "429" }, { 400, "4xx" },
		{ 404, "4xx" }, { 409, "4xx" }, { 500, "5xx" }, { 503, "5xx" },
		{ 0, "error" }, { 302, "error" }, { 199, "error" },
		{ 600, "error" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(strcmp(tally_stripe_status_class(cases[i].status),
				     cases[i].cls) == 0,
			      "%ld is %s", cases[i].status, cases[i].cls);
}
END_TEST

static Suite *stripe_boundary_suite(void)
{
	Suite *s = suite_create("stripe_boundary");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_stripe_id_valid);
	tcase_add_test(tc, test_stripe_path_valid);
	tcase_add_test(tc, test_stripe_api_base_https_or_loopback);
	tcase_add_test(tc, test_stripe_status_class);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(stripe_boundary_suite)
