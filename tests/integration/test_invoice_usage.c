/*
 * test_invoice_usage.c - a period's usage on the tenant's Stripe invoice,
 * exactly once (src/stripe/invoice_sync.c, invoice_usage.c), against a
 * scripted stateful Stripe (stripe_scripted.h) and PostgreSQL:
 * - lifecycle: draft invoice.created -> the period closed, one item per
 *   line (per model, storage, late usage of the period before), amounts
 *   rounded once, adjustments marked with the invoice; redelivered: no
 *   new item; finalized, paid: finance_invoices shows no difference; usage
 *   arriving after the close goes on the next invoice, once;
 * - reordered (invoice.finalized before invoice.created): the invoice is
 *   no longer a draft, the lines become pending invoice items;
 * - a crash between two items (the 2nd item created, its answer lost):
 *   the redelivery leaves one item per line, by Stripe's idempotency and,
 *   after Stripe forgot the key, by looking the item up;
 * - a period without usage: no item, no error;
 * - JPY and USD tenants: rounded to yen and to cents;
 * - two tenants sending the same command id both succeed (the tenant is
 *   part of every Idempotency-Key);
 * - the request shapes against stripe-mock.
 */
#include "stripe_testdb.h"
#include "aggregate_support.h"
#include "stripe_scripted.h"
#include "tally/aggregate.h"
#include "tally/event.h"
#include "tally/stripe_sync.h"

#include <stdarg.h>
#include "tally/invoice_sync.h"
#include "tally/plan_setup.h"

#define T1 "b1110000-0000-4000-8000-000000000001"
#define T2 "b1110000-0000-4000-8000-000000000002"
#define T3 "b1110000-0000-4000-8000-000000000003"
#define T4 "b1110000-0000-4000-8000-000000000004"
#define T5 "b1110000-0000-4000-8000-000000000005"
#define T6 "b1110000-0000-4000-8000-000000000006"
#define T7 "b1110000-0000-4000-8000-000000000007"
#define T8 "b1110000-0000-4000-8000-000000000008"
#define T9 "b1110000-0000-4000-8000-000000000009"
#define T10 "b1110000-0000-4000-8000-000000000010"
#define T11 "b1110000-0000-4000-8000-000000000011"
#define T12 "b1110000-0000-4000-8000-000000000012"
#define T13 "b1110000-0000-4000-8000-000000000013"

/* December 2025, January 2026, February 2026 (UTC) */
#define P0 1764547200LL
#define P1 1767225600LL
#define P2 1769904000LL
#define P3 1772323200LL

static tally_pg *pg;
static tally_config *cfg;

static void sql(const char *fmt, ...) TALLY_PRINTF(1, 2);
static void sql(const char *fmt, ...)
{
	char q[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	testdb_sql(pg, q);
}

static void check(const char *q, const char *arg, const char *want)
{
	char got[2048];

	testdb_get(pg, got, sizeof(got), q, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]:\n want '%s'\n got  '%s'",
		      q, arg ? arg : "", want, got);
}

/* One hour of usage as tally-aggregate books it. */
static void usage(const char *t, long long hour, const char *meter,
		  const char *provider, const char *model, const char *cost)
{
	sql("INSERT INTO usage_hourly (tenant_id, hour, meter, provider, "
	    "model, events, cost) VALUES ('%s', to_timestamp(%lld), '%s', "
	    "'%s', '%s', 1, %s) ON CONFLICT (tenant_id, hour, meter, provider,"
	    " model) DO UPDATE SET cost = usage_hourly.cost + EXCLUDED.cost",
	    t, hour, meter, provider, model, cost);
}

static void adjustment(const char *t, long long ps, long long pe,
		       const char *kind, const char *model, const char *cost,
		       const char *invoiced)
{
	sql("INSERT INTO usage_adjustments (tenant_id, period_start, "
	    "period_end, kind, meter, provider, model, cost, invoiced_at, "
	    "invoice_id) VALUES ('%s', to_timestamp(%lld), to_timestamp(%lld),"
	    " '%s', 'ai.tokens', 'openai', '%s', %s, %s, %s%s%s)", t, ps, pe,
	    kind, model, cost, invoiced ? "now()" : "NULL",
	    invoiced ? "'" : "", invoiced ? invoiced : "NULL",
	    invoiced ? "'" : "");
}

typedef struct world {
	tally_stripe *stripe;
	tally_stripe_sync *ss;
} world;

static void world_start(world *w, const char *base)
{
	tally_stripe_opts o = { 0 };
	tally_stripe_sync_opts so = { 0 };
	tally_error err;

	if (base == NULL) {
		ss_start();
		base = ss_base;
	}
	o.api_base = base;
	o.secret_key = "sk_test_123"; /* stripe-mock wants this shape */
	o.api_version = "2024-06-20";
	o.timeout_ms = 5000;
	o.max_retries = 0; /* a 500 ends the call: the crash cases */
	ck_assert_int_eq(tally_stripe_new(&w->stripe, &o, &err), 0);
	so.pg = pg;
	so.cfg = cfg;
	so.stripe = w->stripe;
	ck_assert_int_eq(tally_stripe_sync_new(&w->ss, &so, &err), 0);
}

static void world_stop(world *w)
{
	tally_stripe_sync_free(w->ss);
	tally_stripe_free(w->stripe);
	ss_stop();
}

/* Deliver an invoice event (unsigned: the world has no secrets). */
static int deliver(world *w, const char *evt, const char *type,
		   const char *inv, const char *customer, const char *status,
		   const char *currency, long long ps, long long pe,
		   long long total, tally_error *err)
{
	json_t *ev = json_pack(
		"{s:s, s:s, s:s, s:I, s:{s:{s:s, s:s, s:s, s:s, s:s, s:s, "
		"s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:s, s:o, "
		"s:b}}}}", "id", evt, "object", "event", "type", type,
		"created", (json_int_t)pe + 60, "data", "object", "id", inv,
		"object", "invoice", "customer", customer, "subscription",
		"sub_usage", "status", status, "billing_reason",
		"subscription_cycle", "currency", currency, "period_start",
		(json_int_t)ps, "period_end", (json_int_t)pe, "created",
		(json_int_t)pe, "amount_due", (json_int_t)total, "amount_paid",
		(json_int_t)(strcmp(status, "paid") == 0 ? total : 0),
		"amount_remaining",
		(json_int_t)(strcmp(status, "paid") == 0 ? 0 : total),
		"subtotal", (json_int_t)total, "total", (json_int_t)total,
		"lines", "object", "list", "data", json_array(), "has_more", 0);
	char *body = json_dumps(ev, JSON_COMPACT);
	const char *outcome = NULL;
	int rc;

	rc = tally_stripe_sync_event(w->ss, body, strlen(body), NULL,
				     &outcome, err);
	free(body);
	json_decref(ev);
	return rc;
}

static void deliver_ok(world *w, const char *evt, const char *type,
		       const char *inv, const char *customer,
		       const char *status, long long ps, long long pe,
		       long long total)
{
	tally_error err;
	int rc = deliver(w, evt, type, inv, customer, status, "usd", ps, pe,
			 total, &err);

	ck_assert_msg(rc == 0, "%s %s: %d %s", type, evt, rc,
		      rc ? err.msg : "");
}

static int posts(void)
{
	int n;

	pthread_mutex_lock(&ss_srv.mu);
	n = ss_srv.item_posts;
	pthread_mutex_unlock(&ss_srv.mu);
	return n;
}

static const char lines_sql[] =
	"SELECT string_agg(line_key || '=' || amount_minor || ':' || status,"
	" ',' ORDER BY line_key) FROM invoice_usage_lines WHERE invoice_id = $1";

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

static tally_command customer_cmd(const char *id, const char *tenant)
{
	tally_command c;

	memset(&c, 0, sizeof(c));
	c.id.ptr = id;
	c.id.len = (uint32_t)strlen(id);
	c.type = TALLY_CMD_CREATE_CUSTOMER;
	ck_assert_int_eq(tally_uuid_parse(c.tenant_id, tenant,
					  (uint32_t)strlen(tenant)), 0);
	c.time_ms = 1767225600000LL;
	return c;
}

START_TEST(test_stripe_same_command_id_two_tenants)
{
	world w;
	tally_command a = customer_cmd("cmd-same-id", T8);
	tally_command b = customer_cmd("cmd-same-id", T9);
	tally_error err;
	int rc;

	world_start(&w, NULL);
	rc = tally_stripe_sync_command(w.ss, &a, &err);
	ck_assert_msg(rc == 0, "first tenant: %d %s", rc, rc ? err.msg : "");
	rc = tally_stripe_sync_command(w.ss, &b, &err);
	ck_assert_msg(rc == 0, "second tenant: %d %s", rc, rc ? err.msg : "");
	check("SELECT string_agg(status, ',') FROM billing_commands WHERE "
	      "command_id = $1", "cmd-same-id", "succeeded,succeeded");
	check("SELECT count(DISTINCT stripe_customer_id) FROM tenants WHERE "
	      "id IN ('" T8 "', '" T9 "')", NULL, "2");
	world_stop(&w);
}
END_TEST

START_TEST(test_invoice_usage_stripe_mock)
{
	const char *base = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	world w;
	tally_error err;
	int rc;

	usage(T10, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "1.5");
	world_start(&w, base);
	rc = deliver(&w, "evt_t10", "invoice.created", "in_t10_jan",
		     "cus_t10", "draft", "usd", P1, P2, 9900, &err);
	ck_assert_msg(rc == 0, "stripe-mock: %d %s", rc, rc ? err.msg : "");
	/* stripe-mock validated the parameters and answered an item */
	check("SELECT status IN ('created', 'pending_item') AND "
	      "stripe_item_id LIKE 'ii_%' FROM invoice_usage_lines WHERE "
	      "invoice_id = $1", "in_t10_jan", "t");
	world_stop(&w);
}
END_TEST

START_TEST(test_invoice_usage_reconcile)
{
	world w;
	tally_error err;
	char *buf = NULL;
	size_t len = 0;
	FILE *out;
	int n = -1;

	usage(T11, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "1.5");
	usage(T11, P1 + 7200, "api.call", "", "", "0.25");
	/* only this tenant's invoices are on this scripted Stripe */
	testdb_sql(pg, "DELETE FROM invoice_usage_runs WHERE tenant_id <> '"
		   T11 "'");
	world_start(&w, NULL);
	ss_invoice("in_t11_jan", "draft");
	deliver_ok(&w, "evt_t11", "invoice.created", "in_t11_jan", "cus_t11",
		   "draft", P1, P2, 9900);
	ck_assert_int_eq(tally_invoice_reconcile(pg, w.stripe, false,
						 stderr, &n, &err), 0);
	ck_assert_int_eq(n, 0);
	/* someone deletes one item on Stripe and edits the other */
	pthread_mutex_lock(&ss_srv.mu);
	ss_srv.items[0].deleted = true;
	ss_srv.items[1].amount = 30;
	pthread_mutex_unlock(&ss_srv.mu);
	out = open_memstream(&buf, &len);
	ck_assert_int_eq(tally_invoice_reconcile(pg, w.stripe, false, out, &n,
						 &err), 0);
	fclose(out);
	ck_assert_int_eq(n, 2);
	ck_assert_str_eq(buf,
		"usage_line_missing\t" T11 "\tin_t11_jan\t"
		"usage:ai.tokens:openai:gpt-4o\tpostgres=150\tstripe=-\n"
		"usage_line_amount\t" T11 "\tin_t11_jan\tusage:api.call\t"
		"postgres=25\tstripe=30\n");
	free(buf);
	/* --apply: the missing line goes on the draft again, once */
	ck_assert_int_eq(tally_invoice_reconcile(pg, w.stripe, true, stderr,
						 &n, &err), 0);
	ck_assert_int_eq(ss_items_for(T11, "usage:ai.tokens:openai:gpt-4o"), 1);
	check("SELECT status || ':' || attached_invoice FROM "
	      "invoice_usage_lines WHERE invoice_id = $1 AND line_key = "
	      "'usage:ai.tokens:openai:gpt-4o'", "in_t11_jan",
	      "created:in_t11_jan");
	ck_assert_int_eq(tally_invoice_reconcile(pg, w.stripe, true, stderr,
						 &n, &err), 0);
	ck_assert_int_eq(n, 1); /* the edited amount is only reported */
	world_stop(&w);
}
END_TEST

START_TEST(test_plan_setup_stripe_mock)
{
	const char *base = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	world w;
	tally_error err;
	uint64_t sent;
	int made = -1;
	char nplans[16];

	world_start(&w, base);
	testdb_get(pg, nplans, sizeof(nplans), "SELECT count(*) FROM plans",
		   NULL);
	ck_assert_msg(tally_plan_setup(pg, w.stripe, stderr, &made, &err) == 0,
		      "setup: %s", err.msg);
	ck_assert_int_eq(made, 2 * atoi(nplans));
	check("SELECT count(*) FROM plans WHERE stripe_product_id IS NOT NULL"
	      " AND stripe_price_id LIKE 'price_%'", NULL, nplans);
	/* again: everything is stored, not a single call */
	sent = tally_stripe_requests_sent(w.stripe);
	ck_assert_int_eq(tally_plan_setup(pg, w.stripe, NULL, &made, &err), 0);
	ck_assert_int_eq(made, 0);
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), sent);
	testdb_sql(pg, "UPDATE plans SET stripe_product_id = NULL, "
		   "stripe_price_id = NULL");
	world_stop(&w);
}
END_TEST

/*
 * End to end from rated usage: tally-aggregate books events of T12 around
 * a period that starts and ends mid-hour (Jan 1 00:35 .. Jan 31 00:35),
 * some in the same hours as the period's edges but outside it; the
 * renewal's draft then gets lines equal to the ledger's exact totals of
 * the period, rounded once; usage after the close becomes an adjustment.
 */
static void agg_event(tally_agg *agg, int64_t i, int64_t at_s,
		      tally_agg_stats *st)
{
	static int64_t off;
	const int64_t now = (1769819700LL + 3600) * 1000;
	msgpack_sbuffer sb;
	tally_agg_msg m = { 0 };
	tally_error err;
	agg_gen g;
	int k;

	agg_gen_event(&g, 91, i, 0);
	ck_assert_int_eq(tally_uuid_parse(g.re.ev.tenant_id, T12, 36), 0);
	g.re.ev.time_ms = at_s * 1000;
	/* amounts of cents, not of micro-cents */
	g.re.cost = g.re.cost * 1000 + 5000000000LL * (i % 3);
	for (k = 0; k < TALLY_COMP_N; k++)
		g.re.components[k] = 0;
	g.re.components[TALLY_COMP_UNITS] = g.re.cost;
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

START_TEST(test_invoice_usage_end_to_end)
{
	const long long ps = 1767227700, pe = 1769819700;
	const long long at[] = { ps - 1500, ps + 60, ps + 600, ps + 1400,
				 1768478400, 1768480200, pe - 1500, pe - 600,
				 pe - 1, pe + 300, pe + 1200 };
	rd_kafka_topic_partition_list_t *l;
	tally_agg_opts o = { 0 };
	tally_agg_stats st;
	tally_agg *agg = NULL;
	tally_error err;
	world w;
	int64_t i;

	sql("UPDATE tenants SET current_period_start = to_timestamp(%lld), "
	    "current_period_end = to_timestamp(%lld) WHERE id = '%s'", ps, pe,
	    T12);
	testdb_sql(pg, "CREATE TABLE IF NOT EXISTS usage_ledger_p20260101 "
		   "PARTITION OF usage_ledger FOR VALUES FROM ('2026-01-01 "
		   "00:00+00') TO ('2026-01-02 00:00+00')");
	testdb_sql(pg, "CREATE TABLE IF NOT EXISTS usage_ledger_p20260115 "
		   "PARTITION OF usage_ledger FOR VALUES FROM ('2026-01-15 "
		   "00:00+00') TO ('2026-01-16 00:00+00')");
	testdb_sql(pg, "CREATE TABLE IF NOT EXISTS usage_ledger_p20260131 "
		   "PARTITION OF usage_ledger FOR VALUES FROM ('2026-01-31 "
		   "00:00+00') TO ('2026-02-01 00:00+00')");
	o.group = "tally.aggregate";
	o.lateness_ms = INT64_C(35) * 86400000;
	o.future_ms = 300000;
	ck_assert(tally_agg_new(&agg, pg, &o, &err) == 0);
	l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, "billing.usage.rated", 0);
	ck_assert_msg(tally_agg_assign(agg, l, &err) == 0, "%s", err.msg);
	rd_kafka_topic_partition_list_destroy(l);
	for (i = 0; i < 44; i++) {
		agg_event(agg, i, at[i % (int64_t)(sizeof(at) / sizeof(*at))],
			  &st);
		ck_assert_int_eq(st.accepted, 1);
	}

	world_start(&w, NULL);
	ss_invoice("in_t12", "draft");
	deliver_ok(&w, "evt_t12", "invoice.created", "in_t12", "cus_t12",
		   "draft", ps, pe, 9900);
	/* every line is the ledger's exact total of the period, rounded */
	check("WITH g AS (SELECT CASE WHEN coalesce(model, '') = '' THEN "
	      "'usage:' || meter ELSE 'usage:' || meter || ':' || provider || "
	      "':' || model END AS k, sum(cost) AS c FROM usage_ledger_named "
	      "WHERE tenant_id = $1 AND occurred_at >= to_timestamp(1767227700)"
	      " AND occurred_at < to_timestamp(1769819700) GROUP BY 1), "
	      "l AS (SELECT * FROM invoice_usage_lines WHERE invoice_id = "
	      "'in_t12') SELECT count(*) FILTER (WHERE l.line_key IS NULL OR "
	      "g.k IS NULL OR l.exact_amount <> g.c OR l.amount_minor <> "
	      "round(g.c * 100)) || '/' || count(*) FROM g FULL JOIN l ON "
	      "l.line_key = g.k", T12, "0/4");
	check("SELECT (SELECT sum(exact_amount) FROM invoice_usage_lines WHERE"
	      " invoice_id = 'in_t12') = cost FROM tenant_period_usage WHERE "
	      "tenant_id = $1 AND period_start = to_timestamp(1767227700)",
	      T12, "t");
	ck_assert_int_eq(posts(), 4);
	/* after the close: an adjustment for the next invoice */
	agg_event(agg, 44, pe - 60, &st);
	ck_assert_int_eq(st.adjusted, 1);
	check("SELECT count(*) FROM usage_adjustments WHERE tenant_id = $1 AND"
	      " invoiced_at IS NULL", T12, "1");
	tally_agg_free(agg);
	world_stop(&w);
}
END_TEST

static void setup(void)
{
	const char *ids[] = { T1, T2, T3, T4, T5, T6, T7, T10, T11, T12,
			      T13 };
	const char *cus[] = { "cus_t1", "cus_t2", "cus_t3", "cus_t4",
			      "cus_t5", "cus_t6", "cus_t7", "cus_t10",
			      "cus_t11", "cus_t12", "cus_t13" };
	char slug[16];
	size_t i;

	pg = testdb_create("tally_invoice_usage");
	cfg = testdb_config();
	for (i = 0; i < sizeof(ids) / sizeof(*ids); i++) {
		snprintf(slug, sizeof(slug), "usage-%zu", i);
		testdb_tenant(pg, ids[i], slug, cus[i]);
	}
	testdb_tenant(pg, T8, "same-8", NULL);
	testdb_tenant(pg, T9, "same-9", NULL);
	testdb_sql(pg, "INSERT INTO plans (id, name, monthly_price, currency,"
		   " max_users, max_workflows, max_ai_requests_per_month, "
		   "custom_branding, sso, white_label, support, rank) VALUES "
		   "('jp_starter', 'JP Starter', 9800, 'JPY', 5, 100, 10000, "
		   "false, false, false, 'community', 1)");
	testdb_sql(pg, "UPDATE tenants SET subscription_plan = 'jp_starter' "
		   "WHERE id = '" T6 "'");
}

static void teardown(void)
{
	tally_config_free(cfg);
	tally_pg_free(pg);
}

static Suite *invoice_usage_suite(void)
{
	Suite *s = suite_create("invoice_usage");
	TCase *tc = tcase_create("ScriptedStripe");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_invoice_usage_lifecycle);
	tcase_add_test(tc, test_invoice_usage_finalized_first);
	tcase_add_test(tc, test_invoice_usage_finalized_midway);
	tcase_add_test(tc, test_invoice_usage_crash_between_items);
	tcase_add_test(tc, test_invoice_usage_crash_key_forgotten);
	tcase_add_test(tc, test_invoice_usage_empty_period);
	tcase_add_test(tc, test_invoice_usage_jpy_and_usd);
	tcase_add_test(tc, test_stripe_same_command_id_two_tenants);
	tcase_add_test(tc, test_invoice_usage_stripe_mock);
	tcase_add_test(tc, test_invoice_usage_reconcile);
	tcase_add_test(tc, test_plan_setup_stripe_mock);
	tcase_add_test(tc, test_invoice_usage_end_to_end);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(invoice_usage_suite)
