#ifndef TALLY_TESTS_INVOICE_USAGE_SUPPORT_H
#define TALLY_TESTS_INVOICE_USAGE_SUPPORT_H

/*
 * invoice_usage_support.h - shared set-up of the invoice usage tests: one
 * database per suite with tenants T1..T13 (customers cus_t<n>, T8/T9
 * without), usage rows as tally-aggregate books them, a world of Stripe
 * client + stripe_sync on the scripted Stripe (stripe_scripted.h) or
 * stripe-mock, and invoice events delivered as the relay would.
 */
#include "stripe_testdb.h"
#include "stripe_scripted.h"
#include "tally/stripe_sync.h"

#include <stdarg.h>

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

static inline void sql(const char *fmt, ...) TALLY_PRINTF(1, 2);
static inline void sql(const char *fmt, ...)
{
	char q[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	testdb_sql(pg, q);
}

static inline void check(const char *q, const char *arg, const char *want)
{
	char got[2048];

	testdb_get(pg, got, sizeof(got), q, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]:\n want '%s'\n got  '%s'",
		      q, arg ? arg : "", want, got);
}

/* One hour of usage as tally-aggregate books it. */
static inline void usage(const char *t, long long hour, const char *meter,
		  const char *provider, const char *model, const char *cost)
{
	sql("INSERT INTO usage_hourly (tenant_id, hour, meter, provider, "
	    "model, events, cost) VALUES ('%s', to_timestamp(%lld), '%s', "
	    "'%s', '%s', 1, %s) ON CONFLICT (tenant_id, hour, meter, provider,"
	    " model) DO UPDATE SET cost = usage_hourly.cost + EXCLUDED.cost",
	    t, hour, meter, provider, model, cost);
}

static inline void adjustment(const char *t, long long ps, long long pe,
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

static inline void world_start(world *w, const char *base)
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

static inline void world_stop(world *w)
{
	tally_stripe_sync_free(w->ss);
	tally_stripe_free(w->stripe);
	ss_stop();
}

/* An invoice event as Stripe sends it (a subscription_cycle invoice);
 * the caller frees it. */
static inline char *usage_invoice_event(const char *evt, const char *type,
					const char *inv, const char *customer,
					const char *status,
					const char *currency, long long ps,
					long long pe, long long total)
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

	json_decref(ev);
	ck_assert_ptr_nonnull(body);
	return body;
}

/* Deliver an invoice event (unsigned: the world has no secrets). */
static inline int deliver(world *w, const char *evt, const char *type,
		   const char *inv, const char *customer, const char *status,
		   const char *currency, long long ps, long long pe,
		   long long total, tally_error *err)
{
	char *body = usage_invoice_event(evt, type, inv, customer, status,
					 currency, ps, pe, total);
	const char *outcome = NULL;
	int rc;

	rc = tally_stripe_sync_event(w->ss, body, strlen(body), NULL,
				     &outcome, err);
	free(body);
	return rc;
}

static inline void deliver_ok(world *w, const char *evt, const char *type,
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

static inline int posts(void)
{
	int n;

	pthread_mutex_lock(&ss_srv.mu);
	n = ss_srv.item_posts;
	pthread_mutex_unlock(&ss_srv.mu);
	return n;
}

static const char lines_sql[] __attribute__((unused)) =
	"SELECT string_agg(line_key || '=' || amount_minor || ':' || status,"
	" ',' ORDER BY line_key) FROM invoice_usage_lines WHERE invoice_id = $1";

/* A JPY plan (jp_starter) for tenant t, billed in yen: its usage is
 * priced in JPY (tenants.currency; tally converts no currency). */
static inline void usage_jpy_plan(const char *t)
{
	testdb_sql(pg, "INSERT INTO plans (id, name, monthly_price, currency,"
		   " max_users, max_workflows, max_ai_requests_per_month, "
		   "custom_branding, sso, white_label, support, rank) VALUES "
		   "('jp_starter', 'JP Starter', 9800, 'JPY', 5, 100, 10000, "
		   "false, false, false, 'community', 1)");
	sql("UPDATE tenants SET subscription_plan = 'jp_starter', currency = "
	    "'JPY' WHERE id = '%s'", t);
}

/* The structured log (stderr) of a stretch of the test, in a file. */
typedef struct log_capture {
	FILE *f;
	int saved;
} log_capture;

static inline void log_capture_start(log_capture *c)
{
	fflush(stderr);
	c->f = tmpfile();
	ck_assert_ptr_nonnull(c->f);
	c->saved = dup(STDERR_FILENO);
	ck_assert_int_ge(c->saved, 0);
	ck_assert_int_ge(dup2(fileno(c->f), STDERR_FILENO), 0);
}

/* What was logged since log_capture_start; the caller frees it. */
static inline char *log_capture_end(log_capture *c)
{
	long n;
	char *buf;

	fflush(stderr);
	ck_assert_int_ge(dup2(c->saved, STDERR_FILENO), 0);
	close(c->saved);
	n = ftell(c->f);
	ck_assert_int_ge(n, 0);
	buf = calloc(1, (size_t)n + 1);
	ck_assert_ptr_nonnull(buf);
	rewind(c->f);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, c->f), (size_t)n);
	fclose(c->f);
	return buf;
}

/* One database for a suite: the tenants (cus_t<n>), a JPY plan for T6. */
static inline void usage_db_setup(const char *prefix)
{
	const char *ids[] = { T1, T2, T3, T4, T5, T6, T7, T10, T11, T12,
			      T13 };
	const char *cus[] = { "cus_t1", "cus_t2", "cus_t3", "cus_t4",
			      "cus_t5", "cus_t6", "cus_t7", "cus_t10",
			      "cus_t11", "cus_t12", "cus_t13" };
	char slug[16];
	size_t i;

	pg = testdb_create(prefix);
	cfg = testdb_config();
	for (i = 0; i < sizeof(ids) / sizeof(*ids); i++) {
		snprintf(slug, sizeof(slug), "usage-%zu", i);
		testdb_tenant(pg, ids[i], slug, cus[i]);
	}
	testdb_tenant(pg, T8, "same-8", NULL);
	testdb_tenant(pg, T9, "same-9", NULL);
	usage_jpy_plan(T6);
}

static inline void usage_db_teardown(void)
{
	tally_config_free(cfg);
	tally_pg_free(pg);
}

#endif /* TALLY_TESTS_INVOICE_USAGE_SUPPORT_H */
