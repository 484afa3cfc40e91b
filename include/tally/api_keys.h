#ifndef TALLY_API_KEYS_H
#define TALLY_API_KEYS_H

/**
 * @file tally/api_keys.h
 * @brief Per-tenant API keys for tally-relay's HTTP intake (table
 *        api_keys, migrations/0023_api_keys.sql).
 *
 * A key is "tly_" + 12 hex digits (the prefix, the row's lookup key) +
 * "_" + 64 hex digits (32 random bytes): 81 characters. Only its SHA-256
 * is stored; the key is shown once, by tally_api_key_create(). Keys are
 * secrets: never log one.
 */

#include <libpq-fe.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/pg.h"

#define TALLY_API_KEY_LEN 81
#define TALLY_API_KEY_PREFIX_LEN 12
#define TALLY_API_KEY_HASH_LEN 32

/** A key as tally-relay needs it: its tenant, hash and plan limits. */
typedef struct tally_api_key {
	char prefix[TALLY_API_KEY_PREFIX_LEN + 1];
	uint8_t tenant_id[16];
	uint8_t hash[TALLY_API_KEY_HASH_LEN];
	int revoked;
	int64_t rate_per_minute; /* plans.api_rate_per_minute */
	int64_t burst;           /* plans.api_burst */
} tally_api_key;

/**
 * Check the form of a presented key and hash it (no I/O).
 * @param[out] prefix  its 12-hex-digit prefix, NUL-terminated
 * @param[out] hash    its SHA-256
 * @return 0, or TALLY_EINVALID when s is not of the key's form
 */
int tally_api_key_parse(char prefix[TALLY_API_KEY_PREFIX_LEN + 1],
			uint8_t hash[TALLY_API_KEY_HASH_LEN], const char *s,
			size_t len) TALLY_MUSTCHECK;

/**
 * Create a key for tenant (a UUID) named name (may be ""), store its hash.
 * @param[out] key  the key, NUL-terminated: show it once, never log it
 * @return 0, TALLY_EINVALID (no such tenant, bad name) or a PG error
 */
int tally_api_key_create(tally_pg *pg, char key[TALLY_API_KEY_LEN + 1],
			 const char *tenant, const char *name,
			 tally_error *err) TALLY_MUSTCHECK;

/**
 * Keys of tenant (NULL: all), newest first: columns prefix, tenant_id,
 * name, created_at, revoked_at ("" while active). Caller PQclear()s.
 */
int tally_api_key_list(tally_pg *pg, PGresult **out, const char *tenant,
		       tally_error *err) TALLY_MUSTCHECK;

/**
 * Revoke the key named by prefix: its 12 hex digits, "tly_" + them, or
 * the whole key (only its prefix is used or echoed in an error).
 * @param[out] bare  the 12 hex digits used ("" when prefix is malformed):
 *                   print these, never prefix
 * @return 0 (revoked now or before), TALLY_EINVALID, TALLY_ENOTFOUND, or a
 *         PG error
 */
int tally_api_key_revoke(tally_pg *pg, const char *prefix,
			 char bare[TALLY_API_KEY_PREFIX_LEN + 1],
			 tally_error *err) TALLY_MUSTCHECK;

/**
 * Read the key with prefix, its tenant's plan limits and whether it is
 * revoked.
 * @return 0, TALLY_ENOTFOUND, or a PG error (TALLY_ETRANSIENT: retry)
 */
int tally_api_key_lookup(tally_pg *pg, tally_api_key *out, const char *prefix,
			 tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_API_KEYS_H */
