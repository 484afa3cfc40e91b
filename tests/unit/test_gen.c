/*
 * test_gen.c - the workload generator: deterministic from the seed, every
 * event valid for the strict codec, duplicates exact, times inside the
 * range, and the expected totals equal to an independent recount.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "check_main.h"
#include "tally/codec.h"
#include "tally/gen.h"

static tally_gen *mk(uint64_t seed, uint64_t n, const char *dup)
{
	tally_gen_opts o;
	tally_gen *g = NULL;
	tally_error err;

	tally_gen_opts_init(&o);
	o.seed = seed;
	o.events = n;
	o.tenants = 20;
	ck_assert_int_eq(tally_gen_parse_frac(&o.dup_frac, dup), 0);
	ck_assert_int_eq(tally_gen_parse_frac(&o.ooo_frac, "0.1"), 0);
	ck_assert_int_eq(tally_gen_parse_frac(&o.late_frac, "0.01"), 0);
	ck_assert_int_eq(tally_gen_new(&g, &o, &err), 0);
	return g;
}

START_TEST(test_gen_deterministic)
{
	tally_gen *a = mk(42, 500, "0.1"), *b = mk(42, 500, "0.1");
	tally_gen *c = mk(43, 500, "0.1");
	tally_usage_event ea, eb, ec;
	char la[2048], lb[2048], lc[2048];
	int differ = 0;

	while (tally_gen_next(a, &ea, NULL)) {
		ck_assert(tally_gen_next(b, &eb, NULL));
		ck_assert(tally_gen_next(c, &ec, NULL));
		tally_gen_format_json(la, sizeof(la), &ea);
		tally_gen_format_json(lb, sizeof(lb), &eb);
		tally_gen_format_json(lc, sizeof(lc), &ec);
		ck_assert_str_eq(la, lb);
		differ += strcmp(la, lc) != 0;
	}
	ck_assert(!tally_gen_next(b, &eb, NULL));
	ck_assert_msg(differ > 400, "another seed must give other events");
	tally_gen_free(a);
	tally_gen_free(b);
	tally_gen_free(c);
}
END_TEST

START_TEST(test_gen_valid_and_totals)
{
	tally_gen *g = mk(7, 20000, "0.05");
	tally_usage_event ev, back;
	tally_codec_error ce;
	msgpack_sbuffer sb;
	bool dup;
	int64_t uniq = 0, dups = 0, ai = 0, in = 0, cr = 0, api = 0, cx = 0;
	json_t *tot, *t;
	size_t i;
	int64_t s_ai = 0, s_in = 0, s_cr = 0, s_api = 0, s_cx = 0, s_ev = 0;

	msgpack_sbuffer_init(&sb);
	while (tally_gen_next(g, &ev, &dup)) {
		msgpack_sbuffer_clear(&sb);
		tally_codec_encode_usage(&sb, &ev);
		ck_assert_msg(tally_codec_decode_usage(&back, sb.data, sb.size,
						       &ce) == 0,
			      "generated event rejected: %s %s", ce.reason,
			      ce.field);
		ck_assert(ev.time_ms >= INT64_C(1761955200000) &&
			  ev.time_ms < INT64_C(1764547200000));
		if (dup) {
			dups++;
			continue;
		}
		uniq++;
		if (ev.meter == TALLY_METER_AI_TOKENS) {
			ai++;
			in += ev.input_tokens;
			cr += ev.cache_read_tokens;
		} else if (ev.meter == TALLY_METER_API_CALL) {
			api += ev.count;
		} else if (ev.meter == TALLY_METER_WORKFLOW) {
			cx += ev.complexity;
		}
	}
	msgpack_sbuffer_destroy(&sb);
	ck_assert_int_eq(uniq + dups, 20000);
	ck_assert_msg(dups > 800 && dups < 1200, "dups %lld for 5%%",
		      (long long)dups);
	tot = tally_gen_totals_json(g);
	ck_assert_int_eq(json_integer_value(json_object_get(tot, "unique")),
			 uniq);
	json_array_foreach(json_object_get(tot, "tenants"), i, t) {
		s_ev += json_integer_value(json_object_get(t, "events"));
		s_ai += json_integer_value(json_object_get(t, "ai_requests"));
		s_in += json_integer_value(json_object_get(t, "input_tokens"));
		s_cr += json_integer_value(json_object_get(t,
							   "cache_read_tokens"));
		s_api += json_integer_value(json_object_get(t, "api_calls"));
		s_cx += json_integer_value(json_object_get(t,
							   "complexity_units"));
	}
	ck_assert_int_eq(s_ev, uniq);
	ck_assert_int_eq(s_ai, ai);
	ck_assert_int_eq(s_in, in);
	ck_assert_int_eq(s_cr, cr);
	ck_assert_int_eq(s_api, api);
	ck_assert_int_eq(s_cx, cx);
	json_decref(tot);
	tally_gen_free(g);
}
END_TEST

START_TEST(test_gen_parsers)
{
	int64_t v, mix[5];

	ck_assert_int_eq(tally_gen_parse_time(&v, "2025-11-01"), 0);
	ck_assert_int_eq(v, INT64_C(1761955200000));
	ck_assert_int_eq(tally_gen_parse_time(&v, "2025-11-01T01:00:00+01:00"),
			 0);
	ck_assert_int_eq(v, INT64_C(1761955200000));
	ck_assert_int_eq(tally_gen_parse_time(&v, "1761955200000"), 0);
	ck_assert_int_ne(tally_gen_parse_time(&v, "2025-11-01T00:00:00"), 0);
	ck_assert_int_eq(tally_gen_parse_frac(&v, "0.05"), 0);
	ck_assert_int_eq(v, INT64_C(50000000000));
	ck_assert_int_ne(tally_gen_parse_frac(&v, "1.5"), 0);
	ck_assert_int_eq(tally_gen_parse_mix(mix, "ai=1,api=0.5"), 0);
	ck_assert_int_eq(mix[TALLY_METER_AI_TOKENS], INT64_C(1000000000000));
	ck_assert_int_eq(mix[TALLY_METER_API_CALL], INT64_C(500000000000));
	ck_assert_int_eq(mix[TALLY_METER_WORKFLOW], 0);
	ck_assert_int_ne(tally_gen_parse_mix(mix, "video=1"), 0);
	ck_assert(tally_gen_model_ok("openai:gpt-4o"));
	ck_assert(!tally_gen_model_ok("gpt-4o"));
	ck_assert(!tally_gen_model_ok("openai:gpt\"4o"));
}
END_TEST

START_TEST(test_gen_tenants_distinct)
{
	tally_gen *g = mk(9, 1, "0");
	uint8_t a[16], b[16];
	char t[37];
	uint32_t i;

	for (i = 1; i < 20; i++) {
		tally_gen_tenant(g, i - 1, a);
		tally_gen_tenant(g, i, b);
		ck_assert(memcmp(a, b, 16) != 0);
		tally_uuid_fmt(t, b);
		ck_assert_int_eq(t[14], '4');
	}
	tally_gen_free(g);
}
END_TEST

static Suite *tally_gen_suite(void)
{
	Suite *s = suite_create("gen");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_gen_deterministic);
	tcase_add_test(tc, test_gen_valid_and_totals);
	tcase_add_test(tc, test_gen_parsers);
	tcase_add_test(tc, test_gen_tenants_distinct);
	tcase_set_timeout(tc, 20);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_gen_suite)
