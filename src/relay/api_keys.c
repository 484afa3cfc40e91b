/*
 * api_keys.c - per-tenant API keys (tally/api_keys.h): their form, their
 * creation from OpenSSL's random bytes, and the rows of api_keys (only
 * the SHA-256 of a key is stored; the prefix finds the row).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/api_keys.h"

#include "tally/event.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_TAG "tly_"
#define TAG_LEN 4
#define SECRET_BYTES 32

static const char hexdig[] = "0123456789abcdef";

static void to_hex(char *out, const uint8_t *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = hexdig[b[i] >> 4];
		out[2 * i + 1] = hexdig[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* n lower-case hex digits */
static int all_hex(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (hexval(s[i]) < 0)
			return 0;
	return 1;
}

int tally_api_key_parse(char prefix[TALLY_API_KEY_PREFIX_LEN + 1],
			uint8_t hash[TALLY_API_KEY_HASH_LEN], const char *s,
			size_t len)
{
	const char *p = s + TAG_LEN;

	if (s == NULL || len != TALLY_API_KEY_LEN ||
	    memcmp(s, KEY_TAG, TAG_LEN) != 0 ||
	    !all_hex(p, TALLY_API_KEY_PREFIX_LEN) ||
	    p[TALLY_API_KEY_PREFIX_LEN] != '_' ||
	    !all_hex(p + TALLY_API_KEY_PREFIX_LEN + 1, 2 * SECRET_BYTES))
		return TALLY_EINVALID;
	memcpy(prefix, p, TALLY_API_KEY_PREFIX_LEN);
	prefix[TALLY_API_KEY_PREFIX_LEN] = '\0';
	SHA256((const unsigned char *)s, len, hash);
	return 0;
}

int tally_api_key_create(tally_pg *pg, char key[TALLY_API_KEY_LEN + 1],
			 const char *tenant, const char *name,
			 tally_error *err)
{
	uint8_t rnd[TALLY_API_KEY_PREFIX_LEN / 2 + SECRET_BYTES];
	uint8_t hash[TALLY_API_KEY_HASH_LEN], u[16];
	char prefix[TALLY_API_KEY_PREFIX_LEN + 1], hhex[65];
	const char *params[4];
	PGresult *res = NULL;
	int rc;

	if (tally_uuid_parse(u, tenant, (uint32_t)strlen(tenant)) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "tenant must be a UUID");
	if (strlen(name) > 200)
		return tally_error_set(err, TALLY_EINVALID,
				       "name longer than 200 bytes");
	if (RAND_bytes(rnd, (int)sizeof(rnd)) != 1)
		return tally_error_set(err, TALLY_ERROR,
				       "no random bytes from OpenSSL");
	memcpy(key, KEY_TAG, TAG_LEN);
	to_hex(key + TAG_LEN, rnd, TALLY_API_KEY_PREFIX_LEN / 2);
	key[TAG_LEN + TALLY_API_KEY_PREFIX_LEN] = '_';
	to_hex(key + TAG_LEN + TALLY_API_KEY_PREFIX_LEN + 1,
	       rnd + TALLY_API_KEY_PREFIX_LEN / 2, SECRET_BYTES);
	OPENSSL_cleanse(rnd, sizeof(rnd));
	if (tally_api_key_parse(prefix, hash, key, strlen(key)) != 0)
		return tally_error_set(err, TALLY_ERROR, "key of a bad form");
	to_hex(hhex, hash, sizeof(hash));
	params[0] = tenant;
	params[1] = prefix;
	params[2] = hhex;
	params[3] = name;
	rc = tally_pg_exec(pg, &res,
			   "INSERT INTO api_keys (tenant_id, prefix, key_hash,"
			   " name) SELECT t.id, $2, decode($3, 'hex'), $4"
			   " FROM tenants t WHERE t.id = $1::uuid",
			   4, params, err);
	if (rc == 0 && atoi(PQcmdTuples(res)) != 1)
		rc = tally_error_set(err, TALLY_ENOTFOUND, "no tenant %s",
				     tenant);
	PQclear(res);
	if (rc != 0)
		OPENSSL_cleanse(key, TALLY_API_KEY_LEN + 1);
	return rc;
}

/* A key's prefix from "tly_" + 12 hex digits, the 12 alone, or a whole
 * key (cut to its prefix, so its secret is never echoed). */
static int prefix_of(char out[TALLY_API_KEY_PREFIX_LEN + 1], const char *s)
{
	uint8_t hash[TALLY_API_KEY_HASH_LEN];
	const char *p = strncmp(s, KEY_TAG, TAG_LEN) == 0 ? s + TAG_LEN : s;

	if (strlen(s) == TALLY_API_KEY_LEN)
		return tally_api_key_parse(out, hash, s, TALLY_API_KEY_LEN);
	if (strlen(p) != TALLY_API_KEY_PREFIX_LEN ||
	    !all_hex(p, TALLY_API_KEY_PREFIX_LEN))
		return TALLY_EINVALID;
	memcpy(out, p, TALLY_API_KEY_PREFIX_LEN + 1);
	return 0;
}

int tally_api_key_list(tally_pg *pg, PGresult **out, const char *tenant,
		       tally_error *err)
{
	const char *params[1] = { tenant };

	return tally_pg_exec(
		pg, out,
		"SELECT prefix, tenant_id, name,"
		" to_char(created_at AT TIME ZONE 'UTC',"
		"         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
		" coalesce(to_char(revoked_at AT TIME ZONE 'UTC',"
		"         'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '')"
		" FROM api_keys WHERE $1::uuid IS NULL OR tenant_id = $1::uuid"
		" ORDER BY created_at DESC, prefix",
		1, params, err);
}

int tally_api_key_revoke(tally_pg *pg, const char *prefix,
			 char bare[TALLY_API_KEY_PREFIX_LEN + 1],
			 tally_error *err)
{
	const char *params[1] = { bare };
	PGresult *res = NULL;
	int rc, n;

	bare[0] = '\0';
	if (prefix_of(bare, prefix) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "a key is named by its prefix (12 hex"
				       " digits, tly_ optional) or the whole"
				       " key");
	rc = tally_pg_exec(pg, &res,
			   "UPDATE api_keys SET revoked_at ="
			   " coalesce(revoked_at, now()) WHERE prefix = $1",
			   1, params, err);
	if (rc != 0)
		return rc;
	n = atoi(PQcmdTuples(res));
	PQclear(res);
	if (n == 0)
		return tally_error_set(err, TALLY_ENOTFOUND, "no key %s",
				       bare);
	return 0;
}

static void from_hex(uint8_t *out, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		out[i] = (uint8_t)(hexval(s[2 * i]) << 4 | hexval(s[2 * i + 1]));
}

int tally_api_key_lookup(tally_pg *pg, tally_api_key *out, const char *prefix,
			 tally_error *err)
{
	const char *params[1] = { prefix };
	PGresult *res = NULL;
	const char *tid, *h;
	int rc;

	rc = tally_pg_exec(pg, &res,
			   "SELECT k.tenant_id, encode(k.key_hash, 'hex'),"
			   " k.revoked_at IS NOT NULL, p.api_rate_per_minute,"
			   " p.api_burst FROM api_keys k"
			   " JOIN tenants t ON t.id = k.tenant_id"
			   " JOIN plans p ON p.id = t.subscription_plan"
			   " WHERE k.prefix = $1",
			   1, params, err);
	if (rc != 0)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return tally_error_set(err, TALLY_ENOTFOUND, "no such key");
	}
	memset(out, 0, sizeof(*out));
	snprintf(out->prefix, sizeof(out->prefix), "%s", prefix);
	tid = PQgetvalue(res, 0, 0);
	h = PQgetvalue(res, 0, 1);
	if (tally_uuid_parse(out->tenant_id, tid, (uint32_t)strlen(tid)) != 0 ||
	    strlen(h) != 2 * TALLY_API_KEY_HASH_LEN ||
	    !all_hex(h, 2 * TALLY_API_KEY_HASH_LEN)) {
		PQclear(res);
		return tally_error_set(err, TALLY_ERROR, "api_keys row of a "
				       "bad form");
	}
	from_hex(out->hash, h, TALLY_API_KEY_HASH_LEN);
	out->revoked = PQgetvalue(res, 0, 2)[0] == 't';
	out->rate_per_minute = atoll(PQgetvalue(res, 0, 3));
	out->burst = atoll(PQgetvalue(res, 0, 4));
	PQclear(res);
	return 0;
}
