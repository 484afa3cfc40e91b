/*
 * test_dedupe_key.c - tally_dedupe_key against vectors computed apart
 * (tests/dedupe_key_vectors.h): UUIDv7 in either case and ULID time-led;
 * a ULID whose first character is '8', a UUIDv4, another variant, a
 * non-Crockford character, braces, an urn: prefix, a time before 2020 or
 * before timeled_from, and 2^47 in md5 form with the top bit set; 2^47 - 1
 * time-led. Plus tally_id_time_ms on the id forms alone.
 */
#include "check_main.h"
#include "dedupe_key_vectors.h"

#include <stdio.h>
#include <string.h>

#define NVEC (int)(sizeof(dedupe_key_vectors) / sizeof(dedupe_key_vectors[0]))

START_TEST(test_dedupe_key_vectors)
{
	const dedupe_key_vector *v = &dedupe_key_vectors[_i];
	uint8_t key[16];
	char hex[33];
	int64_t t;
	int k;

	t = tally_dedupe_key(key, v->source, strlen(v->source), v->id,
			     strlen(v->id), v->timeled_from_ms);
	for (k = 0; k < 16; k++)
		snprintf(hex + 2 * k, 3, "%02x", key[k]);
	ck_assert_msg(strcmp(hex, v->key) == 0, "%s %s: key %s, want %s",
		      v->source, v->id, hex, v->key);
	ck_assert_int_eq(t, v->time_ms);
	ck_assert_int_eq(key[0] >> 7, v->time_ms < 0 ? 1 : 0);
}
END_TEST

START_TEST(test_dedupe_key_id_time)
{
	ck_assert_int_eq(tally_id_time_ms("01890a5d-ac96-774b-bcce-b302099a8057", 36),
			 INT64_C(0x01890a5dac96));
	ck_assert_int_eq(tally_id_time_ms("01890a5d-ac96-474b-bcce-b302099a8057", 36), -1);
	ck_assert_int_eq(tally_id_time_ms("01890a5d-ac96-774b-bcce-b302099a805", 35), -1);
	ck_assert_int_eq(tally_id_time_ms("01890a5dXac96-774b-bcce-b302099a8057", 36), -1);
	ck_assert_int_eq(tally_id_time_ms("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", 26),
			 (INT64_C(1) << 48) - 1);
	ck_assert_int_eq(tally_id_time_ms("0000000000ZZZZZZZZZZZZZZZZ", 26), 0);
	ck_assert_int_eq(tally_id_time_ms("01HGW2N7EUJVGZ0JKQ8ZQ6XKXM", 26), -1);
	ck_assert_int_eq(tally_id_time_ms("", 0), -1);
	/* a NUL inside the id is not a base32 character */
	ck_assert_int_eq(tally_id_time_ms("01HGW2N7E\0JVGZ0JKQ8ZQ6XKXM", 26), -1);
}
END_TEST

static Suite *dedupe_key_suite(void)
{
	Suite *s = suite_create("dedupe_key");
	TCase *tc = tcase_create("Core");

	tcase_add_loop_test(tc, test_dedupe_key_vectors, 0, NVEC);
	tcase_add_test(tc, test_dedupe_key_id_time);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(dedupe_key_suite)
