/*
 * known_keys.c - a bounded set of keys known committed (known_keys.h):
 * 4-way buckets of 64-bit tags, the oldest of a full bucket replaced.
 */
#include "ledger/known_keys.h"
#include "tally/common.h"
#include "tally/digest.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

void tally_known_init(tally_known_keys *k, size_t keys,
		      const uint8_t secret[16])
{
	size_t nb = 1;

	memset(k, 0, sizeof(*k));
	memcpy(k->secret, secret, 16);
	if (keys == 0)
		return;
	while (nb * TALLY_KNOWN_WAYS < keys)
		nb *= 2;
	k->nbuckets = nb;
	k->md = EVP_MD_CTX_new();
	if (k->md == NULL)
		abort();
	k->tags = tally_xcalloc(nb * TALLY_KNOWN_WAYS, TALLY_KNOWN_TAG);
	k->next = tally_xcalloc(nb, 1);
}

void tally_known_free(tally_known_keys *k)
{
	free(k->tags);
	free(k->next);
	free(k->pending);
	EVP_MD_CTX_free(k->md);
	memset(k, 0, sizeof(*k));
}

void tally_known_digest(tally_known_keys *k, uint8_t out[16], int kind,
			const uint8_t tenant[16], int64_t period_start_ms,
			const char *id, size_t len)
{
	EVP_MD_CTX *c = k->md;
	uint8_t head[16 + 1 + 16 + 8 + 4];
	unsigned int olen = 16;
	size_t i;

	memcpy(head, k->secret, 16);
	head[16] = (uint8_t)kind;
	memcpy(head + 17, tenant, 16);
	for (i = 0; i < 8; i++)
		head[33 + i] = (uint8_t)((uint64_t)period_start_ms >> (56 - 8 * i));
	for (i = 0; i < 4; i++)
		head[41 + i] = (uint8_t)((uint32_t)len >> (24 - 8 * i));
	if (c == NULL) { /* the cache is off: no tag is ever known */
		memset(out, 0, 16);
		return;
	}
	if (EVP_DigestInit_ex(c, tally_md5(), NULL) != 1 ||
	    EVP_DigestUpdate(c, head, sizeof(head)) != 1 ||
	    EVP_DigestUpdate(c, id, len) != 1 ||
	    EVP_DigestFinal_ex(c, out, &olen) != 1)
		abort(); /* MD5 of memory fails only without memory */
	/* an all-zero tag marks an empty slot */
	out[0] |= (uint8_t)(memcmp(out, "\0\0\0\0\0\0\0\0", TALLY_KNOWN_TAG) == 0);
}

static uint8_t *bucket(const tally_known_keys *k, const uint8_t d[16])
{
	uint32_t b = (uint32_t)d[12] << 24 | (uint32_t)d[13] << 16 |
		     (uint32_t)d[14] << 8 | d[15];

	return k->tags + (size_t)(b & (k->nbuckets - 1)) * TALLY_KNOWN_WAYS *
				 TALLY_KNOWN_TAG;
}

bool tally_known_check(tally_known_keys *k, const uint8_t d[16])
{
	if (k->nbuckets > 0) {
		const uint8_t *b = bucket(k, d);

		for (int w = 0; w < TALLY_KNOWN_WAYS; w++)
			if (memcmp(b + w * TALLY_KNOWN_TAG, d, TALLY_KNOWN_TAG) ==
			    0) {
				k->hits++;
				return true;
			}
		k->misses++;
	}
	if (k->npending == k->cap_pending) {
		k->cap_pending = k->cap_pending ? k->cap_pending * 2 : 1024;
		k->pending = tally_xrealloc(k->pending, k->cap_pending * 16);
	}
	memcpy(k->pending + k->npending++ * 16, d, 16);
	return false;
}

void tally_known_reset_pending(tally_known_keys *k)
{
	k->npending = 0;
}

void tally_known_commit(tally_known_keys *k)
{
	size_t i;

	for (i = 0; k->nbuckets > 0 && i < k->npending; i++) {
		const uint8_t *d = k->pending + i * 16;
		uint8_t *b = bucket(k, d);
		size_t bi = (size_t)(b - k->tags) /
			    (TALLY_KNOWN_WAYS * TALLY_KNOWN_TAG);
		int w;

		for (w = 0; w < TALLY_KNOWN_WAYS; w++)
			if (memcmp(b + w * TALLY_KNOWN_TAG, d,
				   TALLY_KNOWN_TAG) == 0)
				break;
		if (w < TALLY_KNOWN_WAYS)
			continue; /* the batch named it twice */
		w = k->next[bi];
		memcpy(b + w * TALLY_KNOWN_TAG, d, TALLY_KNOWN_TAG);
		k->next[bi] = (uint8_t)((w + 1) % TALLY_KNOWN_WAYS);
	}
	k->npending = 0;
}
