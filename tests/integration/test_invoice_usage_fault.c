/*
 * test_invoice_usage_fault.c - the renewal webhook's lifecycle through the
 * real programs: signed events POSTed to a running tally-relay, a running
 * tally-stripe on the scripted Stripe (billing_pipeline_support.h). The
 * usage rows are booked directly (the pipeline before them is
 * test_invoice_usage_pipeline.c); test_invoice_usage.c covers the same
 * cases in one process, calling the library.
 *
 * - invoice.created delivered twice (the same event, two POSTs): one item
 *   per line;
 * - invoice.finalized before invoice.created (Stripe finalized the draft
 *   first): one pending invoice item per line, none on the invoice;
 * - tally-stripe killed with SIGKILL between two items: Stripe holds the
 *   2nd POST /v1/invoiceitems for seconds, the process is killed
 *   meanwhile, Stripe then creates that item (its answer goes nowhere);
 *   restarted, the event comes again from Kafka: one item per line.
 *
 * The scripted Stripe remembers no Idempotency-Key here (as after 24
 * hours), so none of this rests on Stripe's replay (covered in
 * test_invoice_usage.c): only tally-stripe's own records (the run, the
 * lines' status, the look-up by metadata) keep it to one item per line.
 *
 * Kills only the tally-stripe it started (label disruptive: runs alone).
 */
#include "billing_pipeline_support.h"

#define F1 "f1110000-0000-4000-8000-000000000001"
#define F2 "f1110000-0000-4000-8000-000000000002"
#define F3 "f1110000-0000-4000-8000-000000000003"

#define KEY_CLAUDE "usage:ai.tokens:anthropic:claude"
#define KEY_GPT "usage:ai.tokens:openai:gpt-4o"
#define KEY_API "usage:api.call"

/* January: three lines (sent in this order) */
static void january(const char *t)
{
	usage(t, P1 + 7200, "ai.tokens", "anthropic", "claude", "2.25");
	usage(t, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "1.5");
	usage(t, P1 + 86400, "api.call", "", "", "0.25");
}

/* Exactly one item per line on Stripe, with its amount. */
static void one_item_per_line(const char *t, const char *inv)
{
	static const char *const keys[3] = { KEY_CLAUDE, KEY_GPT, KEY_API };
	static const long long amounts[3] = { 225, 150, 25 };
	long long amount;
	int i;

	for (i = 0; i < 3; i++) {
		amount = 0;
		ck_assert_msg(ss_items_of(t, inv, keys[i], &amount) == 1,
			      "%s %s: %d items", inv, keys[i],
			      ss_items_of(t, inv, keys[i], NULL));
		ck_assert_int_eq(amount, amounts[i]);
	}
	ck_assert_int_eq(ss_items_of(t, inv, NULL, NULL), 3);
}

/* Wait (60 s at most) until a counter of the scripted Stripe reaches n. */
static void wait_count(const int *counter, int n, const char *what)
{
	int i;

	for (i = 0; i < 3000 && ss_count(counter) < n; i++) {
		pl_check_alive();
		tally_sleep_ms(20);
	}
	ck_assert_msg(ss_count(counter) >= n, "waited 60 s for %s", what);
}

static void invoice_created(const char *evt, const char *inv,
			    const char *cus)
{
	pl_webhook(evt, "invoice.created", inv, cus, "draft", "usd", P1, P2);
}

START_TEST(test_invoice_usage_fault)
{
	int at;

	january(F1);
	january(F2);
	january(F3);
	ss_start();
	/* Stripe remembers no Idempotency-Key (as after 24 hours): one item
	 * per line must come from what tally-stripe records */
	pthread_mutex_lock(&ss_srv.mu);
	ss_srv.forget_keys = true;
	pthread_mutex_unlock(&ss_srv.mu);
	pl_write_config();
	pl_start(PL_RELAY);
	pl_start(PL_STRIPE);
	pl_wait_relay();

	/* the same invoice.created delivered twice */
	ss_invoice("in_f1", "draft");
	invoice_created("evt_f1", "in_f1", "cus_f1");
	invoice_created("evt_f1", "in_f1", "cus_f1");

	/* finalized first: Stripe finalized the draft before tally saw it */
	ss_invoice("in_f2", "open");
	pl_webhook("evt_f2_final", "invoice.finalized", "in_f2", "cus_f2",
		   "open", "usd", P1, P2);
	invoice_created("evt_f2", "in_f2", "cus_f2");
	pl_wait_event("evt_f2", 90); /* one partition: evt_f1 twice before */
	one_item_per_line(F1, "in_f1");
	check(lines_sql, "in_f1", KEY_CLAUDE "=225:created," KEY_GPT
	      "=150:created," KEY_API "=25:created");
	one_item_per_line(F2, "in_f2");
	check(lines_sql, "in_f2", KEY_CLAUDE "=225:pending_item," KEY_GPT
	      "=150:pending_item," KEY_API "=25:pending_item");
	check("SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = $1"
	      " AND attached_invoice IS NULL", "in_f2", "3");

	/* SIGKILL while Stripe holds the 2nd item */
	ss_invoice("in_f3", "draft");
	pthread_mutex_lock(&ss_srv.mu);
	at = ss_srv.item_arrivals + 2;
	ss_srv.delay_at = at;
	ss_srv.delay_ms = 4000;
	pthread_mutex_unlock(&ss_srv.mu);
	invoice_created("evt_f3", "in_f3", "cus_f3");
	wait_count(&ss_srv.item_arrivals, at, "the 2nd item's POST");
	pl_stop(PL_STRIPE, SIGKILL);
	check("SELECT count(*) FROM stripe_events WHERE event_id = $1",
	      "evt_f3", "0");
	check("SELECT string_agg(status || ':' || attempts, ',' ORDER BY "
	      "line_key) FROM invoice_usage_lines WHERE invoice_id = $1",
	      "in_f3", "created:1,pending:1,pending:0");
	wait_count(&ss_srv.delayed_done, 1, "Stripe creating the held item");
	ck_assert_int_eq(ss_items_of(F3, "in_f3", NULL, NULL), 2);

	pl_start(PL_STRIPE);
	pl_wait_event("evt_f3", 120);
	one_item_per_line(F3, "in_f3");
	check(lines_sql, "in_f3", KEY_CLAUDE "=225:created," KEY_GPT
	      "=150:created," KEY_API "=25:created");
	ck_assert_msg(ss_count(&ss_srv.item_lists) >= 1,
		      "the line tried before is looked up first");
	/* nothing else moved meanwhile */
	one_item_per_line(F1, "in_f1");
	one_item_per_line(F2, "in_f2");
	pl_stop_all();
	ss_stop();
}
END_TEST

static void setup(void)
{
	pl_setup("tally_usage_fault");
	testdb_tenant(pg, F1, "fault-1", "cus_f1");
	testdb_tenant(pg, F2, "fault-2", "cus_f2");
	testdb_tenant(pg, F3, "fault-3", "cus_f3");
}

static Suite *invoice_usage_fault_suite(void)
{
	Suite *s = suite_create("invoice_usage_fault");
	TCase *tc = tcase_create("Programs");

	tcase_set_timeout(tc, 600);
	tcase_add_unchecked_fixture(tc, setup, pl_teardown);
	tcase_add_test(tc, test_invoice_usage_fault);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(invoice_usage_fault_suite)
