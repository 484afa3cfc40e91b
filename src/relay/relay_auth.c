/*
 * relay_auth.c - who may send usage to tally-relay's intake: the API key
 * of `Authorization: Bearer <key>` (tally/api_keys.h), its tenant, and
 * its token bucket (the plan's api_rate_per_minute and api_burst).
 *
 * Keys are read from PostgreSQL (api_keys, as the engine role) and kept
 * for relay.key_ttl_ms, so a revoked key is refused within that time
 * without a restart; an unknown prefix is remembered as unknown for as
 * long, so junk keys cost one query per prefix and TTL. Unknown prefixes
 * have their own smaller share of the cache (a quarter), so junk cannot
 * take the room of valid keys; a valid key that finds no room is refused
 * (503), never served without its bucket. The bucket lives in the cache
 * entry and survives re-reads. Hashes are compared in
 * constant time; the key itself is never kept or logged.
 *
 * Lookups run on the HTTP threads that also serve Stripe's webhooks, so
 * they never wait long: one connection, taken within PG_WAIT_MS or the
 * request gets 503; one attempt bounded by PG_TIMEOUT_MS, no retries; and
 * after a failure every lookup answers 503 at once for PG_DOWN_MS.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "tally/api_keys.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define NBUCKETS 4096
#define PG_TIMEOUT_MS 1000 /* connect and statement timeout of a lookup */
#define PG_WAIT_MS 20      /* a lookup waits at most this for the connection */
#define PG_DOWN_MS 1000    /* after a failed lookup, 503 without trying */
#define UNIT INT64_C(60000) /* one request, in bucket units: rate/min */

typedef struct entry {
	struct entry *next;
	tally_api_key key;
	bool found;
	int64_t fetched_ms; /* monotonic */
	int64_t tokens;     /* units; one request costs UNIT */
	int64_t refill_ms;  /* monotonic */
} entry;

struct tally_relay__auth {
	pthread_mutex_t mu; /* the table */
	entry *table[NBUCKETS];
	size_t n, max;       /* found keys */
	size_t nneg, max_neg; /* unknown prefixes */
	int64_t ttl_ms;
	pthread_mutex_t pg_mu; /* pg, url */
	tally_pg *pg;
	char *url;
	_Atomic int64_t down_until_ms; /* monotonic; lookups fail until then */
};

static int64_t mono_ms(void)
{
	return tally_mono_ns() / 1000000;
}

static unsigned slot(const char *prefix)
{
	unsigned h = 2166136261u;

	for (; *prefix; prefix++)
		h = (h ^ (unsigned char)*prefix) * 16777619u;
	return h % NBUCKETS;
}

tally_relay__auth *tally_relay__auth_new(const char *db_url, int64_t ttl_ms,
					 size_t max)
{
	tally_relay__auth *a = tally_xcalloc(1, sizeof(*a));

	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->pg_mu, NULL);
	a->url = tally_xstrdup(db_url);
	a->ttl_ms = ttl_ms;
	a->max = max;
	a->max_neg = max / 4 > 0 ? max / 4 : 1;
	return a;
}

void tally_relay__auth_free(tally_relay__auth *a)
{
	entry *e, *next;
	size_t i;

	if (a == NULL)
		return;
	for (i = 0; i < NBUCKETS; i++)
		for (e = a->table[i]; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	tally_pg_free(a->pg);
	OPENSSL_cleanse(a->url, strlen(a->url));
	free(a->url);
	pthread_mutex_destroy(&a->mu);
	pthread_mutex_destroy(&a->pg_mu);
	free(a);
}

/* The key's row from PostgreSQL: 0 (found), TALLY_ENOTFOUND, or another
 * error (the database cannot answer now). */
static int fetch(tally_relay__auth *a, tally_api_key *out, const char *prefix)
{
	tally_error err = { 0 };
	struct timespec until;
	int rc;

	if (mono_ms() < a->down_until_ms)
		return TALLY_ETRANSIENT;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += PG_WAIT_MS * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	if (pthread_mutex_timedlock(&a->pg_mu, &until) != 0)
		return TALLY_ETRANSIENT; /* another lookup holds it: busy */
	if (a->pg == NULL)
		rc = tally_pg_connect_once(&a->pg, a->url, PG_TIMEOUT_MS, &err);
	else
		rc = tally_pg_ensure(a->pg, &err);
	if (rc == 0)
		rc = tally_api_key_lookup(a->pg, out, prefix, &err);
	if (rc != 0 && rc != TALLY_ENOTFOUND)
		a->down_until_ms = mono_ms() + PG_DOWN_MS;
	pthread_mutex_unlock(&a->pg_mu);
	if (rc != 0 && rc != TALLY_ENOTFOUND)
		tally_log(TALLY_WARN, "relay.key_lookup_failed",
			  TALLY_KV_STR("prefix", prefix),
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

static entry *find(tally_relay__auth *a, const char *prefix)
{
	entry *e;

	for (e = a->table[slot(prefix)]; e != NULL; e = e->next)
		if (strcmp(e->key.prefix, prefix) == 0)
			return e;
	return NULL;
}

/* Drop the entries older than the TTL (the table is full). */
static void sweep(tally_relay__auth *a, int64_t now)
{
	entry **pp, *e;
	size_t i;

	for (i = 0; i < NBUCKETS; i++)
		for (pp = &a->table[i]; (e = *pp) != NULL;) {
			if (now - e->fetched_ms >= a->ttl_ms) {
				*pp = e->next;
				if (e->found)
					a->n--;
				else
					a->nneg--;
				free(e);
			} else {
				pp = &e->next;
			}
		}
}

/* Is there room for one more entry of this kind (found or unknown)? */
static bool room(tally_relay__auth *a, bool found, int64_t now)
{
	if (found ? a->n >= a->max : a->nneg >= a->max_neg)
		sweep(a, now);
	return found ? a->n < a->max : a->nneg < a->max_neg;
}

/* Record what PostgreSQL said about prefix. An unknown prefix with no
 * room is recorded in *tmp (it needs no bucket); a found key with no room
 * gives NULL. */
static entry *store(tally_relay__auth *a, const char *prefix, bool found,
		    const tally_api_key *k, entry *tmp, int64_t now)
{
	entry *e = find(a, prefix);
	unsigned s;

	if (e != NULL && e->found != found) {
		/* the other kind now: counted there (may pass its cap by the
		 * few prefixes that change kind within a TTL) */
		if (found) {
			a->n++;
			a->nneg--;
		} else {
			a->n--;
			a->nneg++;
		}
	}
	if (e == NULL) {
		if (room(a, found, now)) {
			e = tally_xcalloc(1, sizeof(*e));
			s = slot(prefix);
			e->next = a->table[s];
			a->table[s] = e;
			if (found)
				a->n++;
			else
				a->nneg++;
		} else if (!found) {
			e = tmp;
		} else {
			return NULL;
		}
		e->refill_ms = now;
		e->tokens = -1; /* full once the limits are known */
	}
	if (found)
		e->key = *k;
	else
		memset(&e->key, 0, sizeof(e->key));
	snprintf(e->key.prefix, sizeof(e->key.prefix), "%s", prefix);
	e->found = found;
	e->fetched_ms = now;
	return e;
}

/* Take one request from e's bucket: 0, or the seconds until one is
 * there. */
static int64_t take(entry *e, int64_t now)
{
	int64_t cap = e->key.burst * UNIT, rate = e->key.rate_per_minute;

	if (e->tokens < 0)
		e->tokens = cap;
	if (now > e->refill_ms) {
		/* units per ms = requests per minute */
		int64_t add = (now - e->refill_ms) * rate;

		e->tokens = add > cap - e->tokens ? cap : e->tokens + add;
		e->refill_ms = now;
	}
	if (e->tokens > cap)
		e->tokens = cap;
	if (e->tokens >= UNIT) {
		e->tokens -= UNIT;
		return 0;
	}
	/* ms until UNIT, rounded up to whole seconds */
	return ((UNIT - e->tokens + rate - 1) / rate + 999) / 1000;
}

/* The key of "Bearer <key>" (scheme case-insensitive), or NULL. */
static const char *bearer(const char *h, size_t *len)
{
	size_t n;

	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	h += 7;
	while (*h == ' ')
		h++;
	n = strlen(h);
	while (n > 0 && h[n - 1] == ' ')
		n--;
	*len = n;
	return h;
}

tally_relay__outcome tally_relay__auth_check(tally_relay__auth *a,
					     const char *authorization,
					     uint8_t tenant[16],
					     int64_t *retry_after_s)
{
	char prefix[TALLY_API_KEY_PREFIX_LEN + 1];
	uint8_t hash[TALLY_API_KEY_HASH_LEN];
	tally_api_key k;
	entry *e, tmp;
	const char *key;
	size_t len = 0;
	int64_t now, wait;
	int rc;

	*retry_after_s = 0;
	if (authorization == NULL)
		return O_NO_KEY;
	key = bearer(authorization, &len);
	if (key == NULL || tally_api_key_parse(prefix, hash, key, len) != 0)
		return O_BAD_KEY;

	memset(&tmp, 0, sizeof(tmp));
	pthread_mutex_lock(&a->mu);
	now = mono_ms();
	e = find(a, prefix);
	if (e == NULL || now - e->fetched_ms >= a->ttl_ms) {
		pthread_mutex_unlock(&a->mu);
		rc = fetch(a, &k, prefix);
		if (rc != 0 && rc != TALLY_ENOTFOUND)
			return O_AUTH_UNAVAILABLE;
		pthread_mutex_lock(&a->mu);
		now = mono_ms();
		e = store(a, prefix, rc == 0, &k, &tmp, now);
		if (e == NULL) {
			pthread_mutex_unlock(&a->mu);
			OPENSSL_cleanse(hash, sizeof(hash));
			tally_log(TALLY_WARN, "relay.key_cache_full",
				  TALLY_KV_STR("prefix", prefix));
			return O_AUTH_UNAVAILABLE;
		}
	}
	if (!e->found || e->key.revoked ||
	    CRYPTO_memcmp(e->key.hash, hash, sizeof(hash)) != 0) {
		pthread_mutex_unlock(&a->mu);
		OPENSSL_cleanse(hash, sizeof(hash));
		return O_BAD_KEY;
	}
	memcpy(tenant, e->key.tenant_id, 16);
	wait = take(e, now);
	pthread_mutex_unlock(&a->mu);
	OPENSSL_cleanse(hash, sizeof(hash));
	if (wait > 0) {
		*retry_after_s = wait;
		return O_RATE_LIMITED;
	}
	return O_OK;
}
