/*
 * known_keys.h - the distinct workflows and users an aggregator has seen
 * committed (libtally-internal; pure: no I/O).
 *
 * tenant_period_workflows and tenant_period_users only ever gain rows
 * while their period is open, so a key this process saw committed is
 * still there: the batch need not send it again for ON CONFLICT DO
 * NOTHING to refuse. The cache keeps a 64-bit tag per key in a bucket
 * chosen by 32 other bits, both from MD5 of a random per-process secret
 * and the key (a tenant cannot choose ids that collide without the
 * secret; by chance, a new key matches a kept one with a probability
 * under 2^-60); a full bucket forgets its oldest tag, which only means
 * that key is sent once more. Tags join the cache only after
 * their batch committed (tally_known_commit).
 */
#ifndef TALLY_LEDGER_KNOWN_KEYS_H
#define TALLY_LEDGER_KNOWN_KEYS_H

#include <openssl/types.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TALLY_KNOWN_WAYS 4
#define TALLY_KNOWN_TAG 8

/* what a key names (part of the tag) */
enum { TALLY_KNOWN_WORKFLOW = 1, TALLY_KNOWN_USER = 2 };

typedef struct tally_known_keys {
	uint8_t secret[16];
	EVP_MD_CTX *md;       /* reused for every digest */
	uint8_t *tags;        /* nbuckets * WAYS tags; all zero = empty */
	uint8_t *next;        /* per bucket: the way its next new tag takes */
	size_t nbuckets;      /* a power of two; 0 = the cache is off */
	uint8_t *pending;     /* tags of the batch being written: 16 bytes */
	size_t npending, cap_pending;
	uint64_t hits, misses;
} tally_known_keys;

/** Room for about `keys` tags (rounded to a power of two; 0: off). */
void tally_known_init(tally_known_keys *k, size_t keys,
		      const uint8_t secret[16]);
void tally_known_free(tally_known_keys *k);

/** The 16-byte digest of a key: the tag and its bucket. */
void tally_known_digest(tally_known_keys *k, uint8_t out[16], int kind,
			const uint8_t tenant[16], int64_t period_start_ms,
			const char *id, size_t len);

/**
 * True when the key of digest d is known committed (not to be sent);
 * otherwise d is noted as pending for this batch and false is returned.
 */
bool tally_known_check(tally_known_keys *k, const uint8_t d[16]);

/** A new attempt at the batch: forget its pending digests. */
void tally_known_reset_pending(tally_known_keys *k);

/** The batch committed: its pending digests become known. */
void tally_known_commit(tally_known_keys *k);

#endif
