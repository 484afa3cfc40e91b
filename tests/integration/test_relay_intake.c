/*
 * test_relay_intake.c - tally-relay's HTTP intake end to end (see
 * relay_intake_support.h): every content type, a batch's rejects by
 * index, Kafka unreachable answers 503, and the limits.
 */
#define _DEFAULT_SOURCE
#include "relay_intake_support.h"

START_TEST(test_intake_every_content_type)
{
	static const char *const ids[] = { "one", "arr-1", "arr-2", "ce-one",
					   "ceb-1", "ceb-2" };
	char key[128], a[1024], b[1024], body[4096];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);

	usage(body, sizeof(body), "one", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":1,\"rejected\":[]}\n");

	usage(a, sizeof(a), "arr-1", TENANT_A, 2);
	usage(b, sizeof(b), "arr-2", TENANT_A, 3);
	snprintf(body, sizeof(body), "[%s,%s]", a, b);
	post(&r, &f, "application/json; charset=utf-8", key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":2,\"rejected\":[]}\n");

	cloudevent(body, sizeof(body), "ce-one", 4);
	post(&r, &f, CE, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":1,\"rejected\":[]}\n");

	cloudevent(a, sizeof(a), "ceb-1", 5);
	cloudevent(b, sizeof(b), "ceb-2", 6);
	snprintf(body, sizeof(body), "[%s,%s]", a, b);
	post(&r, &f, CE_BATCH, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":2,\"rejected\":[]}\n");

	post(&r, &f, "text/plain", key, body);
	ck_assert_int_eq(r.status, 415);
	post(&r, &f, NULL, key, body);
	ck_assert_int_eq(r.status, 415);

	expect_on_topic(&f, ids, 6, 1 + 2 + 3 + 4 + 5 + 6);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"accepted\"}"), 6);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"202\""
				    ",reason=\"accepted\"}"), 4);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"415\""
				    ",reason=\"unsupported_media_type\"}"), 2);
	/* each request answered 202 once in every stage of its time */
	ck_assert_int_eq(metric(&f, "tally_relay_intake_seconds_count{stage="
				    "\"kafka\"}"), 4);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_seconds_count{stage="
				    "\"total\"}"), 4);
	stop(&f);
}
END_TEST

START_TEST(test_intake_batch_rejects_by_index)
{
	static const char *const ids[] = { "good-0", "good-5" };
	char key[128], ev[6][512], body[4096];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);
	usage(ev[0], sizeof(ev[0]), "good-0", TENANT_A, 10);
	snprintf(ev[1], sizeof(ev[1]),
		 "{\"id\":\"no-count\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":1765000000000,"
		 "\"data\":{}}", TENANT_A);
	usage(ev[2], sizeof(ev[2]), "other-tenant", TENANT_B, 1);
	snprintf(ev[3], sizeof(ev[3]),
		 "{\"id\":\"float\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":1765000000000,"
		 "\"data\":{\"count\":1.5}}", TENANT_A);
	snprintf(ev[4], sizeof(ev[4]), "\"not an object\"");
	usage(ev[5], sizeof(ev[5]), "good-5", TENANT_A, 20);
	snprintf(body, sizeof(body), "[%s,%s,%s,%s,%s,%s]", ev[0], ev[1],
		 ev[2], ev[3], ev[4], ev[5]);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 207);
	ck_assert_str_eq(
		r.body,
		"{\"accepted\":2,\"rejected\":["
		"{\"index\":1,\"code\":\"missing_field\",\"field\":"
		"\"data.count\"},"
		"{\"index\":2,\"code\":\"tenant_mismatch\",\"field\":"
		"\"tenant_id\"},"
		"{\"index\":3,\"code\":\"wrong_type\",\"field\":"
		"\"data.count\"},"
		"{\"index\":4,\"code\":\"not_a_map\",\"field\":\"\"}]}\n");

	/* CloudEvents: the fields are named from the CloudEvent */
	snprintf(body, sizeof(body),
		 "[{\"specversion\":\"0.3\",\"data\":{}},{\"specversion\":"
		 "\"1.0\",\"data\":%s},{\"specversion\":\"1.0\"}]", ev[2]);
	post(&r, &f, CE_BATCH, key, body);
	ck_assert_int_eq(r.status, 207);
	ck_assert_str_eq(
		r.body,
		"{\"accepted\":0,\"rejected\":["
		"{\"index\":0,\"code\":\"bad_value\",\"field\":"
		"\"specversion\"},"
		"{\"index\":1,\"code\":\"tenant_mismatch\",\"field\":"
		"\"data.tenant_id\"},"
		"{\"index\":2,\"code\":\"missing_field\",\"field\":"
		"\"data\"}]}\n");

	expect_on_topic(&f, ids, 2, 30);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"rejected\",reason=\"tenant_mismatch\"}"),
			 2);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"rejected\",reason=\"missing_field\"}"),
			 2);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"207\""
				    ",reason=\"partial\"}"), 2);
	stop(&f);
}
END_TEST

START_TEST(test_intake_kafka_unreachable_503)
{
	char key[128], body[512];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	/* a port no broker listens on; the shared Kafka keeps running */
	start(&f, "127.0.0.1:1", "relay.produce_timeout_ms", "1500");
	new_key(&f, key, TENANT_A);
	usage(body, sizeof(body), "no-kafka", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 503);
	ck_assert_str_eq(r.body, "{\"error\":\"kafka_unavailable\"}\n");
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"unavailable\"}"), 1);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"accepted\"}"), 0);
	stop(&f);
}
END_TEST

START_TEST(test_intake_limits)
{
	char key[128], ev[512], body[8192];
	intake_resp r;
	size_t i;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, "relay.intake_max_events", "3");
	new_key(&f, key, TENANT_A);
	usage(ev, sizeof(ev), "x", TENANT_A, 1);
	snprintf(body, sizeof(body), "[%s,%s,%s,%s]", ev, ev, ev, ev);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 413);
	ck_assert_str_eq(r.body, "{\"error\":\"too_many_events\"}\n");
	post(&r, &f, JSON, key, "{\"id\":");
	ck_assert_int_eq(r.status, 400);
	ck_assert_str_eq(r.body, "{\"error\":\"malformed_body\"}\n");
	post(&r, &f, CE, key, "[]");
	ck_assert_int_eq(r.status, 400);
	intake_post(&r, f.port, "GET", PATH, JSON, key, NULL);
	ck_assert_int_eq(r.status, 405);
	stop(&f);

	setup(&f, NULL);
	start(&f, brokers, "relay.intake_max_body", "2048");
	new_key(&f, key, TENANT_A);
	memset(body, ' ', 4096);
	body[4096] = '\0';
	for (i = 0; i < 4; i++)
		body[i] = "[{}]"[i];
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 413);
	ck_assert_str_eq(r.body, "{\"error\":\"too_large\"}\n");
	expect_on_topic(&f, NULL, 0, 0);
	stop(&f);
}
END_TEST

static Suite *tally_relay_intake_suite(void)
{
	Suite *s = suite_create("relay_intake");
	TCase *tc = tcase_create("Intake");

	relay_intake_suite_init();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_intake_every_content_type);
	tcase_add_test(tc, test_intake_batch_rejects_by_index);
	tcase_add_test(tc, test_intake_kafka_unreachable_503);
	tcase_add_test(tc, test_intake_limits);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_intake_suite)
