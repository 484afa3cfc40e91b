/*
 * test_invoice_usage_pipeline.c - usage on the renewal invoice, end to end
 * on the real programs (billing_pipeline_support.h): usage events as JSON
 * lines (`tally produce`) -> tally-rate -> tally-aggregate; the renewal's
 * `invoice.created` (draft, subscription_cycle, signed) POSTed to a running
 * tally-relay -> a running tally-stripe whose stripe.api_base is the
 * scripted Stripe (stripe_scripted.h). Periods of 6 hours that start and
 * end mid-hour, in the last day.
 *
 * - The invoice items Stripe received are the ledger's exact totals of the
 *   period per meter/provider/model, each rounded once, half away from
 *   zero, to the invoice currency's minor unit: a USD and a JPY tenant on
 *   the same run (cents and whole yen; both have totals of exactly half a
 *   minor unit).
 * - An event of the first period that arrives after its draft becomes a
 *   late_usage adjustment, billed exactly once: on the following invoice,
 *   neither on the first nor on the one after.
 */
#include "billing_pipeline_support.h"

#define TA "c1110000-0000-4000-8000-0000000000a1" /* USD */
#define TB "c1110000-0000-4000-8000-0000000000b2" /* JPY */
#define PERIOD 21600LL

static long long s1; /* start of the first period */

/* One JSON line: an ai.tokens event (model) or an api.call (count). */
static void ev_line(char *buf, size_t n, const char *id, const char *t,
		    long long at, const char *provider, const char *model,
		    long long in, long long out)
{
	size_t len = strlen(buf);

	if (model == NULL)
		snprintf(buf + len, n - len, "{\"id\":\"%s\",\"source\":\"it\","
			 "\"type\":\"api.call\",\"tenant_id\":\"%s\",\"time\":"
			 "%lld,\"data\":{\"count\":%lld}}\n", id, t,
			 at * 1000, in);
	else
		snprintf(buf + len, n - len, "{\"id\":\"%s\",\"source\":\"it\","
			 "\"type\":\"ai.tokens\",\"tenant_id\":\"%s\",\"time\":"
			 "%lld,\"data\":{\"provider\":\"%s\",\"model\":\"%s\","
			 "\"input_tokens\":%lld,\"output_tokens\":%lld}}\n", id,
			 t, at * 1000, provider, model, in, out);
}

/* Round pico-units half away from zero to `digits` decimals (the rule,
 * written out here independently of money.c). */
static long long round_minor(int64_t pico, int digits)
{
	int64_t unit = 1, q, r;
	int i;

	for (i = digits; i < 12; i++)
		unit *= 10;
	q = pico / unit;
	r = pico % unit;
	if (2 * (r < 0 ? -r : r) >= unit)
		q += pico < 0 ? -1 : 1;
	return (long long)q;
}

#define MAXLINES 16

typedef struct expect {
	char key[128];
	char exact[64];
	int64_t pico;
} expect;

/* The ledger's exact totals of [ps, pe) per line key. */
static int ledger_totals(const char *t, long long ps, long long pe,
			 expect *x)
{
	char a[24], b[24];
	PGresult *res = NULL;
	tally_error err;
	int i, n;

	snprintf(a, sizeof(a), "%lld", ps);
	snprintf(b, sizeof(b), "%lld", pe);
	ck_assert_msg(tally_pg_exec(pg, &res,
		"SELECT CASE WHEN coalesce(model, '') = '' THEN 'usage:' || "
		"meter ELSE 'usage:' || meter || ':' || provider || ':' || "
		"model END, sum(cost)::text FROM usage_ledger_named WHERE "
		"tenant_id = $1 AND occurred_at >= to_timestamp($2::bigint) AND"
		" occurred_at < to_timestamp($3::bigint) GROUP BY 1 ORDER BY 1",
		3, (const char *[]){ t, a, b }, &err) == 0, "%s", err.msg);
	n = PQntuples(res);
	ck_assert_int_le(n, MAXLINES);
	for (i = 0; i < n; i++) {
		snprintf(x[i].key, sizeof(x[i].key), "%s",
			 PQgetvalue(res, i, 0));
		snprintf(x[i].exact, sizeof(x[i].exact), "%s",
			 PQgetvalue(res, i, 1));
		ck_assert_int_eq(tally_money_parse(&x[i].pico, x[i].exact,
						   strlen(x[i].exact)), 0);
	}
	PQclear(res);
	return n;
}

/* The invoice's items on Stripe and its lines in PostgreSQL are exactly
 * x[0..n): one item per line that does not round to 0, with the rounded
 * amount; the exact amount stored. */
static void invoice_is(const char *t, const char *inv, const expect *x,
		       int n, int digits)
{
	char want[64], q[300];
	int i, sent = 0;

	for (i = 0; i < n; i++) {
		long long minor = round_minor(x[i].pico, digits), amount = 0;
		int items = ss_items_of(t, inv, x[i].key, &amount);

		ck_assert_msg(items == (minor != 0), "%s %s: %d items for %s "
			      "(exact %s)", t, inv, items, x[i].key,
			      x[i].exact);
		ck_assert_msg(minor == 0 || amount == minor, "%s %s: %lld, "
			      "want %lld (exact %s)", inv, x[i].key, amount,
			      minor, x[i].exact);
		sent += minor != 0;
		snprintf(q, sizeof(q), "SELECT amount_minor || ':' || status "
			 "|| ':' || (exact_amount = %s) FROM invoice_usage_lines"
			 " WHERE invoice_id = '%s' AND line_key = $1",
			 x[i].exact, inv);
		snprintf(want, sizeof(want), "%lld:%s:true", minor,
			 minor ? "created" : "zero");
		check(q, x[i].key, want);
	}
	ck_assert_int_eq(ss_items_of(t, inv, NULL, NULL), sent);
	snprintf(want, sizeof(want), "%d", n);
	check("SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = $1",
	      inv, want);
}

/* The usage events of the run: one tenant's around the edges of the
 * periods (P0 before), the other's with exactly half a yen and half a
 * cent in its totals. */
static void produce_usage(void)
{
	static char buf[8192];
	const long long L = PERIOD;

	buf[0] = '\0';
	ev_line(buf, sizeof(buf), "a0", TA, s1 - 120, "openai", "gpt-4o",
		1000, 100);
	ev_line(buf, sizeof(buf), "a1", TA, s1 + 60, "openai", "gpt-4o",
		123457, 2345);
	ev_line(buf, sizeof(buf), "a2", TA, s1 + 7200, "openai", "gpt-4o",
		50000, 777);
	ev_line(buf, sizeof(buf), "a3", TA, s1 + 7205, "anthropic",
		"claude-sonnet-4-5", 33333, 1111);
	ev_line(buf, sizeof(buf), "a4", TA, s1 + 4 * 3600, NULL, NULL, 30, 0);
	ev_line(buf, sizeof(buf), "a5", TA, s1 + L - 30, NULL, NULL, 20, 0);
	ev_line(buf, sizeof(buf), "a6", TA, s1 + L + 30, "openai", "gpt-4o",
		7777, 55);
	ev_line(buf, sizeof(buf), "a7", TA, s1 + L + 3 * 3600, NULL, NULL,
		149, 0);
	ev_line(buf, sizeof(buf), "a8", TA, s1 + 2 * L + 100, "openai",
		"gpt-4o", 1000, 10);
	ev_line(buf, sizeof(buf), "b1", TB, s1 + 60, "openai", "gpt-4o",
		1000000, 0);
	ev_line(buf, sizeof(buf), "b2", TB, s1 + 5 * 3600, NULL, NULL, 2500,
		0);
	ev_line(buf, sizeof(buf), "b3", TB, s1 + L - 30, NULL, NULL, 2500, 0);
	ev_line(buf, sizeof(buf), "b4", TB, s1 + L + 30, "openai", "gpt-4o",
		10, 0);
	pl_produce(buf);
}

static void draft(const char *evt, const char *inv, const char *cus,
		  const char *currency, long long ps)
{
	ss_invoice(inv, "draft");
	pl_webhook(evt, "invoice.created", inv, cus, "draft", currency, ps,
		   ps + PERIOD);
	pl_wait_event(evt, 60);
}

/* x += the late usage: late_usage lines of (now - before) per key */
static int late_lines(expect *x, int n, const expect *now, int nn,
		      const expect *before, int nb)
{
	int i, j;

	for (i = 0; i < nn; i++) {
		int64_t d = now[i].pico;

		for (j = 0; j < nb; j++)
			if (strcmp(before[j].key, now[i].key) == 0)
				d -= before[j].pico;
		if (d == 0)
			continue;
		ck_assert_int_lt(n, MAXLINES);
		snprintf(x[n].key, sizeof(x[n].key), "late_usage:%s",
			 now[i].key + strlen("usage:"));
		tally_money_fmt(x[n].exact, sizeof(x[n].exact), d);
		x[n].pico = d;
		n++;
	}
	return n;
}

/* Every item of the invoice on Stripe is in currency cur. */
static void items_in(const char *inv, const char *cur)
{
	int i, n = 0;

	pthread_mutex_lock(&ss_srv.mu);
	for (i = 0; i < ss_srv.nitems; i++)
		if (strcmp(ss_srv.items[i].meta_invoice, inv) == 0) {
			ck_assert_str_eq(ss_srv.items[i].currency, cur);
			n++;
		}
	pthread_mutex_unlock(&ss_srv.mu);
	ck_assert_int_gt(n, 0);
}

/* The renewals of the first period, USD and JPY; a1/na1: the USD
 * tenant's lines. */
static void first_period(expect *a1, int *na1)
{
	expect b1[MAXLINES];
	int nb1;

	draft("evt_pa_1", "in_pa_1", "cus_pa", "usd", s1);
	draft("evt_pb_1", "in_pb_1", "cus_pb", "jpy", s1);
	*na1 = ledger_totals(TA, s1, s1 + PERIOD, a1);
	nb1 = ledger_totals(TB, s1, s1 + PERIOD, b1);
	ck_assert_int_eq(*na1, 3); /* gpt-4o, claude, api.call */
	ck_assert_int_eq(nb1, 2);
	invoice_is(TA, "in_pa_1", a1, *na1, 2);
	invoice_is(TB, "in_pb_1", b1, nb1, 0);
	check("SELECT string_agg(DISTINCT currency, ',') FROM "
	      "invoice_usage_lines WHERE tenant_id = $1", TB, "JPY");
	items_in("in_pa_1", "usd");
	items_in("in_pb_1", "jpy");
	/* the half cent and the half yen went up */
	check("SELECT amount_minor || '/' || exact_amount FROM "
	      "invoice_usage_lines WHERE invoice_id = $1 AND line_key = "
	      "'usage:api.call'", "in_pa_1", "1/0.005");
	check("SELECT amount_minor || '/' || exact_amount FROM "
	      "invoice_usage_lines WHERE invoice_id = $1 AND line_key = "
	      "'usage:api.call'", "in_pb_1", "1/0.5");
}

START_TEST(test_invoice_usage_pipeline)
{
	expect a1[MAXLINES], a2[MAXLINES], a3[MAXLINES];
	expect p1_before[MAXLINES], p1_after[MAXLINES];
	int na1, na2, na3, nbefore, nafter, i;
	char late[300], ps[24];

	s1 = (long long)(tally_now_ms() / 1000) / 3600 * 3600 -
	     3 * PERIOD - 1500;
	sql("UPDATE tenants SET current_period_start = to_timestamp(%lld), "
	    "current_period_end = to_timestamp(%lld) WHERE id IN ('%s', '%s')",
	    s1 + 2 * PERIOD, s1 + 3 * PERIOD, TA, TB);
	ss_start();
	pl_write_config();
	for (i = 0; i < PL_N; i++)
		pl_start(i);
	pl_wait_relay();

	produce_usage();
	pl_wait_for("SELECT count(*) FROM usage_ledger", NULL, "13", 180);

	first_period(a1, &na1);

	/* a first-period event arriving after the draft */
	nbefore = ledger_totals(TA, s1, s1 + PERIOD, p1_before);
	late[0] = '\0';
	ev_line(late, sizeof(late), "a-late", TA, s1 + 3 * 3600, "openai",
		"gpt-4o", 20000, 300);
	pl_produce(late);
	snprintf(ps, sizeof(ps), "%lld", s1);
	pl_wait_for("SELECT count(*) || ':' || min(kind) FROM "
		    "usage_adjustments WHERE tenant_id = '" TA "' AND "
		    "period_start = to_timestamp($1::bigint)", ps,
		    "1:late_usage", 120);
	nafter = ledger_totals(TA, s1, s1 + PERIOD, p1_after);
	invoice_is(TA, "in_pa_1", a1, na1, 2); /* not on the first */

	/* the following invoice: its own period, and the late usage */
	draft("evt_pa_2", "in_pa_2", "cus_pa", "usd", s1 + PERIOD);
	na2 = ledger_totals(TA, s1 + PERIOD, s1 + 2 * PERIOD, a2);
	ck_assert_int_eq(na2, 2);
	na2 = late_lines(a2, na2, p1_after, nafter, p1_before, nbefore);
	ck_assert_int_eq(na2, 3);
	invoice_is(TA, "in_pa_2", a2, na2, 2);
	check("SELECT string_agg(invoice_id, ',') FROM usage_adjustments "
	      "WHERE tenant_id = $1", TA, "in_pa_2");

	/* and not again on the one after */
	draft("evt_pa_3", "in_pa_3", "cus_pa", "usd", s1 + 2 * PERIOD);
	na3 = ledger_totals(TA, s1 + 2 * PERIOD, s1 + 3 * PERIOD, a3);
	ck_assert_int_eq(na3, 1); /* 0.0026: rounds to 0, no item */
	invoice_is(TA, "in_pa_3", a3, na3, 2);
	ck_assert_int_eq(ss_items_of(TA, "in_pa_1",
				     "late_usage:ai.tokens:openai:gpt-4o",
				     NULL) +
			 ss_items_of(TA, "in_pa_2",
				     "late_usage:ai.tokens:openai:gpt-4o",
				     NULL) +
			 ss_items_of(TA, "in_pa_3",
				     "late_usage:ai.tokens:openai:gpt-4o",
				     NULL), 1);
	pl_stop_all();
	ss_stop();
}
END_TEST

static void setup(void)
{
	pl_setup("tally_usage_pipeline");
	testdb_tenant(pg, TA, "pipeline-usd", "cus_pa");
	testdb_tenant(pg, TB, "pipeline-jpy", "cus_pb");
	prog_import_prices(pl.dsn);
	usage_jpy_plan(TB);
}

static Suite *invoice_usage_pipeline_suite(void)
{
	Suite *s = suite_create("invoice_usage_pipeline");
	TCase *tc = tcase_create("Programs");

	tcase_set_timeout(tc, 600);
	tcase_add_unchecked_fixture(tc, setup, pl_teardown);
	tcase_add_test(tc, test_invoice_usage_pipeline);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(invoice_usage_pipeline_suite)
