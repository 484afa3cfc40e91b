/*
 * test_stripe_consumer_fault.c - the tally-stripe binary end to end on the
 * real broker, PostgreSQL and stripe-mock, with kill -9.
 *
 * Set-up: a fresh database, unique topics (commands, stripe-events,
 * signals, both DLQs), a config file pointing at them, and between
 * tally-stripe and stripe-mock a recording proxy (libmicrohttpd, in this
 * process) that behaves like Stripe for idempotency keys: a POST with a key
 * it has seen gets the first answer again, without creating anything. So
 * "objects created" = POSTs forwarded to stripe-mock's create endpoints. It
 * also adds latency, so that kill -9 lands in the middle of Stripe calls.
 *
 * Phase 1 (no faults): commands (with duplicates and an undecodable
 * message) and signed webhook events (with duplicates and one with a bad
 * signature) -> billing_commands / tenants / subscriptions / invoices as
 * expected, each signal exactly once on the signals topic, each invalid
 * message exactly once on its DLQ with an x-tally-reason header; SIGTERM ->
 * exit 0 within a few seconds.
 *
 * Phase 2 (kill -9 twice mid-stream, restart): one billing_commands row per
 * command, all succeeded; exactly one Stripe object per command step (the
 * same Idempotency-Key on every resend), the tenant holding that object;
 * every signal of the outbox published, under its stable id. Publication
 * is at-least-once (documented in docs/stripe.md): a kill between a
 * delivery and its mark republishes that signal with the same id, so
 * duplicates are counted and reported here, not forbidden.
 *
 * Phase 3: a restart with nothing new publishes nothing: a row marked
 * published is never produced again.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe_consumer_support.h"
#include "tally/log.h"

#define N2 16 /* tenants in phase 2 */
#define TA "f0000000-0000-4000-8000-0000000000a1"
#define TB "f0000000-0000-4000-8000-0000000000b2"
#define TC "f0000000-0000-4000-8000-0000000000c3"

static void setup(void)
{
	rd_kafka_conf_t *conf;
	const char *topics[6];
	const char *slash;
	char errstr[256];
	tally_error err;
	rd_kafka_t *rk;
	int i;

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	mock = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	tally_log_init("test_stripe_consumer_fault", TALLY_WARN);
	pg = testdb_create("tally_stripe_fault");
	cfg = testdb_config();
	tally_config_set(cfg, "kafka.brokers", brokers);
	slash = strrchr(testdb_admin, '/');
	snprintf(dsn, sizeof(dsn), "%.*s/%s", (int)(slash - testdb_admin),
		 testdb_admin, testdb_name);
	testdb_tenant(pg, TA, "fault-a", NULL);
	testdb_tenant(pg, TB, "fault-b", NULL);
	testdb_tenant(pg, TC, "fault-c", "cus_fault_c");
	for (i = 0; i < N2; i++) {
		char id[40], slug[32];

		snprintf(id, sizeof(id), "f2000000-0000-4000-8000-%012d", i);
		snprintf(slug, sizeof(slug), "fault2-%d", i);
		testdb_tenant(pg, id, slug, NULL);
	}

	snprintf(t_cmd, sizeof(t_cmd), "test.commands.%s", testdb_name);
	snprintf(t_evt, sizeof(t_evt), "test.stripe-events.%s", testdb_name);
	snprintf(t_sig, sizeof(t_sig), "test.signals.%s", testdb_name);
	snprintf(t_cdlq, sizeof(t_cdlq), "%s.dlq", t_cmd);
	snprintf(t_edlq, sizeof(t_edlq), "%s.dlq", t_evt);
	snprintf(group, sizeof(group), "test.stripe.%s", testdb_name);
	topics[0] = t_cmd;
	topics[1] = t_evt;
	topics[2] = t_sig;
	topics[3] = t_cdlq;
	topics[4] = t_edlq;
	topics[5] = NULL;
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			  sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, PARTS, &err) == 0,
		      "create topics: %s", err.msg);
	rd_kafka_destroy(rk);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", testdb_name);
	snprintf(logpath, sizeof(logpath), "/tmp/%s.log", testdb_name);
}

static void teardown(void)
{
	unlink(cfgpath);
	tally_config_free(cfg);
	tally_pg_free(pg);
}

START_TEST(test_stripe_consumer_fault)
{
	tally_producer *cp;
	rd_kafka_t *rk;
	tally_error err;
	char body[4096], reasons[256], obj[256], key[256], sql[512];
	pid_t pid;
	int created, distinct, dups, msgs, msgs_after, i, status_n;
	long now_s = (long)(tally_now_ms() / 1000);

	proxy_start();
	write_config();
	unlink(logpath);

	/* ---- phase 1: no faults --------------------------------------- */
	pid = start_consumer();
	cp = cmd_producer();
	rk = raw_producer();
	send_cmd(cp, "f1-a-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TA, "starter");
	send_cmd(cp, "f1-b-cus", TALLY_CMD_CREATE_CUSTOMER, TB, NULL);
	send_cmd(cp, "f1-b-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TB,
		 "professional");
	send_cmd(cp, "f1-a-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TA,
		 "starter"); /* duplicate */
	send_cmd(cp, "f1-b-up", TALLY_CMD_CHANGE_PLAN, TB, "enterprise");
	send_cmd(cp, "f1-b-sub", TALLY_CMD_CREATE_SUBSCRIPTION, TB,
		 "professional"); /* duplicate */
	send_raw(rk, t_cmd, TA, "\xc1not msgpack", 12, NULL);
	ck_assert(tally_producer_flush(cp, 10000, &err) == 0);

	invoice_event(body, sizeof(body), "evt_f1_failed",
		      "invoice.payment_failed", "open", now_s - 100);
	send_event(rk, TC, body, 0);
	send_event(rk, TC, body, 0); /* duplicate */
	trial_event(body, sizeof(body), "evt_f1_trial", "cus_fault_c",
		    "sub_fault_c",
		    now_s - 90);
	send_event(rk, TC, body, 0);
	invoice_event(body, sizeof(body), "evt_f1_paid", "invoice.paid",
		      "paid", now_s - 80);
	send_event(rk, TC, body, 0);
	send_event(rk, TC, body, 0); /* duplicate */
	invoice_event(body, sizeof(body), "evt_f1_forged", "invoice.paid",
		      "paid", now_s - 70);
	send_event(rk, TC, body, 1); /* bad signature */
	ck_assert(rd_kafka_flush(rk, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);

	wait_done(4, 3, 90);
	tally_sleep_ms(1500); /* duplicates and dead letters behind them */
	stop_consumer(pid);

	/* commands: one row each, succeeded, duplicates counted as attempts */
	check("SELECT string_agg(command_id || ':' || status || ':' || "
	      "attempts, ',' ORDER BY command_id) FROM billing_commands",
	      NULL, "f1-a-sub:succeeded:1,f1-b-cus:succeeded:0,"
	      "f1-b-sub:succeeded:1,f1-b-up:succeeded:0");
	check("SELECT (stripe_customer_id LIKE 'cus_%')::text || ':' || "
	      "(stripe_subscription_id LIKE 'sub_%')::text || ':' || "
	      "subscription_plan FROM tenants WHERE id = $1", TA,
	      "true:true:starter");
	/* (stripe-mock answers with its fixture price and no metadata, so
	 * the plan is read from the command's result, not the mirror) */
	check("SELECT result->>'plan_to' FROM billing_commands WHERE "
	      "command_id = $1", "f1-b-up", "enterprise");
	check("SELECT count(*) FROM subscriptions WHERE tenant_id IN ($1, '"
	      TB "')", TA, "2");
	/* webhooks: invoice mirrored at its newest state, dunning there and
	 * back, the forged event never applied */
	check("SELECT status || ':' || amount_paid FROM invoices WHERE "
	      "tenant_id = $1 AND invoice_id = 'in_fault_1'", TC,
	      "paid:4900");
	check("SELECT count(*) FROM invoice_lines WHERE tenant_id = $1", TC,
	      "1");
	check("SELECT status FROM tenants WHERE id = $1", TC, "active");
	check("SELECT string_agg(from_status || '>' || to_status, ',' ORDER BY"
	      " id) FROM tenant_status_transitions WHERE tenant_id = $1", TC,
	      "active>past_due,past_due>active");
	check("SELECT string_agg(event_id || ':' || outcome, ',' ORDER BY "
	      "event_id) FROM stripe_events", NULL,
	      "evt_f1_failed:applied,evt_f1_paid:applied,"
	      "evt_f1_trial:applied");
	check("SELECT string_agg(kind, ',' ORDER BY kind) FROM "
	      "billing_signals_outbox WHERE tenant_id = $1", TC,
	      "dunning,payment_failed,payment_succeeded,status_changed,"
	      "trial_ending");
	/* Stripe objects: one per command step */
	created = objects_created("/v1/customers", &distinct);
	ck_assert_msg(created == 2 && distinct == 2, "customers created %d "
		      "(keys %d)", created, distinct);
	created = objects_created("/v1/subscriptions", &distinct);
	ck_assert_msg(created == 2 && distinct == 2, "subscriptions created "
		      "%d (keys %d)", created, distinct);
	/* signals: each exactly once */
	dups = check_signals(&msgs);
	ck_assert_msg(dups == 0, "phase 1 (no faults): %d duplicate signals",
		      dups);
	/* dead letters: exactly once each, with the reason */
	ck_assert_int_eq(read_topic(t_cdlq, NULL, NULL, 0, reasons,
				    sizeof(reasons)), 1);
	fprintf(stderr, "stripe_fault: commands DLQ reason %s\n", reasons);
	ck_assert_msg(reasons[0] != '\0', "a reason");
	ck_assert_int_eq(read_topic(t_edlq, NULL, NULL, 0, reasons,
				    sizeof(reasons)), 1);
	ck_assert_str_eq(reasons, "invalid_event");

	/* ---- phase 2: kill -9 twice mid-stream ------------------------- */
	for (i = 0; i < N2; i++) {
		char tid[40], id[64];

		snprintf(tid, sizeof(tid), "f2000000-0000-4000-8000-%012d", i);
		snprintf(id, sizeof(id), "f2-%d-sub", i);
		send_cmd(cp, id, TALLY_CMD_CREATE_SUBSCRIPTION, tid,
			 i % 2 ? "starter" : "professional");
		snprintf(id, sizeof(id), "f2-%d-cancel", i);
		send_cmd(cp, id, TALLY_CMD_CANCEL_SUBSCRIPTION, tid, NULL);
		snprintf(id, sizeof(id), "evt_f2_trial_%d", i);
		snprintf(obj, sizeof(obj), "sub_f2_%d", i);
		trial_event(body, sizeof(body), id, "cus_fault_c", obj,
			    now_s - 50 + i);
		send_event(rk, TC, body, 0);
		send_event(rk, TC, body, 0); /* duplicate */
	}
	ck_assert(tally_producer_flush(cp, 10000, &err) == 0);
	ck_assert(rd_kafka_flush(rk, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);

	/* kill -9 shortly after work resumed, twice */
	for (i = 0; i < 2; i++) {
		int before = count("SELECT count(*) FROM billing_commands "
				   "WHERE status <> 'pending'"), k;

		pid = start_consumer();
		for (k = 0; k < 600 && count("SELECT count(*) FROM "
			"billing_commands WHERE status <> 'pending'") ==
			before; k++)
			tally_sleep_ms(100);
		tally_sleep_ms(i == 0 ? 700 : 400);
		kill9(pid);
		fprintf(stderr, "stripe_fault: kill -9 #%d: %d commands final,"
			" %d pending rows, %d signals unpublished\n", i + 1,
			count("SELECT count(*) FROM billing_commands WHERE "
			      "status <> 'pending'"),
			count("SELECT count(*) FROM billing_commands WHERE "
			      "status = 'pending'"),
			count("SELECT count(*) FROM billing_signals_outbox "
			      "WHERE published_at IS NULL"));
	}
	pid = start_consumer();
	wait_done(4 + 2 * N2, 3 + N2, 120);
	tally_sleep_ms(1500);
	stop_consumer(pid);

	ck_assert_int_eq(count("SELECT count(*) FROM billing_commands"),
			 4 + 2 * N2);
	ck_assert_int_eq(count("SELECT count(*) FROM billing_commands WHERE "
			       "status = 'succeeded'"), 4 + 2 * N2);
	ck_assert_int_eq(count("SELECT count(*) FROM stripe_events WHERE "
			       "outcome = 'applied'"), 3 + N2);
	/* one Stripe object per command step, held by its tenant */
	created = objects_created("/v1/customers", &distinct);
	ck_assert_msg(created == 2 + N2 && distinct == 2 + N2,
		      "customers created %d (keys %d), want %d", created,
		      distinct, 2 + N2);
	created = objects_created("/v1/subscriptions", &distinct);
	ck_assert_msg(created == 2 + N2 && distinct == 2 + N2,
		      "subscriptions created %d (keys %d), want %d", created,
		      distinct, 2 + N2);
	for (i = 0; i < N2; i++) {
		char tid[40], want[300];

		snprintf(tid, sizeof(tid), "f2000000-0000-4000-8000-%012d", i);
		snprintf(key, sizeof(key),
			 "tally-cmd-%s-f2-%d-sub-subscription", tid, i);
		object_for_key(obj, sizeof(obj), key);
		ck_assert_msg(strncmp(obj, "sub_", 4) == 0, "key %s", key);
		snprintf(want, sizeof(want), "%s", obj);
		check("SELECT stripe_subscription_id FROM tenants WHERE id = $1",
		      tid, want);
		snprintf(key, sizeof(key), "tally-cmd-%s-f2-%d-sub-customer",
			 tid, i);
		object_for_key(obj, sizeof(obj), key);
		snprintf(want, sizeof(want), "%s", obj);
		check("SELECT stripe_customer_id FROM tenants WHERE id = $1",
		      tid, want);
	}
	/* every POST recorded under its key; resends reused the key */
	pthread_mutex_lock(&px.mu);
	status_n = 0;
	for (i = 0; i < px.nrecs; i++)
		if (px.recs[i].hits > 1)
			status_n++;
	pthread_mutex_unlock(&px.mu);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM stripe_requests");
	ck_assert_int_eq(count(sql), px.nrecs);
	fprintf(stderr, "stripe_fault: %d idempotency keys, %d of them resent "
		"after a kill (Stripe replayed the first answer)\n", px.nrecs,
		status_n);

	dups = check_signals(&msgs);
	fprintf(stderr, "stripe_fault: %d signal messages, %d duplicates "
		"(same id) after kill -9\n", msgs, dups);

	/* ---- phase 3: nothing new: nothing republished ------------------- */
	pid = start_consumer();
	tally_sleep_ms(3000);
	stop_consumer(pid);
	(void)check_signals(&msgs_after);
	ck_assert_msg(msgs_after == msgs, "a restart republished signals "
		      "already marked published (%d -> %d)", msgs,
		      msgs_after);
	assert_no_secrets_logged();

	tally_producer_free(cp);
	rd_kafka_destroy(rk);
	MHD_stop_daemon(proxy_);
}
END_TEST

static Suite *tally_stripe_consumer_fault_suite(void)
{
	Suite *s = suite_create("stripe_consumer_fault");
	TCase *tc = tcase_create("Kafka");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_stripe_consumer_fault);
	tcase_set_timeout(tc, 600);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_consumer_fault_suite)
