/*
 * test_invoice_usage_ops.c - around the usage lines on invoices:
 * - two tenants sending the same command id both succeed (the tenant is
 *   part of every Idempotency-Key);
 * - the request shapes against stripe-mock (invoice items, `tally stripe
 *   setup`'s products and prices; setup again makes no call);
 * - reconcile: a deleted and an edited item are reported, --apply adds
 *   the missing line again, once;
 * - end to end from rated usage through tally-aggregate to the renewal's
 *   lines, for a period that starts and ends mid-hour;
 * - a plan's included usage, per_meter grouping, no meter events unless
 *   stripe.usage_billing = meters.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_support.h" /* before the suite's global pg */
#include "invoice_usage_support.h"
#include "tally/aggregate.h"
#include "tally/event.h"
#include "tally/invoice_sync.h"
#include "tally/plan_setup.h"

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


/* The plan's included usage is deducted once; per_meter groups the
 * models; meter events are not sent unless usage_billing = meters. */
START_TEST(test_invoice_usage_included_per_meter)
{
	world w;
	tally_error err;
	uint64_t sent;
	int n = -1;

	testdb_sql(pg, "UPDATE plans SET included_usage = 1.00 WHERE id = "
		   "'professional'");
	testdb_sql(pg, "UPDATE tenants SET subscription_plan = 'professional'"
		   " WHERE id = '" T13 "'");
	usage(T13, P1 + 7200, "ai.tokens", "openai", "gpt-4o", "1.5");
	usage(T13, P1 + 7200, "ai.tokens", "openai", "gpt-4o-mini", "0.125");
	usage(T13, P1 + 7200, "api.call", "", "", "0.25");
	tally_config_set(cfg, "stripe.invoice_grouping", "per_meter");
	world_start(&w, NULL);
	ss_invoice("in_t13_jan", "draft");
	deliver_ok(&w, "evt_t13", "invoice.created", "in_t13_jan", "cus_t13",
		   "draft", P1, P2, 29900);
	check(lines_sql, "in_t13_jan",
	      "included=-100:created,usage:ai.tokens=163:created,"
	      "usage:api.call=25:created");
	/* a closed hour of tokens Stripe's meter window would take */
	testdb_sql(pg, "INSERT INTO usage_hourly (tenant_id, hour, meter, "
		   "provider, model, events, input_tokens, output_tokens, cost)"
		   " VALUES ('" T13 "', date_trunc('hour', now()) - interval "
		   "'3 hours', 'ai.tokens', 'openai', 'gpt-4o', 1, 1000, 100, 1)");
	sent = tally_stripe_requests_sent(w.stripe);
	ck_assert_int_eq(tally_stripe_sync_report_meters(w.ss, &n, &err), 0);
	ck_assert_int_eq(n, 0);
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), sent);
	check("SELECT count(*) FROM stripe_meter_reports", NULL, "0");
	world_stop(&w);
}
END_TEST

static void setup(void)
{
	usage_db_setup("tally_invoice_ops");
}

static Suite *invoice_usage_ops_suite(void)
{
	Suite *s = suite_create("invoice_usage_ops");
	TCase *tc = tcase_create("UsageOps");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, usage_db_teardown);
	tcase_add_test(tc, test_stripe_same_command_id_two_tenants);
	tcase_add_test(tc, test_invoice_usage_stripe_mock);
	tcase_add_test(tc, test_invoice_usage_reconcile);
	tcase_add_test(tc, test_plan_setup_stripe_mock);
	tcase_add_test(tc, test_invoice_usage_end_to_end);
	tcase_add_test(tc, test_invoice_usage_included_per_meter);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(invoice_usage_ops_suite)
