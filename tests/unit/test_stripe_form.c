/*
 * test_stripe_form.c - Stripe form encoding (nested keys, arrays, escaping)
 * and idempotency key derivation. No network.
 */
#include "check_main.h"
#include "tally/stripe.h"

#include <stdlib.h>
#include <string.h>

/* Decode %XX so expectations stay readable. */
static char *unescape(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	while (*s) {
		if (*s == '%' && s[1] && s[2]) {
			char hex[3] = { s[1], s[2], 0 };

			*o++ = (char)strtol(hex, NULL, 16);
			s += 3;
		} else {
			*o++ = *s++;
		}
	}
	*o = '\0';
	return out;
}

static char *enc(const char *json)
{
	json_t *p = json_loads(json, JSON_PRESERVE_ORDER, NULL);
	char *out = NULL;
	tally_error err;
	int rc;

	ck_assert_msg(p != NULL, "test JSON must parse: %s", json);
	rc = tally_stripe_form_encode(&out, p, &err);
	ck_assert_msg(rc == 0, "encoding %s should succeed", json);
	json_decref(p);
	return out;
}

static const struct {
	const char *json;
	const char *raw;     /* exact wire form, or NULL */
	const char *decoded; /* percent-decoded form */
} cases[] = {
	{ "{}", "", "" },
	{ "{\"customer\":\"cus_1\"}", "customer=cus_1", "customer=cus_1" },
	{ "{\"items\":[{\"price\":\"price_1\",\"quantity\":2}]}",
	  "items%5B0%5D%5Bprice%5D=price_1&items%5B0%5D%5Bquantity%5D=2",
	  "items[0][price]=price_1&items[0][quantity]=2" },
	{ "{\"expand\":[\"latest_invoice\",\"customer\"]}", NULL,
	  "expand[]=latest_invoice&expand[]=customer" },
	{ "{\"metadata\":{\"tenant_id\":\"t 1&x=y\",\"k\":\"\\u00e9\"}}",
	  "metadata%5Btenant_id%5D=t%201%26x%3Dy&metadata%5Bk%5D=%C3%A9",
	  NULL },
	{ "{\"cancel_at_period_end\":true,\"off\":false,\"unset\":null}",
	  "cancel_at_period_end=true&off=false&unset=", NULL },
	{ "{\"phases\":[{\"items\":[{\"price\":\"a\"}],\"end_date\":5},"
	  "{\"items\":[{\"price\":\"b\"}]}]}", NULL,
	  "phases[0][items][0][price]=a&phases[0][end_date]=5&"
	  "phases[1][items][0][price]=b" },
	{ "{\"payload\":{\"value\":\"25\",\"stripe_customer_id\":\"cus_1\"},"
	  "\"timestamp\":-1}", NULL,
	  "payload[value]=25&payload[stripe_customer_id]=cus_1&timestamp=-1" },
};

START_TEST(test_stripe_form_table)
{
	char *got = enc(cases[_i].json);

	if (cases[_i].raw)
		ck_assert_msg(strcmp(got, cases[_i].raw) == 0,
			      "%s should encode as '%s', got '%s'",
			      cases[_i].json, cases[_i].raw, got);
	if (cases[_i].decoded) {
		char *d = unescape(got);

		ck_assert_msg(strcmp(d, cases[_i].decoded) == 0,
			      "%s should decode to '%s', got '%s'",
			      cases[_i].json, cases[_i].decoded, d);
		free(d);
	}
	free(got);
}
END_TEST

START_TEST(test_stripe_form_rejects_real)
{
	json_t *p = json_pack("{s:f}", "amount", 9.99);
	char *out = NULL;
	tally_error err;

	ck_assert_msg(tally_stripe_form_encode(&out, p, &err) ==
		      TALLY_EINVALID, "a float amount must be refused");
	ck_assert_ptr_null(out);
	json_decref(p);
}
END_TEST

START_TEST(test_stripe_form_null_params)
{
	char *out = NULL;
	tally_error err;

	ck_assert_int_eq(tally_stripe_form_encode(&out, NULL, &err), 0);
	ck_assert_str_eq(out, "");
	free(out);
}
END_TEST

START_TEST(test_stripe_idempotency_key)
{
	char a[256], b[256], longid[400];

	tally_stripe_idempotency_key(a, "cmd", "c-1", "subscription");
	ck_assert_str_eq(a, "tally-cmd-c-1-subscription");
	tally_stripe_idempotency_key(b, "cmd", "c-1", "subscription");
	ck_assert_msg(strcmp(a, b) == 0, "keys must be deterministic");
	memset(longid, 'x', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	tally_stripe_idempotency_key(a, "cmd", longid, "customer");
	ck_assert_msg(strlen(a) <= 255, "long ids must be hashed to fit");
	tally_stripe_idempotency_key(b, "cmd", longid, "customer");
	ck_assert_str_eq(a, b);
}
END_TEST

START_TEST(test_stripe_new_needs_key)
{
	tally_stripe_opts o = { .api_base = "http://127.0.0.1:1" };
	tally_stripe *s = NULL;
	tally_error err;

	ck_assert_int_eq(tally_stripe_new(&s, &o, &err), TALLY_EINVALID);
	ck_assert_ptr_null(s);
	o.secret_key = "sk_test_supersecret";
	ck_assert_int_eq(tally_stripe_new(&s, &o, &err), 0);
	tally_stripe_free(s);
}
END_TEST

static Suite *tally_stripe_form_suite(void)
{
	Suite *s = suite_create("stripe_form");
	TCase *tc = tcase_create("Core");

	tcase_add_loop_test(tc, test_stripe_form_table, 0,
			    (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, test_stripe_form_rejects_real);
	tcase_add_test(tc, test_stripe_form_null_params);
	tcase_add_test(tc, test_stripe_idempotency_key);
	tcase_add_test(tc, test_stripe_new_needs_key);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_form_suite)
