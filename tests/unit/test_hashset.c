/*
 * test_hashset.c - the open-addressing index of src/base/hashset.c: put
 * finds an equal key instead of inserting it twice, find answers exactly
 * the present keys (with the hash computed or given), and deletion by
 * backward shift with the callers' hashes keeps every other key findable,
 * used as the aggregator uses it: a ring of the last N keys in which each
 * new key pushes out the oldest.
 */
#include "check_main.h"
#include "base/hashset.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

enum { RING = 512, KEYS = 20000 };

/* the i-th test key: few distinct high bytes, so probe runs are long */
static void key_of(uint8_t k[32], uint32_t i)
{
	memset(k, 0, 32);
	k[0] = (uint8_t)(i % 7);
	memcpy(k + 28, &i, 4);
}

static uint32_t h32(const uint8_t *k)
{
	return (uint32_t)tally_hash_bytes(k, 32);
}

START_TEST(test_hashset_put_find)
{
	static uint8_t keys[64][32];
	tally_hashset h = { 0 };
	uint8_t probe[32];
	uint32_t i;

	tally_hashset_init(&h, 64);
	for (i = 0; i < 64; i++) {
		key_of(keys[i], i / 2); /* every key twice */
		ck_assert_uint_eq(tally_hashset_put(&h, (const uint8_t *)keys,
						    32, 32, i),
				  i % 2 ? i - 1 : i);
	}
	for (i = 0; i < 32; i++) {
		key_of(probe, i);
		ck_assert_uint_eq(tally_hashset_find(&h, (const uint8_t *)keys,
						     32, 32, probe), 2 * i);
		ck_assert_uint_eq(tally_hashset_find_h(&h, (const uint8_t *)keys,
						       32, 32, probe, h32(probe)),
				  2 * i);
	}
	key_of(probe, 32);
	ck_assert_uint_eq(tally_hashset_find(&h, (const uint8_t *)keys, 32, 32,
					     probe), UINT32_MAX);
	tally_hashset_free(&h);
}
END_TEST

/* A ring of RING keys over KEYS insertions: after each, exactly the last
 * RING keys are found. */
START_TEST(test_hashset_ring_del_given_hashes)
{
	static uint8_t ring[RING][32];
	static uint32_t hashes[RING];
	tally_hashset h = { 0 };
	uint8_t probe[32];
	uint32_t n, j;

	tally_hashset_init(&h, RING);
	for (n = 0; n < KEYS; n++) {
		uint32_t pos = n % RING;

		if (n >= RING)
			tally_hashset_del_h(&h, pos, hashes);
		key_of(ring[pos], n);
		hashes[pos] = h32(ring[pos]);
		ck_assert_uint_eq(tally_hashset_put_h(&h, (const uint8_t *)ring,
						      32, 32, pos, hashes[pos]),
				  pos);
		if (n % 997 != 0 && n != KEYS - 1)
			continue;
		for (j = 0; j <= n; j++) {
			bool in = n - j < RING;

			key_of(probe, j);
			ck_assert_uint_eq(tally_hashset_find(&h,
					  (const uint8_t *)ring, 32, 32, probe),
					  in ? j % RING : UINT32_MAX);
		}
	}
	tally_hashset_free(&h);
}
END_TEST

static Suite *hashset_suite(void)
{
	Suite *s = suite_create("hashset");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_hashset_put_find);
	tcase_add_test(tc, test_hashset_ring_del_given_hashes);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(hashset_suite)
