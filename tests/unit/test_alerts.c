/*
 * test_alerts.c - the alert rules, table-driven: budget and plan limits
 * exactly at a threshold and one unit below, exact amounts, revenue, the
 * usage-drop churn rule, every signal kind, decoding errors (reason codes),
 * the stable alert id (golden value), thresholds and month arithmetic.
 */
#include "check_main.h"
#include "tally/alerts_rules.h"
#include "tally/event.h"

#include <stdio.h>
#include <string.h>

#define TENANT "0b9a2c1e-5f1d-4c4e-9a39-3f6f7c1d2e10"
#define NOV_2026 INT64_C(1793491200000)
#define DEC_2026 INT64_C(1796083200000)
#define OCT_2026 INT64_C(1790812800000)
#define SEP_2026 INT64_C(1788220800000)
#define MID_NOV_2026 INT64_C(1794736800000)
#define PICO TALLY_PICO_PER_UNIT

static tally_alert_thresholds th;

static void setup(void)
{
	tally_error err;

	ck_assert_int_eq(tally_alert_thresholds_parse(&th, "50,80,100", &err),
			 0);
}

/* Totals JSON with the given cost, budget, AI requests and workflows. */
static void totals(tally_totals *t, const char *cost, const char *budget,
		   long ai, long max_ai, long wf, long max_wf)
{
	char buf[1024], b[64], ma[32], mw[32];
	tally_codec_error ce;
	int rc;

	snprintf(b, sizeof(b), budget ? "\"%s\"" : "null",
		 budget ? budget : "");
	snprintf(ma, sizeof(ma), max_ai >= 0 ? "%ld" : "null", max_ai);
	snprintf(mw, sizeof(mw), max_wf >= 0 ? "%ld" : "null", max_wf);
	snprintf(buf, sizeof(buf),
		 "{\"schema\":\"tally.totals/1\",\"tenant_id\":\"" TENANT "\","
		 "\"period_start\":\"2026-11-01T00:00:00.000Z\","
		 "\"period_end\":\"2026-12-01T00:00:00.000Z\",\"version\":7,"
		 "\"ai_requests\":%ld,\"max_ai_requests_per_month\":%s,"
		 "\"workflow_executions\":%ld,\"max_workflows\":%s,"
		 "\"cost\":\"%s\",\"monthly_budget\":%s,\"currency\":\"USD\","
		 "\"budget_state\":\"ok\"}",
		 ai, ma, wf, mw, cost, b);
	rc = tally_totals_from_json(t, buf, strlen(buf), &ce);
	ck_assert_msg(rc == 0, "totals should decode: %s %s %s", ce.reason,
		      ce.field, ce.detail);
}

/* "budget/50,budget/80" for the alerts of a list */
static void summarize(char *out, size_t n, const tally_alert_list *l)
{
	size_t i, len = 0;

	out[0] = '\0';
	for (i = 0; i < l->n && len < n; i++)
		len += (size_t)snprintf(out + len, n - len, "%s%s/%d",
					i ? "," : "",
					tally_alert_kind_name(l->v[i].kind),
					l->v[i].threshold);
}

static const struct {
	const char *cost, *budget;
	long ai, max_ai, wf, max_wf;
	int64_t plan_price; /* pico; -1 unknown */
	const char *want;
} totals_cases[] = {
	/* budget: exactly at 80 % vs one pico below */
	{ "80", "100.00", 0, -1, 0, -1, -1, "budget/50,budget/80" },
	{ "79.999999999999", "100.00", 0, -1, 0, -1, -1, "budget/50" },
	{ "100", "100", 0, -1, 0, -1, -1, "budget/50,budget/80,budget/100" },
	{ "49.999999999999", "100", 0, -1, 0, -1, -1, "" },
	{ "50", "100", 0, -1, 0, -1, -1, "budget/50" },
	{ "1000000", "99.00", 0, -1, 0, -1, -1,
	  "budget/50,budget/80,budget/100" },
	/* odd amounts: 79.20 of 99.00 is exactly 80 %, 79.19 is not */
	{ "79.2", "99.00", 0, -1, 0, -1, -1, "budget/50,budget/80" },
	{ "79.19", "99.00", 0, -1, 0, -1, -1, "budget/50" },
	/* no budget (NULL or 0): no budget alerts */
	{ "500", NULL, 0, -1, 0, -1, -1, "" },
	{ "500", "0", 0, -1, 0, -1, -1, "" },
	/* plan limits: AI requests exactly at 80 % vs one below */
	{ "0", NULL, 8000, 10000, 0, -1, -1, "plan_limit/50,plan_limit/80" },
	{ "0", NULL, 7999, 10000, 0, -1, -1, "plan_limit/50" },
	{ "0", NULL, 10000, 10000, 0, -1, -1,
	  "plan_limit/50,plan_limit/80,plan_limit/100" },
	{ "0", NULL, 10000, -1, 0, -1, -1, "" },
	{ "0", NULL, 10000, 0, 0, -1, -1, "" },
	/* workflows vs max_workflows */
	{ "0", NULL, 0, 10000, 100, 100, -1,
	  "plan_limit/50,plan_limit/80,plan_limit/100" },
	{ "0", NULL, 0, 10000, 79, 100, -1, "plan_limit/50" },
	/* revenue: usage cost at the plan price (99.00) vs a cent below */
	{ "99", NULL, 0, -1, 0, -1, 99 * PICO, "revenue/100" },
	{ "98.99", NULL, 0, -1, 0, -1, 99 * PICO, "" },
	{ "99", NULL, 0, -1, 0, -1, 0, "" },
	/* all together, in rule order */
	{ "100", "100", 10000, 10000, 0, 100, 99 * PICO,
	  "budget/50,budget/80,budget/100,plan_limit/50,plan_limit/80,"
	  "plan_limit/100,revenue/100" },
};

START_TEST(test_alerts_totals_table)
{
	tally_alert_list l;
	tally_alert_context ctx;
	tally_totals t;
	char got[512];

	tally_alert_list_init(&l);
	totals(&t, totals_cases[_i].cost, totals_cases[_i].budget,
	       totals_cases[_i].ai, totals_cases[_i].max_ai,
	       totals_cases[_i].wf, totals_cases[_i].max_wf);
	tally_alert_context_init(&ctx);
	ctx.plan_price_pico = totals_cases[_i].plan_price;
	ctx.plan = "starter";
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	summarize(got, sizeof(got), &l);
	ck_assert_msg(strcmp(got, totals_cases[_i].want) == 0,
		      "case %d (cost %s budget %s ai %ld/%ld wf %ld/%ld): "
		      "want \"%s\", got \"%s\"", _i, totals_cases[_i].cost,
		      totals_cases[_i].budget ? totals_cases[_i].budget : "-",
		      totals_cases[_i].ai, totals_cases[_i].max_ai,
		      totals_cases[_i].wf, totals_cases[_i].max_wf,
		      totals_cases[_i].want, got);
	tally_alert_list_dispose(&l);
}
END_TEST

/*
 * Tenants hold -1 for a plan without a limit (tally-stripe copies the
 * plan's NULL as -1) and tally-aggregate passes it on: such totals are
 * decoded as "no limit" and still raise the other limit's alerts, never
 * dead-lettered.
 */
START_TEST(test_alerts_totals_negative_limit)
{
	static const char j[] =
		"{\"schema\":\"tally.totals/1\",\"tenant_id\":\"" TENANT "\","
		"\"period_start\":\"2026-11-01T00:00:00.000Z\","
		"\"period_end\":\"2026-12-01T00:00:00.000Z\",\"version\":3,"
		"\"ai_requests\":8000,\"max_ai_requests_per_month\":10000,"
		"\"workflows\":500,\"max_workflows\":-1,\"cost\":\"1\","
		"\"monthly_budget\":\"0.00\",\"currency\":\"USD\"}";
	tally_codec_error ce = { 0 };
	tally_alert_context ctx;
	tally_alert_list l;
	tally_totals t;
	char got[256];
	int rc;

	rc = tally_totals_from_json(&t, j, strlen(j), &ce);
	ck_assert_msg(rc == 0, "rejected: %s %s %s", ce.reason, ce.field,
		      ce.detail);
	ck_assert_int_eq(t.max_workflows, -1);
	tally_alert_list_init(&l);
	tally_alert_context_init(&ctx);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	summarize(got, sizeof(got), &l);
	ck_assert_str_eq(got, "plan_limit/50,plan_limit/80");
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_alerts_budget_payload_exact)
{
	tally_alert_list l;
	tally_alert_context ctx;
	tally_totals t;

	tally_alert_list_init(&l);
	totals(&t, "80.000000000001", "100.00", 0, -1, 0, -1);
	ck_assert_int_eq(t.cost_pico, INT64_C(80000000000001));
	ck_assert_int_eq(t.budget_pico, 100 * PICO);
	tally_alert_context_init(&ctx);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	ck_assert_int_eq(l.n, 2);
	ck_assert_int_eq(l.v[1].period_start_ms, NOV_2026);
	ck_assert_msg(strstr(l.v[1].payload, "\"used\":\"80.000000000001\"")
		      != NULL, "payload carries the exact cost: %s",
		      l.v[1].payload);
	ck_assert_msg(strstr(l.v[1].payload, "\"limit\":\"100\"") != NULL,
		      "payload carries the budget: %s", l.v[1].payload);
	ck_assert_msg(strstr(l.v[1].payload, "\"percent\":\"80.00\"") != NULL,
		      "percent is floored to 2 decimals: %s", l.v[1].payload);
	ck_assert_msg(strstr(l.v[1].payload, "\"totals_version\":7") != NULL,
		      "payload names the totals version: %s", l.v[1].payload);
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_alerts_plan_limit_lists_metrics)
{
	tally_alert_list l;
	tally_alert_context ctx;
	tally_totals t;

	tally_alert_list_init(&l);
	totals(&t, "0", NULL, 9000, 10000, 50, 100);
	tally_alert_context_init(&ctx);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	ck_assert_int_eq(l.n, 2);
	ck_assert_msg(strstr(l.v[0].payload, "ai_requests") &&
		      strstr(l.v[0].payload, "workflows"),
		      "50 %%: both metrics: %s", l.v[0].payload);
	ck_assert_msg(strstr(l.v[1].payload, "ai_requests") &&
		      !strstr(l.v[1].payload, "workflows"),
		      "80 %%: only AI requests: %s", l.v[1].payload);
	tally_alert_list_dispose(&l);
}
END_TEST

/*
 * Users vs max_users: exactly at 80 % and one below, the metric in the
 * payload; a negative limit (a plan without it: tenants store -1) is
 * unlimited and the message still decodes (budget alerts are not lost).
 */
static void users_totals(tally_totals *t, long users, long max_users)
{
	char buf[512];
	tally_codec_error ce;
	int rc;

	snprintf(buf, sizeof(buf),
		 "{\"schema\":\"tally.totals/1\",\"tenant_id\":\"" TENANT "\","
		 "\"period_start\":\"2026-11-01T00:00:00.000Z\",\"version\":3,"
		 "\"max_workflows\":-1,\"max_ai_requests_per_month\":-1,"
		 "\"users\":%ld,\"max_users\":%ld,\"cost\":\"60\","
		 "\"monthly_budget\":\"100\"}", users, max_users);
	rc = tally_totals_from_json(t, buf, strlen(buf), &ce);
	ck_assert_msg(rc == 0, "totals should decode: %s %s %s", ce.reason,
		      ce.field, ce.detail);
}

START_TEST(test_alerts_plan_limit_users)
{
	tally_alert_list l;
	tally_alert_context ctx;
	tally_totals t;
	char got[256];

	tally_alert_context_init(&ctx);
	tally_alert_list_init(&l);
	users_totals(&t, 20, 25);
	ck_assert_int_eq(t.users, 20);
	ck_assert_int_eq(t.max_users, 25);
	ck_assert_int_eq(t.max_workflows, -1);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	summarize(got, sizeof(got), &l);
	ck_assert_str_eq(got, "budget/50,plan_limit/50,plan_limit/80");
	ck_assert_msg(strstr(l.v[2].payload, "\"users\"") != NULL &&
		      strstr(l.v[2].payload, "\"limit\":25") != NULL,
		      "the users metric: %s", l.v[2].payload);
	tally_alert_list_dispose(&l);

	tally_alert_list_init(&l);
	users_totals(&t, 19, 25);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	summarize(got, sizeof(got), &l);
	ck_assert_str_eq(got, "budget/50,plan_limit/50");
	tally_alert_list_dispose(&l);

	tally_alert_list_init(&l);
	users_totals(&t, 1000, -1);
	ck_assert_int_eq(t.max_users, -1);
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	summarize(got, sizeof(got), &l);
	ck_assert_str_eq(got, "budget/50");
	tally_alert_list_dispose(&l);
}
END_TEST

static const struct {
	int64_t prev, prev2;  /* pico; -1 = period not known/adjacent */
	bool want;
} churn_cases[] = {
	{ 5 * PICO, 10 * PICO, true },          /* exactly half */
	{ 5 * PICO + 1, 10 * PICO, false },     /* a pico more than half */
	{ 0, 10 * PICO, true },                 /* dropped to nothing */
	{ 0, PICO, true },                      /* at the minimum */
	{ 0, PICO - 1, false },                 /* below the minimum */
	{ 20 * PICO, 10 * PICO, false },        /* grew */
	{ 0, -1, false },                       /* earlier period unknown */
};

START_TEST(test_alerts_churn_usage_drop)
{
	tally_alert_list l;
	tally_alert_context ctx;
	tally_totals t;

	tally_alert_list_init(&l);
	totals(&t, "0", NULL, 0, -1, 0, -1);
	tally_alert_context_init(&ctx);
	ctx.prev_start_ms = OCT_2026;
	ctx.prev_cost_pico = churn_cases[_i].prev;
	ctx.prev2_start_ms = churn_cases[_i].prev2 >= 0 ? SEP_2026 : -1;
	ctx.prev2_cost_pico = churn_cases[_i].prev2;
	tally_alerts_eval_totals(&l, &t, &ctx, &th);
	ck_assert_msg((l.n == 1) == churn_cases[_i].want,
		      "churn case %d: want %d alert(s), got %zu", _i,
		      (int)churn_cases[_i].want, l.n);
	if (l.n == 1) {
		ck_assert_int_eq(l.v[0].kind, TALLY_ALERT_CHURN_RISK);
		ck_assert_int_eq(l.v[0].threshold,
				 TALLY_ALERT_CHURN_USAGE_DROP);
		ck_assert_msg(l.v[0].period_start_ms == OCT_2026,
			      "the alert is for the period that dropped");
	}
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_alerts_repeated_totals_same_ids)
{
	tally_alert_list a, b;
	tally_alert_context ctx;
	tally_totals t;
	size_t i;

	tally_alert_list_init(&a);
	tally_alert_list_init(&b);
	tally_alert_context_init(&ctx);
	totals(&t, "100", "100", 0, -1, 0, -1);
	tally_alerts_eval_totals(&a, &t, &ctx, &th);
	t.version = 3; /* an older (stale) copy says the same */
	tally_alerts_eval_totals(&b, &t, &ctx, &th);
	ck_assert_int_eq(a.n, b.n);
	for (i = 0; i < a.n; i++)
		ck_assert_msg(memcmp(a.v[i].id, b.v[i].id, 16) == 0,
			      "a repeated evaluation must give the same id");
	tally_alert_list_dispose(&a);
	tally_alert_list_dispose(&b);
}
END_TEST

/* signals ------------------------------------------------------------ */

static const struct {
	const char *json_tail; /* after "tenant_id":...," */
	const char *want;      /* "kind/threshold" or "" */
	int64_t period;        /* expected period_start */
} signal_cases[] = {
	{ "\"kind\":\"payment_failed\",\"time\":1794736800000,"
	  "\"invoice_id\":\"in_1\",\"attempt_count\":1",
	  "payment_failed/0", NOV_2026 },
	{ "\"kind\":\"payment_succeeded\",\"time\":1794736800000", "", 0 },
	{ "\"kind\":\"subscription_cancelled\",\"time\":1794736800000,"
	  "\"at_period_end\":false", "subscription_cancelled/0", NOV_2026 },
	{ "\"kind\":\"subscription_cancelled\",\"time\":1794736800000,"
	  "\"at_period_end\":true", "churn_risk/0", NOV_2026 },
	{ "\"kind\":\"downgrade\",\"occurred_at\":\"2026-11-15T10:00:00Z\","
	  "\"plan_from\":\"enterprise\",\"plan_to\":\"starter\"",
	  "downgrade/0", NOV_2026 },
	{ "\"kind\":\"upgrade\",\"time\":1794736800000", "", 0 },
	{ "\"kind\":\"trial_ending\",\"time\":1794736800000,"
	  "\"trial_end\":1795000000", "trial_ending/0", NOV_2026 },
	{ "\"kind\":\"dispute\",\"time\":1794736800000,\"closed\":false",
	  "dispute/0", MID_NOV_2026 },
	{ "\"kind\":\"dispute\",\"time\":1794736800000,\"closed\":true",
	  "", 0 },
	{ "\"kind\":\"dunning\",\"time\":1794736800000,"
	  "\"status_from\":\"active\",\"status_to\":\"past_due\"",
	  "dunning/1", NOV_2026 },
	{ "\"kind\":\"dunning\",\"time\":1794736800000,"
	  "\"status_from\":\"past_due\",\"status_to\":\"suspended\"",
	  "dunning/2", NOV_2026 },
	{ "\"kind\":\"status_changed\",\"time\":1794736800000,"
	  "\"status_from\":\"active\",\"status_to\":\"cancelled\"",
	  "subscription_cancelled/0", NOV_2026 },
	{ "\"kind\":\"status_changed\",\"time\":1794736800000,"
	  "\"status_from\":\"past_due\",\"status_to\":\"active\"", "", 0 },
	{ "\"kind\":\"refund\",\"time\":1794736800000,"
	  "\"charge_id\":\"ch_1\",\"amount_refunded\":\"500\"",
	  "revenue/0", MID_NOV_2026 },
	{ "\"kind\":\"status_changed\",\"time\":1794736800000,"
	  "\"status_from\":\"active\",\"status_to\":\"past_due\","
	  "\"reason\":\"subscription\"", "dunning/1", NOV_2026 },
	{ "\"kind\":\"something_new\",\"time\":1794736800000", "", 0 },
	/* an explicit billing period wins over the calendar month */
	{ "\"kind\":\"payment_failed\",\"time\":1794736800000,"
	  "\"period_start\":\"2026-10-15T00:00:00Z\"", "payment_failed/0",
	  INT64_C(1792022400000) },
};

START_TEST(test_alerts_signal_table)
{
	char buf[1024], got[128];
	tally_signal s;
	tally_alert_list l;
	tally_codec_error ce;

	snprintf(buf, sizeof(buf),
		 "{\"id\":\"6f1c9c52-1d7e-5a43-8f0e-3c2b1a0f9e8d\","
		 "\"tenant_id\":\"" TENANT "\",\"version\":1,%s}",
		 signal_cases[_i].json_tail);
	ck_assert_msg(tally_signal_from_json(&s, buf, strlen(buf), &ce) == 0,
		      "signal %d should decode: %s %s", _i, ce.reason,
		      ce.detail);
	tally_alert_list_init(&l);
	tally_alerts_eval_signal(&l, &s);
	summarize(got, sizeof(got), &l);
	ck_assert_msg(strcmp(got, signal_cases[_i].want) == 0,
		      "signal %d: want \"%s\", got \"%s\"", _i,
		      signal_cases[_i].want, got);
	if (l.n == 1) {
		ck_assert_msg(l.v[0].period_start_ms == signal_cases[_i].period,
			      "signal %d: period %lld, want %lld", _i,
			      (long long)l.v[0].period_start_ms,
			      (long long)signal_cases[_i].period);
		ck_assert_msg(strstr(l.v[0].payload, "\"signal\":{") != NULL,
			      "the payload embeds the signal: %s",
			      l.v[0].payload);
	}
	tally_alert_list_dispose(&l);
	tally_signal_dispose(&s);
}
END_TEST

/* decoding errors ---------------------------------------------------- */

static const struct {
	bool signal;
	const char *json;
	const char *reason;
} bad_cases[] = {
	{ false, "not json", "not_json" },
	{ false, "[1]", "wrong_type" },
	{ false, "{\"period_start\":0,\"version\":1,\"cost\":\"1\"}",
	  "missing_field" },
	{ false, "{\"tenant_id\":\"nope\",\"period_start\":0,\"version\":1,"
		 "\"cost\":\"1\"}", "bad_value" },
	{ false, "{\"tenant_id\":\"" TENANT "\",\"period_start\":0,"
		 "\"cost\":\"1\"}", "missing_field" },
	{ false, "{\"tenant_id\":\"" TENANT "\",\"period_start\":0,"
		 "\"version\":1,\"cost\":1.5}", "wrong_type" },
	{ false, "{\"tenant_id\":\"" TENANT "\",\"period_start\":0,"
		 "\"version\":1,\"cost\":\"1.5.0\"}", "bad_value" },
	{ false, "{\"tenant_id\":\"" TENANT "\",\"period_start\":0,"
		 "\"version\":1,\"cost\":\"1\",\"ai_requests\":-1}",
	  "bad_value" },
	{ false, "{\"schema\":\"tally.totals/2\",\"tenant_id\":\"" TENANT
		 "\",\"period_start\":0,\"version\":1,\"cost\":\"1\"}",
	  "unsupported_schema" },
	{ false, "{\"tenant_id\":\"" TENANT "\",\"period_start\":\"yesterday\","
		 "\"version\":1,\"cost\":\"1\"}", "bad_value" },
	{ true, "{\"kind\":\"dispute\",\"time\":1}", "missing_field" },
	{ true, "{\"tenant_id\":\"" TENANT "\",\"time\":1}", "missing_field" },
	{ true, "{\"tenant_id\":\"" TENANT "\",\"kind\":\"dispute\"}",
	  "missing_field" },
	{ true, "{\"tenant_id\":\"" TENANT "\",\"kind\":7,\"time\":1}",
	  "wrong_type" },
	{ true, "{\"tenant_id\":\"" TENANT "\",\"kind\":\"dunning\","
		"\"time\":1}", "missing_field" },
};

START_TEST(test_alerts_decode_errors)
{
	tally_codec_error ce = { 0 };
	tally_totals t;
	tally_signal s;
	const char *j = bad_cases[_i].json;
	int rc;

	if (bad_cases[_i].signal)
		rc = tally_signal_from_json(&s, j, strlen(j), &ce);
	else
		rc = tally_totals_from_json(&t, j, strlen(j), &ce);
	ck_assert_msg(rc == TALLY_EINVALID, "case %d must be rejected", _i);
	ck_assert_msg(strcmp(ce.reason, bad_cases[_i].reason) == 0,
		      "case %d: reason %s, want %s", _i, ce.reason,
		      bad_cases[_i].reason);
}
END_TEST

/* ids, thresholds, months -------------------------------------------- */

START_TEST(test_alerts_id_golden)
{
	uint8_t tid[16], id[16], id2[16];
	char s[37];

	ck_assert_int_eq(tally_uuid_parse(tid, TENANT, 36), 0);
	tally_alert_id(id, tid, TALLY_ALERT_BUDGET, NOV_2026, 80);
	tally_uuid_fmt(s, id);
	/* python3: sha256(b"tally.alert/1|<tenant>|budget|2026-11-01T00:00:00
	 * .000Z|80")[:16], version 5, RFC 4122 variant */
	ck_assert_str_eq(s, "39b5e239-664f-5aa6-97b6-e1626d3905ee");
	tally_alert_id(id2, tid, TALLY_ALERT_BUDGET, NOV_2026, 100);
	ck_assert_msg(memcmp(id, id2, 16) != 0, "threshold changes the id");
	tally_alert_id(id2, tid, TALLY_ALERT_PLAN_LIMIT, NOV_2026, 80);
	ck_assert_msg(memcmp(id, id2, 16) != 0, "kind changes the id");
	tally_alert_id(id2, tid, TALLY_ALERT_BUDGET, DEC_2026, 80);
	ck_assert_msg(memcmp(id, id2, 16) != 0, "period changes the id");
}
END_TEST

START_TEST(test_alerts_thresholds_parse)
{
	tally_alert_thresholds t;
	tally_error err;

	ck_assert_int_eq(tally_alert_thresholds_parse(&t, " 80, 50,100,80",
						      &err), 0);
	ck_assert_int_eq(t.n, 3);
	ck_assert_int_eq(t.pct[0], 50);
	ck_assert_int_eq(t.pct[1], 80);
	ck_assert_int_eq(t.pct[2], 100);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "", &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "0", &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "50;80", &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "5000", &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "-5", &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(tally_alert_thresholds_parse(&t, "150", &err), 0);
}
END_TEST

START_TEST(test_alerts_month_start)
{
	ck_assert_int_eq(tally_alert_month_start(MID_NOV_2026), NOV_2026);
	ck_assert_int_eq(tally_alert_month_start(NOV_2026), NOV_2026);
	ck_assert_int_eq(tally_alert_month_start(DEC_2026 - 1), NOV_2026);
	ck_assert_int_eq(tally_alert_month_start(INT64_C(1709208000000)),
			 INT64_C(1706745600000)); /* 2024-02-29 -> 02-01 */
	ck_assert_int_eq(tally_alert_month_start(0), 0);
	ck_assert_int_eq(tally_alert_month_start(-1),
			 INT64_C(-2678400000)); /* 1969-12-01 */
}
END_TEST

static Suite *tally_alerts_suite(void)
{
	Suite *s = suite_create("alerts");
	TCase *tc = tcase_create("Rules");

	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_loop_test(tc, test_alerts_totals_table, 0,
			    (int)(sizeof(totals_cases) /
				  sizeof(totals_cases[0])));
	tcase_add_test(tc, test_alerts_budget_payload_exact);
	tcase_add_test(tc, test_alerts_totals_negative_limit);
	tcase_add_test(tc, test_alerts_plan_limit_lists_metrics);
	tcase_add_test(tc, test_alerts_plan_limit_users);
	tcase_add_loop_test(tc, test_alerts_churn_usage_drop, 0,
			    (int)(sizeof(churn_cases) /
				  sizeof(churn_cases[0])));
	tcase_add_test(tc, test_alerts_repeated_totals_same_ids);
	tcase_add_loop_test(tc, test_alerts_signal_table, 0,
			    (int)(sizeof(signal_cases) /
				  sizeof(signal_cases[0])));
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);

	tc = tcase_create("Decode");
	tcase_add_loop_test(tc, test_alerts_decode_errors, 0,
			    (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);

	tc = tcase_create("Core");
	tcase_add_test(tc, test_alerts_id_golden);
	tcase_add_test(tc, test_alerts_thresholds_parse);
	tcase_add_test(tc, test_alerts_month_start);
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_suite)
