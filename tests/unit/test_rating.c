/*
 * test_rating.c - table-driven cases of the rating function against
 * tests/fixtures/prices_test.json (a small genai-prices-format book whose
 * price ids are 1..12 in file order): every component, cache tokens at and
 * above the limits, tiers at start and one above, start_date one ms before
 * and after, time-of-day windows crossing midnight, requests and reasoning,
 * pico rounding (half even), fallbacks, name normalisation, unknown models,
 * overrides, unit meters, storage GB-months and overflow. Plus the loader:
 * JSON numbers never pass through a double, regex translation, bad data.
 */
#include "check_main.h"
#include "tally/money.h"
#include "tally/pricebook.h"
#include "tally/rating.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE TALLY_SOURCE_DIR "/tests/fixtures/prices_test.json"

static tally_pricebook *pb;
static tally_rate_ctx *ctx;

static const uint8_t T_PLAIN[16] = { 0 };
static const uint8_t T_MULT[16] = { 1 };
static const uint8_t T_EXPL[16] = { 2 };

static void setup(void)
{
	tally_error err;
	tally_override_spec s;

	tally_error_clear(&err);
	ck_assert_msg(tally_pricebook_load_genai_file(&pb, FIXTURE, &err) == 0,
		      "fixture loads: %s", err.msg);
	memset(&s, 0, sizeof(s));
	s.id = 70;
	memcpy(s.tenant_id, T_MULT, 16);
	s.multiplier = "1.25";
	s.effective_from_ms = INT64_MIN;
	s.effective_to_ms = INT64_MAX;
	s.specificity = 1; /* a plan-level markup */
	ck_assert(tally_pricebook_add_override(pb, &s, &err) == 0);
	memset(&s, 0, sizeof(s));
	s.id = 77;
	memcpy(s.tenant_id, T_EXPL, 16);
	s.meter = TALLY_METER_AI_TOKENS;
	s.provider = "acme";
	s.model = "plain";
	s.input_mtok = "1";
	s.output_mtok = "1";
	s.effective_from_ms = INT64_MIN;
	s.effective_to_ms = INT64_MAX;
	s.specificity = 2;
	ck_assert(tally_pricebook_add_override(pb, &s, &err) == 0);
	memset(&s, 0, sizeof(s));
	s.id = 78;
	memcpy(s.tenant_id, T_EXPL, 16);
	s.meter = TALLY_METER_WORKFLOW;
	s.unit_price = "0.001";
	s.effective_from_ms = 1767225600000; /* 2026-01-01 */
	s.effective_to_ms = INT64_MAX;
	s.specificity = 2;
	ck_assert(tally_pricebook_add_override(pb, &s, &err) == 0);
	ctx = tally_rate_ctx_new();
}

static void teardown(void)
{
	tally_rate_ctx_free(ctx);
	tally_pricebook_free(pb);
	pb = NULL;
	ctx = NULL;
}

static tally_str S(const char *s)
{
	tally_str r = { s, (uint32_t)strlen(s) };
	return r;
}

typedef struct tcase_row {
	const char *name;
	const uint8_t *tenant;
	const char *provider, *model;
	int64_t time_ms;
	int64_t in, cr, cw, out, rs;
	int rc;
	const char *cost;   /* exact decimal */
	int64_t price_id;
	const char *comp_input; /* uncached input component, or NULL */
} tcase_row;

#define T26 INT64_C(1767268800000) /* 2026-01-01T12:00:00Z */
#define D_START INT64_C(1773360000000) /* 2026-03-13T00:00:00Z */
#define NIGHT INT64_C(1767304800000)   /* 2026-01-01T22:00:00Z */
#define TWO_AM INT64_C(1767232800000)  /* 2026-01-01T02:00:00Z */
#define MIDNIGHT INT64_C(1767225600000)

static const tcase_row rows[] = {
	/* each component */
	{ "plain in+out", T_PLAIN, "acme", "acme-plain", T26, 1000, 0, 0, 500,
	  -1, 0, "0.0075", 1, "0.0025" },
	{ "cache read without cache price -> input price", T_PLAIN, "acme",
	  "acme-plain", T26, 1000, 400, 100, 0, -1, 0, "0.0025", 1,
	  "0.0025" },
	{ "cached all kinds", T_PLAIN, "acme", "acme-cached", T26, 1000, 400,
	  100, 10, -1, 0, "0.002145", 2, "0.0015" },
	{ "cache read == input (at limit)", T_PLAIN, "acme", "acme-cached",
	  T26, 1000, 1000, 0, 0, -1, 0, "0.0003", 2, NULL },
	{ "cache read + write == input (at limit)", T_PLAIN, "acme",
	  "acme-cached", T26, 1000, 600, 400, 0, -1, 0, "0.00168", 2, NULL },
	{ "cache read > input (above limit)", T_PLAIN, "acme", "acme-cached",
	  T26, 1000, 1001, 0, 0, -1, TALLY_EINVALID, NULL, 0, NULL },
	{ "cache read + write > input", T_PLAIN, "acme", "acme-cached", T26,
	  1000, 600, 401, 0, -1, TALLY_EINVALID, NULL, 0, NULL },
	{ "zero tokens", T_PLAIN, "acme", "acme-cached", T26, 0, 0, 0, 0, -1,
	  0, "0", 2, NULL },
	/* tiers: strictly greater than start */
	{ "tier exactly at start", T_PLAIN, "acme", "acme-tiered", T26,
	  200000, 0, 0, 1000, -1, 0, "0.26", 3, NULL },
	{ "tier one above start", T_PLAIN, "acme", "acme-tiered", T26,
	  200001, 0, 0, 1000, -1, 0, "0.5150025", 3, NULL },
	{ "tier applies to cache read too", T_PLAIN, "acme", "acme-tiered",
	  T26, 200001, 1, 0, 0, -1, 0, "0.50000025", 3, "0.5" },
	{ "tier: cache below start still counts as input", T_PLAIN, "acme",
	  "acme-tiered", T26, 200001, 200001, 0, 0, -1, 0, "0.05000025", 3,
	  NULL },
	/* conditional prices: start_date */
	{ "start_date -1 ms", T_PLAIN, "acme", "acme-dated", D_START - 1,
	  1000000, 0, 0, 0, -1, 0, "1", 4, NULL },
	{ "start_date exactly", T_PLAIN, "acme", "acme-dated", D_START,
	  1000000, 0, 0, 0, -1, 0, "3", 5, NULL },
	{ "start_date +1 ms", T_PLAIN, "acme", "acme-dated", D_START + 1,
	  1000000, 0, 0, 0, -1, 0, "3", 5, NULL },
	/* time of day 22:00 -> 02:00 crosses midnight */
	{ "tod 21:59:59.999", T_PLAIN, "acme", "acme-night", NIGHT - 1,
	  1000000, 0, 0, 0, -1, 0, "1", 6, NULL },
	{ "tod 22:00:00.000", T_PLAIN, "acme", "acme-night", NIGHT, 1000000,
	  0, 0, 0, -1, 0, "0.5", 7, NULL },
	{ "tod 00:00:00.000", T_PLAIN, "acme", "acme-night", MIDNIGHT,
	  1000000, 0, 0, 0, -1, 0, "0.5", 7, NULL },
	{ "tod 01:59:59.999", T_PLAIN, "acme", "acme-night", TWO_AM - 1,
	  1000000, 0, 0, 0, -1, 0, "0.5", 7, NULL },
	{ "tod 02:00:00.000", T_PLAIN, "acme", "acme-night", TWO_AM, 1000000,
	  0, 0, 0, -1, 0, "1", 6, NULL },
	{ "tod before 1970", T_PLAIN, "acme", "acme-night",
	  -INT64_C(3600000), 1000000, 0, 0, 0, -1, 0, "0.5", 7, NULL },
	/* requests_kcount (one request per event) and reasoning */
	{ "requests + reasoning", T_PLAIN, "acme", "acme-reqs", T26, 1000, 0,
	  0, 100, 40, 0, "0.00618", 8, "0.001" },
	{ "requests only", T_PLAIN, "acme", "acme-reqs", T26, 0, 0, 0, 0, -1,
	  0, "0.005", 8, NULL },
	{ "reasoning > output", T_PLAIN, "acme", "acme-reqs", T26, 10, 0, 0,
	  5, 6, TALLY_EINVALID, NULL, 0, NULL },
	{ "regex rule, case-folded name", T_PLAIN, "ACME", "ACME-R42", T26,
	  0, 0, 0, 0, -1, 0, "0.005", 8, NULL },
	{ "reasoning without its price stays in output", T_PLAIN, "acme",
	  "acme-plain", T26, 0, 0, 0, 100, 40, 0, "0.001", 1, NULL },
	/* pico rounding: half even */
	{ "1 pico", T_PLAIN, "acme", "acme-fine", T26, 1, 0, 0, 0, -1, 0,
	  "0.000000000001", 9, NULL },
	{ "1.5 pico -> 2", T_PLAIN, "acme", "acme-fine", T26, 0, 0, 0, 1, -1,
	  0, "0.000000000002", 9, NULL },
	{ "4.5 pico -> 4", T_PLAIN, "acme", "acme-fine", T26, 0, 0, 0, 3, -1,
	  0, "0.000000000004", 9, NULL },
	{ "7.5 pico -> 8", T_PLAIN, "acme", "acme-fine", T26, 0, 0, 0, 5, -1,
	  0, "0.000000000008", 9, NULL },
	/* overflow */
	{ "overflow", T_PLAIN, "acme", "acme-dear", T26,
	  INT64_C(1000000000000), 0, 0, 0, -1, TALLY_EOVERFLOW, NULL, 0,
	  NULL },
	{ "large but fits", T_PLAIN, "acme", "acme-dear", T26, 1000000, 0, 0,
	  0, -1, 0, "9000000", 10, NULL },
	/* matching */
	{ "provider by provider_match", T_PLAIN, "Acme-Cloud", "acme-plain",
	  T26, 1000000, 0, 0, 0, -1, 0, "2.5", 1, NULL },
	{ "fallback provider", T_PLAIN, "resell", "acme-plain", T26, 1000000,
	  0, 0, 0, -1, 0, "2.5", 1, NULL },
	{ "own model before fallback", T_PLAIN, "resell", "acme-plain-r",
	  T26, 1000000, 0, 0, 0, -1, 0, "4", 12, NULL },
	{ "date suffix normalised", T_PLAIN, "acme", "acme-ver-20250101", T26,
	  1000000, 0, 0, 0, -1, 0, "7", 11, NULL },
	{ "litellm provider/model", T_PLAIN, "litellm", "acme/acme-plain", T26,
	  1000000, 0, 0, 0, -1, 0, "2.5", 1, NULL },
	{ "litellm falls back to model_match", T_PLAIN, "litellm",
	  "acme-plain", T26, 1000000, 0, 0, 0, -1, 0, "2.5", 1, NULL },
	{ "trimmed and case-folded", T_PLAIN, " ACME ", " Acme-Plain ", T26,
	  1000000, 0, 0, 0, -1, 0, "2.5", 1, NULL },
	{ "unknown model", T_PLAIN, "acme", "acme-nope", T26, 1, 0, 0, 0, -1,
	  TALLY_ENOTFOUND, "0", 0, NULL },
	{ "unknown provider", T_PLAIN, "nobody", "acme-plain", T26, 1, 0, 0,
	  0, -1, TALLY_ENOTFOUND, "0", 0, NULL },
	/* overrides */
	{ "multiplier 1.25", T_MULT, "acme", "acme-plain", T26, 1000, 0, 0,
	  500, -1, 0, "0.009375", 1, "0.003125" },
	{ "explicit price for the model", T_EXPL, "acme", "acme-plain", T26,
	  1000, 0, 0, 500, -1, 0, "0.0015", 77, "0.001" },
	{ "explicit override does not touch other models", T_EXPL, "acme",
	  "acme-cached", T26, 1000, 0, 0, 0, -1, 0, "0.003", 2, NULL },
};

static void set_event(tally_usage_event *ev, const tcase_row *r)
{
	memset(ev, 0, sizeof(*ev));
	ev->id = S("e");
	ev->source = S("test");
	memcpy(ev->tenant_id, r->tenant, 16);
	ev->time_ms = r->time_ms;
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider = S(r->provider);
	ev->model = S(r->model);
	ev->input_tokens = r->in;
	ev->cache_read_tokens = r->cr;
	ev->cache_write_tokens = r->cw;
	ev->output_tokens = r->out;
	if (r->rs >= 0) {
		ev->has_reasoning = true;
		ev->reasoning_tokens = r->rs;
	}
}

static void check_row(const tcase_row *r, tally_rate_ctx *c)
{
	tally_usage_event ev;
	tally_rated_event out;
	tally_error err;
	char buf[48];
	int rc, k;
	int64_t sum = 0;

	set_event(&ev, r);
	tally_error_clear(&err);
	rc = tally_rate_event(&out, pb, &ev, c, &err);
	ck_assert_msg(rc == r->rc, "%s: rc %d, expected %d (%s)", r->name, rc,
		      r->rc, err.msg);
	if (r->cost == NULL)
		return;
	tally_money_fmt(buf, sizeof(buf), out.cost);
	ck_assert_msg(strcmp(buf, r->cost) == 0, "%s: cost %s, expected %s",
		      r->name, buf, r->cost);
	ck_assert_msg(out.price_id == r->price_id,
		      "%s: price_id %lld, expected %lld", r->name,
		      (long long)out.price_id, (long long)r->price_id);
	ck_assert_msg(out.unpriced == (r->rc == TALLY_ENOTFOUND),
		      "%s: unpriced flag", r->name);
	for (k = 0; k < TALLY_COMP_N; k++)
		sum += out.components[k];
	ck_assert_msg(sum == out.cost, "%s: components sum to the cost",
		      r->name);
	if (r->comp_input != NULL) {
		tally_money_fmt(buf, sizeof(buf),
				out.components[TALLY_COMP_INPUT]);
		ck_assert_msg(strcmp(buf, r->comp_input) == 0,
			      "%s: input component %s, expected %s", r->name,
			      buf, r->comp_input);
	}
	ck_assert_msg(strcmp(out.currency, "USD") == 0, "%s: currency",
		      r->name);
}

START_TEST(test_rating_table)
{
	/* with the cache, twice (second pass hits it), and without */
	check_row(&rows[_i], ctx);
	check_row(&rows[_i], ctx);
	check_row(&rows[_i], NULL);
}
END_TEST

static void unit_event(tally_usage_event *ev, const uint8_t *tenant,
		       tally_meter m, int64_t t)
{
	memset(ev, 0, sizeof(*ev));
	ev->id = S("u");
	ev->source = S("test");
	memcpy(ev->tenant_id, tenant, 16);
	ev->time_ms = t;
	ev->meter = m;
}

static void expect_cost(const tally_rated_event *out, const char *cost)
{
	char buf[48];

	tally_money_fmt(buf, sizeof(buf), out->cost);
	ck_assert_msg(strcmp(buf, cost) == 0, "cost %s, expected %s", buf,
		      cost);
}

START_TEST(test_rating_units)
{
	tally_usage_event ev;
	tally_rated_event out;
	tally_error err;

	unit_event(&ev, T_PLAIN, TALLY_METER_WORKFLOW, T26);
	ev.complexity = 10;
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) == 0);
	expect_cost(&out, "0.02");
	ck_assert_int_eq(out.components[TALLY_COMP_UNITS], out.cost);

	unit_event(&ev, T_EXPL, TALLY_METER_WORKFLOW, T26);
	ev.complexity = 10;
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) == 0);
	expect_cost(&out, "0.01");
	ck_assert_int_eq(out.price_id, 78);
	/* the override starts 2026-01-01: one ms before, the book's price */
	unit_event(&ev, T_EXPL, TALLY_METER_WORKFLOW, MIDNIGHT - 1);
	ev.complexity = 10;
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) == 0);
	expect_cost(&out, "0.02");

	unit_event(&ev, T_MULT, TALLY_METER_API_CALL, T26);
	ev.count = 3;
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) == 0);
	expect_cost(&out, "0.000375"); /* 3 x 0.0001 x 1.25 */

	unit_event(&ev, T_PLAIN, TALLY_METER_STORAGE, T26);
	ev.bytes = 5000000000;
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) == 0);
	expect_cost(&out, "0");
	ck_assert_msg(out.price_id != 0 && !out.unpriced,
		      "storage snapshot carries the unit price id");
}
END_TEST

START_TEST(test_rating_storage_cost)
{
	int64_t cost, pid;
	tally_error err;
	char buf[48];

	ck_assert(tally_rate_storage_cost(&cost, &pid, pb, T_PLAIN, T26,
					  TALLY_STORAGE_GB,
					  TALLY_STORAGE_MONTH_MS, &err) == 0);
	tally_money_fmt(buf, sizeof(buf), cost);
	ck_assert_str_eq(buf, "0.1");
	/* 1 TB for one hour: 1000 * 0.10 / 720 = 0.138888888888(8..) */
	ck_assert(tally_rate_storage_cost(&cost, &pid, pb, T_PLAIN, T26,
					  INT64_C(1000000000000), 3600000,
					  &err) == 0);
	tally_money_fmt(buf, sizeof(buf), cost);
	ck_assert_str_eq(buf, "0.138888888889");
	ck_assert(tally_rate_storage_cost(&cost, &pid, pb, T_MULT, T26, 1, 1,
					  &err) == 0);
	ck_assert_int_eq(cost, 0);
}
END_TEST

START_TEST(test_rating_unknown_meter)
{
	tally_usage_event ev;
	tally_rated_event out;
	tally_error err;

	unit_event(&ev, T_PLAIN, TALLY_METER_NONE, T26);
	ck_assert(tally_rate_event(&out, pb, &ev, ctx, &err) ==
		  TALLY_EINVALID);
}
END_TEST

START_TEST(test_rating_ctx_new_book)
{
	/* a context used with a second book forgets the first one's cache */
	tally_pricebook *pb2 = NULL;
	tally_error err;
	tally_usage_event ev;
	tally_rated_event out;
	static const char data[] =
		"[{\"id\":\"acme\",\"name\":\"A\",\"api_pattern\":\"x\","
		"\"models\":[{\"id\":\"plain\",\"match\":{\"equals\":"
		"\"acme-plain\"},\"prices\":{\"input_mtok\":5}}]}]";

	check_row(&rows[0], ctx);
	ck_assert(tally_pricebook_load_genai_buf(&pb2, data, strlen(data),
						 &err) == 0);
	set_event(&ev, &rows[0]);
	ck_assert(tally_rate_event(&out, pb2, &ev, ctx, &err) == 0);
	expect_cost(&out, "0.005");
	tally_pricebook_free(pb2);
}
END_TEST

/* ---- loader ---- */

START_TEST(test_rating_loader_exact_numbers)
{
	/* 0.1 + 0.2 style values must stay exact; 17-digit float artefacts
	 * round half even at 12 decimals per MTok; exponents are exact */
	static const char data[] =
		"[{\"id\":\"p\",\"name\":\"P\",\"api_pattern\":\"x\","
		"\"description\":\"has -1.5 and \\\"quoted 2\\\" text\","
		"\"models\":["
		"{\"id\":\"a\",\"match\":{\"equals\":\"a\"},"
		" \"prices\":{\"input_mtok\":0.30000000000000004}},"
		"{\"id\":\"b\",\"match\":{\"equals\":\"b\"},"
		" \"prices\":{\"input_mtok\":1.5e-1}},"
		"{\"id\":\"c\",\"match\":{\"equals\":\"c\"},"
		" \"prices\":{\"input_mtok\":0.1234567890125}}]}]";
	tally_pricebook *b = NULL;
	tally_error err;
	tally_usage_event ev;
	tally_rated_event out;
	const char *models[] = { "a", "b", "c" };
	const char *want[] = { "0.3", "0.15", "0.123456789012" };
	int i;

	ck_assert_msg(tally_pricebook_load_genai_buf(&b, data, strlen(data),
						     &err) == 0,
		      "%s", err.msg);
	for (i = 0; i < 3; i++) {
		memset(&ev, 0, sizeof(ev));
		ev.meter = TALLY_METER_AI_TOKENS;
		ev.provider = S("p");
		ev.model = S(models[i]);
		ev.input_tokens = 1000000;
		ck_assert(tally_rate_event(&out, b, &ev, NULL, &err) == 0);
		expect_cost(&out, want[i]);
	}
	tally_pricebook_free(b);
}
END_TEST

START_TEST(test_rating_loader_errors)
{
	static const char *const bad[] = {
		"{}",
		"[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":{\"equals\""
		":\"m\"},\"prices\":{\"input_mtok\":-1}}]}]",
		"[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":{\"wat\":"
		"\"m\"},\"prices\":{}}]}]",
		"[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":{\"regex\":"
		"\"(?<=x)m\"},\"prices\":{}}]}]",
		"[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":{\"equals\""
		":\"m\"},\"prices\":[{\"constraint\":{\"type\":\"start_date\","
		"\"start_date\":\"2025-13-01\"},\"prices\":{}}]}]}]",
		"[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":{\"equals\""
		":\"m\"},\"prices\":{\"input_mtok\":{\"base\":1,\"tiers\":"
		"[{\"start\":1.5,\"price\":2}]}}}]}]",
		"[",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		tally_pricebook *b = NULL;
		tally_error err;

		ck_assert_msg(tally_pricebook_load_genai_buf(&b, bad[i],
							     strlen(bad[i]),
							     &err) ==
				      TALLY_EINVALID,
			      "bad data #%zu is rejected", i);
		ck_assert(b == NULL);
	}
	ck_assert(tally_pricebook_load_genai_file(&pb, "/nonexistent/x.json",
						  NULL) == TALLY_ERROR);
}
END_TEST

/* A genai-prices file whose one model matches the regex rx. */
static int load_regex(tally_pricebook **b, const char *rx, tally_error *err)
{
	char data[512];

	snprintf(data, sizeof(data),
		 "[{\"id\":\"p\",\"models\":[{\"id\":\"m\",\"match\":"
		 "{\"regex\":\"%s\"},\"prices\":{\"input_mtok\":1}}]}]", rx);
	return tally_pricebook_load_genai_buf(b, data, strlen(data), err);
}

START_TEST(test_rating_regex_blowup)
{
	/* regcomp() copies a repeated expression once per repetition, so
	 * stacked or nested repetitions grow exponentially: such a regex is
	 * refused before it is compiled (found by tests/fuzz/fuzz_genai.c) */
	static const char *const bad[] = {
		"^mG++++++++++++++++++++++++$",
		"^(((((((((((((((((((((((a+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)"
		"+)+)+)+)+)+$",
		"^((a{1,100}){1,100}){1,100}$",
		"^a{1,99999}$",
		"^(?!.+/)(?:ab|G************************************++++++v)",
		"^((((a*)*)*)*)m$",
	};
	static const char *const good[] = {
		"^m$", "^m-\\\\d{8}$", "^(?:ab)+c{2,3}m*$", "^m+?x?$",
		"^(?![^/]+/)(?:labs-)?(?:(?:mi|code)stral|m)",
	};
	tally_pricebook *b = NULL;
	tally_error err;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(load_regex(&b, bad[i], &err) == TALLY_EINVALID,
			      "%s is refused", bad[i]);
		ck_assert_msg(strstr(err.msg, "too complex") != NULL, "%s",
			      err.msg);
		ck_assert(b == NULL);
	}
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(load_regex(&b, good[i], &err) == 0, "%s: %s",
			      good[i], err.msg);
		tally_pricebook_free(b);
		b = NULL;
	}
}
END_TEST

START_TEST(test_rating_real_data)
{
	/* the shipped genai-prices file loads, and its regexes (translated,
	 * including the ^(?!...) look-aheads) behave */
	tally_pricebook *b = NULL;
	tally_error err;
	tally_usage_event ev;
	tally_rated_event out;
	tally_rate_detail det;

	ck_assert_msg(tally_pricebook_load_genai_file(
			      &b,
			      TALLY_SOURCE_DIR
			      "/data/genai-prices-0.1.8.json",
			      &err) == 0,
		      "%s", err.msg);
	ck_assert_uint_ge(tally_pricebook_models(b), 1000);
	memset(&ev, 0, sizeof(ev));
	ev.meter = TALLY_METER_AI_TOKENS;
	ev.provider = S("openai");
	ev.model = S("o4-mini");
	ev.input_tokens = 1000;
	ck_assert(tally_rate_event_ex(&out, &det, b, &ev, NULL, &err) == 0);
	ck_assert_str_eq(det.model_id, "o4-mini");
	ev.provider = S("mistral");
	ev.model = S("mistral-large-latest");
	ck_assert(tally_rate_event_ex(&out, &det, b, &ev, NULL, &err) == 0);
	ck_assert_str_eq(det.provider_id, "mistral");
	tally_pricebook_free(b);
}
END_TEST

static Suite *tally_rating_suite(void)
{
	Suite *s = suite_create("rating");
	TCase *tc = tcase_create("Table");
	TCase *tl = tcase_create("Loader");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_loop_test(tc, test_rating_table, 0,
			    (int)(sizeof(rows) / sizeof(rows[0])));
	tcase_add_test(tc, test_rating_units);
	tcase_add_test(tc, test_rating_storage_cost);
	tcase_add_test(tc, test_rating_unknown_meter);
	tcase_add_test(tc, test_rating_ctx_new_book);
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);
	tcase_add_checked_fixture(tl, setup, teardown);
	tcase_add_test(tl, test_rating_loader_exact_numbers);
	tcase_add_test(tl, test_rating_loader_errors);
	tcase_add_test(tl, test_rating_regex_blowup);
	tcase_add_test(tl, test_rating_real_data);
	tcase_set_timeout(tl, 20);
	suite_add_tcase(s, tl);
	return s;
}

TALLY_CHECK_MAIN(tally_rating_suite)
