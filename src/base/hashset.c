/*
 * hashset.c - an open-addressing hash index of fixed-size keys.
 */
#include "base/hashset.h"
#include "tally/common.h"

#include <stdlib.h>
#include <string.h>

/* word at a time (keys are 16-40 bytes: uuids, times, ids), then mixed */
uint64_t tally_hash_bytes(const uint8_t *k, size_t n)
{
	uint64_t h = UINT64_C(0x9e3779b97f4a7c15) ^ n, w;
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		memcpy(&w, k + i, 8);
		h = (h ^ w) * UINT64_C(0xff51afd7ed558ccd);
		h ^= h >> 32;
	}
	for (; i < n; i++)
		h = (h ^ k[i]) * UINT64_C(0x100000001b3);
	h ^= h >> 29;
	h *= UINT64_C(0xc4ceb9fe1a85ec53);
	return h ^ (h >> 32);
}

void tally_hashset_init(tally_hashset *h, size_t n)
{
	size_t cap = 16;

	while (cap < n * 2)
		cap *= 2;
	if (h->cap < cap) {
		free(h->slot);
		h->slot = tally_xcalloc(cap, sizeof(uint32_t));
		h->cap = cap;
	} else {
		memset(h->slot, 0, h->cap * sizeof(uint32_t));
	}
}

/*
 * Find key (klen bytes; keys of entry i at base + i * stride) or insert idx.
 * Returns the index already present, or idx when it was inserted.
 */
uint32_t tally_hashset_put(tally_hashset *h, const uint8_t *base,
			   size_t stride, size_t klen, uint32_t idx)
{
	return tally_hashset_put_h(h, base, stride, klen, idx,
				   (uint32_t)tally_hash_bytes(base + (size_t)idx *
							      stride, klen));
}

uint32_t tally_hashset_put_h(tally_hashset *h, const uint8_t *base,
			     size_t stride, size_t klen, uint32_t idx,
			     uint32_t hash)
{
	const uint8_t *k = base + (size_t)idx * stride;
	size_t m = h->cap - 1, i = (size_t)hash & m;

	for (;; i = (i + 1) & m) {
		uint32_t s = h->slot[i];
		if (s == 0) {
			h->slot[i] = idx + 1;
			return idx;
		}
		if (memcmp(base + (size_t)(s - 1) * stride, k, klen) == 0)
			return s - 1;
	}
}

/* Index of key, or UINT32_MAX when absent. */
uint32_t tally_hashset_find(const tally_hashset *h, const uint8_t *base,
			    size_t stride, size_t klen, const uint8_t *k)
{
	return tally_hashset_find_h(h, base, stride, klen, k,
				    (uint32_t)tally_hash_bytes(k, klen));
}

uint32_t tally_hashset_find_h(const tally_hashset *h, const uint8_t *base,
			      size_t stride, size_t klen, const uint8_t *k,
			      uint32_t hash)
{
	size_t m = h->cap - 1, i = (size_t)hash & m;

	for (;; i = (i + 1) & m) {
		uint32_t s = h->slot[i];
		if (s == 0)
			return UINT32_MAX;
		if (memcmp(base + (size_t)(s - 1) * stride, k, klen) == 0)
			return s - 1;
	}
}

/*
 * Remove idx by backward-shift deletion: later entries of its probe run
 * move into the hole unless their home slot lies after it, so lookups
 * never stop at a false empty slot. Homes come from the callers' hashes
 * (hashes[i]: entry i's), not from hashing the keys again.
 */
void tally_hashset_del_h(tally_hashset *h, uint32_t idx,
			 const uint32_t *hashes)
{
	size_t m = h->cap - 1, i, j;

	for (i = (size_t)hashes[idx] & m; h->slot[i] != idx + 1; i = (i + 1) & m)
		if (h->slot[i] == 0)
			return; /* not present */
	for (j = (i + 1) & m; h->slot[j] != 0; j = (j + 1) & m) {
		size_t home = (size_t)hashes[h->slot[j] - 1] & m;

		if (((j - home) & m) >= ((j - i) & m)) {
			h->slot[i] = h->slot[j];
			i = j;
		}
	}
	h->slot[i] = 0;
}

void tally_hashset_free(tally_hashset *h)
{
	free(h->slot);
	h->slot = NULL;
	h->cap = 0;
}
