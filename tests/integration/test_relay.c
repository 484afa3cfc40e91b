/*
 * test_relay.c - tally-relay end to end: real HTTP (libcurl) against a
 * running relay, real broker (TALLY_TEST_BROKERS), one fresh topic per
 * test (tally_kafka_create_topics): a valid event on the topic, its key,
 * what is rejected produces nothing, the previous secret, an oversized
 * body. What reached Kafka is read back with a plain consumer (content)
 * and with the partitions' high watermarks (counts).
 */
#define _DEFAULT_SOURCE
#include "relay_webhook_support.h"

START_TEST(test_relay_valid_event_on_topic)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], tmp[256];
	char *body = event("evt_valid_1", "cus_ABC");
	rd_kafka_message_t *msgs[4];
	rd_kafka_t *crk = NULL;
	int64_t before = tally_now_ms(), at;
	buf resp;
	size_t n;

	start(&f, brokers, NULL, NULL);
	sign(sig, body, SECRET, now_s());
	ck_assert_int_eq(post(&f, body, sig, &resp), 200);
	ck_assert_str_eq(resp.data, "{\"received\":true}\n");
	n = topic_consume(&crk, msgs, 4, brokers, f.topic, PARTS, 5000);
	ck_assert_msg(n == 1, "exactly one record expected, got %zu", n);
	ck_assert_uint_eq(msgs[0]->len, strlen(body));
	ck_assert_msg(memcmp(msgs[0]->payload, body, strlen(body)) == 0,
		      "the raw body must be on the topic");
	ck_assert_msg(msgs[0]->key_len == 7 &&
		      memcmp(msgs[0]->key, "cus_ABC", 7) == 0,
		      "key must be the customer id");
	ck_assert_str_eq(topic_header(msgs[0], "stripe-signature", tmp,
				      sizeof(tmp)), sig);
	ck_assert_str_eq(topic_header(msgs[0], "content-type", tmp,
				      sizeof(tmp)), "application/json");
	ck_assert_int_eq(tally_parse_i64(&at, topic_header(msgs[0],
							   "received-at", tmp,
							   sizeof(tmp))), 0);
	ck_assert_msg(at >= before && at <= tally_now_ms(),
		      "received-at must be unix ms of the request");
	topic_done(crk, msgs, n);
	free(body);
	stop(&f);
}
END_TEST

START_TEST(test_relay_keys)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	const char *cust = "{\"id\":\"evt_k2\",\"type\":\"customer.updated\","
			   "\"data\":{\"object\":{\"id\":\"cus_SELF\","
			   "\"object\":\"customer\"}}}";
	char *none = event("evt_k1", NULL);
	rd_kafka_message_t *msgs[4];
	rd_kafka_t *crk = NULL;
	size_t n, i;
	int seen = 0;

	start(&f, brokers, NULL, NULL);
	sign(sig, none, SECRET, now_s());
	ck_assert_int_eq(post(&f, none, sig, NULL), 200);
	sign(sig, cust, SECRET, now_s());
	ck_assert_int_eq(post(&f, cust, sig, NULL), 200);
	n = topic_consume(&crk, msgs, 2, brokers, f.topic, PARTS, 5000);
	ck_assert_uint_eq(n, 2);
	for (i = 0; i < n; i++) {
		if (msgs[i]->key_len == 6 &&
		    memcmp(msgs[i]->key, "evt_k1", 6) == 0)
			seen |= 1; /* no customer: the event id */
		if (msgs[i]->key_len == 8 &&
		    memcmp(msgs[i]->key, "cus_SELF", 8) == 0)
			seen |= 2; /* a customer object: its own id */
	}
	topic_done(crk, msgs, n);
	ck_assert_msg(seen == 3, "keys: event id and customer object id");
	free(none);
	stop(&f);
}
END_TEST


START_TEST(test_relay_rejects_and_produces_nothing)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], v0[200], metric[200];
	char *body = event("evt_rej_1", "cus_R");
	char *tampered = event("evt_rej_2", "cus_R");
	char *text = NULL;
	buf resp;
	int64_t t = now_s();

	start(&f, brokers, NULL, NULL);

	sign(sig, body, SECRET, t - 301);
	ck_assert_int_eq(post(&f, body, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"expired\"}\n");

	sign(sig, body, "whsec_wrong", t);
	ck_assert_int_eq(post(&f, body, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"bad_signature\"}\n");

	sign(sig, body, SECRET, t);
	ck_assert_int_eq(post(&f, tampered, sig, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"bad_signature\"}\n");

	ck_assert_int_eq(post(&f, body, NULL, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"missing_header\"}\n");

	ck_assert_int_eq(post(&f, body, "garbage", &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"malformed_header\"}\n");

	snprintf(v0, sizeof(v0), "t=%" PRId64 ",v0=%s", t, sig + 16);
	ck_assert_int_eq(post(&f, body, v0, &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"no_v1\"}\n");

	/* correctly signed, but not a Stripe event */
	sign(sig, "{\"id\":\"x_1\",\"type\":\"a\"}", SECRET, t);
	ck_assert_int_eq(post(&f, "{\"id\":\"x_1\",\"type\":\"a\"}", sig,
			      &resp), 400);
	ck_assert_str_eq(resp.data, "{\"error\":\"malformed_body\"}\n");
	sign(sig, "[1,2]", SECRET, t);
	ck_assert_int_eq(post(&f, "[1,2]", sig, &resp), 400);

	ck_assert_int_eq(http(f.port, "GET", "/webhooks/stripe", NULL, NULL,
			      NULL), 405);
	ck_assert_int_eq(http(f.port, "POST", "/webhooks/other", body, NULL,
			      NULL), 404);
	ck_assert_int_eq(http(f.admin, "GET", "/healthz", NULL, NULL, &resp),
			 200);
	ck_assert_int_eq(http(f.admin, "GET", "/readyz", NULL, NULL, &resp),
			 200);
	ck_assert_int_eq(http(f.admin, "GET", "/metrics", NULL, NULL, NULL),
			 200);
	/* the webhook listener serves only the webhook path */
	ck_assert_int_eq(http(f.port, "GET", "/metrics", NULL, NULL, NULL),
			 404);
	ck_assert_int_eq(http(f.port, "GET", "/readyz", NULL, NULL, NULL),
			 404);
	tally_metrics_render(&text, NULL, f.m);
	snprintf(metric, sizeof(metric), "tally_relay_requests_total{status="
		 "\"400\",reason=\"bad_signature\"} 2\n");
	ck_assert_msg(strstr(text, metric) != NULL, "metrics: %s", text);
	ck_assert_msg(strstr(text, "reason=\"expired\"} 1\n") != NULL,
		      "expired counted");
	ck_assert_msg(strstr(text, "reason=\"malformed_body\"} 2\n") != NULL,
		      "malformed bodies counted");
	ck_assert_msg(strstr(text, "reason=\"ok\"} 0\n") != NULL, "none ok");
	free(text);

	usleep(500 * 1000);
	ck_assert_msg(topic_count(f.topic) == 0,
		      "rejected webhooks must never reach Kafka");
	free(body);
	free(tampered);
	stop(&f);
}
END_TEST

START_TEST(test_relay_previous_secret)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	char *body = event("evt_rot_1", "cus_ROT");

	start(&f, brokers, NULL, NULL);
	sign(sig, body, PREVIOUS, now_s());
	ck_assert_msg(post(&f, body, sig, NULL) == 200,
		      "previous secret must still verify during rotation");
	ck_assert_int_eq(topic_count(f.topic), 1);
	free(body);
	stop(&f);
}
END_TEST

START_TEST(test_relay_oversized)
{
	fixture f;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	char *big = malloc(4096);
	buf resp;

	start(&f, brokers, "1024", NULL);
	snprintf(big, 4096, "{\"id\":\"evt_big\",\"type\":\"x\",\"pad\":\"");
	memset(big + strlen(big), 'a', 2000);
	big[2060] = '\0';
	memcpy(big + 2058, "\"}", 2);
	sign(sig, big, SECRET, now_s());
	ck_assert_int_eq(post(&f, big, sig, &resp), 413);
	ck_assert_int_eq(topic_count(f.topic), 0);
	free(big);
	stop(&f);
}
END_TEST

static Suite *tally_relay_suite(void)
{
	Suite *s = suite_create("relay");
	TCase *tc = tcase_create("Relay");

	relay_suite_init();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_relay_valid_event_on_topic);
	tcase_add_test(tc, test_relay_keys);
	tcase_add_test(tc, test_relay_rejects_and_produces_nothing);
	tcase_add_test(tc, test_relay_previous_secret);
	tcase_add_test(tc, test_relay_oversized);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_suite)
