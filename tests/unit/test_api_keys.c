/*
 * test_api_keys.c - the form of an API key (tally_api_key_parse): the
 * prefix it is found by, its SHA-256 (a known answer computed with
 * `sha256sum`), and every malformed key refused, table-driven.
 */
#include "check_main.h"
#include "tally/api_keys.h"

#include <stdio.h>
#include <string.h>

#define SECRET64 \
	"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
#define KEY "tly_0123456789ab_" SECRET64
#define KAT "5e341a851a44e8dc37bee611007fb26329683da29574be7b85d9f77590c2c106"

START_TEST(test_api_key_known_answer)
{
	char prefix[TALLY_API_KEY_PREFIX_LEN + 1], hex[65];
	uint8_t hash[TALLY_API_KEY_HASH_LEN];
	int i;

	ck_assert_int_eq((int)strlen(KEY), TALLY_API_KEY_LEN);
	ck_assert_int_eq(tally_api_key_parse(prefix, hash, KEY, strlen(KEY)),
			 0);
	ck_assert_str_eq(prefix, "0123456789ab");
	for (i = 0; i < TALLY_API_KEY_HASH_LEN; i++)
		snprintf(hex + 2 * i, 3, "%02x", hash[i]);
	ck_assert_str_eq(hex, KAT);
}
END_TEST

static const char *const bad[] = {
	"",
	"tly_0123456789ab_" SECRET64 "f",          /* too long */
	"tly_0123456789ab_" SECRET64 "\0",         /* as written: fine below */
	"tlx_0123456789ab_" SECRET64,              /* tag */
	"TLY_0123456789ab_" SECRET64,              /* tag case */
	"tly_0123456789AB_" SECRET64,              /* upper-case prefix */
	"tly_0123456789ag_" SECRET64,              /* not hex */
	"tly_0123456789ab-" SECRET64,              /* separator */
	"tly_0123456789abc" SECRET64,              /* no separator */
	"tly_0123456789ab_fffffffffffffffffffffffffffffffffffffffffffffffffff"
	"ffffffffffffF",                           /* upper-case secret */
	"tly_0123456789ab_ffffffffffffffffffffffffffffffffffffffffffffffffff"
	"fffffffffffff ",                          /* space */
};

START_TEST(test_api_key_malformed)
{
	char prefix[TALLY_API_KEY_PREFIX_LEN + 1];
	uint8_t hash[TALLY_API_KEY_HASH_LEN];
	const char *k = bad[_i];

	if (_i == 2) /* the same key with a NUL inside the length */
		ck_assert_int_eq(tally_api_key_parse(prefix, hash, k,
						     TALLY_API_KEY_LEN + 1),
				 TALLY_EINVALID);
	else
		ck_assert_msg(tally_api_key_parse(prefix, hash, k, strlen(k)) ==
				      TALLY_EINVALID,
			      "accepted: %s", k);
}
END_TEST

static Suite *api_keys_suite(void)
{
	Suite *s = suite_create("api_keys");
	TCase *tc = tcase_create("form");

	tcase_add_test(tc, test_api_key_known_answer);
	tcase_add_loop_test(tc, test_api_key_malformed, 0,
			    (int)(sizeof(bad) / sizeof(bad[0])));
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(api_keys_suite)
