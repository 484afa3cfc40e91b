/*
 * test_known_keys.c - the cache of workflows and users known committed
 * (src/ledger/known_keys.c): a key is known only after its batch
 * committed, a retried batch forgets what it noted, every part of the key
 * and the secret change the digest, a full bucket forgets its oldest key,
 * and a cache of size 0 knows nothing.
 */
#include "check_main.h"
#include "ledger/known_keys.h"

#include <stdio.h>
#include <string.h>

static const uint8_t SECRET[16] = "0123456789abcdef";
static const uint8_t T1[16] = { 1, 2, 3 };
static const uint8_t T2[16] = { 1, 2, 4 };

static void dg(tally_known_keys *k, uint8_t d[16], int kind,
	       const uint8_t *t, int64_t ps, const char *id)
{
	tally_known_digest(k, d, kind, t, ps, id, strlen(id));
}

START_TEST(test_known_after_commit_only)
{
	tally_known_keys k;
	uint8_t d[16];

	tally_known_init(&k, 1024, SECRET);
	dg(&k, d, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1");
	ck_assert(!tally_known_check(&k, d));
	ck_assert(!tally_known_check(&k, d)); /* same batch: still not known */
	tally_known_commit(&k);
	ck_assert(tally_known_check(&k, d));
	/* a retried batch forgets what its failed attempt noted */
	dg(&k, d, TALLY_KNOWN_USER, T1, 1000, "user-1");
	ck_assert(!tally_known_check(&k, d));
	tally_known_reset_pending(&k);
	tally_known_commit(&k);
	ck_assert(!tally_known_check(&k, d));
	ck_assert_uint_eq(k.npending, 1);
	tally_known_free(&k);
}
END_TEST

START_TEST(test_known_every_part_counts)
{
	tally_known_keys k, k2;
	uint8_t a[16], b[16];
	uint8_t other[16];

	memcpy(other, SECRET, 16);
	other[15] ^= 1;
	tally_known_init(&k, 64, SECRET);
	tally_known_init(&k2, 64, other);
	dg(&k, a, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1");
	dg(&k, b, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1");
	ck_assert(memcmp(a, b, 16) == 0);
	dg(&k, b, TALLY_KNOWN_USER, T1, 1000, "wf-1");
	ck_assert(memcmp(a, b, 16) != 0);
	dg(&k, b, TALLY_KNOWN_WORKFLOW, T2, 1000, "wf-1");
	ck_assert(memcmp(a, b, 16) != 0);
	dg(&k, b, TALLY_KNOWN_WORKFLOW, T1, 1001, "wf-1");
	ck_assert(memcmp(a, b, 16) != 0);
	dg(&k, b, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-2");
	ck_assert(memcmp(a, b, 16) != 0);
	/* the length is part of the key: "wf-1" + "" is not "wf-" + "1" */
	tally_known_digest(&k, b, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1x", 4);
	ck_assert(memcmp(a, b, 16) == 0);
	dg(&k2, b, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1");
	ck_assert(memcmp(a, b, 16) != 0);
	tally_known_free(&k);
	tally_known_free(&k2);
}
END_TEST

START_TEST(test_known_full_bucket_forgets_oldest)
{
	tally_known_keys k;
	uint8_t d[64][16];
	char id[16];
	int i, n = 0, known = 0;

	/* one bucket of TALLY_KNOWN_WAYS: every key lands in it */
	tally_known_init(&k, 1, SECRET);
	ck_assert_uint_eq(k.nbuckets, 1);
	for (i = 0; i < 6; i++) {
		snprintf(id, sizeof(id), "wf-%d", i);
		dg(&k, d[n], TALLY_KNOWN_WORKFLOW, T1, 0, id);
		ck_assert(!tally_known_check(&k, d[n]));
		tally_known_commit(&k);
		n++;
	}
	for (i = 0; i < n; i++)
		if (tally_known_check(&k, d[i])) {
			known++;
			ck_assert_int_ge(i, n - TALLY_KNOWN_WAYS);
		}
	ck_assert_int_eq(known, TALLY_KNOWN_WAYS);
	tally_known_free(&k);
}
END_TEST

START_TEST(test_known_off)
{
	tally_known_keys k;
	uint8_t d[16];

	tally_known_init(&k, 0, SECRET);
	dg(&k, d, TALLY_KNOWN_WORKFLOW, T1, 1000, "wf-1");
	ck_assert(!tally_known_check(&k, d));
	tally_known_commit(&k);
	ck_assert(!tally_known_check(&k, d));
	tally_known_free(&k);
}
END_TEST

static Suite *known_keys_suite(void)
{
	Suite *s = suite_create("known_keys");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_known_after_commit_only);
	tcase_add_test(tc, test_known_every_part_counts);
	tcase_add_test(tc, test_known_full_bucket_forgets_oldest);
	tcase_add_test(tc, test_known_off);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(known_keys_suite)
