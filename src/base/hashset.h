/*
 * hashset.h - an open-addressing hash index over an array the caller owns
 * (libtally-internal).
 *
 * The set stores indexes (not keys): entry i's key is the klen bytes at
 * base + i * stride of the caller's array, so the array's elements can be
 * any struct whose key sits at a fixed offset (here: its first bytes).
 * Linear probing, deletion by backward shift. Allocation failure aborts.
 */
#ifndef TALLY_BASE_HASHSET_H
#define TALLY_BASE_HASHSET_H

#include <stddef.h>
#include <stdint.h>

typedef struct tally_hashset {
	uint32_t *slot; /* index + 1; 0 = empty */
	size_t cap;     /* a power of two */
} tally_hashset;

/** The 64-bit hash the set uses, for callers that index keys of their own. */
uint64_t tally_hash_bytes(const uint8_t *k, size_t n);

/** Empty the set, sized for n entries (memory is reused when it fits). */
void tally_hashset_init(tally_hashset *h, size_t n);

/**
 * Find the key of entry idx or insert idx. Returns the index already
 * present with that key, or idx when it was inserted.
 */
uint32_t tally_hashset_put(tally_hashset *h, const uint8_t *base,
			   size_t stride, size_t klen, uint32_t idx);

/** The index whose key is k, or UINT32_MAX when absent. */
uint32_t tally_hashset_find(const tally_hashset *h, const uint8_t *base,
			    size_t stride, size_t klen, const uint8_t *k);

/*
 * The same with the hashes computed once by the caller: hash is
 * tally_hash_bytes(key, klen) (its low 32 bits are enough: the set never
 * has more than 2^32 slots). Deletion (of idx) needs every entry's:
 * hashes[i] is entry i's.
 */
uint32_t tally_hashset_put_h(tally_hashset *h, const uint8_t *base,
			     size_t stride, size_t klen, uint32_t idx,
			     uint32_t hash);
uint32_t tally_hashset_find_h(const tally_hashset *h, const uint8_t *base,
			      size_t stride, size_t klen, const uint8_t *k,
			      uint32_t hash);
void tally_hashset_del_h(tally_hashset *h, uint32_t idx,
			 const uint32_t *hashes);

/** Free the memory; h is empty afterwards. */
void tally_hashset_free(tally_hashset *h);

#endif
