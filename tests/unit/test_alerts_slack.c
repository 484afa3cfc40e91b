/*
 * test_alerts_slack.c - the Slack body of an alert: every block and field
 * exact (header title, tenant, threshold, period, kind, figures, link,
 * context), text from outside escaped, a business alert shown without a
 * tenant link; the link template's placeholders.
 */
#include "check_main.h"
#include "tally/alerts_slack.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define TID "4d7f3a52-2b1c-4c8e-9f0a-1b2c3d4e5f60"
#define AID "0b9a2c1e-5f1d-4c4e-9a39-3f6f7c1d2e10"

static const char ALERT[] =
	"{\"id\": \"" AID "\", \"tenant_id\": \"" TID "\", \"kind\":"
	" \"budget\", \"period_start\": \"2026-12-01T00:00:00.000Z\","
	" \"threshold\": 80, \"payload\": {\"cost\": \"80.5\","
	" \"monthly_budget\": \"100\", \"n\": 3}, \"raised_at\":"
	" \"2026-12-06T10:00:00.000Z\"}";

static json_t *body(const char *alert, const char *name, const char *link)
{
	char *s = tally_alerts_slack_body(alert, name, link);
	json_t *j;

	ck_assert_ptr_nonnull(s);
	j = json_loads(s, 0, NULL);
	ck_assert_ptr_nonnull(j);
	free(s);
	return j;
}

START_TEST(test_slack_blocks_exact)
{
	json_t *j = body(ALERT, "Acme <&> Co",
			 "https://admin.example/tenants/{tenant_id}?a={alert_id}");
	json_t *b = json_object_get(j, "blocks"), *f;

	ck_assert_str_eq(json_string_value(json_object_get(j, "text")),
			 "Budget 80 % reached: Acme &lt;&amp;&gt; Co");
	ck_assert_int_eq(json_array_size(b), 5);
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(b, 0), "type")), "header");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
		json_array_get(b, 0), "text"), "type")), "plain_text");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
		json_array_get(b, 0), "text"), "text")), "Budget 80 % reached");
	f = json_object_get(json_array_get(b, 1), "fields");
	ck_assert_int_eq(json_array_size(f), 4);
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(f, 0), "type")), "mrkdwn");
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(f, 0), "text")), "*Tenant*\nAcme &lt;&amp;&gt; Co");
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(f, 1), "text")), "*Threshold*\n80 %");
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(f, 2), "text")),
		"*Period*\n2026-12-01T00:00:00.000Z");
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(f, 3), "text")), "*Kind*\nbudget");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
		json_array_get(b, 2), "text"), "text")),
		"*Figures*\n\xe2\x80\xa2 cost: 80.5\n\xe2\x80\xa2 monthly_budget:"
		" 100\n\xe2\x80\xa2 n: 3");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
		json_array_get(b, 3), "text"), "text")),
		"<https://admin.example/tenants/" TID "?a=" AID
		"|Open in admin>");
	ck_assert_str_eq(json_string_value(json_object_get(
		json_array_get(b, 4), "type")), "context");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
		json_object_get(json_array_get(b, 4), "elements"), 0), "text")),
		"alert " AID " \xc2\xb7 raised 2026-12-06T10:00:00.000Z");
	json_decref(j);
}
END_TEST

START_TEST(test_slack_business_no_tenant_link)
{
	static const char a[] =
		"{\"id\": \"" AID "\", \"tenant_id\": \""
		TALLY_ALERTS_BUSINESS_TENANT "\", \"kind\": \"mrr_drop\","
		" \"period_start\": \"2026-11-01T00:00:00.000Z\", \"threshold\":"
		" 10, \"payload\": {}, \"raised_at\": \"2026-12-01T00:00:00.000Z\"}";
	json_t *j = body(a, NULL, "https://admin.example/tenants/{tenant_id}");
	json_t *b = json_object_get(j, "blocks");

	/* header, fields, context: no figures (empty payload), no link */
	ck_assert_int_eq(json_array_size(b), 3);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(
		json_array_get(b, 0), "text"), "text")),
		"MRR fell more than 10 % month over month");
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
		json_object_get(json_array_get(b, 1), "fields"), 0), "text")),
		"*Tenant*\nthe business (all tenants)");
	json_decref(j);
}
END_TEST

START_TEST(test_slack_tenant_id_without_name)
{
	json_t *j = body(ALERT, NULL, NULL);
	json_t *b = json_object_get(j, "blocks");

	ck_assert_int_eq(json_array_size(b), 4); /* no link */
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
		json_object_get(json_array_get(b, 1), "fields"), 0), "text")),
		"*Tenant*\n" TID);
	json_decref(j);
}
END_TEST

START_TEST(test_slack_not_an_alert)
{
	ck_assert_ptr_null(tally_alerts_slack_body("[1]", NULL, NULL));
	ck_assert_ptr_null(tally_alerts_slack_body("not json", NULL, NULL));
	ck_assert_ptr_null(tally_alerts_slack_body("{\"id\": \"x\"}", NULL,
						   NULL));
}
END_TEST

START_TEST(test_link_template)
{
	char *l = tally_alerts_link("https://a.example/{kind}/{tenant_id}"
				    "/{alert_id}/{other}", TID, AID, "budget");

	ck_assert_str_eq(l, "https://a.example/budget/" TID "/" AID
			 "/{other}");
	free(l);
	ck_assert_ptr_null(tally_alerts_link("", TID, AID, "budget"));
	ck_assert_ptr_null(tally_alerts_link(NULL, TID, AID, "budget"));
	ck_assert_ptr_null(tally_alerts_link("https://a.example/{tenant_id}",
		TALLY_ALERTS_BUSINESS_TENANT, AID, "mrr_drop"));
	l = tally_alerts_link("https://a.example/alerts/{alert_id}",
			      TALLY_ALERTS_BUSINESS_TENANT, AID, "mrr_drop");
	ck_assert_str_eq(l, "https://a.example/alerts/" AID);
	free(l);
}
END_TEST

static Suite *tally_alerts_slack_suite(void)
{
	Suite *s = suite_create("alerts_slack");
	TCase *tc = tcase_create("Slack");

	tcase_add_test(tc, test_slack_blocks_exact);
	tcase_add_test(tc, test_slack_business_no_tenant_link);
	tcase_add_test(tc, test_slack_tenant_id_without_name);
	tcase_add_test(tc, test_slack_not_an_alert);
	tcase_add_test(tc, test_link_template);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_slack_suite)
