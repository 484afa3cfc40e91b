/*
 * test_stripe_webhooks.c - mirroring Stripe events into PostgreSQL:
 * the fixture story (tests/fixtures/stripe/events.json, real event shapes)
 * delivered duplicated and shuffled gives the state of the newest events;
 * signatures are re-verified without tolerance; dunning moves the tenant
 * past_due -> suspended -> active under a controlled clock, once each.
 */
#include "stripe_testdb.h"
#include "aggregate_support.h"
#include "tally/aggregate.h"
#include "tally/stripe_sync.h"
#include "tally/webhook.h"

#include <stdlib.h>
#include <string.h>

#define TENANT "7b0c2f44-1d2e-4b5a-9c3d-2e1f0a9b8c7d"
#define BASE 1767225600LL
#define SECRET "whsec_test_tally"

static tally_pg *pg;
static tally_config *cfg;
static json_t *events;
static int64_t fake_now_ms;

static int64_t fake_clock(void *payload)
{
	(void)payload;
	return fake_now_ms;
}

static void setup(void)
{
	json_error_t je;

	pg = testdb_create("tally_stripe_wh");
	cfg = testdb_config();
	events = json_load_file(TALLY_SOURCE_DIR
				"/tests/fixtures/stripe/events.json", 0, &je);
	ck_assert_msg(events != NULL, "fixtures: %s", je.text);
	testdb_tenant(pg, TENANT, "wh-tenant", "cus_TALLYTEST");
}

static void teardown(void)
{
	json_decref(events);
	tally_config_free(cfg);
	tally_pg_free(pg);
}

static tally_stripe_sync *new_sync(void)
{
	static const char *const secrets[] = { SECRET };
	tally_stripe_sync_opts o = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_error err;

	o.pg = pg;
	o.cfg = cfg;
	o.webhook_secrets = secrets;
	o.nsecrets = 1;
	o.clock = fake_clock;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &o, &err), 0);
	return ss;
}

static json_t *find_event(const char *id)
{
	json_t *ev;
	size_t i;

	json_array_foreach(events, i, ev)
		if (strcmp(json_string_value(json_object_get(ev, "id")), id) ==
		    0)
			return ev;
	ck_abort_msg("no fixture event %s", id);
	return NULL;
}

/* Deliver one event as the relay would: raw body + its signature. */
static int deliver(tally_stripe_sync *ss, const json_t *ev,
		   const char **outcome)
{
	char *body = json_dumps(ev, JSON_COMPACT);
	char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];
	tally_error err;
	int rc;

	/* signed long ago: re-verification must ignore the tolerance */
	tally_webhook_sign(sig, sizeof(sig), body, strlen(body), SECRET,
			   json_integer_value(json_object_get(ev, "created")));
	rc = tally_stripe_sync_event(ss, body, strlen(body), sig, outcome,
				     &err);
	ck_assert_msg(rc == 0 || rc == TALLY_EDUPLICATE, "event %s: %s",
		      json_string_value(json_object_get(ev, "id")), err.msg);
	free(body);
	return rc;
}

static void reset_state(void)
{
	testdb_sql(pg, "TRUNCATE subscriptions, invoices, invoice_lines, "
		       "payments, stripe_events, tenant_status_transitions, "
		       "billing_signals_outbox, billing_periods");
	testdb_sql(pg, "UPDATE tenants SET status = 'active', "
		       "subscription_plan = 'starter', stripe_subscription_id"
		       " = NULL, past_due_since = NULL, cancelled_at = NULL, "
		       "stripe_updated_at = NULL");
}

static void check(const char *sql, const char *want)
{
	char got[256];

	testdb_get(pg, got, sizeof(got), sql, NULL);
	ck_assert_msg(strcmp(got, want) == 0, "%s: want '%s', got '%s'", sql,
		      want, got);
}

static void check_final_state(void)
{
	char want[64];

	check("SELECT status || ',' || plan || ',' || price_id || ',' || "
	      "extract(epoch FROM current_period_start)::bigint FROM "
	      "subscriptions WHERE subscription_id = 'sub_TALLYTEST'",
	      "active,starter,price_starter_test,1767228600");
	check("SELECT status || ',' || amount_paid || ',' || attempt_count "
	      "FROM invoices WHERE invoice_id = 'in_A'", "paid,29900,2");
	check("SELECT status || ',' || amount_due || ',' || "
	      "(payment_failed_at IS NOT NULL) FROM invoices WHERE "
	      "invoice_id = 'in_B'", "open,29900,true");
	check("SELECT count(*) FROM invoice_lines WHERE invoice_id = 'in_A'",
	      "1");
	check("SELECT status || ',' || amount_received FROM payments WHERE "
	      "stripe_id = 'pi_A'", "succeeded,29900");
	check("SELECT amount_refunded::text FROM payments WHERE "
	      "stripe_id = 'ch_A'", "5000");
	check("SELECT status || ',' || dispute_reason FROM payments WHERE "
	      "stripe_id = 'dp_A'", "lost,fraudulent");
	check("SELECT status || ',' || subscription_plan || ',' || "
	      "stripe_subscription_id FROM tenants", "past_due,starter,"
	      "sub_TALLYTEST");
	snprintf(want, sizeof(want), "%lld", BASE + 4200);
	check("SELECT extract(epoch FROM past_due_since)::bigint FROM tenants",
	      want);
	check("SELECT count(*) FROM invoices WHERE invoice_id = 'in_C'", "0");
	/* each signal once, whatever the order */
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'trial_ending'", "1");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'dispute'", "2");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'refund'", "1");
	check("SELECT count(*) FROM stripe_events", "18");
}

START_TEST(test_stripe_webhooks_shuffled_duplicates)
{
	static const char *const late[] = { "evt_dpA_created",
					    "evt_dpA_closed" };
	tally_stripe_sync *ss = new_sync();
	json_t *order[64];
	size_t i, n = 0, nd;
	unsigned seed = 1000u + (unsigned)_i;

	reset_state();
	fake_now_ms = (BASE + 5000) * 1000;
	/* every event twice (except the later in_B payment), shuffled; the
	 * dispute pair goes last (it is found through the charge's tenant),
	 * shuffled and duplicated among itself */
	for (i = 0; i < json_array_size(events); i++) {
		json_t *ev = json_array_get(events, i);
		const char *id = json_string_value(json_object_get(ev, "id"));

		if (strcmp(id, "evt_inB_paid") == 0 ||
		    strncmp(id, "evt_dpA", 7) == 0)
			continue;
		order[n++] = ev;
		order[n++] = ev;
	}
	srand(seed);
	for (i = n - 1; i > 0; i--) {
		size_t j = (size_t)rand() % (i + 1);
		json_t *t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	nd = n;
	for (i = 0; i < 4; i++)
		order[n++] = find_event(late[(i + seed) % 2]);
	for (i = 0; i < n; i++)
		(void)deliver(ss, order[i], NULL);
	ck_assert_uint_eq(nd, 32);
	check_final_state();
	tally_stripe_sync_free(ss);
}
END_TEST

/*
 * A finalized subscription-cycle invoice closes the usage period it bills
 * (billing_periods 'invoiced', for tally-aggregate's adjustments); its
 * draft does not, a later version keeps the row, and an invoice of another
 * billing reason (a mid-period update) closes nothing.
 */
START_TEST(test_stripe_webhooks_invoice_closes_period)
{
	tally_stripe_sync *ss = new_sync();
	json_t *upd;
	const char *outcome;

	reset_state();
	fake_now_ms = (BASE + 100000) * 1000;
	deliver(ss, find_event("evt_inA_created"), &outcome);
	check("SELECT count(*) FROM billing_periods", "0");
	deliver(ss, find_event("evt_inA_finalized"), &outcome);
	check("SELECT count(*) FROM billing_periods", "1");
	check("SELECT status || ',' || invoice_id || ',' || extract(epoch FROM"
	      " period_start)::bigint || ',' || extract(epoch FROM period_end)"
	      "::bigint || ',' || (closed_at IS NOT NULL) || ',' || tenant_id"
	      " FROM billing_periods",
	      "invoiced,in_A,1767227700,1769819700,true," TENANT);
	deliver(ss, find_event("evt_inA_paid"), &outcome);
	check("SELECT count(*) || ',' || min(invoice_id) FROM billing_periods",
	      "1,in_A");

	/* in_B as a mid-period update invoice: nothing closes */
	upd = json_deep_copy(find_event("evt_inB_finalized"));
	json_object_set_new(upd, "id", json_string("evt_inB_update"));
	json_object_set_new(json_object_get(json_object_get(upd, "data"),
					    "object"),
			    "billing_reason", json_string("subscription_update"));
	deliver(ss, upd, &outcome);
	json_decref(upd);
	check("SELECT count(*) FROM invoices WHERE invoice_id = 'in_B'", "1");
	check("SELECT count(*) FROM billing_periods", "1");
	tally_stripe_sync_free(ss);
}
END_TEST

/*
 * ... and tally-aggregate books usage of that period that arrives after
 * the finalization as an adjustment for the next invoice, never in the
 * invoiced period: the period the invoice closed (Stripe's seconds) is the
 * one the aggregator finds for the event (its milliseconds). Usage of the
 * same period before the close counted in the period itself.
 */
static void agg_one(tally_agg *agg, int64_t i, int64_t at, int64_t now,
		    tally_agg_stats *st)
{
	static int64_t off;
	msgpack_sbuffer sb;
	tally_agg_msg m = { 0 };
	tally_error err;
	agg_gen g;

	agg_gen_event(&g, 77, 10 * i + 8, at); /* an api.call */
	ck_assert_int_eq(tally_uuid_parse(g.re.ev.tenant_id, TENANT, 36), 0);
	g.re.ev.time_ms = at;
	agg_encode(&sb, &g.re);
	m.topic = "billing.usage.rated";
	m.partition = 0;
	m.offset = off++;
	m.payload = sb.data;
	m.len = sb.size;
	ck_assert_msg(tally_agg_process(agg, &m, 1, now, st, &err) == 0, "%s",
		      err.msg);
	msgpack_sbuffer_destroy(&sb);
}

START_TEST(test_stripe_webhooks_closed_period_late_usage)
{
	const int64_t pe = INT64_C(1769819700000);
	tally_stripe_sync *ss = new_sync();
	rd_kafka_topic_partition_list_t *l;
	tally_agg_opts o = { 0 };
	tally_agg_stats st;
	tally_agg *agg = NULL;
	tally_error err;
	const char *outcome;

	reset_state();
	testdb_sql(pg, "TRUNCATE usage_dedupe, usage_ledger, usage_hourly,"
		       " tenant_period_usage, usage_adjustments,"
		       " consumer_offsets");
	/* the subscription's period is the one the invoice will bill */
	testdb_sql(pg, "UPDATE tenants SET current_period_start ="
		       " to_timestamp(1767227700), current_period_end ="
		       " to_timestamp(1769819700)");
	/* the ledger's day partition of the period's last minutes */
	testdb_sql(pg, "CREATE TABLE IF NOT EXISTS usage_ledger_p20260131"
		       " PARTITION OF usage_ledger FOR VALUES FROM"
		       " ('2026-01-31 00:00+00') TO ('2026-02-01 00:00+00')");
	o.group = "tally.aggregate";
	o.lateness_ms = INT64_C(35) * 86400000;
	o.future_ms = 300000;
	ck_assert(tally_agg_new(&agg, pg, &o, &err) == 0);
	l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, "billing.usage.rated", 0);
	ck_assert_msg(tally_agg_assign(agg, l, &err) == 0, "%s", err.msg);
	rd_kafka_topic_partition_list_destroy(l);

	/* before the invoice is final: in the period */
	agg_one(agg, 1, pe - 120000, pe + 60000, &st);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.adjusted, 0);
	fake_now_ms = pe + 3600000;
	deliver(ss, find_event("evt_inA_finalized"), &outcome);
	/* after: an adjustment for the next invoice */
	agg_one(agg, 2, pe - 60000, pe + 3700000, &st);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.adjusted, 1);
	check("SELECT api_calls || ',' || extract(epoch FROM period_start)"
	      "::bigint FROM tenant_period_usage", "4,1767227700");
	check("SELECT kind || ',' || events || ',' || quantity || ',' ||"
	      " extract(epoch FROM period_start)::bigint || ',' ||"
	      " extract(epoch FROM period_end)::bigint FROM usage_adjustments",
	      "late_usage,1,4,1767227700,1769819700");
	tally_agg_free(agg);
	tally_stripe_sync_free(ss);
}
END_TEST

START_TEST(test_stripe_webhooks_dedupe_and_signature)
{
	tally_stripe_sync *ss = new_sync();
	json_t *ev;
	const char *outcome = NULL;
	char *body;
	tally_error err;
	int rc;

	reset_state();
	ev = find_event("evt_sub_created");
	ck_assert_int_eq(deliver(ss, ev, &outcome), 0);
	ck_assert_str_eq(outcome, "applied");
	ck_assert_int_eq(deliver(ss, ev, &outcome), TALLY_EDUPLICATE);
	/* an older event after a newer one is recorded, not applied */
	ck_assert_int_eq(deliver(ss, find_event("evt_sub_upgraded"), &outcome),
			 0);
	ck_assert_str_eq(outcome, "applied");
	ck_assert_int_eq(deliver(ss, find_event("evt_trial_will_end"),
				 &outcome), 0);
	ck_assert_str_eq(outcome, "stale");
	check("SELECT status FROM subscriptions", "active");
	/* tampered body: the carried signature no longer matches */
	body = json_dumps(find_event("evt_inA_created"), JSON_COMPACT);
	{
		char sig[TALLY_WEBHOOK_SIG_HEADER_MAX];

		tally_webhook_sign(sig, sizeof(sig), body, strlen(body),
				   "whsec_wrong", BASE);
		rc = tally_stripe_sync_event(ss, body, strlen(body), sig,
					     &outcome, &err);
	}
	ck_assert_msg(rc == TALLY_EINVALID, "a bad signature is refused");
	rc = tally_stripe_sync_event(ss, body, strlen(body), NULL, &outcome,
				     &err);
	ck_assert_msg(rc == TALLY_EINVALID, "a missing signature is refused");
	check("SELECT count(*) FROM stripe_events WHERE event_id = "
	      "'evt_inA_created'", "0");
	free(body);
	/* unknown customer: recorded, and tried again on redelivery */
	testdb_sql(pg, "UPDATE tenants SET stripe_customer_id = NULL");
	ck_assert_int_eq(deliver(ss, find_event("evt_inA_created"), &outcome),
			 0);
	ck_assert_str_eq(outcome, "unknown_tenant");
	testdb_sql(pg, "UPDATE tenants SET stripe_customer_id = "
		       "'cus_TALLYTEST'");
	ck_assert_int_eq(deliver(ss, find_event("evt_inA_created"), &outcome),
			 0);
	ck_assert_str_eq(outcome, "applied");
	tally_stripe_sync_free(ss);
}
END_TEST

START_TEST(test_stripe_webhooks_dunning_clock)
{
	tally_stripe_sync *ss = new_sync();
	static const char *const story[] = {
		"evt_sub_created", "evt_sub_upgraded", "evt_inB_created",
		"evt_inB_finalized", "evt_inB_failed",
	};
	tally_error err;
	size_t i;
	int n = -1;

	reset_state();
	for (i = 0; i < sizeof(story) / sizeof(story[0]); i++)
		(void)deliver(ss, find_event(story[i]), NULL);
	check("SELECT status FROM tenants", "past_due");
	/* 7 days minus a second: not yet */
	fake_now_ms = (BASE + 4200 + 7 * 86400 - 1) * 1000;
	ck_assert_int_eq(tally_stripe_sync_dunning(ss, &n, &err), 0);
	ck_assert_int_eq(n, 0);
	check("SELECT status FROM tenants", "past_due");
	fake_now_ms = (BASE + 4200 + 7 * 86400) * 1000;
	ck_assert_int_eq(tally_stripe_sync_dunning(ss, &n, &err), 0);
	ck_assert_int_eq(n, 1);
	check("SELECT status FROM tenants", "suspended");
	/* the next tick changes nothing and signals nothing new */
	ck_assert_int_eq(tally_stripe_sync_dunning(ss, &n, &err), 0);
	ck_assert_int_eq(n, 0);
	/* a redelivered failure does not move a suspended tenant back */
	(void)deliver(ss, find_event("evt_inB_failed"), NULL);
	check("SELECT status FROM tenants", "suspended");
	(void)deliver(ss, find_event("evt_inB_paid"), NULL);
	check("SELECT status FROM tenants", "active");
	check("SELECT string_agg(from_status || '>' || to_status || ':' || "
	      "reason, ' ' ORDER BY id) FROM tenant_status_transitions",
	      "active>trialing:subscription trialing>active:subscription "
	      "active>past_due:payment_failed "
	      "past_due>suspended:auto_suspend suspended>active:paid");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'dunning'", "2");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'payment_failed'", "1");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'payment_succeeded'", "1");
	check("SELECT past_due_since IS NULL FROM tenants", "t");
	tally_stripe_sync_free(ss);
}
END_TEST

static Suite *tally_stripe_webhooks_suite(void)
{
	Suite *s = suite_create("stripe_webhooks");
	TCase *tc = tcase_create("Mirror");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_stripe_webhooks_shuffled_duplicates, 0, 8);
	tcase_add_test(tc, test_stripe_webhooks_dedupe_and_signature);
	tcase_add_test(tc, test_stripe_webhooks_dunning_clock);
	tcase_add_test(tc, test_stripe_webhooks_invoice_closes_period);
	tcase_add_test(tc, test_stripe_webhooks_closed_period_late_usage);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_webhooks_suite)
