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
 *
 * A key in use is read again ahead of its TTL by a thread of its own (the
 * refresher, on a connection of its own), so requests of a busy key never
 * wait for PostgreSQL, nor for the 20 ms of another lookup, once it is
 * cached: every ttl/4 it re-reads the found keys that served a request
 * since they were read and are at least ttl/2 old (at most REFRESH_MAX a
 * round). A revoked key is still refused within the TTL. When the refresher
 * cannot reach PostgreSQL, entries expire and the request path reads them
 * as above. At its start it opens the request path's connection, and a
 * lookup that waited for the connection first looks whether the one
 * before it stored the key: a burst of new requests of one key costs one
 * query, not one each.
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
#define REFRESH_MAX 1024    /* keys the refresher reads in one round */
#define SCAN_SLICE 256      /* buckets scanned under one hold of the lock */

typedef struct entry {
	struct entry *next;
	tally_api_key key;
	bool found;
	int64_t fetched_ms; /* monotonic */
	int64_t tokens;     /* units; one request costs UNIT */
	int64_t refill_ms;  /* monotonic */
	int64_t used_ms;    /* monotonic; the last request it served */
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
	tally_counter *lookups_request, *lookups_refresh;
	/* the refresher */
	pthread_t refresher;
	bool refresher_started;
	pthread_mutex_t stop_mu;
	pthread_cond_t stop_cv;
	bool stop;
	tally_pg *rpg; /* its own connection */
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

static void *refresh_main(void *arg);

tally_relay__auth *tally_relay__auth_new(const char *db_url, int64_t ttl_ms,
					 size_t max, tally_metrics *m)
{
	tally_relay__auth *a = tally_xcalloc(1, sizeof(*a));
	const char *help = "API-key lookups in PostgreSQL: on the request "
			   "path (a key not cached or expired) or by the "
			   "refresher (a key in use, ahead of its TTL).";

	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->pg_mu, NULL);
	pthread_mutex_init(&a->stop_mu, NULL);
	pthread_cond_init(&a->stop_cv, NULL);
	a->url = tally_xstrdup(db_url);
	a->ttl_ms = ttl_ms;
	a->max = max;
	a->max_neg = max / 4 > 0 ? max / 4 : 1;
	a->lookups_request = tally_metrics_counter(
		m, "tally_relay_key_lookups_total", "on=\"request\"", help);
	a->lookups_refresh = tally_metrics_counter(
		m, "tally_relay_key_lookups_total", "on=\"refresh\"", help);
	a->refresher_started =
		pthread_create(&a->refresher, NULL, refresh_main, a) == 0;
	if (!a->refresher_started) /* keys are then read on requests only */
		tally_log(TALLY_WARN, "relay.key_refresher_not_started");
	return a;
}

void tally_relay__auth_free(tally_relay__auth *a)
{
	entry *e, *next;
	size_t i;

	if (a == NULL)
		return;
	if (a->refresher_started) {
		pthread_mutex_lock(&a->stop_mu);
		a->stop = true;
		pthread_cond_signal(&a->stop_cv);
		pthread_mutex_unlock(&a->stop_mu);
		pthread_join(a->refresher, NULL);
	}
	tally_pg_free(a->rpg);
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
	pthread_mutex_destroy(&a->stop_mu);
	pthread_cond_destroy(&a->stop_cv);
	free(a);
}

static entry *find(tally_relay__auth *a, const char *prefix);
static entry *store(tally_relay__auth *a, const char *prefix, bool found,
		    const tally_api_key *k, entry *tmp, int64_t now);

/*
 * Read prefix from PostgreSQL into the cache: 0 with a->mu held and *out
 * its entry (NULL: a found key with no room), or TALLY_ETRANSIENT (the
 * database cannot answer now). A lookup that waited for the connection
 * first looks whether the one before it stored the key, and a result is
 * stored before the connection is given back, so requests of one key
 * arriving together cost one query. tmp as for store().
 */
static int fetch(tally_relay__auth *a, const char *prefix, entry *tmp,
		 entry **out)
{
	tally_error err = { 0 };
	struct timespec until;
	tally_api_key k;
	entry *e;
	int rc;

	if (mono_ms() < a->down_until_ms)
		return TALLY_ETRANSIENT;
	memset(&k, 0, sizeof(k));
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_nsec += PG_WAIT_MS * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	if (pthread_mutex_timedlock(&a->pg_mu, &until) != 0)
		return TALLY_ETRANSIENT; /* another lookup holds it: busy */
	pthread_mutex_lock(&a->mu);
	e = find(a, prefix);
	if (e != NULL && mono_ms() - e->fetched_ms < a->ttl_ms) {
		pthread_mutex_unlock(&a->pg_mu);
		*out = e;
		return 0;
	}
	pthread_mutex_unlock(&a->mu);
	tally_counter_add(a->lookups_request, 1);
	if (a->pg == NULL)
		rc = tally_pg_connect_once(&a->pg, a->url, PG_TIMEOUT_MS, &err);
	else
		rc = tally_pg_ensure(a->pg, &err);
	if (rc == 0)
		rc = tally_api_key_lookup(a->pg, &k, prefix, &err);
	if (rc == 0 || rc == TALLY_ENOTFOUND) {
		pthread_mutex_lock(&a->mu); /* order: pg_mu, then mu */
		*out = store(a, prefix, rc == 0, &k, tmp, mono_ms());
		pthread_mutex_unlock(&a->pg_mu);
		OPENSSL_cleanse(&k, sizeof(k));
		return 0;
	}
	a->down_until_ms = mono_ms() + PG_DOWN_MS;
	pthread_mutex_unlock(&a->pg_mu);
	tally_log(TALLY_WARN, "relay.key_lookup_failed",
		  TALLY_KV_STR("prefix", prefix),
		  TALLY_KV_STR("error", err.msg));
	return TALLY_ETRANSIENT;
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
	entry *e, tmp;
	const char *key;
	size_t len = 0;
	int64_t now, wait;

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
		if (fetch(a, prefix, &tmp, &e) != 0) {
			OPENSSL_cleanse(hash, sizeof(hash));
			return O_AUTH_UNAVAILABLE;
		}
		now = mono_ms(); /* a->mu held again */
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
	e->used_ms = now;
	wait = take(e, now);
	pthread_mutex_unlock(&a->mu);
	OPENSSL_cleanse(hash, sizeof(hash));
	if (wait > 0) {
		*retry_after_s = wait;
		return O_RATE_LIMITED;
	}
	return O_OK;
}

/* --- the refresher -------------------------------------------------------- */

/* Up to max prefixes of found keys due for a re-read: used since read and
 * at least ttl/2 old. The lock is held for SCAN_SLICE buckets at a time. */
static size_t due(tally_relay__auth *a,
		  char (*out)[TALLY_API_KEY_PREFIX_LEN + 1], size_t max)
{
	size_t n = 0, i = 0, end;
	int64_t now;
	entry *e;

	while (i < NBUCKETS && n < max) {
		end = i + SCAN_SLICE;
		pthread_mutex_lock(&a->mu);
		now = mono_ms();
		for (; i < end && n < max; i++)
			for (e = a->table[i]; e != NULL && n < max; e = e->next)
				if (e->found && e->used_ms >= e->fetched_ms &&
				    now - e->fetched_ms >= a->ttl_ms / 2)
					snprintf(out[n++], sizeof(out[0]),
						 "%s", e->key.prefix);
		pthread_mutex_unlock(&a->mu);
	}
	return n;
}

/* Read prefix again on the refresher's connection: 0, TALLY_ENOTFOUND, or
 * another error (PostgreSQL cannot answer now). */
static int refetch(tally_relay__auth *a, tally_api_key *out,
		   const char *prefix)
{
	tally_error err = { 0 };
	int rc;

	if (a->rpg == NULL)
		rc = tally_pg_connect_once(&a->rpg, a->url, PG_TIMEOUT_MS,
					   &err);
	else
		rc = tally_pg_ensure(a->rpg, &err);
	if (rc == 0) {
		tally_counter_add(a->lookups_refresh, 1);
		rc = tally_api_key_lookup(a->rpg, out, prefix, &err);
	}
	if (rc != 0 && rc != TALLY_ENOTFOUND)
		tally_log(TALLY_WARN, "relay.key_refresh_failed",
			  TALLY_KV_STR("prefix", prefix),
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

/* One round: re-read the keys due; stop at the first failure (they expire
 * and are read on the request path). The entry takes what PostgreSQL said
 * as of the start of its read; its bucket stays. */
static void refresh_round(tally_relay__auth *a,
			  char (*prefixes)[TALLY_API_KEY_PREFIX_LEN + 1])
{
	size_t n = due(a, prefixes, REFRESH_MAX), i;
	tally_api_key k;
	int64_t t0;
	entry *e;
	int rc;

	for (i = 0; i < n; i++) {
		t0 = mono_ms();
		rc = refetch(a, &k, prefixes[i]);
		if (rc != 0 && rc != TALLY_ENOTFOUND)
			return;
		pthread_mutex_lock(&a->mu);
		e = find(a, prefixes[i]);
		if (e != NULL && e->fetched_ms < t0)
			(void)store(a, prefixes[i], rc == 0, &k, NULL, t0);
		pthread_mutex_unlock(&a->mu);
		OPENSSL_cleanse(&k, sizeof(k));
	}
}

/* Open the request path's connection before the first request, so a
 * cold start costs its first lookups one query rather than a connection
 * (which can pass PG_WAIT_MS on a busy machine and so answer the
 * requests waiting for it 503). Connected outside pg_mu. */
static void preconnect(tally_relay__auth *a)
{
	tally_error err = { 0 };
	tally_pg *pg = NULL;

	if (tally_pg_connect_once(&pg, a->url, PG_TIMEOUT_MS, &err) != 0) {
		tally_log(TALLY_INFO, "relay.key_db_not_reached",
			  TALLY_KV_STR("error", err.msg));
		tally_pg_free(pg);
		return;
	}
	pthread_mutex_lock(&a->pg_mu);
	if (a->pg == NULL) {
		a->pg = pg;
		pg = NULL;
	}
	pthread_mutex_unlock(&a->pg_mu);
	tally_pg_free(pg);
}

static void *refresh_main(void *arg)
{
	tally_relay__auth *a = arg;
	char (*prefixes)[TALLY_API_KEY_PREFIX_LEN + 1] =
		tally_xcalloc(REFRESH_MAX, sizeof(*prefixes));
	int64_t period_ms = a->ttl_ms / 4 > 25 ? a->ttl_ms / 4 : 25;
	struct timespec until;
	bool stop;

	preconnect(a);
	for (;;) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += period_ms / 1000;
		until.tv_nsec += (period_ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&a->stop_mu);
		while (!a->stop && pthread_cond_timedwait(&a->stop_cv,
							  &a->stop_mu,
							  &until) == 0)
			;
		stop = a->stop;
		pthread_mutex_unlock(&a->stop_mu);
		if (stop)
			break;
		refresh_round(a, prefixes);
	}
	free(prefixes);
	return NULL;
}
