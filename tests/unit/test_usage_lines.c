/* test_usage_lines.c - invoice lines from a period's charges: grouping,
 * rounding once per line (half away from zero), currency exponents,
 * included usage. */
#include "check_main.h"
#include "tally/usage_lines.h"

#include <stdlib.h>
#include <string.h>

#define PICO(units) ((tally_money128)(units) * TALLY_PICO_PER_UNIT)

/* 0.004 + 0.004 of one model: rounded per line (0.008 -> 1 cent), not
 * per charge (0 + 0 cents). */
static const tally_usage_charge charges[] = {
	{ "usage", "ai.tokens", "openai", "gpt-4o", INT64_C(4000000000) },
	{ "usage", "ai.tokens", "openai", "gpt-4o", INT64_C(4000000000) },
	{ "usage", "ai.tokens", "anthropic", "claude", INT64_C(2500000000000) },
	{ "usage", "storage.snapshot", "", "", INT64_C(1005000000000) },
	{ "late_usage", "ai.tokens", "openai", "gpt-4o", INT64_C(5000000000) },
	{ "rerate", "ai.tokens", "openai", "gpt-4o", -INT64_C(5000000000) },
	{ "usage", "api.call", "", "", 0 },
};
#define NCH (sizeof(charges) / sizeof(*charges))

static const tally_usage_line *find(const tally_usage_line *v, size_t n,
				    const char *key)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(v[i].key, key) == 0)
			return &v[i];
	return NULL;
}

START_TEST(test_usage_lines_per_model)
{
	tally_usage_line *v = NULL;
	size_t n = 0, i;
	tally_error err;
	const tally_usage_line *l;

	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_PER_MODEL, 0, 2, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 5); /* the zero api.call line is left out */
	for (i = 1; i < n; i++)
		ck_assert_msg(strcmp(v[i - 1].key, v[i].key) < 0, "sorted");
	l = find(v, n, "usage:ai.tokens:openai:gpt-4o");
	ck_assert_ptr_nonnull(l);
	ck_assert(l->exact_pico == INT64_C(8000000000));
	ck_assert_int_eq(l->minor, 1);
	ck_assert_str_eq(l->description, "Usage: ai.tokens openai/gpt-4o");
	l = find(v, n, "usage:storage.snapshot");
	ck_assert_ptr_nonnull(l);
	ck_assert_int_eq(l->minor, 101); /* 1.005 -> 1.01: half away */
	l = find(v, n, "late_usage:ai.tokens:openai:gpt-4o");
	ck_assert_ptr_nonnull(l);
	ck_assert_int_eq(l->minor, 1);   /* 0.005 -> 0.01 */
	l = find(v, n, "rerate:ai.tokens:openai:gpt-4o");
	ck_assert_ptr_nonnull(l);
	ck_assert_int_eq(l->minor, -1);  /* -0.005 -> -0.01 */
	free(v);
}
END_TEST

START_TEST(test_usage_lines_per_meter_and_single)
{
	tally_usage_line *v = NULL;
	size_t n = 0;
	tally_error err;
	const tally_usage_line *l;

	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_PER_METER, 0, 2, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 4); /* ai.tokens, storage, late, rerate */
	l = find(v, n, "usage:ai.tokens");
	ck_assert_ptr_nonnull(l);
	ck_assert(l->exact_pico == INT64_C(2508000000000));
	ck_assert_int_eq(l->minor, 251);
	/* late_usage 0.005 and rerate -0.005 stay two lines per meter */
	ck_assert_int_eq(find(v, n, "rerate:ai.tokens")->minor, -1);
	free(v);

	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_SINGLE, 0, 2, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(v[0].key, "usage");
	ck_assert(v[0].exact_pico == INT64_C(3513000000000));
	ck_assert_int_eq(v[0].minor, 351);
	free(v);
}
END_TEST

START_TEST(test_usage_lines_currency_digits)
{
	tally_usage_line *v = NULL;
	size_t n = 0;
	tally_error err;
	const tally_usage_charge yen[] = {
		{ "usage", "ai.tokens", "openai", "gpt-4o", PICO(150) / 100 },
		{ "usage", "api.call", "", "", PICO(249) / 100 },
	};

	ck_assert_int_eq(tally_currency_minor_digits("USD"), 2);
	ck_assert_int_eq(tally_currency_minor_digits("eur"), 2);
	ck_assert_int_eq(tally_currency_minor_digits("JPY"), 0);
	ck_assert_int_eq(tally_currency_minor_digits("KWD"), 3);
	ck_assert_int_eq(tally_currency_minor_digits("US"), -1);
	ck_assert_int_eq(tally_currency_minor_digits("U1D"), -1);
	ck_assert_int_eq(tally_usage_lines_build(yen, 2, TALLY_GROUP_PER_MODEL,
		0, 0, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(find(v, n, "usage:ai.tokens:openai:gpt-4o")->minor, 2);
	ck_assert_int_eq(find(v, n, "usage:api.call")->minor, 2);
	free(v);
	ck_assert_int_eq(tally_usage_lines_build(yen, 1, TALLY_GROUP_PER_MODEL,
		0, 3, &v, &n, &err), 0);
	ck_assert_int_eq(v[0].minor, 1500); /* KWD: 1.500 */
	free(v);
}
END_TEST

START_TEST(test_usage_lines_included_and_empty)
{
	tally_usage_line *v = NULL;
	size_t n = 1;
	tally_error err;
	const tally_usage_line *l;

	/* no charges: no line, no error */
	ck_assert_int_eq(tally_usage_lines_build(NULL, 0,
		TALLY_GROUP_PER_MODEL, 0, 2, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 0);
	ck_assert_ptr_null(v);
	/* included 2.00 of 3.513 usage: one negative line of the usage only */
	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_PER_MODEL, PICO(2), 2, &v, &n, &err), 0);
	l = find(v, n, "included");
	ck_assert_ptr_nonnull(l);
	ck_assert_int_eq(l->minor, -200);
	free(v);
	/* included beyond the usage: capped at the period's usage */
	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_PER_MODEL, PICO(100), 2, &v, &n, &err), 0);
	l = find(v, n, "included");
	ck_assert(l->exact_pico == -INT64_C(3513000000000));
	free(v);
	ck_assert_int_eq(tally_usage_lines_build(charges, NCH,
		TALLY_GROUP_SINGLE, PICO(100), 2, &v, &n, &err), 0);
	ck_assert_uint_eq(n, 0); /* 3.513 + 0.005 - 0.005 - 3.513 */
	ck_assert_ptr_null(v);
}
END_TEST

static Suite *usage_lines_suite(void)
{
	Suite *s = suite_create("usage_lines");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_usage_lines_per_model);
	tcase_add_test(tc, test_usage_lines_per_meter_and_single);
	tcase_add_test(tc, test_usage_lines_currency_digits);
	tcase_add_test(tc, test_usage_lines_included_and_empty);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(usage_lines_suite)
