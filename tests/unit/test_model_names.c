/*
 * test_model_names.c - tally_model_name_norm and tally_model_name_is: the
 * canonical provider/model name is trimmed of ASCII white space and ASCII
 * lower-case, other bytes (UTF-8) untouched; every spelling of a name has
 * the same canonical form.
 */
#include "check_main.h"
#include "base/model_names.h"

#include <string.h>

static const char *norm(const char *s)
{
	static char buf[64];

	tally_model_name_norm(buf, sizeof(buf), s, strlen(s));
	return buf;
}

START_TEST(test_model_names_table)
{
	static const char *const cases[][2] = {
		{ "openai", "openai" },
		{ "OpenAI", "openai" },
		{ " openai", "openai" },
		{ "OPENAI ", "openai" },
		{ "\t\n OpEnAi \r\v\f", "openai" },
		{ "GPT-4o-Mini", "gpt-4o-mini" },
		{ "  gpt 4o  ", "gpt 4o" },      /* inner space kept */
		{ "", "" },
		{ " \t ", "" },
		{ "ÜNÏCODE-Ä", "ÜnÏcode-Ä" },     /* only ASCII letters folded */
		{ "anthropic/Claude-3", "anthropic/claude-3" },
		{ "@#$_-.:", "@#$_-.:" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *in = cases[i][0], *want = cases[i][1];

		ck_assert_str_eq(norm(in), want);
		ck_assert_msg(tally_model_name_is(want, strlen(want), in,
						  strlen(in)),
			      "'%s' is '%s'", in, want);
		ck_assert_uint_eq(tally_model_name_norm((char[64]){ 0 }, 64,
							in, strlen(in)),
				  strlen(want));
	}
	ck_assert(!tally_model_name_is("openai", 6, "open ai", 7));
	ck_assert(!tally_model_name_is("openai", 6, "openai2", 7));
	ck_assert(!tally_model_name_is("openai", 6, "opena", 5));
	ck_assert(!tally_model_name_is("OpenAI", 6, "OpenAI", 6));
}
END_TEST

/* Every spelling that differs only in case and outer space is one name. */
START_TEST(test_model_names_spellings)
{
	static const char ws[] = { ' ', '\t', '\n', '\r' };
	char s[32], out[32];
	unsigned v;

	for (v = 0; v < 40000; v++) {
		size_t n = 0, k;
		unsigned bits = v;

		for (k = 0; k < (v % 3); k++)
			s[n++] = ws[(v / 3 + k) % 4];
		for (k = 0; k < 6; k++, bits >>= 1)
			s[n++] = (char)((bits & 1) ? "OPENAI"[k] : "openai"[k]);
		for (k = 0; k < (v / 7) % 4; k++)
			s[n++] = ws[(v + k) % 4];
		ck_assert_uint_eq(tally_model_name_norm(out, sizeof(out), s, n),
				  6);
		ck_assert_str_eq(out, "openai");
		ck_assert(tally_model_name_is("openai", 6, s, n));
	}
}
END_TEST

/* Cut at cap - 1 bytes; in place works. */
START_TEST(test_model_names_cut_and_in_place)
{
	char small[4], buf[] = "  ABCdef  ";
	size_t n;

	ck_assert_uint_eq(tally_model_name_norm(small, sizeof(small), " ABCDE",
						6), 3);
	ck_assert_str_eq(small, "abc");
	n = tally_model_name_norm(buf, sizeof(buf), buf, strlen(buf));
	ck_assert_uint_eq(n, 6);
	ck_assert_str_eq(buf, "abcdef");
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("model_names");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_model_names_table);
	tcase_add_test(tc, test_model_names_spellings);
	tcase_add_test(tc, test_model_names_cut_and_in_place);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
