/*
 * test_invoice_usage.c - a period's usage on the tenant's Stripe invoice,
 * exactly once (src/stripe/invoice_sync.c, invoice_usage.c), against a
 * scripted stateful Stripe (stripe_scripted.h) and PostgreSQL:
 * - lifecycle: draft invoice.created -> the period closed, one item per
 *   line (per model, storage, late usage of the period before), amounts
 *   rounded once, adjustments marked with the invoice; redelivered: no
 *   new item; finalized, paid: finance_invoices and `tally report
 *   invoices` show no difference; usage arriving after the close goes on
 *   the next invoice, once;
 * - reordered (invoice.finalized before invoice.created), or finalized
 *   while the items are added: the lines become pending invoice items;
 * - a crash between two items (the 2nd call fails, or the 2nd item is
 *   created and its answer lost while Stripe forgot the key): the
 *   redelivery leaves one item per line;
 * - a period without usage: no item, no error;
 * - JPY and USD tenants: rounded to yen and to cents;
 * - a USD tenant's invoice drafted in JPY: no item (tally converts no
 *   currency), the run recorded currency_mismatch, an error logged,
 *   reported by reconcile and billed by --apply once the tenant's
 *   currency is the invoice's.
 */
#include "invoice_usage_support.h"
#include "tally/invoice_sync.h"

/* January for T: two models, an api call under a cent, storage, late
 * usage of December not yet invoiced (and one that was). */
static void january(const char *t)
{
	usage(t, P1 + 4 * 86400 + 36000, "ai.tokens", "openai", "gpt-4o",
	      "1.234567891234");
	usage(t, P1 + 9 * 86400, "ai.tokens", "openai", "gpt-4o",
	      "0.000000000001");
	usage(t, P1 + 20 * 86400, "ai.tokens", "anthropic", "claude",
	      "2.005");
	usage(t, P1 + 3600, "api.call", "", "", "0.004");
	usage(t, P2, "ai.tokens", "openai", "gpt-4o", "7"); /* February */
	usage(t, P1 - 3600, "ai.tokens", "openai", "gpt-4o", "5"); /* Dec */
	sql("INSERT INTO tenant_period_usage (tenant_id, period_start, "
	    "period_end, storage_cost, cost) VALUES ('%s', to_timestamp(%lld),"
	    " to_timestamp(%lld), 0.75, 0.75)", t, P1, P2);
	adjustment(t, P0, P1, "late_usage", "gpt-4o", "0.5", NULL);
	adjustment(t, P0, P1, "late_usage", "gpt-4o", "9", "in_old");
}

#define JAN_LINES                                                        \
	"late_usage:ai.tokens:openai:gpt-4o=50:%s,"                      \
	"usage:ai.tokens:anthropic:claude=201:%s,"                       \
	"usage:ai.tokens:openai:gpt-4o=123:%s,usage:api.call=0:zero,"    \
	"usage:storage.snapshot=75:%s"

static void jan_lines(const char *inv, const char *st)
{
	char want[600];

	snprintf(want, sizeof(want), JAN_LINES, st, st, st, st);
	check(lines_sql, inv, want);
}

static void one_item_per_line(const char *t)
{
	ck_assert_int_eq(ss_items_for(t, "late_usage:ai.tokens:openai:gpt-4o"),
			 1);
	ck_assert_int_eq(ss_items_for(t, "usage:ai.tokens:anthropic:claude"),
			 1);
	ck_assert_int_eq(ss_items_for(t, "usage:ai.tokens:openai:gpt-4o"), 1);
	ck_assert_int_eq(ss_items_for(t, "usage:storage.snapshot"), 1);
	ck_assert_int_eq(ss_items_for(t, "usage:api.call"), 0);
}

/* `tally report invoices --format csv`: the columns of finance_invoices
 * for invoice inv: status, currency, plan, usage exact and rounded,
 * amount due and paid, difference. */
static void report_row(const char *inv, const char *want)
{
	const char *bin = getenv("TALLY_BIN_DIR");
	const char *slash = strrchr(testdb_admin, '/');
	char cmd[2048], line[1024], got[1024] = "";
	FILE *fp;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%.*s/%s' %s/tally report "
		 "invoices --format csv --tenant %s", (int)(slash - testdb_admin),
		 testdb_admin, testdb_name, bin ? bin : TALLY_BINARY_DIR, T1);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	ck_assert_ptr_nonnull(fgets(line, sizeof(line), fp));
	ck_assert_str_eq(line, "invoice_id,tenant_id,tenant,number,status,"
			 "currency,period_start,period_end,plan_amount,"
			 "usage_exact,usage_rounded,amount_due,amount_paid,"
			 "amount_remaining,difference,paid_at\n");
	while (fgets(line, sizeof(line), fp) != NULL) {
		char *f[16], *p = line;
		int n = 0;

		if (strncmp(line, inv, strlen(inv)) != 0)
			continue;
		/* no commas inside these fields; empty ones count */
		line[strcspn(line, "\n")] = '\0';
		while (n < 16) {
			f[n++] = p;
			p = strchr(p, ',');
			if (p == NULL)
				break;
			*p++ = '\0';
		}
		ck_assert_int_ge(n, 15);
		snprintf(got, sizeof(got), "%s,%s,%s,%s,%s,%s,%s,%s", f[4],
			 f[5], f[8], f[9], f[10], f[11], f[12], f[14]);
	}
	ck_assert_int_eq(pclose(fp), 0);
	ck_assert_str_eq(got, want);
}

START_TEST(test_invoice_usage_lifecycle)
{
	world w;
	tally_error err;

	january(T1);
	world_start(&w, NULL);
	ss_invoice("in_t1_jan", "draft");
	deliver_ok(&w, "evt_t1_created", "invoice.created", "in_t1_jan",
		   "cus_t1", "draft", P1, P2, 9900);
	ck_assert_int_eq(posts(), 4);
	one_item_per_line(T1);
	jan_lines("in_t1_jan", "created");
	check("SELECT exact_amount FROM invoice_usage_lines WHERE "
	      "line_key = 'usage:ai.tokens:openai:gpt-4o' AND invoice_id = $1",
	      "in_t1_jan", "1.234567891235");
	check("SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = $1"
	      " AND status = 'created' AND attached_invoice = invoice_id AND "
	      "stripe_item_id LIKE 'ii_scripted_%'", "in_t1_jan", "4");
	pthread_mutex_lock(&ss_srv.mu);
	ck_assert_str_eq(ss_srv.items[0].invoice, "in_t1_jan");
	ck_assert_str_eq(ss_srv.items[0].currency, "usd");
	ck_assert_int_eq(ss_srv.items[0].period_start, P1);
	ck_assert_int_eq(ss_srv.items[0].period_end, P2);
	pthread_mutex_unlock(&ss_srv.mu);
	/* closed at draft time; December's open adjustment on this invoice */
	check("SELECT status || ':' || invoice_id FROM billing_periods WHERE "
	      "tenant_id = $1 AND period_start = to_timestamp(1767225600)", T1,
	      "invoiced:in_t1_jan");
	check("SELECT string_agg(invoice_id, ',' ORDER BY invoice_id) FROM "
	      "usage_adjustments WHERE tenant_id = $1", T1, "in_old,in_t1_jan");

	/* redelivered, and a second event for the same draft: nothing new */
	ck_assert_int_eq(deliver(&w, "evt_t1_created", "invoice.created",
				 "in_t1_jan", "cus_t1", "draft", "usd", P1, P2,
				 9900, &err), TALLY_EDUPLICATE);
	deliver_ok(&w, "evt_t1_created_b", "invoice.created", "in_t1_jan",
		   "cus_t1", "draft", P1, P2, 9900);
	ck_assert_int_eq(posts(), 4);

	/* finalized with the items, paid: finance sees no difference */
	ss_invoice("in_t1_jan", "open");
	deliver_ok(&w, "evt_t1_final", "invoice.finalized", "in_t1_jan",
		   "cus_t1", "open", P1, P2, 9900 + 449);
	deliver_ok(&w, "evt_t1_paid", "invoice.paid", "in_t1_jan", "cus_t1",
		   "paid", P1, P2, 9900 + 449);
	check("SELECT concat_ws('|', status, trim_scale(usage_exact), "
	      "trim_scale(usage_rounded), trim_scale(amount_paid), "
	      "trim_scale(difference)) FROM finance_invoices WHERE "
	      "invoice_id = $1", "in_t1_jan",
	      "paid|4.493567891235|4.49|103.49|0");

	/* January usage arriving after the close: booked by the aggregator
	 * as an adjustment (and in usage_hourly), billed in February */
	usage(T1, P1 + 25 * 86400, "ai.tokens", "openai", "gpt-4o", "0.25");
	adjustment(T1, P1, P2, "late_usage", "gpt-4o", "0.25", NULL);
	ss_invoice("in_t1_feb", "draft");
	deliver_ok(&w, "evt_t1_feb", "invoice.created", "in_t1_feb", "cus_t1",
		   "draft", P2, P3, 9900);
	check(lines_sql, "in_t1_feb",
	      "late_usage:ai.tokens:openai:gpt-4o=25:created,"
	      "usage:ai.tokens:openai:gpt-4o=700:created");
	jan_lines("in_t1_jan", "created");
	report_row("in_t1_jan",
		   "paid,USD,99.00,4.493567891235,4.49,103.49,103.49,0.00");
	world_stop(&w);
}
END_TEST

START_TEST(test_invoice_usage_finalized_first)
{
	world w;

	january(T2);
	world_start(&w, NULL);
	/* Stripe finalized the draft before tally got to it, and delivered
	 * invoice.finalized first */
	ss_invoice("in_t2_jan", "open");
	deliver_ok(&w, "evt_t2_final", "invoice.finalized", "in_t2_jan",
		   "cus_t2", "open", P1, P2, 9900);
	ck_assert_int_eq(posts(), 0);
	deliver_ok(&w, "evt_t2_created", "invoice.created", "in_t2_jan",
		   "cus_t2", "draft", P1, P2, 9900);
	ck_assert_int_eq(posts(), 4);
	one_item_per_line(T2);
	jan_lines("in_t2_jan", "pending_item");
	check("SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = $1"
	      " AND attached_invoice IS NULL AND stripe_item_id IS NOT NULL",
	      "in_t2_jan", "4");
	pthread_mutex_lock(&ss_srv.mu);
	ck_assert_str_eq(ss_srv.items[0].invoice, "");
	pthread_mutex_unlock(&ss_srv.mu);
	world_stop(&w);
}
END_TEST

/* after_forgotten: the 2nd item is created but its answer lost, and
 * Stripe no longer knows the key when the event comes again (only the
 * lookup finds the item); else the 2nd call fails before Stripe creates
 * anything. */
/* Stripe finalizes the draft while tally adds the 2nd item: the first
 * stays on the invoice, the rest become pending items, none is lost. */
START_TEST(test_invoice_usage_finalized_midway)
{
	world w;

	usage(T13, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "1.5");
	usage(T13, P1 + 7200, "api.call", "", "", "0.25");
	world_start(&w, NULL);
	ss_invoice("in_t13_jan", "draft");
	pthread_mutex_lock(&ss_srv.mu);
	ss_srv.finalize_at = 2;
	pthread_mutex_unlock(&ss_srv.mu);
	deliver_ok(&w, "evt_t13", "invoice.created", "in_t13_jan", "cus_t13",
		   "draft", P1, P2, 9900);
	check("SELECT string_agg(status || ':' || coalesce(attached_invoice, "
	      "'-'), ',' ORDER BY line_key) FROM invoice_usage_lines WHERE "
	      "invoice_id = $1", "in_t13_jan",
	      "created:in_t13_jan,pending_item:-");
	ck_assert_int_eq(ss_items_for(T13, "usage:api.call"), 1);
	ck_assert_int_eq(posts(), 3); /* the rejected one, then pending */
	world_stop(&w);
}
END_TEST

static void crash_case(const char *t, const char *cus, const char *inv,
		       bool after_forgotten)
{
	world w;
	tally_error err;
	int rc;

	january(t);
	world_start(&w, NULL);
	ss_invoice(inv, "draft");
	pthread_mutex_lock(&ss_srv.mu);
	if (after_forgotten)
		ss_srv.fail_after = 2;
	else
		ss_srv.fail_before = 2;
	pthread_mutex_unlock(&ss_srv.mu);
	rc = deliver(&w, inv, "invoice.created", inv, cus, "draft",
		     "usd", P1, P2, 9900, &err);
	ck_assert_msg(rc == TALLY_ETRANSIENT, "delivered again later: %d",
		      rc);
	check("SELECT count(*) FROM stripe_events WHERE event_id = $1",
	      inv, "0");
	check("SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = $1"
	      " AND status = 'created'", inv, "1");
	pthread_mutex_lock(&ss_srv.mu);
	ss_srv.forget_keys = after_forgotten;
	pthread_mutex_unlock(&ss_srv.mu);
	deliver_ok(&w, inv, "invoice.created", inv, cus, "draft", P1, P2,
		   9900); /* the same event again */
	one_item_per_line(t);
	jan_lines(inv, "created");
	pthread_mutex_lock(&ss_srv.mu);
	ck_assert_int_eq(ss_srv.nitems, 4);
	ck_assert_msg(ss_srv.item_lists == 1,
		      "a line tried before is looked up first");
	pthread_mutex_unlock(&ss_srv.mu);
	world_stop(&w);
}

START_TEST(test_invoice_usage_crash_between_items)
{
	crash_case(T3, "cus_t3", "in_t3_jan", false);
}
END_TEST

START_TEST(test_invoice_usage_crash_key_forgotten)
{
	crash_case(T4, "cus_t4", "in_t4_jan", true);
}
END_TEST

START_TEST(test_invoice_usage_empty_period)
{
	world w;

	world_start(&w, NULL);
	ss_invoice("in_t5_jan", "draft");
	deliver_ok(&w, "evt_t5", "invoice.created", "in_t5_jan", "cus_t5",
		   "draft", P1, P2, 9900);
	ck_assert_int_eq(posts(), 0);
	check(lines_sql, "in_t5_jan", "");
	check("SELECT count(*) FROM invoice_usage_runs WHERE invoice_id = $1",
	      "in_t5_jan", "1");
	check("SELECT status FROM billing_periods WHERE tenant_id = $1", T5,
	      "invoiced");
	world_stop(&w);
}
END_TEST

START_TEST(test_invoice_usage_jpy_and_usd)
{
	world w;
	tally_error err;

	usage(T6, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "150.5");
	usage(T6, P1 + 7200, "api.call", "", "", "20.49");
	usage(T7, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "150.5");
	usage(T7, P1 + 7200, "api.call", "", "", "20.49");
	world_start(&w, NULL);
	ss_invoice("in_t6_jan", "draft");
	ss_invoice("in_t7_jan", "draft");
	ck_assert_int_eq(deliver(&w, "evt_t6", "invoice.created", "in_t6_jan",
				 "cus_t6", "draft", "jpy", P1, P2, 9800, &err),
			 0);
	deliver_ok(&w, "evt_t7", "invoice.created", "in_t7_jan", "cus_t7",
		   "draft", P1, P2, 9900);
	check(lines_sql, "in_t6_jan",
	      "usage:ai.tokens:openai:gpt-4o=151:created,"
	      "usage:api.call=20:created");
	check(lines_sql, "in_t7_jan",
	      "usage:ai.tokens:openai:gpt-4o=15050:created,"
	      "usage:api.call=2049:created");
	check("SELECT string_agg(DISTINCT currency, ',') FROM "
	      "invoice_usage_lines WHERE invoice_id = $1", "in_t6_jan", "JPY");
	world_stop(&w);
}
END_TEST

/* tally stripe reconcile's usage part on the world's Stripe; *n the
 * differences, the caller frees the output. */
static char *reconcile(world *w, bool apply, int *n)
{
	tally_error err;
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);
	int rc;

	ck_assert_ptr_nonnull(out);
	rc = tally_invoice_reconcile(pg, w->stripe, apply, out, n, &err);
	fclose(out);
	ck_assert_msg(rc == 0, "reconcile: %d %s", rc, rc ? err.msg : "");
	return buf;
}

START_TEST(test_invoice_usage_currency_mismatch)
{
	const char *mismatch = "usage_currency_mismatch\t" T12 "\tin_t12_jan"
			       "\tcurrency\tpostgres=USD\tstripe=JPY\n";
	world w;
	tally_error err;
	log_capture lc;
	char *log, *line, *out;
	int rc, n = -1;

	/* the usage of a USD tenant: dollars */
	usage(T12, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "2.5");
	adjustment(T12, P0, P1, "late_usage", "gpt-4o", "0.5", NULL);
	/* only this tenant's invoices are on this scripted Stripe */
	sql("DELETE FROM invoice_usage_runs WHERE tenant_id <> '%s'", T12);
	world_start(&w, NULL);
	ss_invoice("in_t12_jan", "draft");
	log_capture_start(&lc);
	rc = deliver(&w, "evt_t12", "invoice.created", "in_t12_jan",
		     "cus_t12", "draft", "jpy", P1, P2, 9800, &err);
	log = log_capture_end(&lc);
	ck_assert_msg(rc == 0, "mirrored: %d %s", rc, rc ? err.msg : "");
	/* $2.50 is not billed as 3 yen */
	ck_assert_int_eq(posts(), 0);
	check(lines_sql, "in_t12_jan", "");
	check("SELECT status || ':' || currency FROM invoice_usage_runs WHERE"
	      " invoice_id = $1", "in_t12_jan", "currency_mismatch:JPY");
	check("SELECT count(*) FROM stripe_events WHERE event_id = $1",
	      "evt_t12", "1");
	check("SELECT status FROM invoices WHERE invoice_id = $1",
	      "in_t12_jan", "draft");
	/* nothing taken: the adjustment waits, the period is closed */
	check("SELECT count(*) FROM usage_adjustments WHERE tenant_id = $1 "
	      "AND invoiced_at IS NULL", T12, "1");
	check("SELECT status || ':' || invoice_id FROM billing_periods WHERE "
	      "tenant_id = $1", T12, "invoiced:in_t12_jan");
	line = strstr(log, "\"event\":\"stripe.usage_currency_mismatch\"");
	ck_assert_msg(line != NULL, "log: %s", log);
	while (line > log && line[-1] != '\n')
		line--;
	line[strcspn(line, "\n")] = '\0';
	ck_assert_msg(strstr(line, "\"level\":\"error\"") &&
		      strstr(line, "\"tenant_id\":\"" T12 "\",\"invoice_id\":"
			     "\"in_t12_jan\",\"invoice_currency\":\"JPY\","
			     "\"tenant_currency\":\"USD\""), "%s", line);
	free(log);

	/* reported; --apply bills nothing while the currencies differ */
	out = reconcile(&w, false, &n);
	ck_assert_str_eq(out, mismatch);
	ck_assert_int_eq(n, 1);
	free(out);
	free(reconcile(&w, true, &n));
	ck_assert_int_eq(n, 1);
	ck_assert_int_eq(posts(), 0);
	check(lines_sql, "in_t12_jan", "");

	/* the tenant's prices were yen all along: its currency fixed, the
	 * period is billed on the draft, in yen, once */
	sql("UPDATE tenants SET currency = 'JPY' WHERE id = '%s'", T12);
	out = reconcile(&w, true, &n);
	ck_assert_str_eq(out, "usage_currency_mismatch\t" T12 "\tin_t12_jan"
			 "\tcurrency\tpostgres=JPY\tstripe=JPY\n");
	free(out);
	check(lines_sql, "in_t12_jan",
	      "late_usage:ai.tokens:openai:gpt-4o=1:created,"
	      "usage:ai.tokens:openai:gpt-4o=3:created");
	check("SELECT status FROM invoice_usage_runs WHERE invoice_id = $1",
	      "in_t12_jan", "computed");
	ck_assert_int_eq(posts(), 2);
	pthread_mutex_lock(&ss_srv.mu);
	ck_assert_str_eq(ss_srv.items[0].currency, "jpy");
	ck_assert_str_eq(ss_srv.items[0].invoice, "in_t12_jan");
	pthread_mutex_unlock(&ss_srv.mu);
	out = reconcile(&w, true, &n);
	ck_assert_str_eq(out, "");
	ck_assert_int_eq(n, 0);
	free(out);
	ck_assert_int_eq(posts(), 2);
	world_stop(&w);
}
END_TEST

static void setup(void)
{
	usage_db_setup("tally_invoice_usage");
}

static Suite *invoice_usage_suite(void)
{
	Suite *s = suite_create("invoice_usage");
	TCase *tc = tcase_create("ScriptedStripe");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, usage_db_teardown);
	tcase_add_test(tc, test_invoice_usage_lifecycle);
	tcase_add_test(tc, test_invoice_usage_finalized_first);
	tcase_add_test(tc, test_invoice_usage_finalized_midway);
	tcase_add_test(tc, test_invoice_usage_crash_between_items);
	tcase_add_test(tc, test_invoice_usage_crash_key_forgotten);
	tcase_add_test(tc, test_invoice_usage_empty_period);
	tcase_add_test(tc, test_invoice_usage_jpy_and_usd);
	/* last: it drops the other tenants' runs */
	tcase_add_test(tc, test_invoice_usage_currency_mismatch);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(invoice_usage_suite)
