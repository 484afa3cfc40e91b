/*
 * test_relay_delivery.c - what tally-relay gets onto the real broker under
 * load, outage and stop: 500 concurrent requests each once; Kafka
 * unreachable answers 503 and the retried event lands once; a stop with
 * requests in flight drains, and every 200 is on the topic.
 */
#define _DEFAULT_SOURCE
#include "relay_webhook_support.h"

#define CONC 500

START_TEST(test_relay_concurrent_500)
{
	fixture f;
	CURLM *multi = curl_multi_init();
	CURL *easy[CONC];
	struct curl_slist *hdrs[CONC];
	char *bodies[CONC], id[32], sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	buf *resp = calloc(CONC, sizeof(buf));
	rd_kafka_message_t **msgs = calloc(CONC + 10, sizeof(*msgs));
	rd_kafka_t *crk = NULL;
	char *seen = calloc(CONC, 1);
	int running = 0, i, ok = 0, other = 0;
	size_t n;
	CURLMsg *cm;
	int left;

	start(&f, brokers, NULL, NULL);
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)CONC);
	for (i = 0; i < CONC; i++) {
		snprintf(id, sizeof(id), "evt_conc_%d", i);
		bodies[i] = event(id, i % 7 ? "cus_many" : NULL);
		sign(sig, bodies[i], SECRET, now_s());
		easy[i] = request(f.port, "POST", "/webhooks/stripe",
				  bodies[i], strlen(bodies[i]), sig, &hdrs[i],
				  &resp[i]);
		curl_easy_setopt(easy[i], CURLOPT_FORBID_REUSE, 1L);
		curl_multi_add_handle(multi, easy[i]);
	}
	do {
		curl_multi_perform(multi, &running);
		if (running)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	} while (running);
	while ((cm = curl_multi_info_read(multi, &left)) != NULL) {
		long code = 0;

		if (cm->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE,
				  &code);
		if (cm->data.result == CURLE_OK && code == 200)
			ok++;
		else
			other++;
	}
	for (i = 0; i < CONC; i++) {
		curl_multi_remove_handle(multi, easy[i]);
		curl_easy_cleanup(easy[i]);
		curl_slist_free_all(hdrs[i]);
		free(bodies[i]);
	}
	curl_multi_cleanup(multi);
	ck_assert_msg(ok == CONC, "%d x 200 expected, got %d (others %d)",
		      CONC, ok, other);
	ck_assert_int_eq(topic_count(f.topic), CONC);
	n = topic_consume(&crk, msgs, CONC + 10, brokers, f.topic, PARTS,
			  8000);
	ck_assert_uint_eq(n, CONC);
	for (i = 0; i < (int)n; i++) {
		char copy[512], digits[16];
		const char *p;
		size_t d = 0;
		int64_t k = -1;

		ck_assert_uint_lt(msgs[i]->len, sizeof(copy));
		memcpy(copy, msgs[i]->payload, msgs[i]->len);
		copy[msgs[i]->len] = '\0';
		p = strstr(copy, "evt_conc_");
		ck_assert_ptr_nonnull(p);
		for (p += 9; *p >= '0' && *p <= '9' && d < 15; p++)
			digits[d++] = *p;
		digits[d] = '\0';
		ck_assert_int_eq(tally_parse_i64(&k, digits), 0);
		ck_assert_msg(k >= 0 && k < CONC && !seen[k],
			      "each event exactly once (%" PRId64 ")", k);
		seen[k] = 1;
	}
	topic_done(crk, msgs, n);
	free(seen);
	free(msgs);
	free(resp);
	stop(&f);
}
END_TEST

START_TEST(test_relay_kafka_down_then_back)
{
	fixture down, up;
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX], topic[128];
	char *body = event("evt_outage_1", "cus_OUT");
	int64_t t0;
	buf resp;

	/* nothing listens on port 1: Kafka "stopped" (the topic exists) */
	make_topic(topic, sizeof(topic));
	start_on(&down, topic, "127.0.0.1:1", NULL, "1500");
	sign(sig, body, SECRET, now_s());
	t0 = tally_now_ms();
	ck_assert_int_eq(post(&down, body, sig, &resp), 503);
	ck_assert_str_eq(resp.data, "{\"error\":\"kafka_unavailable\"}\n");
	ck_assert_msg(tally_now_ms() - t0 < 10000,
		      "503 within the produce timeout");
	ck_assert_int_eq(http(down.admin, "GET", "/readyz", NULL, NULL, NULL),
			 503);
	ck_assert_int_eq(http(down.admin, "GET", "/healthz", NULL, NULL, NULL),
			 200);
	stop(&down);

	/* Kafka back: Stripe retries the same event (same topic as before) */
	start_on(&up, topic, brokers, NULL, NULL);
	sign(sig, body, SECRET, now_s());
	ck_assert_int_eq(post(&up, body, sig, NULL), 200);
	ck_assert_msg(topic_count(topic) == 1,
		      "exactly the retried event: nothing lost or duplicated");
	free(body);
	stop(&up);
}
END_TEST

/* Stop while requests are in flight: every 200 is on the topic, and
 * nothing that was answered non-2xx was produced by the draining path. */
START_TEST(test_relay_drain_on_stop)
{
	fixture f;
	CURLM *multi = curl_multi_init();
	CURL *easy[100];
	struct curl_slist *hdrs[100];
	char *bodies[100], id[32], sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	buf *resp = calloc(100, sizeof(buf));
	int running = 0, i, ok = 0, rounds = 0, left;
	CURLMsg *cm;

	start(&f, brokers, NULL, NULL);
	for (i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "evt_drain_%d", i);
		bodies[i] = event(id, "cus_D");
		sign(sig, bodies[i], SECRET, now_s());
		easy[i] = request(f.port, "POST", "/webhooks/stripe",
				  bodies[i], strlen(bodies[i]), sig, &hdrs[i],
				  &resp[i]);
		curl_multi_add_handle(multi, easy[i]);
	}
	do {
		curl_multi_perform(multi, &running);
		if (++rounds == 3)
			tally_relay_stop(f.r); /* blocks until drained */
		if (running)
			curl_multi_poll(multi, NULL, 0, 50, NULL);
	} while (running);
	while ((cm = curl_multi_info_read(multi, &left)) != NULL) {
		long code = 0;

		curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE,
				  &code);
		if (cm->data.result == CURLE_OK && code == 200)
			ok++;
	}
	for (i = 0; i < 100; i++) {
		curl_multi_remove_handle(multi, easy[i]);
		curl_easy_cleanup(easy[i]);
		curl_slist_free_all(hdrs[i]);
		free(bodies[i]);
	}
	curl_multi_cleanup(multi);
	fprintf(stderr, "drain: %d of 100 answered 200 before the stop\n", ok);
	ck_assert_msg(topic_count(f.topic) == ok,
		      "every 200 is on the topic and only those: %d vs %" PRId64,
		      ok, topic_count(f.topic));
	free(resp);
	stop(&f);
}
END_TEST

static Suite *tally_relay_delivery_suite(void)
{
	Suite *s = suite_create("relay_delivery");
	TCase *tc = tcase_create("Relay");

	relay_suite_init();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_relay_concurrent_500);
	tcase_add_test(tc, test_relay_kafka_down_then_back);
	tcase_add_test(tc, test_relay_drain_on_stop);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_delivery_suite)
