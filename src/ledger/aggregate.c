/*
 * aggregate.c - rated usage into PostgreSQL, exactly once.
 *
 * Key design decision: a batch is one transaction whose first statement is
 * a compare-and-set on consumer_offsets (the fence) and whose data goes in
 * with one COPY into a temporary staging table plus one statement of
 * chained data-modifying CTEs: the dedupe insert RETURNs exactly the rows
 * that are new, and only those reach the ledger and the aggregates. What C
 * does per event is cheap and local: decode, digest, the time window, the
 * billing period (periods of the batch's tenants are read once per batch).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/aggregate.h"
#include "aggregate_int.h"
#include "base/calendar.h"
#include "tally/positions.h"
#include "tally/codec.h"
#include "tally/event.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/signals.h"
#include "tally/money.h"
#include "tally/rating.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* a growable string                                                   */

typedef struct sbuf {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	while (b->len + more + 1 > b->cap)
		b->cap = b->cap ? b->cap * 2 : 4096;
	b->p = tally_xrealloc(b->p, b->cap);
}

static void sb_add(sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_printf(sbuf *b, const char *fmt, ...) TALLY_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	sb_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static void sb_reset(sbuf *b)
{
	b->len = 0;
	if (b->p != NULL)
		b->p[0] = '\0';
}

/* One element of a PostgreSQL array literal: "..." with \ and " escaped. */
static void sb_array_str(sbuf *b, const char *s, size_t n)
{
	size_t i;

	sb_add(b, "\"", 1);
	for (i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\')
			sb_add(b, "\\", 1);
		sb_add(b, s + i, 1);
	}
	sb_add(b, "\"", 1);
}

/* ------------------------------------------------------------------ */
/* a small open-addressing hash of fixed-size keys -> index             */

typedef struct hset {
	uint32_t *slot; /* index + 1; 0 = empty */
	size_t cap;
} hset;

/* word at a time (keys are 16-40 bytes: uuids, times, ids), then mixed */
static uint64_t hash_bytes(const uint8_t *k, size_t n)
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

static void hset_init(hset *h, size_t n)
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
static uint32_t hset_put(hset *h, const uint8_t *base, size_t stride,
			 size_t klen, uint32_t idx)
{
	const uint8_t *k = base + (size_t)idx * stride;
	size_t m = h->cap - 1, i = (size_t)hash_bytes(k, klen) & m;

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
static uint32_t hset_find(const hset *h, const uint8_t *base, size_t stride,
			  size_t klen, const uint8_t *k)
{
	size_t m = h->cap - 1, i = (size_t)hash_bytes(k, klen) & m;

	for (;; i = (i + 1) & m) {
		uint32_t s = h->slot[i];
		if (s == 0)
			return UINT32_MAX;
		if (memcmp(base + (size_t)(s - 1) * stride, k, klen) == 0)
			return s - 1;
	}
}

/*
 * Remove idx (whose key is still at base + idx * stride) by backward-shift
 * deletion: later entries of its probe run move into the hole unless their
 * home slot lies after it, so lookups never stop at a false empty slot.
 */
static void hset_del(hset *h, const uint8_t *base, size_t stride,
		     size_t klen, uint32_t idx)
{
	size_t m = h->cap - 1, i, j;

	i = (size_t)hash_bytes(base + (size_t)idx * stride, klen) & m;
	for (; h->slot[i] != idx + 1; i = (i + 1) & m)
		if (h->slot[i] == 0)
			return; /* not present */
	for (j = (i + 1) & m; h->slot[j] != 0; j = (j + 1) & m) {
		size_t home = (size_t)hash_bytes(base + (size_t)(h->slot[j] - 1) *
						 stride, klen) & m;

		if (((j - home) & m) >= ((j - i) & m)) {
			h->slot[i] = h->slot[j];
			i = j;
		}
	}
	h->slot[i] = 0;
}

/*
 * The keys this process committed most recently (recent_keys of them, oldest
 * forgotten first): a key found here is in usage_dedupe for certain, so
 * the event is a duplicate without asking PostgreSQL. Producers retry
 * within seconds, so nearly every re-sent event is caught here, and the
 * dedupe insert can then go first as a plain INSERT (no speculative
 * insertion, no RETURNING), falling back to ON CONFLICT DO NOTHING only
 * when PostgreSQL still finds a key (see dedupe()). Only keys of committed
 * transactions go in (tally_agg_process, after COMMIT), and dedupe rows are
 * kept for the whole dedupe window, so the ring never claims a key that is
 * not there. A ring of keys and an hset index into it: 2.5 MiB for the
 * default 65 536 keys (tally_agg_opts.recent_keys).
 */
typedef struct seen_ring {
	uint8_t (*keys)[32];  /* the ring */
	hset h;               /* index into it */
	uint32_t cap, head, n;
} seen_ring;

static void seen_init(seen_ring *r, size_t cap)
{
	if (cap == 0)
		cap = 65536;
	if (cap > (1u << 24))
		cap = 1u << 24;
	memset(r, 0, sizeof(*r));
	r->cap = (uint32_t)cap;
}

static bool seen_has(const seen_ring *r, const uint8_t *k)
{
	return r->keys != NULL &&
	       hset_find(&r->h, (const uint8_t *)r->keys, 32, 32, k) !=
		       UINT32_MAX;
}

static void seen_add(seen_ring *r, const uint8_t *k)
{
	uint32_t pos;

	if (r->keys == NULL) {
		r->keys = tally_xcalloc(r->cap, sizeof(*r->keys));
		hset_init(&r->h, r->cap);
	}
	if (seen_has(r, k))
		return;
	pos = r->head;
	if (r->n == r->cap)
		hset_del(&r->h, (const uint8_t *)r->keys, 32, 32, pos);
	else
		r->n++;
	memcpy(r->keys[pos], k, 32);
	(void)hset_put(&r->h, (const uint8_t *)r->keys, 32, 32, pos);
	r->head = (pos + 1) % r->cap;
}

/* ------------------------------------------------------------------ */
/* civil time (UTC), exact integer arithmetic                          */

/* month index y * 12 + (m - 1) and day of the UTC time t; tod: ms in day */
static int64_t month_of(int64_t t, int *d, int64_t *tod)
{
	int64_t day = tally_floor_div(t, TALLY_MS_PER_DAY), y;
	int m;

	*tod = t - day * TALLY_MS_PER_DAY;
	tally_civil_from_days(day, &y, &m, d);
	return y * 12 + (m - 1);
}

/* Day a of month index mi (clamped to the month end) at tod. */
static int64_t anchored(int64_t mi, int a, int64_t tod)
{
	int64_t y = tally_floor_div(mi, 12);
	int m = (int)(mi - y * 12) + 1, dim = tally_days_in_month(y, m);

	return tally_days_from_civil(y, m, a < dim ? a : dim) * TALLY_MS_PER_DAY + tod;
}

/*
 * Periods of n whole months keep the billing-cycle anchor day a (Stripe's
 * billing_cycle_anchor), clamped to the month end, at cps's time of day:
 * [cps, cpe) is such a period if both have the same time of day, lie 1..12
 * months apart and a = the larger of their days gives both days (Jan 31 ->
 * Feb 29 and Apr 30 -> May 31 are anchor 31, Feb 29 -> Mar 30 anchor 30).
 * When both days are month ends that a larger anchor would also give (Jun
 * 30 -> Sep 30), the anchor is that day: nothing says more.
 */
void tally_agg_period(int64_t *start, int64_t *end, int64_t cps, int64_t cpe,
		      int64_t t)
{
	int64_t m0, m1, mt, tod, tod1, k, n;
	int d0, d1, dt, a;

	if (cpe <= cps) {
		/* calendar month UTC */
		mt = month_of(t, &dt, &tod);
		*start = anchored(mt, 1, 0);
		*end = anchored(mt + 1, 1, 0);
		return;
	}
	m0 = month_of(cps, &d0, &tod);
	m1 = month_of(cpe, &d1, &tod1);
	n = m1 - m0;
	a = d0 > d1 ? d0 : d1;
	if (tod != tod1 || n < 1 || n > 12 || anchored(m0, a, tod) != cps ||
	    anchored(m1, a, tod) != cpe) {
		/* not whole months: fixed length */
		int64_t step = cpe - cps;

		k = tally_floor_div(t - cps, step);
		*start = cps + k * step;
		*end = *start + step;
		return;
	}
	mt = month_of(t, &dt, &tod1);
	k = tally_floor_div(mt - m0, n);
	if (anchored(m0 + k * n, a, tod) > t)
		k--; /* t is in its month before the anchor */
	*start = anchored(m0 + k * n, a, tod);
	*end = anchored(m0 + (k + 1) * n, a, tod);
}

void tally_agg_digest(uint8_t out[16], const char *source, size_t slen,
		      const char *id, size_t idlen)
{
	char buf[16 + TALLY_SOURCE_MAX + TALLY_ID_MAX];
	unsigned int olen = 16;
	int n = snprintf(buf, 16, "%zu:", slen);

	if (slen > TALLY_SOURCE_MAX)
		slen = TALLY_SOURCE_MAX; /* codec guarantees; be safe */
	if (idlen > TALLY_ID_MAX)
		idlen = TALLY_ID_MAX;
	memcpy(buf + n, source, slen);
	memcpy(buf + n + slen, id, idlen);
	EVP_Digest(buf, (size_t)n + slen + idlen, out, &olen, EVP_md5(), NULL);
}

/* ------------------------------------------------------------------ */
/* state                                                               */

enum { ST_OK = 0, ST_DUP, ST_DLQ };

/*
 * What a batch still reads of a decoded tally_rated_event (same member
 * names): the event id, source and subject are in the dedupe key, the cost
 * components and the currency are not stored. Two batches of items are
 * alive at a time, so this is RSS (392 -> 264 bytes per item).
 */
typedef struct agg_event {
	tally_str provider, model, workflow_id;
	uint8_t tenant_id[16];
	int64_t time_ms;
	int64_t input_tokens, output_tokens, cache_read_tokens,
		cache_write_tokens, reasoning_tokens;
	int64_t steps, complexity, bytes, count;
	tally_meter meter;
} agg_event;

typedef struct agg_rated {
	agg_event ev;
	int64_t cost;     /* pico-units */
	int64_t price_id;
	bool unpriced;
} agg_rated;

typedef struct item {
	uint8_t key[32]; /* tenant_id + digest: the dedupe key */
	agg_rated re;
	int status;
	const char *reason;
	uint32_t detail; /* dead letters: offset of the text in agg->details */
	int32_t provider_id, model_id;
	int64_t ps, pe; /* billing period */
	bool closed;
	bool dup_db;    /* seen in an earlier batch (set by dedupe()) */
	bool bad;       /* undecodable (the codec error is in the decoded set) */
} item;

/* Messages decoded ahead (tally_agg_decode): the items and, for the
 * undecodable ones, their codec errors. */
struct tally_agg_decoded {
	item *items;
	size_t n, cap;
	const tally_agg_msg *msgs;
	tally_codec_error *errs;  /* cap entries once one is undecodable */
	char **blocks;            /* detached strings, one block per range */
	size_t nblocks, capblocks;
};

typedef struct acc_key {
	uint8_t tenant[16];
	int64_t t;           /* hour (hourly) or period start (period, adj) */
	int32_t meter, provider_id, model_id, pad;
} acc_key;

typedef struct acc {
	acc_key k;
	int64_t pe;
	int64_t events, quantity, in, out, cr, cw, rs;
	int64_t ai, wf, wu, api, ss;
	tally_money128 cost;
	size_t accepted;
} acc;

/* build_apply's parameters: one array per column of each delta table */
#define APPLY_HOURLY_COLS 13
#define APPLY_PERIOD_COLS 14
#define APPLY_ADJ_COLS 14
#define APPLY_COLS (APPLY_HOURLY_COLS + APPLY_PERIOD_COLS + APPLY_ADJ_COLS)

typedef struct accmap {
	acc *v;
	size_t n, cap;
	hset h;
} accmap;

/* What a published totals message carries as its opaque: once the broker
 * acknowledges it, published_version moves up to version. */
#define TOTALS_MAGIC 0x746f746cU
typedef struct totals_ack {
	uint32_t magic;
	uint8_t tenant[16];
	int64_t ps, version;
} totals_ack;

typedef struct model_ids {
	char *provider, *model;
	int32_t provider_id, model_id;
} model_ids;

typedef struct tenant_info {
	uint8_t id[16];
	int64_t cps, cpe;          /* 0,0 = unknown / calendar month */
	size_t bp_first, bp_n;     /* into agg->bps */
} tenant_info;

typedef struct bperiod {
	int64_t start, end;
	bool closed;
} bperiod;

typedef struct batch_part {
	const char *topic;
	int32_t partition;
	int64_t first, next;
	int64_t gap_from, gap_to; /* gap_to > gap_from: retention lost these */
} batch_part;

struct tally_agg {
	tally_pg *pg;
	char *group, *dlq_topic, *totals_topic;
	int64_t lateness_ms, future_ms;
	rd_kafka_t *producer;
	rd_kafka_t *consumer_rk; /* for the log start offsets; may be NULL */
	size_t dlq_failed;       /* dead letters whose delivery failed */

	tally_positions *pos;

	model_ids *models;
	size_t nmodels, capmodels;

	/* per batch */
	item *items;            /* = dec->items of the batch */
	tally_agg_decoded own;  /* when the caller did not decode ahead */
	tally_agg_decoded *dec;
	hset dedupe, tenant_h;
	tenant_info *tenants;
	size_t ntenants, cap_tenants;
	bperiod *bps;
	size_t nbps, cap_bps;
	batch_part *parts;      /* the batch's partitions (any number) */
	tally_position *posbuf; /* as many, for the positions module */
	size_t nparts, capparts;
	const tally_agg_msg *msgs;
	size_t n;
	int64_t now_ms;
	sbuf copy, q1, q2, q3;
	sbuf cols[APPLY_COLS];            /* the delta arrays (build_apply) */
	const char *colp[APPLY_COLS];
	int coll[APPLY_COLS], colf[APPLY_COLS]; /* lengths; 1 = binary */
	int ncols;
	sbuf details;   /* dead-letter details of the batch (item.detail) */
	char **totals;  /* JSON per affected tenant-period, after commit */
	char **totals_key;
	totals_ack *totals_ack;
	totals_ack *acks;     /* delivered, not yet marked in PostgreSQL */
	size_t nacks, capacks, nacks_marking, inflight;
	size_t ntotals, cap_totals;
	tally_agg_stats st;
	accmap hourly, period, adj; /* deltas of the batch */
	item **sorted;        /* the batch in key order (sort_batch) */
	size_t cap_sorted, nsorted;
	bool ledger_staged;   /* the ledger rows are in agg_stage, not written */
	size_t nstorage;
	const struct tally_pricebook *pb; /* storage prices; may be NULL */
	size_t storage_unpriced;
	PGconn *stage_conn;   /* the connection agg_stage exists on */
	int stage_pid;
	bool stage_pending;
	bool trace;           /* TALLY_AGG_TRACE=1: per-phase timings */
	seen_ring seen;       /* keys committed lately (dedupe()) */
	int dedupe_slow;      /* batches left on the ON CONFLICT path */
	int dedupe_streak;    /* fallbacks since the last fast success */
	sbuf wf_t, wf_p, wf_w; /* distinct workflows of the batch (totals) */
	size_t nwf;
	int64_t phase_us[6], phase_t;
};

int tally_agg_new(tally_agg **out, tally_pg *pg, const tally_agg_opts *opts,
		  tally_error *err)
{
	tally_agg *agg = tally_xcalloc(1, sizeof(*agg));

	(void)err;
	agg->pg = pg;
	agg->group = tally_xstrdup(opts->group);
	agg->pos = tally_positions_new(opts->group);
	agg->dlq_topic = tally_xstrdup(opts->dlq_topic ? opts->dlq_topic : "");
	agg->totals_topic =
		opts->totals_topic ? tally_xstrdup(opts->totals_topic) : NULL;
	agg->lateness_ms = opts->lateness_ms;
	agg->future_ms = opts->future_ms;
	agg->producer = opts->producer;
	agg->pb = opts->pricebook;
	seen_init(&agg->seen, opts->recent_keys);
	{
		const char *t = getenv("TALLY_AGG_TRACE");

		agg->trace = t != NULL && strcmp(t, "1") == 0;
	}
	*out = agg;
	return 0;
}

static void clear_totals(tally_agg *agg)
{
	size_t i;

	for (i = 0; i < agg->ntotals; i++) {
		free(agg->totals[i]);
		free(agg->totals_key[i]);
	}
	agg->ntotals = 0;
}

void tally_agg_free(tally_agg *agg)
{
	size_t i;

	if (agg == NULL)
		return;
	tally_positions_free(agg->pos);
	for (i = 0; i < agg->nmodels; i++) {
		free(agg->models[i].provider);
		free(agg->models[i].model);
	}
	clear_totals(agg);
	free(agg->totals);
	free(agg->totals_key);
	free(agg->totals_ack);
	free(agg->acks);
	free(agg->models);
	for (i = 0; i < agg->own.nblocks; i++)
		free(agg->own.blocks[i]);
	free(agg->own.blocks);
	free(agg->own.items);
	free(agg->own.errs);
	free(agg->dedupe.slot);
	free(agg->seen.keys);
	free(agg->seen.h.slot);
	free(agg->wf_t.p);
	free(agg->wf_p.p);
	free(agg->wf_w.p);
	free(agg->tenant_h.slot);
	free(agg->tenants);
	free(agg->bps);
	free(agg->copy.p);
	free(agg->details.p);
	free(agg->q1.p);
	free(agg->q2.p);
	free(agg->q3.p);
	for (i = 0; i < APPLY_COLS; i++)
		free(agg->cols[i].p);
	free(agg->sorted);
	free(agg->hourly.v);
	free(agg->hourly.h.slot);
	free(agg->period.v);
	free(agg->period.h.slot);
	free(agg->adj.v);
	free(agg->adj.h.slot);
	free(agg->group);
	free(agg->dlq_topic);
	free(agg->totals_topic);
	free(agg->parts);
	free(agg->posbuf);
	free(agg);
}

/* ------------------------------------------------------------------ */
/* positions and the fence                                             */

int tally_agg_assign(tally_agg *agg, rd_kafka_topic_partition_list_t *parts,
		     tally_error *err)
{
	return tally_positions_assign(agg->pos, agg->pg, parts, err);
}

void tally_agg_revoke(tally_agg *agg,
		      const rd_kafka_topic_partition_list_t *parts)
{
	tally_positions_revoke(agg->pos, parts);
}

int tally_agg_reseek(tally_agg *agg, rd_kafka_t *rk,
		     const tally_agg_msg *msgs, size_t n, tally_error *err)
{
	tally_position *b = tally_xcalloc(n ? n : 1, sizeof(*b));
	size_t i;
	int rc;

	for (i = 0; i < n; i++) {
		b[i].topic = msgs[i].topic;
		b[i].partition = msgs[i].partition;
	}
	rc = tally_positions_reseek(agg->pos, agg->pg, rk, b, n, err);
	free(b);
	return rc;
}

/* The batch's partitions as the positions module takes them. */
static size_t batch_positions(const tally_agg *agg, tally_position *out)
{
	size_t k;

	for (k = 0; k < agg->nparts; k++) {
		out[k].topic = agg->parts[k].topic;
		out[k].partition = agg->parts[k].partition;
		out[k].next = agg->parts[k].next;
	}
	return agg->nparts;
}

/* ------------------------------------------------------------------ */
/* lookups: provider and model names -> small ids                      */

static model_ids *model_find(tally_agg *agg, const tally_str *p,
			     const tally_str *m)
{
	size_t i;

	/* linear: a deployment prices a few hundred models at most */
	for (i = 0; i < agg->nmodels; i++) {
		model_ids *x = &agg->models[i];
		if (strlen(x->provider) == p->len &&
		    strlen(x->model) == m->len &&
		    memcmp(x->provider, p->ptr, p->len) == 0 &&
		    memcmp(x->model, m->ptr, m->len) == 0)
			return x;
	}
	return NULL;
}

/*
 * Resolve the (provider, model) pairs of the batch. Unknown names are
 * inserted in their own short transaction before the batch's: an id is
 * only cached once it is committed, so a rolled-back batch never leaves an
 * id behind that does not exist.
 */
static int resolve_models(tally_agg *agg, tally_error *err)
{
	sbuf pa = { 0 }, ma = { 0 };
	PGresult *res = NULL;
	const char *params[2];
	size_t i, missing = 0;
	int rc = 0, r;

	sb_puts(&pa, "{");
	sb_puts(&ma, "{");
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		model_ids *x;

		if (it->status != ST_OK || it->re.ev.meter != TALLY_METER_AI_TOKENS)
			continue;
		x = model_find(agg, &it->re.ev.provider, &it->re.ev.model);
		if (x != NULL)
			continue;
		/* a duplicate pair in the list is harmless */
		if (missing > 0) {
			sb_puts(&pa, ",");
			sb_puts(&ma, ",");
		}
		sb_array_str(&pa, it->re.ev.provider.ptr, it->re.ev.provider.len);
		sb_array_str(&ma, it->re.ev.model.ptr, it->re.ev.model.len);
		missing++;
		if (missing >= 64)
			break; /* the next pass resolves the rest */
	}
	sb_puts(&pa, "}");
	sb_puts(&ma, "}");
	if (missing == 0)
		goto assign;
	params[0] = pa.p;
	params[1] = ma.p;
	rc = tally_pg_exec(agg->pg, NULL,
			   /* only names not there yet draw an identity value:
			    * ON CONFLICT alone spends one per row on every
			    * start, and providers.id is a smallint */
			   "INSERT INTO providers (name) SELECT DISTINCT x"
			   " FROM unnest($1::text[]) x WHERE NOT EXISTS"
			   " (SELECT 1 FROM providers p WHERE p.name = x)"
			   " ORDER BY x ON CONFLICT (name) DO NOTHING", 1,
			   params, err);
	if (rc == 0)
		rc = tally_pg_exec(agg->pg, NULL,
				   "INSERT INTO models (provider_id, name)"
				   " SELECT DISTINCT p.id, x.m FROM unnest($1::text[],"
				   " $2::text[]) x(p, m) JOIN providers p"
				   " ON p.name = x.p WHERE NOT EXISTS"
				   " (SELECT 1 FROM models m WHERE"
				   " m.provider_id = p.id AND m.name = x.m)"
				   " ORDER BY 1, 2"
				   " ON CONFLICT (provider_id, name) DO NOTHING",
				   2, params, err);
	if (rc == 0)
		rc = tally_pg_exec(agg->pg, &res,
				   "SELECT DISTINCT p.name, m.name, p.id, m.id"
				   " FROM unnest($1::text[], $2::text[]) x(p, m)"
				   " JOIN providers p ON p.name = x.p"
				   " JOIN models m ON m.provider_id = p.id"
				   " AND m.name = x.m", 2, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++) {
		model_ids *x;
		int64_t pid = 0, mid = 0;

		if (tally_parse_i64(&pid, PQgetvalue(res, r, 2)) != 0 ||
		    tally_parse_i64(&mid, PQgetvalue(res, r, 3)) != 0)
			continue;
		if (agg->nmodels == agg->capmodels) {
			agg->capmodels = agg->capmodels ? agg->capmodels * 2 : 64;
			agg->models = tally_xrealloc(
				agg->models, agg->capmodels * sizeof(*agg->models));
		}
		x = &agg->models[agg->nmodels++];
		x->provider = tally_xstrdup(PQgetvalue(res, r, 0));
		x->model = tally_xstrdup(PQgetvalue(res, r, 1));
		x->provider_id = (int32_t)pid;
		x->model_id = (int32_t)mid;
	}
	PQclear(res);
	res = NULL;
	if (missing >= 64) {
		free(pa.p);
		free(ma.p);
		return resolve_models(agg, err);
	}
assign:
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		model_ids *x;

		if (it->status != ST_OK || it->re.ev.meter != TALLY_METER_AI_TOKENS)
			continue;
		x = model_find(agg, &it->re.ev.provider, &it->re.ev.model);
		if (x == NULL) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "model lookup failed");
			goto cleanup;
		}
		it->provider_id = x->provider_id;
		it->model_id = x->model_id;
	}
cleanup:
	PQclear(res);
	free(pa.p);
	free(ma.p);
	return rc;
}

/* ------------------------------------------------------------------ */
/* decode and classify (no I/O)                                        */

/*
 * Dead-letter details live in one buffer per batch (offset 0 is ""), so an
 * item stays small: two batches of items are alive while the poll thread
 * gathers the next one (RSS).
 */
static void set_detail(tally_agg *agg, item *it, const char *fmt, ...)
	TALLY_PRINTF(3, 4);
static void set_detail(tally_agg *agg, item *it, const char *fmt, ...)
{
	char buf[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	it->detail = (uint32_t)agg->details.len;
	sb_add(&agg->details, buf, strlen(buf) + 1);
}

static const char *item_detail(const tally_agg *agg, const item *it)
{
	return agg->details.p + it->detail;
}

static void decoded_reset(tally_agg_decoded *d)
{
	size_t k;

	for (k = 0; k < d->nblocks; k++)
		free(d->blocks[k]);
	d->nblocks = 0;
	d->n = 0;
}

static void to_item(agg_rated *out, const tally_rated_event *re)
{
	const tally_usage_event *ev = &re->ev;
	agg_event *o = &out->ev;

	o->provider = ev->provider;
	o->model = ev->model;
	o->workflow_id = ev->workflow_id;
	memcpy(o->tenant_id, ev->tenant_id, 16);
	o->time_ms = ev->time_ms;
	o->input_tokens = ev->input_tokens;
	o->output_tokens = ev->output_tokens;
	o->cache_read_tokens = ev->cache_read_tokens;
	o->cache_write_tokens = ev->cache_write_tokens;
	o->reasoning_tokens = ev->reasoning_tokens;
	o->steps = ev->steps;
	o->complexity = ev->complexity;
	o->bytes = ev->bytes;
	o->count = ev->count;
	o->meter = ev->meter;
	out->cost = re->cost;
	out->price_id = re->price_id;
	out->unpriced = re->unpriced;
}

void tally_agg_decode_range(tally_agg_decoded *d, const tally_agg_msg *msgs,
			    size_t from, size_t to)
{
	tally_rated_event re;
	size_t i;

	if (from == 0)
		decoded_reset(d);
	if (d->cap < to) {
		size_t cap = d->cap ? d->cap : 1024;

		while (cap < to)
			cap *= 2;
		d->items = tally_xrealloc(d->items, cap * sizeof(item));
		if (d->errs != NULL) {
			d->errs = tally_xrealloc(d->errs, cap * sizeof(*d->errs));
			memset(d->errs + d->cap, 0,
			       (cap - d->cap) * sizeof(*d->errs));
		}
		d->cap = cap;
	}
	d->n = to;
	d->msgs = msgs;
	for (i = from; i < to; i++) {
		const tally_agg_msg *m = &msgs[i];
		item *it = &d->items[i];
		tally_codec_error ce;

		memset(it, 0, sizeof(*it));
		memset(&ce, 0, sizeof(ce));
		if (tally_codec_decode_rated(&re, m->payload, m->len, &ce) !=
		    0) {
			if (d->errs == NULL)
				d->errs = tally_xcalloc(d->cap, sizeof(*d->errs));
			d->errs[i] = ce;
			it->bad = true;
			continue;
		}
		memcpy(it->key, re.ev.tenant_id, 16);
		tally_agg_digest(it->key + 16, re.ev.source.ptr,
				 re.ev.source.len, re.ev.id.ptr, re.ev.id.len);
		to_item(&it->re, &re);
	}
}

void tally_agg_decode(tally_agg_decoded *d, const tally_agg_msg *msgs,
		      size_t n)
{
	tally_agg_decode_range(d, msgs, 0, n);
}

tally_agg_decoded *tally_agg_decoded_new(void)
{
	return tally_xcalloc(1, sizeof(tally_agg_decoded));
}

void tally_agg_decoded_free(tally_agg_decoded *d)
{
	if (d == NULL)
		return;
	decoded_reset(d);
	free(d->blocks);
	free(d->items);
	free(d->errs);
	free(d);
}

static void detach_str(tally_str *s, char **pool)
{
	if (s->len > 0)
		memcpy(*pool, s->ptr, s->len);
	s->ptr = *pool;
	*pool += s->len;
}

size_t tally_agg_detach_range(const tally_agg *agg, tally_agg_decoded *d,
			      int64_t now_ms, bool *keep, size_t from,
			      size_t to)
{
	size_t i, need = 0, n = 0;
	char *pool;

	for (i = from; i < to; i++) {
		const agg_event *ev = &d->items[i].re.ev;

		/* the very test classify() makes with the same now_ms */
		keep[i] = d->items[i].bad ||
			  ev->time_ms < now_ms - agg->lateness_ms ||
			  ev->time_ms > now_ms + agg->future_ms;
		if (!keep[i])
			need += (size_t)ev->provider.len + ev->model.len +
				ev->workflow_id.len;
	}
	/* a block per range: earlier ranges' strings never move */
	if (d->nblocks == d->capblocks) {
		d->capblocks = d->capblocks ? d->capblocks * 2 : 16;
		d->blocks = tally_xrealloc(d->blocks,
					   d->capblocks * sizeof(*d->blocks));
	}
	pool = d->blocks[d->nblocks++] = tally_xmalloc(need + 1);
	for (i = from; i < to; i++) {
		agg_event *ev = &d->items[i].re.ev;

		if (keep[i])
			continue;
		detach_str(&ev->provider, &pool);
		detach_str(&ev->model, &pool);
		detach_str(&ev->workflow_id, &pool);
		n++;
	}
	return n;
}

/*
 * Statuses of the decoded batch: undecodable or outside the time window
 * (dead letters), repeated within the batch or committed lately (ring),
 * else ST_OK. Resets what a previous attempt at the batch changed.
 */
static void classify(tally_agg *agg)
{
	size_t i;

	sb_reset(&agg->details);
	sb_add(&agg->details, "", 1);
	hset_init(&agg->dedupe, agg->n);
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		int64_t t;

		it->status = ST_OK;
		it->reason = NULL;
		it->detail = 0;
		it->provider_id = it->model_id = 0;
		it->ps = it->pe = 0;
		it->closed = it->dup_db = false;
		if (it->bad) {
			const tally_codec_error *ce = &agg->dec->errs[i];

			it->status = ST_DLQ;
			it->reason = ce->reason ? ce->reason : "invalid";
			set_detail(agg, it, "%.40s: %.110s", ce->field,
				   ce->detail);
			continue;
		}
		t = it->re.ev.time_ms;
		if (t < agg->now_ms - agg->lateness_ms) {
			it->status = ST_DLQ;
			it->reason = "too_late";
			set_detail(agg, it,
				 "event time is %" PRId64 " s before the "
				 "lateness window", (agg->now_ms -
				 agg->lateness_ms - t) / 1000);
			continue;
		}
		if (t > agg->now_ms + agg->future_ms) {
			it->status = ST_DLQ;
			it->reason = "future_timestamp";
			set_detail(agg, it,
				 "event time is %" PRId64 " s in the future",
				 (t - agg->now_ms) / 1000);
			continue;
		}
		if (hset_put(&agg->dedupe, (const uint8_t *)agg->items,
			     sizeof(item), 32, (uint32_t)i) != (uint32_t)i ||
		    seen_has(&agg->seen, it->key))
			it->status = ST_DUP;
	}
}

static void collect_parts(tally_agg *agg)
{
	size_t i, k;

	agg->nparts = 0;
	for (i = 0; i < agg->n; i++) {
		const tally_agg_msg *m = &agg->msgs[i];

		for (k = 0; k < agg->nparts; k++)
			if (agg->parts[k].partition == m->partition &&
			    strcmp(agg->parts[k].topic, m->topic) == 0)
				break;
		if (k == agg->nparts) {
			if (agg->nparts == agg->capparts) {
				agg->capparts = agg->capparts ?
						agg->capparts * 2 : 16;
				agg->parts = tally_xrealloc(
					agg->parts,
					agg->capparts * sizeof(*agg->parts));
				agg->posbuf = tally_xrealloc(
					agg->posbuf,
					agg->capparts * sizeof(*agg->posbuf));
			}
			agg->parts[k].topic = m->topic;
			agg->parts[k].partition = m->partition;
			agg->parts[k].first = m->offset;
			agg->parts[k].gap_from = agg->parts[k].gap_to = 0;
			agg->nparts++;
		}
		agg->parts[k].next = m->offset + 1;
	}
}

/*
 * Offsets that Kafka deleted (retention) before we read them: the batch
 * starts after our expected position and the log now starts after it too.
 * librdkafka resumes at the log start (auto.offset.reset=earliest); the
 * skipped range is never silent: logged as an error, counted, and recorded
 * in consumer_offset_gaps in the batch's transaction. Gaps that are only
 * transaction markers or aborted messages are not flagged: there the log
 * start is still at or below our position.
 */
static void detect_gaps(tally_agg *agg)
{
	size_t k;

	agg->st.gaps = 0;
	if (agg->consumer_rk == NULL)
		return;
	for (k = 0; k < agg->nparts; k++) {
		batch_part *bp = &agg->parts[k];
		int64_t lo = -1, hi = -1, expected = -1;

		if (!tally_positions_get(agg->pos, bp->topic, bp->partition,
					 &expected) ||
		    expected < 0 || bp->first <= expected)
			continue;
		if (rd_kafka_get_watermark_offsets(agg->consumer_rk, bp->topic,
						   bp->partition, &lo, &hi) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR || lo < 0)
			continue;
		if (lo <= expected)
			continue;
		bp->gap_from = expected;
		bp->gap_to = lo < bp->first ? lo : bp->first;
		agg->st.gaps++;
		tally_log(TALLY_ERR, "aggregate.offset_gap",
			  TALLY_KV_STR("topic", bp->topic),
			  TALLY_KV_INT("partition", bp->partition),
			  TALLY_KV_INT("stored_offset", expected),
			  TALLY_KV_INT("log_start_offset", lo),
			  TALLY_KV_INT("resumed_at", bp->first));
	}
}

static int record_gaps(tally_agg *agg, tally_error *err)
{
	char p[16], f[24], t[24];
	const char *params[5];
	size_t k;
	int rc = 0;

	for (k = 0; k < agg->nparts && rc == 0; k++) {
		batch_part *bp = &agg->parts[k];

		if (bp->gap_to <= bp->gap_from)
			continue;
		snprintf(p, sizeof(p), "%d", (int)bp->partition);
		snprintf(f, sizeof(f), "%" PRId64, bp->gap_from);
		snprintf(t, sizeof(t), "%" PRId64, bp->gap_to);
		params[0] = agg->group;
		params[1] = bp->topic;
		params[2] = p;
		params[3] = f;
		params[4] = t;
		rc = tally_pg_exec(agg->pg, NULL,
				   "INSERT INTO consumer_offset_gaps (consumer_group,"
				   " topic, partition, from_offset, to_offset)"
				   " VALUES ($1, $2, $3, $4, $5)"
				   " ON CONFLICT DO NOTHING", 5, params, err);
	}
	return rc;
}

void tally_agg_set_consumer(tally_agg *agg, rd_kafka_t *rk)
{
	agg->consumer_rk = rk;
}

static int send_dead_letters(tally_agg *agg, tally_error *err)
{
	size_t i, sent = 0;
	int rc;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		if (it->status != ST_DLQ)
			continue;
		agg->st.dead_lettered++;
		tally_log(TALLY_WARN, "aggregate.dead_letter",
			  TALLY_KV_STR("topic", agg->msgs[i].topic),
			  TALLY_KV_INT("partition", agg->msgs[i].partition),
			  TALLY_KV_INT("offset", agg->msgs[i].offset),
			  TALLY_KV_STR("reason", it->reason));
		if (agg->producer == NULL || agg->msgs[i].rkm == NULL)
			continue;
		rc = tally_dlq_send(agg->producer, agg->dlq_topic,
				    agg->msgs[i].rkm, "tally-aggregate",
				    it->reason, item_detail(agg, it), err);
		if (rc != 0)
			return rc;
		sent++;
	}
	if (sent > 0) {
		/*
		 * The dead letters must be durable before the offsets move:
		 * all of them left the queue (flush) and none failed (the
		 * delivery reports, counted by tally_agg_delivered during the
		 * flush). Otherwise the transaction is not committed and the
		 * batch, dead letters included, is done again.
		 */
		agg->dlq_failed = 0;
		rd_kafka_flush(agg->producer, 30000);
		if (rd_kafka_outq_len(agg->producer) > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "dead letters not delivered");
		if (agg->dlq_failed > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "%zu dead letter(s) failed delivery"
					       " to %s", agg->dlq_failed,
					       agg->dlq_topic);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* the transaction                                                     */

static void uuid_arr(sbuf *b, const uint8_t *id, bool first)
{
	char s[37];

	tally_uuid_fmt(s, id);
	if (!first)
		sb_add(b, ",", 1);
	sb_add(b, s, 36);
}

static int fence(tally_agg *agg, tally_error *err)
{
	return tally_positions_fence(agg->pos, agg->pg, agg->posbuf,
				     batch_positions(agg, agg->posbuf), err);
}

static int64_t parse_ms(const char *s)
{
	int64_t v = 0;

	if (tally_parse_i64(&v, s) != 0)
		return 0;
	return v;
}

static int load_tenant_rows(tally_agg *agg, const char *ids, int64_t mint,
			    tally_error *err);

/* Tenants of the batch with their current period and recorded periods. */
static int load_tenants(tally_agg *agg, tally_error *err)
{
	sbuf *ids = &agg->q1;
	int64_t mint = INT64_MAX;
	size_t i;

	agg->ntenants = 0;
	agg->nbps = 0;
	if (agg->cap_tenants < agg->n + 1) {
		agg->cap_tenants = agg->n + 1;
		agg->tenants = tally_xrealloc(agg->tenants, agg->cap_tenants *
					      sizeof(*agg->tenants));
	}
	hset_init(&agg->tenant_h, agg->n + 1);
	sb_reset(ids);
	sb_puts(ids, "{");
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		tenant_info *ti;

		if (it->status != ST_OK)
			continue;
		if (it->re.ev.time_ms < mint)
			mint = it->re.ev.time_ms;
		ti = &agg->tenants[agg->ntenants];
		memset(ti, 0, sizeof(*ti));
		memcpy(ti->id, it->re.ev.tenant_id, 16);
		if (hset_put(&agg->tenant_h, (const uint8_t *)agg->tenants,
			     sizeof(tenant_info), 16, (uint32_t)agg->ntenants) ==
		    (uint32_t)agg->ntenants) {
			uuid_arr(ids, ti->id, agg->ntenants == 0);
			agg->ntenants++;
		}
	}
	sb_puts(ids, "}");
	if (agg->ntenants == 0)
		return 0;
	return load_tenant_rows(agg, ids->p, mint, err);
}

/*
 * The current period and the recorded periods ending after mint of the
 * tenants in agg->tenants (indexed by tenant_h), whose ids are the array
 * literal ids. Used by batches and by the storage rollover.
 */
static int load_tenant_rows(tally_agg *agg, const char *ids, int64_t mint,
			    tally_error *err)
{
	PGresult *res = NULL;
	const char *params[2];
	char minbuf[24];
	int rc, r;

	params[0] = ids;
	/*
	 * FOR KEY SHARE, in id order, until the commit: whoever closes a
	 * period locks the tenant row FOR UPDATE first, so it waits for the
	 * batches that may have read the period as open, and the batches
	 * after it wait for its commit and then read billing_periods (next
	 * statement) closed (docs/aggregate.md, "Closing a period"). Does
	 * not block tenant updates that leave the keys alone.
	 */
	rc = tally_pg_exec(agg->pg, &res,
			   "SELECT id, (extract(epoch FROM current_period_start)"
			   " * 1000)::bigint, (extract(epoch FROM"
			   " current_period_end) * 1000)::bigint,"
			   " current_period_end > current_period_start FROM tenants"
			   " WHERE id = ANY($1::uuid[]) ORDER BY id FOR KEY SHARE",
			   1, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++) {
		uint8_t id[16];
		uint32_t k;

		if (PQgetisnull(res, r, 3) ||
		    strcmp(PQgetvalue(res, r, 3), "t") != 0)
			continue; /* no current period: calendar months */
		if (tally_uuid_parse(id, PQgetvalue(res, r, 0), 36) != 0)
			continue;
		k = hset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
			      sizeof(tenant_info), 16, id);
		if (k == UINT32_MAX)
			continue; /* cannot happen: we asked for these ids */
		agg->tenants[k].cps = parse_ms(PQgetvalue(res, r, 1));
		agg->tenants[k].cpe = parse_ms(PQgetvalue(res, r, 2));
	}
	PQclear(res);
	res = NULL;
	snprintf(minbuf, sizeof(minbuf), "%" PRId64, mint);
	params[1] = minbuf;
	rc = tally_pg_exec(agg->pg, &res,
			   "SELECT tenant_id, (extract(epoch FROM period_start)"
			   " * 1000)::bigint, (extract(epoch FROM period_end)"
			   " * 1000)::bigint, status <> 'open'"
			   " FROM billing_periods WHERE tenant_id = ANY($1::uuid[])"
			   " AND period_end > timestamptz 'epoch' + $2::bigint"
			   " * interval '1 millisecond'"
			   " ORDER BY tenant_id, period_start",
			   2, params, err);
	if (rc != 0)
		goto cleanup;
	if (agg->cap_bps < (size_t)PQntuples(res)) {
		agg->cap_bps = (size_t)PQntuples(res);
		agg->bps = tally_xrealloc(agg->bps, agg->cap_bps * sizeof(bperiod));
	}
	for (r = 0; r < PQntuples(res); r++) {
		uint8_t id[16];
		uint32_t k;

		if (tally_uuid_parse(id, PQgetvalue(res, r, 0), 36) != 0)
			continue;
		k = hset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
			      sizeof(tenant_info), 16, id);
		if (k == UINT32_MAX)
			continue;
		if (agg->tenants[k].bp_n == 0)
			agg->tenants[k].bp_first = agg->nbps;
		agg->tenants[k].bp_n++;
		agg->bps[agg->nbps].start = parse_ms(PQgetvalue(res, r, 1));
		agg->bps[agg->nbps].end = parse_ms(PQgetvalue(res, r, 2));
		agg->bps[agg->nbps].closed = PQgetvalue(res, r, 3)[0] == 't';
		agg->nbps++;
	}
cleanup:
	PQclear(res);
	return rc;
}

static void assign_periods(tally_agg *agg)
{
	size_t i, b;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		tenant_info *ti;
		int64_t t = it->re.ev.time_ms;
		uint32_t k;
		bool found = false;

		if (it->status != ST_OK)
			continue;
		k = hset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
			      sizeof(tenant_info), 16, it->re.ev.tenant_id);
		assert(k != UINT32_MAX);
		ti = &agg->tenants[k];
		it->closed = false;
		for (b = 0; b < ti->bp_n; b++) {
			bperiod *bp = &agg->bps[ti->bp_first + b];
			if (bp->start <= t && t < bp->end) {
				it->ps = bp->start;
				it->pe = bp->end;
				it->closed = bp->closed;
				found = true;
				break;
			}
		}
		if (!found)
			tally_agg_period(&it->ps, &it->pe, ti->cps, ti->cpe, t);
	}
}

/*
 * The staging table lives as long as the connection: created once (the
 * first batch after a connect), emptied by every COMMIT. Binary COPY: no
 * text to format in C or to parse in PostgreSQL.
 */
static const char STAGING_SQL[] =
	"SET LOCAL client_min_messages = warning;"
	"CREATE TEMP TABLE IF NOT EXISTS agg_stage ("
	" idx integer, tenant_id uuid, digest uuid, occurred_at timestamptz,"
	" meter_id smallint, provider_id smallint, model_id integer,"
	" price_id bigint, quantity bigint, input_tokens bigint,"
	" output_tokens bigint, cache_read_tokens bigint,"
	" cache_write_tokens bigint, reasoning_tokens bigint, steps integer,"
	" cost numeric) ON COMMIT DELETE ROWS";

#define STAGE_COLS 16

static void be16(sbuf *b, int v)
{
	char x[2] = { (char)((v >> 8) & 0xff), (char)(v & 0xff) };

	sb_add(b, x, 2);
}

static void be32(sbuf *b, int64_t v)
{
	char x[4];
	int i;

	for (i = 3; i >= 0; i--, v >>= 8)
		x[i] = (char)(v & 0xff);
	sb_add(b, x, 4);
}

static void be64(sbuf *b, int64_t v)
{
	char x[8];
	uint64_t u = (uint64_t)v;
	int i;

	for (i = 7; i >= 0; i--, u >>= 8)
		x[i] = (char)(u & 0xff);
	sb_add(b, x, 8);
}

static void f_null(sbuf *b) { be32(b, -1); }
static void f_i16(sbuf *b, int64_t v) { be32(b, 2); be16(b, (int)v); }
static void f_i32(sbuf *b, int64_t v) { be32(b, 4); be32(b, v); }
static void f_i64(sbuf *b, int64_t v) { be32(b, 8); be64(b, v); }

static void f_uuid(sbuf *b, const uint8_t *u)
{
	be32(b, 16);
	sb_add(b, (const char *)u, 16);
}

/* microseconds since 2000-01-01 UTC, PostgreSQL's timestamptz */
static void f_ts(sbuf *b, int64_t ms)
{
	f_i64(b, (ms - INT64_C(946684800000)) * 1000);
}

/* an amount as binary numeric, exact (tally_money_pgnumeric) */
static void f_money(sbuf *b, tally_money128 pico)
{
	uint8_t n[TALLY_PGNUMERIC_LEN];

	be32(b, (int64_t)tally_money_pgnumeric(n, pico));
	sb_add(b, (const char *)n, sizeof(n));
}

static int64_t item_qty(const agg_event *ev)
{
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS: return 1;
	case TALLY_METER_WORKFLOW: return ev->complexity;
	case TALLY_METER_STORAGE: return ev->bytes;
	case TALLY_METER_API_CALL: return ev->count;
	default: return 0;
	}
}

static int cmp_key(const void *a, const void *b)
{
	const item *x = *(const item *const *)a, *y = *(const item *const *)b;

	return memcmp(x->key, y->key, 32);
}

static int ensure_stage(tally_agg *agg, tally_error *err);

/*
 * The batch's new-looking events go to PostgreSQL by binary COPY, in key
 * order, streamed in pieces of ~64 KiB as the rows are encoded: no
 * batch-sized buffer here or in libpq. What a COPY sends (copy_kind):
 *
 *   COPY_DEDUPE   their keys, straight into usage_dedupe (the fast path)
 *   COPY_LEDGER   their ledger rows, straight into usage_ledger (after it)
 *   COPY_STAGE    everything into agg_stage (the ON CONFLICT path: the
 *                 stage is where duplicates are found and removed)
 *   COPY_SNAPSHOTS the storage events only into agg_stage (the fast path:
 *                 the apply statement's storage_snapshots insert reads it)
 *
 * (docs/aggregate.md, "Part 5": the fast path writes each row once; the
 * stage cost a write and two reads of every row.)
 */
#define COPY_PIECE (1 << 16)

enum copy_kind { COPY_DEDUPE, COPY_LEDGER, COPY_STAGE, COPY_SNAPSHOTS };

static const char *const COPY_SQL[] = {
	[COPY_DEDUPE] = "COPY usage_dedupe (tenant_id, digest, occurred_at)"
			" FROM STDIN (FORMAT binary)",
	[COPY_LEDGER] = "COPY usage_ledger (tenant_id, digest, occurred_at,"
			" meter_id, provider_id, model_id, price_id, quantity,"
			" input_tokens, output_tokens, cache_read_tokens,"
			" cache_write_tokens, reasoning_tokens, steps, cost)"
			" FROM STDIN (FORMAT binary)",
	[COPY_STAGE] = "COPY agg_stage FROM STDIN (FORMAT binary)",
	[COPY_SNAPSHOTS] = "COPY agg_stage FROM STDIN (FORMAT binary)",
};

/* The batch's accepted-so-far items in key order: agg->sorted[0, *n). In
 * key order, the dedupe index takes the batch in one ordered pass over
 * its leaf pages instead of random hops. */
static void sort_batch(tally_agg *agg, size_t *n)
{
	size_t i, nsort = 0;

	if (agg->cap_sorted < agg->n) {
		free(agg->sorted);
		agg->cap_sorted = agg->n;
		agg->sorted = tally_xmalloc(agg->n * sizeof(item *));
	}
	for (i = 0; i < agg->n; i++)
		if (agg->items[i].status == ST_OK)
			agg->sorted[nsort++] = &agg->items[i];
	qsort(agg->sorted, nsort, sizeof(item *), cmp_key);
	agg->nsorted = nsort;
	*n = nsort;
}

static void put_row(sbuf *c, const tally_agg *agg, const item *it,
		    enum copy_kind kind)
{
	const agg_rated *re = &it->re;
	const agg_event *ev = &re->ev;
	bool ai = ev->meter == TALLY_METER_AI_TOKENS;

	/* worst case per row, so the helpers never reallocate */
	sb_reserve(c, 2 + STAGE_COLS * 4 + 16 + 16 + 8 * 10 + 2 * 2 +
		   4 * 3 + TALLY_PGNUMERIC_LEN);
	if (kind == COPY_DEDUPE) {
		be16(c, 3);
		f_uuid(c, ev->tenant_id);
		f_uuid(c, it->key + 16);
		f_ts(c, ev->time_ms);
		return;
	}
	if (kind == COPY_LEDGER) {
		be16(c, STAGE_COLS - 1);
	} else {
		be16(c, STAGE_COLS);
		f_i32(c, (int64_t)(it - agg->items));
	}
	f_uuid(c, ev->tenant_id);
	f_uuid(c, it->key + 16);
	f_ts(c, ev->time_ms);
	f_i16(c, (int64_t)ev->meter);
	if (ai) {
		f_i16(c, it->provider_id);
		f_i32(c, it->model_id);
	} else {
		f_null(c);
		f_null(c);
	}
	if (re->unpriced || re->price_id <= 0)
		f_null(c);
	else
		f_i64(c, re->price_id);
	f_i64(c, item_qty(ev));
	if (ai) {
		f_i64(c, ev->input_tokens);
		f_i64(c, ev->output_tokens);
		f_i64(c, ev->cache_read_tokens);
		f_i64(c, ev->cache_write_tokens);
		f_i64(c, ev->reasoning_tokens);
	} else {
		f_null(c);
		f_null(c);
		f_null(c);
		f_null(c);
		f_null(c);
	}
	if (ev->meter == TALLY_METER_WORKFLOW)
		f_i32(c, ev->steps);
	else
		f_null(c);
	f_money(c, re->cost);
}

/*
 * COPY agg->sorted (as sort_batch left it; COPY_SNAPSHOTS: its storage
 * events only) as `kind`. The result of the COPY is left to the caller:
 * *res is PQgetResult's after the end (NULL if the connection failed
 * before), so that the fast path can tell a unique violation from the
 * rest. *rows: the rows sent (0: nothing to send, no COPY, *res NULL).
 */
static int copy_rows(tally_agg *agg, enum copy_kind kind, size_t *rows,
		     PGresult **res, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	sbuf *c = &agg->copy;
	size_t i, n = 0;
	int rc;

	*res = NULL;
	*rows = 0;
	for (i = 0; i < agg->nsorted; i++)
		if (kind != COPY_SNAPSHOTS ||
		    agg->sorted[i]->re.ev.meter == TALLY_METER_STORAGE)
			n++;
	if (n == 0)
		return 0;
	if (kind == COPY_STAGE || kind == COPY_SNAPSHOTS) {
		rc = ensure_stage(agg, err);
		if (rc != 0)
			return rc;
	}
	rc = tally_pg_copy_begin(agg->pg, COPY_SQL[kind], err);
	if (rc != 0)
		return rc;
	sb_reset(c);
	sb_add(c, "PGCOPY\n\377\r\n\0", 11);
	be32(c, 0); /* flags */
	be32(c, 0); /* header extension */
	for (i = 0; i < agg->nsorted; i++) {
		const item *it = agg->sorted[i];

		if (kind == COPY_SNAPSHOTS &&
		    it->re.ev.meter != TALLY_METER_STORAGE)
			continue;
		if (c->len >= COPY_PIECE) {
			/* a failure here is the connection's: PostgreSQL
			 * reports a rejected row after the end */
			if (PQputCopyData(conn, c->p, (int)c->len) != 1)
				return tally_pg__classify(conn, NULL, err);
			sb_reset(c);
		}
		put_row(c, agg, it, kind);
	}
	be16(c, -1);
	if (PQputCopyData(conn, c->p, (int)c->len) != 1 ||
	    PQputCopyEnd(conn, NULL) != 1)
		return tally_pg__classify(conn, NULL, err);
	*rows = n;
	*res = PQgetResult(conn);
	return 0;
}

/* copy_rows whose every failure is the batch's (the result drained) */
static int copy_all(tally_agg *agg, enum copy_kind kind, size_t *rows,
		    tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res, *more;
	int rc = copy_rows(agg, kind, rows, &res, err);

	if (rc != 0 || *rows == 0)
		return rc;
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = tally_pg__classify(conn, res, err);
	PQclear(res);
	while ((more = PQgetResult(conn)) != NULL)
		PQclear(more);
	return rc;
}

/* ------------------------------------------------------------------ */
/* deltas, pre-aggregated in C: one row per key reaches PostgreSQL      */

static void acc_reset(accmap *m, size_t hint)
{
	m->n = 0;
	if (m->cap < hint) {
		free(m->v);
		m->cap = hint;
		m->v = tally_xmalloc(m->cap * sizeof(acc));
	}
	hset_init(&m->h, hint);
}

static acc *acc_get(accmap *m, const uint8_t *tenant, int64_t t, int meter,
		    int32_t pid, int32_t mid)
{
	acc *a = &m->v[m->n];
	uint32_t k;

	assert(m->n < m->cap);
	memset(a, 0, sizeof(*a));
	memcpy(a->k.tenant, tenant, 16);
	a->k.t = t;
	a->k.meter = meter;
	a->k.provider_id = pid;
	a->k.model_id = mid;
	k = hset_put(&m->h, (const uint8_t *)m->v, sizeof(acc), sizeof(acc_key),
		     (uint32_t)m->n);
	if (k == (uint32_t)m->n)
		m->n++;
	return &m->v[k];
}

static void accumulate(tally_agg *agg)
{
	size_t i, hint = agg->n + 1;

	acc_reset(&agg->hourly, hint);
	acc_reset(&agg->period, hint);
	acc_reset(&agg->adj, hint);
	agg->nstorage = 0;
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		const agg_event *ev = &it->re.ev;
		bool ai = ev->meter == TALLY_METER_AI_TOKENS;
		int32_t pid = ai ? it->provider_id : 0, mid = ai ? it->model_id : 0;
		int64_t q = item_qty(ev);
		acc *h, *p;

		if (it->status != ST_OK)
			continue;
		if (ev->meter == TALLY_METER_STORAGE)
			agg->nstorage++;
		h = acc_get(&agg->hourly, ev->tenant_id,
			    tally_floor_div(ev->time_ms, 3600000) * 3600000,
			    (int)ev->meter, pid, mid);
		h->events++;
		if (ev->meter == TALLY_METER_STORAGE)
			h->quantity = q > h->quantity ? q : h->quantity;
		else
			h->quantity += q;
		if (ai) {
			h->in += ev->input_tokens;
			h->out += ev->output_tokens;
			h->cr += ev->cache_read_tokens;
			h->cw += ev->cache_write_tokens;
			h->rs += ev->reasoning_tokens;
		}
		h->cost += it->re.cost;
		if (it->closed)
			p = acc_get(&agg->adj, ev->tenant_id, it->ps,
				    (int)ev->meter, pid, mid);
		else
			p = acc_get(&agg->period, ev->tenant_id, it->ps, 0, 0, 0);
		p->pe = it->pe;
		p->accepted++;
		p->events++;
		p->quantity += q;
		if (ai) {
			p->ai++;
			p->in += ev->input_tokens;
			p->out += ev->output_tokens;
			p->cr += ev->cache_read_tokens;
			p->cw += ev->cache_write_tokens;
			p->rs += ev->reasoning_tokens;
		} else if (ev->meter == TALLY_METER_WORKFLOW) {
			p->wf++;
			p->wu += q;
		} else if (ev->meter == TALLY_METER_API_CALL) {
			p->api += q;
		} else if (ev->meter == TALLY_METER_STORAGE) {
			p->ss++;
		}
		p->cost += it->re.cost;
	}
}

/*
 * The deltas go to PostgreSQL as parameters: one array per column, in
 * PostgreSQL's binary array format (array_send), unnested in SQL. Nothing
 * is formatted as text in C or parsed in PostgreSQL, and the statement
 * text is short and the same for every batch of the same shape. (A VALUES
 * list of literals, one row per key, cost ~400 ms of parse, analysis and
 * planning per 10 000 keys; text arrays ~25 ms of formatting in C plus
 * their parsing: see docs/aggregate.md, "Performance".)
 *
 * An array: ndim, has-nulls flag, element type OID, then per dimension its
 * length and lower bound, then each element as length + bytes. The header
 * is written when the first element is (col_begin) and its length patched
 * at the end (col_end); an array with no element is sent with ndim 0.
 */
#define OID_INT8 20
#define OID_INT4 23
#define OID_UUID 2950
#define OID_NUMERIC 1700

static void put32_at(sbuf *b, size_t at, int64_t v)
{
	int i;

	for (i = 3; i >= 0; i--, v >>= 8)
		b->p[at + (size_t)i] = (char)(v & 0xff);
}

static void col_begin(sbuf *b, uint32_t oid)
{
	sb_reset(b);
	be32(b, 1);         /* ndim */
	be32(b, 0);         /* no NULLs */
	be32(b, oid);
	be32(b, 0);         /* dimension length: patched by col_end */
	be32(b, 1);         /* lower bound */
}

static void col_end(sbuf *b, size_t n)
{
	if (n == 0) {
		b->len = 0;
		be32(b, 0);
		be32(b, 0);
		be32(b, 0);
	} else {
		put32_at(b, 12, (int64_t)n);
	}
}

static void col_i64(sbuf *b, int64_t v) { f_i64(b, v); }
static void col_i32(sbuf *b, int64_t v) { f_i32(b, v); }
static void col_uuid(sbuf *b, const uint8_t *id) { f_uuid(b, id); }

static void col_cost(sbuf *b, tally_money128 c) { f_money(b, c); }

/* $first .. $(first + n - 1) cast to the given types, comma-separated */
static void unnest_args(sbuf *q, int first, const char *const *types,
			int n)
{
	int i;

	sb_puts(q, "unnest(");
	for (i = 0; i < n; i++)
		sb_printf(q, "%s$%d::%s[]", i ? ", " : "", first + i, types[i]);
	sb_puts(q, ")");
}

static const char *const HOURLY_TYPES[APPLY_HOURLY_COLS] = {
	"uuid", "bigint", "int", "int", "int", "bigint", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "numeric"
};
static const char *const PERIOD_TYPES[APPLY_PERIOD_COLS] = {
	"uuid", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "bigint", "bigint", "numeric"
};
static const char *const ADJ_TYPES[APPLY_ADJ_COLS] = {
	"uuid", "bigint", "bigint", "int", "int", "int", "bigint", "bigint",
	"bigint", "bigint", "bigint", "bigint", "bigint", "numeric"
};

static uint32_t type_oid(const char *t)
{
	if (strcmp(t, "uuid") == 0)
		return OID_UUID;
	if (strcmp(t, "int") == 0)
		return OID_INT4;
	if (strcmp(t, "numeric") == 0)
		return OID_NUMERIC;
	return OID_INT8;
}

static void cols_begin(sbuf *b, const char *const *types, int n)
{
	int j;

	for (j = 0; j < n; j++)
		col_begin(&b[j], type_oid(types[j]));
}

static void cols_end(sbuf *b, int n, size_t rows)
{
	int j;

	for (j = 0; j < n; j++)
		col_end(&b[j], rows);
}

/*
 * Ledger, snapshots and the pre-aggregated deltas in one statement. The
 * delta arrays are built here from integers and bytes (uuids, numbers;
 * names come in as ids and are joined in SQL), never from event strings.
 * Sets agg->ncols and agg->colp[] (the parameters, in order).
 */
static void build_apply(tally_agg *agg, sbuf *q)
{
	const char *sep = "WITH ";
	sbuf *c = agg->cols;
	size_t i;
	int k, np = 0;

	sb_reset(q);
	if (agg->ledger_staged) {
		sb_puts(q, sep);
		sep = ", ";
		sb_puts(q,
		"led AS ("
		" INSERT INTO usage_ledger (occurred_at, price_id, quantity,"
		"  input_tokens, output_tokens, cache_read_tokens,"
		"  cache_write_tokens, reasoning_tokens, tenant_id, digest,"
		"  model_id, steps, meter_id, provider_id, cost)"
		" SELECT occurred_at, price_id, quantity, input_tokens,"
		"  output_tokens, cache_read_tokens, cache_write_tokens,"
		"  reasoning_tokens, tenant_id, digest, model_id, steps, meter_id,"
		"  provider_id, cost FROM agg_stage)");
	}
	/* the stage has the storage events on either path */
	if (agg->nstorage > 0) {
		sb_puts(q, sep);
		sep = ", ";
		sb_puts(q, "snap AS ("
			" INSERT INTO storage_snapshots (tenant_id, occurred_at,"
			"  digest, bytes) SELECT tenant_id, occurred_at, digest,"
			"  quantity FROM agg_stage WHERE meter_id = 3"
			" ON CONFLICT DO NOTHING)");
	}
	if (agg->hourly.n > 0) {
		sbuf *b = c + np;

		cols_begin(b, HOURLY_TYPES, APPLY_HOURLY_COLS);
		for (i = 0; i < agg->hourly.n; i++) {
			const acc *a = &agg->hourly.v[i];

			col_uuid(&b[0], a->k.tenant);
			col_i64(&b[1], a->k.t);
			col_i32(&b[2], a->k.meter);
			col_i32(&b[3], a->k.provider_id);
			col_i32(&b[4], a->k.model_id);
			col_i64(&b[5], a->events);
			col_i64(&b[6], a->quantity);
			col_i64(&b[7], a->in);
			col_i64(&b[8], a->out);
			col_i64(&b[9], a->cr);
			col_i64(&b[10], a->cw);
			col_i64(&b[11], a->rs);
			col_cost(&b[12], a->cost);
		}
		sb_puts(q, sep);
		sep = ", ";
		sb_puts(q, "hourly AS ("
			" INSERT INTO usage_hourly AS h (tenant_id, hour, meter,"
			"  provider, model, events, quantity, input_tokens,"
			"  output_tokens, cache_read_tokens, cache_write_tokens,"
			"  reasoning_tokens, cost)"
			" SELECT v.t, timestamptz 'epoch' + v.hr * interval '1 ms',"
			"  mt.name, coalesce(p.name, ''),"
			"  coalesce(m.name, ''), v.e, v.q, v.i, v.o, v.cr, v.cw,"
			"  v.rs, v.c FROM ");
		cols_end(b, APPLY_HOURLY_COLS, agg->hourly.n);
		unnest_args(q, np + 1, HOURLY_TYPES, APPLY_HOURLY_COLS);
		np += APPLY_HOURLY_COLS;
		sb_puts(q, " v(t, hr, mid, pid, moid, e, q, i, o, cr, cw, rs, c)"
			" JOIN meters mt ON mt.id = v.mid"
			" LEFT JOIN providers p ON p.id = v.pid"
			" LEFT JOIN models m ON m.id = v.moid"
			" ORDER BY 1, 2, 3, 4, 5"
			" ON CONFLICT (tenant_id, hour, meter, provider, model)"
			" DO UPDATE SET events = h.events + EXCLUDED.events,"
			" quantity = CASE WHEN h.meter = 'storage.snapshot'"
			"  THEN greatest(h.quantity, EXCLUDED.quantity)"
			"  ELSE h.quantity + EXCLUDED.quantity END,"
			" input_tokens = h.input_tokens + EXCLUDED.input_tokens,"
			" output_tokens = h.output_tokens + EXCLUDED.output_tokens,"
			" cache_read_tokens = h.cache_read_tokens"
			"  + EXCLUDED.cache_read_tokens,"
			" cache_write_tokens = h.cache_write_tokens"
			"  + EXCLUDED.cache_write_tokens,"
			" reasoning_tokens = h.reasoning_tokens"
			"  + EXCLUDED.reasoning_tokens,"
			" cost = h.cost + EXCLUDED.cost)");
	}
	if (agg->period.n > 0) {
		sbuf *b = c + np;

		cols_begin(b, PERIOD_TYPES, APPLY_PERIOD_COLS);
		for (i = 0; i < agg->period.n; i++) {
			const acc *a = &agg->period.v[i];

			col_uuid(&b[0], a->k.tenant);
			col_i64(&b[1], a->k.t);
			col_i64(&b[2], a->pe);
			col_i64(&b[3], a->ai);
			col_i64(&b[4], a->in);
			col_i64(&b[5], a->out);
			col_i64(&b[6], a->cr);
			col_i64(&b[7], a->cw);
			col_i64(&b[8], a->rs);
			col_i64(&b[9], a->wf);
			col_i64(&b[10], a->wu);
			col_i64(&b[11], a->api);
			col_i64(&b[12], a->ss);
			col_cost(&b[13], a->cost);
		}
		sb_puts(q, sep);
		sep = ", ";
		sb_puts(q, "period AS ("
			" INSERT INTO tenant_period_usage AS u (tenant_id,"
			"  period_start, period_end, ai_requests, input_tokens,"
			"  output_tokens, cache_read_tokens, cache_write_tokens,"
			"  reasoning_tokens, workflow_executions,"
			"  workflow_complexity_units, api_calls, storage_snapshots,"
			"  cost) SELECT v.t, timestamptz 'epoch' + v.ps"
			"  * interval '1 ms', timestamptz 'epoch' + v.pe"
			"  * interval '1 ms', v.ai, v.i, v.o, v.cr, v.cw, v.rs,"
			"  v.wf, v.wu, v.api, v.ss, v.c FROM ");
		cols_end(b, APPLY_PERIOD_COLS, agg->period.n);
		unnest_args(q, np + 1, PERIOD_TYPES, APPLY_PERIOD_COLS);
		np += APPLY_PERIOD_COLS;
		sb_puts(q, " v(t, ps, pe, ai, i, o, cr, cw, rs, wf, wu, api, ss,"
			" c) ORDER BY 1, 2"
			" ON CONFLICT (tenant_id, period_start) DO UPDATE SET"
			" ai_requests = u.ai_requests + EXCLUDED.ai_requests,"
			" input_tokens = u.input_tokens + EXCLUDED.input_tokens,"
			" output_tokens = u.output_tokens + EXCLUDED.output_tokens,"
			" cache_read_tokens = u.cache_read_tokens"
			"  + EXCLUDED.cache_read_tokens,"
			" cache_write_tokens = u.cache_write_tokens"
			"  + EXCLUDED.cache_write_tokens,"
			" reasoning_tokens = u.reasoning_tokens"
			"  + EXCLUDED.reasoning_tokens,"
			" workflow_executions = u.workflow_executions"
			"  + EXCLUDED.workflow_executions,"
			" workflow_complexity_units = u.workflow_complexity_units"
			"  + EXCLUDED.workflow_complexity_units,"
			" api_calls = u.api_calls + EXCLUDED.api_calls,"
			" storage_snapshots = u.storage_snapshots"
			"  + EXCLUDED.storage_snapshots,"
			" cost = u.cost + EXCLUDED.cost)");
	}
	if (agg->adj.n > 0) {
		sbuf *b = c + np;

		cols_begin(b, ADJ_TYPES, APPLY_ADJ_COLS);
		for (i = 0; i < agg->adj.n; i++) {
			const acc *a = &agg->adj.v[i];

			col_uuid(&b[0], a->k.tenant);
			col_i64(&b[1], a->k.t);
			col_i64(&b[2], a->pe);
			col_i32(&b[3], a->k.meter);
			col_i32(&b[4], a->k.provider_id);
			col_i32(&b[5], a->k.model_id);
			col_i64(&b[6], a->events);
			col_i64(&b[7], a->quantity);
			col_i64(&b[8], a->in);
			col_i64(&b[9], a->out);
			col_i64(&b[10], a->cr);
			col_i64(&b[11], a->cw);
			col_i64(&b[12], a->rs);
			col_cost(&b[13], a->cost);
		}
		sb_puts(q, sep);
		sep = ", ";
		sb_puts(q, "adj AS ("
			" INSERT INTO usage_adjustments (tenant_id, period_start,"
			"  period_end, kind, meter, provider, model, events,"
			"  quantity, input_tokens, output_tokens, cache_read_tokens,"
			"  cache_write_tokens, reasoning_tokens, cost)"
			" SELECT v.t, timestamptz 'epoch' + v.ps * interval '1 ms',"
			"  timestamptz 'epoch' + v.pe * interval '1 ms',"
			"  'late_usage', mt.name,"
			"  coalesce(p.name, ''), coalesce(m.name, ''), v.e, v.q,"
			"  v.i, v.o, v.cr, v.cw, v.rs, v.c FROM ");
		cols_end(b, APPLY_ADJ_COLS, agg->adj.n);
		unnest_args(q, np + 1, ADJ_TYPES, APPLY_ADJ_COLS);
		np += APPLY_ADJ_COLS;
		sb_puts(q, " v(t, ps, pe, mid, pid, moid, e, q, i, o, cr, cw,"
			" rs, c) JOIN meters mt ON mt.id = v.mid"
			" LEFT JOIN providers p ON p.id = v.pid"
			" LEFT JOIN models m ON m.id = v.moid)");
	}
	sb_puts(q, " SELECT 1");
	for (k = 0; k < np; k++) {
		agg->colp[k] = c[k].p;
		agg->coll[k] = (int)c[k].len;
		agg->colf[k] = 1;
	}
	agg->ncols = np;
}

/*
 * The dedupe insert: INSERT ... ON CONFLICT DO NOTHING RETURNING the keys
 * it inserted, as binary (16-byte uuids). C finds each returned key's
 * staged event (the batch's key hash); the staged events not returned were
 * seen before: they are marked duplicates (the deltas leave them out) and,
 * if there are any, deleted from the stage by index in a second statement.
 * Measured against the earlier optimistic variant (SAVEPOINT + plain
 * INSERT; on unique_violation ROLLBACK TO SAVEPOINT, then ON CONFLICT DO
 * NOTHING RETURNING joined with the stage in SQL): with 5 % re-sent events
 * nearly every batch took the fallback, did the insert twice and wrote an
 * ERROR line to the server log; this is faster there and logs nothing
 * (docs/aggregate.md).
 */
static const char DEDUPE_SQL[] =
	"INSERT INTO usage_dedupe (tenant_id, digest, occurred_at)"
	" SELECT tenant_id, digest, occurred_at FROM agg_stage"
	" ON CONFLICT DO NOTHING RETURNING tenant_id, digest";

static int simple_exec(tally_pg *pg, PGresult **out, const char *sql,
		       ExecStatusType want, tally_error *err)
{
	PGresult *res = PQexec(tally_pg_conn(pg), sql);

	if (res == NULL || PQresultStatus(res) != want) {
		int rc = tally_pg__classify(tally_pg_conn(pg), res, err);

		PQclear(res);
		return rc;
	}
	if (out != NULL)
		*out = res;
	else
		PQclear(res);
	return 0;
}

/*
 * The fast path: the keys by COPY straight into usage_dedupe, inside a
 * savepoint; then the ledger rows by COPY straight into usage_ledger (and
 * the storage events into the stage for storage_snapshots). With the keys
 * of the last batches already filtered out in C (seen_has), the key COPY
 * nearly always succeeds; each row is then written once (measured in
 * docs/aggregate.md, "Part 5"). A unique violation -- a key older than
 * the ring (the ring counts keys of all partitions, and one partition can
 * lag far behind the others), or written by another instance -- rolls
 * back to the savepoint and the batch goes the ON CONFLICT way through
 * the stage. So do the next 0, 1, 3, 7 ... 63 batches while fallbacks follow
 * each other (after a restart, while the ring is empty); one fast success
 * resets that. *done: the batch's rows are written.
 */
static int write_fast(tally_agg *agg, bool *done, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res, *more;
	const char *state;
	size_t rows;
	int rc;

	*done = false;
	rc = simple_exec(agg->pg, NULL, "SAVEPOINT agg_dedupe",
			 PGRES_COMMAND_OK, err);
	if (rc == 0)
		rc = copy_rows(agg, COPY_DEDUPE, &rows, &res, err);
	if (rc != 0)
		return rc;
	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
		PQclear(res);
		while ((more = PQgetResult(conn)) != NULL)
			PQclear(more);
		*done = true;
		agg->dedupe_streak = 0;
		rc = copy_all(agg, COPY_LEDGER, &rows, err);
		if (rc == 0)
			rc = copy_all(agg, COPY_SNAPSHOTS, &rows, err);
		return rc;
	}
	state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL || strcmp(state, "23505") != 0) {
		rc = tally_pg__classify(conn, res, err);
		PQclear(res);
		while ((more = PQgetResult(conn)) != NULL)
			PQclear(more);
		return rc;
	}
	PQclear(res);
	while ((more = PQgetResult(conn)) != NULL)
		PQclear(more);
	agg->dedupe_slow = 1 << (agg->dedupe_streak < 6 ? agg->dedupe_streak : 6);
	agg->dedupe_streak++;
	agg->st.dedupe_fallbacks++;
	return simple_exec(agg->pg, NULL, "ROLLBACK TO SAVEPOINT agg_dedupe",
			   PGRES_COMMAND_OK, err);
}

static int dedupe(tally_agg *agg, size_t rows, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	PGresult *res;
	const char *param;
	sbuf ids = { 0 };
	size_t i, ndup = 0;
	int rc = 0, r;

	res = PQexecParams(conn, DEDUPE_SQL, 0, NULL, NULL, NULL, NULL, 1);
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = tally_pg__classify(conn, res, err);
		PQclear(res);
		return rc;
	}
	if ((size_t)PQntuples(res) == rows) {
		PQclear(res); /* nothing seen before: the common case */
		return 0;
	}
	for (i = 0; i < agg->n; i++)
		if (agg->items[i].status == ST_OK)
			agg->items[i].dup_db = true;
	for (r = 0; r < PQntuples(res); r++) {
		uint8_t key[32];
		uint32_t k;

		if (PQgetlength(res, r, 0) != 16 || PQgetlength(res, r, 1) != 16) {
			rc = tally_error_set(err, TALLY_ERROR, "dedupe: bad key");
			break;
		}
		memcpy(key, PQgetvalue(res, r, 0), 16);
		memcpy(key + 16, PQgetvalue(res, r, 1), 16);
		k = hset_find(&agg->dedupe, (const uint8_t *)agg->items,
			      sizeof(item), 32, key);
		if (k == UINT32_MAX || agg->items[k].status != ST_OK) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "dedupe: unknown key returned");
			break;
		}
		agg->items[k].dup_db = false;
	}
	PQclear(res);
	if (rc != 0)
		return rc;
	sb_puts(&ids, "{");
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		if (it->status != ST_OK || !it->dup_db)
			continue;
		it->status = ST_DUP;
		sb_printf(&ids, "%s%zu", ndup++ ? "," : "", i);
	}
	sb_puts(&ids, "}");
	param = ids.p;
	if (ndup > 0)
		rc = tally_pg_exec(agg->pg, NULL, "DELETE FROM agg_stage"
				   " WHERE idx = ANY($1::integer[])", 1, &param,
				   err);
	free(ids.p);
	return rc;
}

/*
 * The batch's rows (agg->sorted, `rows` of them) into usage_dedupe and
 * usage_ledger: the fast path's COPYs, or through the stage with
 * ON CONFLICT (which also marks and removes the duplicates). Sets
 * agg->ledger_staged: the apply statement inserts the ledger from the
 * stage.
 */
static int write_batch(tally_agg *agg, size_t rows, tally_error *err)
{
	size_t n;
	int rc;

	agg->ledger_staged = false;
	if (agg->dedupe_slow == 0) {
		bool done;

		rc = write_fast(agg, &done, err);
		if (rc != 0 || done)
			return rc;
	}
	agg->ledger_staged = true;
	rc = copy_all(agg, COPY_STAGE, &n, err);
	if (rc == 0)
		rc = dedupe(agg, rows, err);
	return rc;
}

/*
 * Storage GB-months and their cost (docs/aggregate.md, "Storage"): each
 * snapshot's bytes hold from its time until the next snapshot, the last
 * one until the period end; the period opens with the last snapshot before
 * it. PostgreSQL returns the segments of the target periods; C prices each
 * segment with tally_rate_storage_cost() at the price in force at the
 * segment's start (rounded half-even per segment) and sums exactly.
 * A carry target ($4) is a period the batch touched without a snapshot of
 * its own: it counts only if its row has no storage yet (a row the batch
 * created, or one that missed its carried-over snapshot), and it has
 * segments only if the tenant has a snapshot before the period (an index
 * probe): the rows of tenants without storage cost one look-up each. The
 * row test is a scalar subquery, a primary-key probe per carry target: as
 * EXISTS it became a semi-join that scanned tenant_period_usage.
 */
static const char SEGMENTS_SQL[] =
	"WITH a AS (SELECT x.tenant_id, x.ps_ms, timestamptz 'epoch' + x.ps_ms"
	"  * interval '1 ms' AS ps, timestamptz 'epoch' + x.pe_ms"
	"  * interval '1 ms' AS pe FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[], $4::boolean[]) AS x(tenant_id, ps_ms, pe_ms, carry)"
	"  WHERE NOT x.carry OR (SELECT u.storage_snapshots = 0"
	"   AND u.storage_byte_ms = 0 AND u.storage_cost = 0"
	"   FROM tenant_period_usage u WHERE u.tenant_id = x.tenant_id"
	"   AND u.period_start = timestamptz 'epoch' + x.ps_ms"
	"   * interval '1 ms')),"
	" pts AS ("
	"  SELECT a.tenant_id, a.ps_ms, a.pe, s.occurred_at AS t, 1 AS rk,"
	"   s.bytes FROM a JOIN storage_snapshots s ON s.tenant_id = a.tenant_id"
	"   AND s.occurred_at >= a.ps AND s.occurred_at < a.pe"
	"  UNION ALL"
	"  SELECT a.tenant_id, a.ps_ms, a.pe, a.ps, 0, c.bytes FROM a"
	"  CROSS JOIN LATERAL (SELECT s.bytes FROM storage_snapshots s"
	"   WHERE s.tenant_id = a.tenant_id AND s.occurred_at < a.ps"
	"   ORDER BY s.occurred_at DESC, s.bytes DESC LIMIT 1) c),"
	" seg AS (SELECT tenant_id, ps_ms, bytes, t, lead(t, 1, pe) OVER"
	"  (PARTITION BY tenant_id, ps_ms ORDER BY t, rk, bytes) AS t2"
	"  FROM pts)"
	" SELECT tenant_id, ps_ms, (extract(epoch FROM t) * 1000)::bigint,"
	"  (extract(epoch FROM t2 - t) * 1000)::bigint, bytes FROM seg"
	" WHERE t2 > t";

/*
 * Open periods: set the integral and the storage cost (part of cost). A
 * period without a row gets one if it has begun ($6) and holds storage
 * (the period after a snapshot's, before any other usage there), as the
 * batch's own periods get theirs; the caller bumps the version of every
 * row returned (changed or new), so billing.totals carries it.
 */
#define STORAGE_OPEN_INSERT \
	"INSERT INTO tenant_period_usage AS u (tenant_id, period_start," \
	" period_end, storage_byte_ms, storage_gb_months, storage_cost, cost)" \
	" SELECT x.t, x.ps, x.pe, x.b, round(x.b / 2592000000000000000, 12)," \
	"  x.c, x.c" \
	" FROM (SELECT t, timestamptz 'epoch' + ps * interval '1 ms' AS ps," \
	"  timestamptz 'epoch' + pe * interval '1 ms' AS pe, b, c, ins" \
	"  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::numeric[]," \
	"  $5::numeric[], $6::boolean[]) AS y(t, ps, pe, b, c, ins)) x" \
	" WHERE (x.ins AND (x.b <> 0 OR x.c <> 0)) OR EXISTS (SELECT 1" \
	"  FROM tenant_period_usage v WHERE v.tenant_id = x.t" \
	"  AND v.period_start = x.ps)" \
	" ORDER BY 1, 2"
#define STORAGE_OPEN_RETURNING \
	" RETURNING u.tenant_id, (extract(epoch FROM u.period_start)" \
	"  * 1000)::bigint"

static const char STORAGE_OPEN_SQL[] =
	STORAGE_OPEN_INSERT
	" ON CONFLICT (tenant_id, period_start) DO UPDATE SET"
	" storage_byte_ms = EXCLUDED.storage_byte_ms,"
	" storage_gb_months = EXCLUDED.storage_gb_months,"
	" cost = u.cost - u.storage_cost + EXCLUDED.storage_cost,"
	" storage_cost = EXCLUDED.storage_cost"
	" WHERE u.storage_byte_ms <> EXCLUDED.storage_byte_ms"
	"  OR u.storage_cost <> EXCLUDED.storage_cost"
	STORAGE_OPEN_RETURNING;

/*
 * The storage rollover only creates rows: a row that exists was written by a
 * batch (possibly with a snapshot the rollover did not see) and wins.
 */
static const char STORAGE_CREATE_SQL[] =
	STORAGE_OPEN_INSERT
	" ON CONFLICT (tenant_id, period_start) DO NOTHING"
	STORAGE_OPEN_RETURNING;

/*
 * Closed periods are never rewritten: the difference between the integral
 * now and what the period recorded plus earlier storage adjustments goes
 * into usage_adjustments (kind 'storage') for the next invoice.
 */
static const char STORAGE_CLOSED_SQL[] =
	"INSERT INTO usage_adjustments (tenant_id, period_start, period_end,"
	" kind, meter, storage_byte_ms, storage_gb_months, cost)"
	" SELECT x.t, x.ps, x.pe, 'storage', 'storage.snapshot', x.b - o.b,"
	"  round(x.b / 2592000000000000000, 12) - o.g, x.c - o.c"
	" FROM (SELECT t, timestamptz 'epoch' + ps * interval '1 ms' AS ps,"
	"  timestamptz 'epoch' + pe * interval '1 ms' AS pe, b, c"
	"  FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::numeric[],"
	"  $5::numeric[]) AS y(t, ps, pe, b, c)) x"
	" CROSS JOIN LATERAL (SELECT"
	"  coalesce((SELECT u.storage_byte_ms FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.storage_byte_ms) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS b,"
	"  coalesce((SELECT u.storage_gb_months FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.storage_gb_months) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS g,"
	"  coalesce((SELECT u.storage_cost FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = x.ps), 0)"
	"  + coalesce((SELECT sum(a.cost) FROM usage_adjustments a"
	"   WHERE a.tenant_id = x.t AND a.period_start = x.ps"
	"   AND a.kind = 'storage'), 0) AS c) o"
	" WHERE x.b <> o.b OR x.c <> o.c";

typedef struct starget {
	uint8_t tenant[16];   /* tenant and ps: the key (STARGET_KEY bytes) */
	int64_t ps, pe;
	bool closed;
	bool carry;           /* touched, no snapshot: only if still unset */
	bool seen;            /* has segments */
	bool unpriced;        /* a segment has no price in the book */
	__int128 bms;         /* byte-milliseconds */
	tally_money128 cost;  /* pico */
} starget;

#define STARGET_KEY (16 + sizeof(int64_t))
_Static_assert(offsetof(starget, ps) == 16, "starget key is tenant + ps");

/* The period of tenant ti containing t (as assign_periods decides). */
static void period_of(const tally_agg *agg, const tenant_info *ti, int64_t t,
		      int64_t *ps, int64_t *pe, bool *closed)
{
	size_t b;

	for (b = 0; b < ti->bp_n; b++) {
		const bperiod *bp = &agg->bps[ti->bp_first + b];

		if (bp->start <= t && t < bp->end) {
			*ps = bp->start;
			*pe = bp->end;
			*closed = bp->closed;
			return;
		}
	}
	*closed = false;
	tally_agg_period(ps, pe, ti->cps, ti->cpe, t);
}

static void fmt_i128(char *out, size_t len, __int128 v)
{
	char tmp[48];
	size_t n = 0, i;
	bool neg = v < 0;
	unsigned __int128 u = neg ? (unsigned __int128)0 - (unsigned __int128)v
				  : (unsigned __int128)v;

	do {
		tmp[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u != 0 && n < sizeof(tmp));
	i = 0;
	if (neg && i + 1 < len)
		out[i++] = '-';
	while (n > 0 && i + 1 < len)
		out[i++] = tmp[--n];
	out[i] = '\0';
}

/*
 * How storage_write writes the open periods: SW_BATCH and SW_REPRICE set
 * them (upsert), SW_CREATE only creates missing rows (the rollover).
 * SW_REPRICE leaves a period with an unpriced segment as it is (tally
 * rerate: a price missing from the book now is not a price of 0).
 */
enum { SW_BATCH, SW_CREATE, SW_REPRICE };

static int storage_write(tally_agg *agg, starget *tg, size_t ntg,
			 const hset *th, int64_t now_ms, int mode,
			 sbuf *at, sbuf *ap, size_t *naff, tally_error *err);

/* The batch's storage targets, written by storage_write(). */
static int storage_recompute(tally_agg *agg, sbuf *at, sbuf *ap,
			     size_t *naff, tally_error *err)
{
	starget *tg = NULL;
	hset th = { 0 };      /* index of tg by (tenant, ps) */
	size_t ntg = 0, cap, i;
	int rc = 0;

	cap = 2 * (agg->period.n + agg->adj.n) + 2;
	tg = tally_xcalloc(cap, sizeof(*tg));
	hset_init(&th, cap);
	/*
	 * targets: each period with new snapshots, and the one after it (its
	 * opening value); then, as carry targets, the other open periods the
	 * batch touched: a row the batch created opens with the last snapshot
	 * before it, whether or not the period has a snapshot of its own
	 */
	for (i = 0; i < agg->period.n + agg->adj.n; i++) {
		const acc *a = i < agg->period.n ? &agg->period.v[i]
			       : &agg->adj.v[i - agg->period.n];
		uint32_t k;
		int step;

		if (i < agg->period.n ? a->ss == 0
				      : a->k.meter != TALLY_METER_STORAGE)
			continue;
		k = hset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
			      sizeof(tenant_info), 16, a->k.tenant);
		assert(k != UINT32_MAX);
		for (step = 0; step < 2; step++) {
			starget *t = &tg[ntg];

			memset(t, 0, sizeof(*t));
			memcpy(t->tenant, a->k.tenant, 16);
			if (step == 0) {
				t->ps = a->k.t;
				t->pe = a->pe;
				t->closed = i >= agg->period.n;
			} else {
				period_of(agg, &agg->tenants[k], a->pe, &t->ps,
					  &t->pe, &t->closed);
			}
			if (hset_put(&th, (const uint8_t *)tg, sizeof(*tg),
				     STARGET_KEY, (uint32_t)ntg) == ntg)
				ntg++; /* new */
		}
	}
	for (i = 0; i < agg->period.n; i++) {
		const acc *a = &agg->period.v[i];
		starget *t = &tg[ntg];

		if (a->ss != 0)
			continue;
		memset(t, 0, sizeof(*t));
		memcpy(t->tenant, a->k.tenant, 16);
		t->ps = a->k.t;
		t->pe = a->pe;
		t->carry = true;
		if (hset_put(&th, (const uint8_t *)tg, sizeof(*tg),
			     STARGET_KEY, (uint32_t)ntg) == ntg)
			ntg++; /* new; else already a target */
	}
	if (ntg > 0)
		rc = storage_write(agg, tg, ntg, &th, agg->now_ms, SW_BATCH, at,
				   ap, naff, err);
	free(tg);
	free(th.slot);
	return rc;
}

/*
 * The storage of the targets tg[0, ntg) (th indexes them by tenant and
 * ps): their segments from SEGMENTS_SQL, priced and summed; open periods
 * set (a row created for one that has begun by now_ms), closed ones
 * adjusted. The rows changed or created are appended to at and ap (the
 * array bodies of the totals statement) and counted in naff.
 */
static int storage_write(tally_agg *agg, starget *tg, size_t ntg,
			 const hset *th, int64_t now_ms, int mode,
			 sbuf *at, sbuf *ap, size_t *naff, tally_error *err)
{
	uint8_t key[STARGET_KEY];
	size_t j;
	sbuf a1 = { 0 }, a2 = { 0 }, a3 = { 0 }, a4 = { 0 }, a5 = { 0 },
	     a6 = { 0 };
	PGresult *res = NULL;
	const char *params[6];
	size_t nopen = 0, nclosed = 0;
	int rc = 0, r;

	sb_puts(&a1, "{");
	sb_puts(&a2, "{");
	sb_puts(&a3, "{");
	sb_puts(&a6, "{");
	for (j = 0; j < ntg; j++) {
		uuid_arr(&a1, tg[j].tenant, j == 0);
		sb_printf(&a2, "%s%" PRId64, j ? "," : "", tg[j].ps);
		sb_printf(&a3, "%s%" PRId64, j ? "," : "", tg[j].pe);
		sb_printf(&a6, "%s%c", j ? "," : "", tg[j].carry ? 't' : 'f');
	}
	sb_puts(&a1, "}");
	sb_puts(&a2, "}");
	sb_puts(&a3, "}");
	sb_puts(&a6, "}");
	params[0] = a1.p;
	params[1] = a2.p;
	params[2] = a3.p;
	params[3] = a6.p;
	rc = tally_pg_exec(agg->pg, &res, SEGMENTS_SQL, 4, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++) {
		uint8_t id[16];
		int64_t ps = 0, t = 0, dur = 0, bytes = 0, c = 0, pid = 0;
		tally_error e2;
		int src;

		if (tally_uuid_parse(id, PQgetvalue(res, r, 0), 36) != 0 ||
		    tally_parse_i64(&ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t, PQgetvalue(res, r, 2)) != 0 ||
		    tally_parse_i64(&dur, PQgetvalue(res, r, 3)) != 0 ||
		    tally_parse_i64(&bytes, PQgetvalue(res, r, 4)) != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "bad storage segment row");
			goto cleanup;
		}
		memcpy(key, id, 16);
		memcpy(key + 16, &ps, sizeof(ps));
		j = hset_find(th, (const uint8_t *)tg, sizeof(*tg),
			      STARGET_KEY, key);
		if (j == UINT32_MAX)
			continue;
		tg[j].seen = true;
		tg[j].bms += (__int128)bytes * dur;
		if (agg->pb == NULL)
			continue;
		src = tally_rate_storage_cost(&c, &pid, agg->pb, id, t, bytes,
					      dur, &e2);
		if (src == TALLY_ENOTFOUND) {
			agg->storage_unpriced++;
			tg[j].unpriced = true;
			continue;
		}
		if (src != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "storage cost: %s", e2.msg);
			goto cleanup;
		}
		tg[j].cost += c;
	}
	PQclear(res);
	res = NULL;
	sb_reset(&a1);
	sb_reset(&a2);
	sb_reset(&a3);
	sb_reset(&a6);
	sb_puts(&a1, "{");
	sb_puts(&a2, "{");
	sb_puts(&a3, "{");
	sb_puts(&a4, "{");
	sb_puts(&a5, "{");
	sb_puts(&a6, "{");
	for (j = 0; j < ntg; j++) {
		char b[64], c[64];

		/* a carry target without segments is not to be set */
		if (tg[j].closed || (tg[j].carry && !tg[j].seen) ||
		    (mode == SW_REPRICE && tg[j].unpriced))
			continue;
		fmt_i128(b, sizeof(b), tg[j].bms);
		tally_money_fmt128(c, sizeof(c), tg[j].cost);
		uuid_arr(&a1, tg[j].tenant, nopen == 0);
		sb_printf(&a2, "%s%" PRId64, nopen ? "," : "", tg[j].ps);
		sb_printf(&a3, "%s%" PRId64, nopen ? "," : "", tg[j].pe);
		sb_printf(&a4, "%s%s", nopen ? "," : "", b);
		sb_printf(&a5, "%s%s", nopen ? "," : "", c);
		/* a row is created only for a period that has begun */
		sb_printf(&a6, "%s%c", nopen ? "," : "",
			  tg[j].ps <= now_ms ? 't' : 'f');
		nopen++;
	}
	sb_puts(&a1, "}");
	sb_puts(&a2, "}");
	sb_puts(&a3, "}");
	sb_puts(&a4, "}");
	sb_puts(&a5, "}");
	sb_puts(&a6, "}");
	if (nopen > 0) {
		params[0] = a1.p;
		params[1] = a2.p;
		params[2] = a3.p;
		params[3] = a4.p;
		params[4] = a5.p;
		params[5] = a6.p;
		rc = tally_pg_exec(agg->pg, &res, mode == SW_CREATE ?
				   STORAGE_CREATE_SQL : STORAGE_OPEN_SQL, 6,
				   params, err);
		if (rc != 0)
			goto cleanup;
		for (r = 0; r < PQntuples(res); r++) {
			sb_printf(at, "%s%s", *naff ? "," : "",
				  PQgetvalue(res, r, 0));
			sb_printf(ap, "%s%s", *naff ? "," : "",
				  PQgetvalue(res, r, 1));
			(*naff)++;
		}
		PQclear(res);
		res = NULL;
	}
	sb_reset(&a1);
	sb_reset(&a2);
	sb_reset(&a3);
	sb_reset(&a4);
	sb_reset(&a5);
	sb_puts(&a1, "{");
	sb_puts(&a2, "{");
	sb_puts(&a3, "{");
	sb_puts(&a4, "{");
	sb_puts(&a5, "{");
	for (j = 0; j < ntg; j++) {
		char b[64], c[64];

		if (!tg[j].closed || (mode == SW_REPRICE && tg[j].unpriced))
			continue;
		fmt_i128(b, sizeof(b), tg[j].bms);
		tally_money_fmt128(c, sizeof(c), tg[j].cost);
		uuid_arr(&a1, tg[j].tenant, nclosed == 0);
		sb_printf(&a2, "%s%" PRId64, nclosed ? "," : "", tg[j].ps);
		sb_printf(&a3, "%s%" PRId64, nclosed ? "," : "", tg[j].pe);
		sb_printf(&a4, "%s%s", nclosed ? "," : "", b);
		sb_printf(&a5, "%s%s", nclosed ? "," : "", c);
		nclosed++;
	}
	sb_puts(&a1, "}");
	sb_puts(&a2, "}");
	sb_puts(&a3, "}");
	sb_puts(&a4, "}");
	sb_puts(&a5, "}");
	if (nclosed > 0) {
		params[0] = a1.p;
		params[1] = a2.p;
		params[2] = a3.p;
		params[3] = a4.p;
		params[4] = a5.p;
		rc = tally_pg_exec(agg->pg, NULL, STORAGE_CLOSED_SQL, 5, params,
				   err);
	}
cleanup:
	PQclear(res);
	free(a1.p);
	free(a2.p);
	free(a3.p);
	free(a4.p);
	free(a5.p);
	free(a6.p);
	return rc;
}

/*
 * Distinct workflows per tenant and open period (migrations/0007): the ids
 * of this batch's accepted workflow executions go in once each; only ids
 * new to the period raise tenant_period_usage.workflows. Closed periods are
 * left alone (their invoice is out).
 */
static void collect_workflows(tally_agg *agg)
{
	sbuf *t = &agg->wf_t, *p = &agg->wf_p, *w = &agg->wf_w;
	size_t i, n = 0;

	sb_reset(t);
	sb_reset(p);
	sb_reset(w);
	sb_puts(t, "{");
	sb_puts(p, "{");
	sb_puts(w, "{");
	for (i = 0; i < agg->n; i++) {
		const item *it = &agg->items[i];
		const agg_event *ev = &it->re.ev;

		if (it->status != ST_OK || it->closed ||
		    ev->meter != TALLY_METER_WORKFLOW || ev->workflow_id.len == 0)
			continue;
		uuid_arr(t, ev->tenant_id, n == 0);
		sb_printf(p, "%s%" PRId64, n ? "," : "", it->ps);
		if (n > 0)
			sb_add(w, ",", 1);
		sb_array_str(w, ev->workflow_id.ptr, ev->workflow_id.len);
		n++;
	}
	sb_puts(t, "}");
	sb_puts(p, "}");
	sb_puts(w, "}");
	agg->nwf = n;
}

/*
 * The columns of a totals message (tenant_period_usage u, tenants t); the
 * JSON is built in C by totals_json() (in SQL, json_build_object and
 * to_char cost ~10 ms per 1 000 rows: a third of the statement).
 */
#define TOTALS_COLS \
	" u.tenant_id::text," \
	" (extract(epoch FROM u.period_start) * 1000)::bigint," \
	" (extract(epoch FROM u.period_end) * 1000)::bigint," \
	" u.version, u.ai_requests, t.max_ai_requests_per_month," \
	" u.workflow_executions, u.workflows, u.workflow_complexity_units," \
	" t.max_workflows, u.input_tokens, u.output_tokens," \
	" u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens," \
	" u.api_calls, u.storage_gb_months::text, u.cost::text," \
	" t.monthly_budget::text, coalesce(t.currency, 'USD'), u.budget_state," \
	" floor(extract(epoch FROM u.updated_at) * 1000)::bigint"

/* Bump versions and budget state; return the totals to publish. */
/*
 * The batch's distinct workflows ($3..$5) go into tenant_period_workflows
 * here too, and the new ones are counted into workflows: one update of
 * each tenant's row instead of two.
 */
static const char TOTALS_SQL[] =
	"WITH ins AS (INSERT INTO tenant_period_workflows"
	" (tenant_id, period_start, workflow_id)"
	" SELECT DISTINCT t, timestamptz 'epoch' + p * interval '1 millisecond',"
	" w FROM unnest($3::uuid[], $4::bigint[], $5::text[]) x(t, p, w)"
	" ON CONFLICT DO NOTHING RETURNING tenant_id, period_start),"
	" wc AS (SELECT tenant_id, period_start, count(*) AS n FROM ins"
	" GROUP BY 1, 2)"
	" UPDATE tenant_period_usage u SET version = u.version + 1,"
	" workflows = u.workflows + coalesce(wc.n, 0),"
	" updated_at = now(), budget_state ="
	TALLY_AGG_BUDGET_STATE_SQL("u.cost", "t.monthly_budget")
	" FROM (SELECT DISTINCT * FROM unnest($1::uuid[], $2::bigint[])"
	"  x(tid, ps)) a"
	" LEFT JOIN tenants t ON t.id = a.tid"
	" LEFT JOIN wc ON wc.tenant_id = a.tid AND wc.period_start ="
	"  timestamptz 'epoch' + a.ps * interval '1 millisecond'"
	" WHERE u.tenant_id = a.tid AND u.period_start = timestamptz 'epoch'"
	"  + a.ps * interval '1 millisecond'"
" RETURNING" TOTALS_COLS;

/* The outbox: totals whose latest version is not known delivered. */
static const char UNPUBLISHED_SQL[] =
	"SELECT" TOTALS_COLS " FROM tenant_period_usage u"
	" LEFT JOIN tenants t ON t.id = u.tenant_id"
	" WHERE u.published_version < u.version"
	" ORDER BY u.tenant_id, u.period_start LIMIT 10000";

/* Delivered versions (acknowledged by the broker) move the mark. */
static const char MARK_PUBLISHED_SQL[] =
	"UPDATE tenant_period_usage u SET published_version = x.v"
	" FROM (SELECT t, ps, max(v) AS v FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[]) y(t, ps, v) GROUP BY 1, 2) x"
	" WHERE u.tenant_id = x.t AND u.period_start = timestamptz 'epoch'"
	"  + x.ps * interval '1 ms' AND u.published_version < x.v";

static int mirror_dead_letters(tally_agg *agg, tally_error *err)
{
	sbuf tp = { 0 }, pa = { 0 }, of = { 0 }, rs = { 0 }, dt = { 0 },
	     ky = { 0 };
	const char *params[7];
	size_t i, n = 0;
	int rc = 0;

	sb_puts(&tp, "{");
	sb_puts(&pa, "{");
	sb_puts(&of, "{");
	sb_puts(&rs, "{");
	sb_puts(&dt, "{");
	sb_puts(&ky, "{");
	for (i = 0; i < agg->n; i++) {
		const tally_agg_msg *m = &agg->msgs[i];
		const char *key = "";
		size_t klen = 0, j;

		if (agg->items[i].status != ST_DLQ)
			continue;
		if (m->rkm != NULL && m->rkm->key != NULL) {
			key = m->rkm->key;
			klen = m->rkm->key_len > 64 ? 64 : m->rkm->key_len;
			for (j = 0; j < klen; j++)
				if ((unsigned char)key[j] < 0x20 ||
				    (unsigned char)key[j] > 0x7e)
					klen = 0; /* not text: leave it out */
		}
		if (n++ > 0) {
			sb_puts(&tp, ",");
			sb_puts(&pa, ",");
			sb_puts(&of, ",");
			sb_puts(&rs, ",");
			sb_puts(&dt, ",");
			sb_puts(&ky, ",");
		}
		sb_array_str(&tp, m->topic, strlen(m->topic));
		sb_printf(&pa, "%d", (int)m->partition);
		sb_printf(&of, "%" PRId64, m->offset);
		sb_array_str(&rs, agg->items[i].reason,
			     strlen(agg->items[i].reason));
		sb_array_str(&dt, item_detail(agg, &agg->items[i]),
			     strlen(item_detail(agg, &agg->items[i])));
		sb_array_str(&ky, key, klen);
	}
	sb_puts(&tp, "}");
	sb_puts(&pa, "}");
	sb_puts(&of, "}");
	sb_puts(&rs, "}");
	sb_puts(&dt, "}");
	sb_puts(&ky, "}");
	if (n == 0)
		goto cleanup;
	params[0] = agg->group;
	params[1] = tp.p;
	params[2] = pa.p;
	params[3] = of.p;
	params[4] = rs.p;
	params[5] = dt.p;
	params[6] = ky.p;
	rc = tally_pg_exec(agg->pg, NULL,
			   "INSERT INTO dead_letters (tenant_id, consumer_group,"
			   " topic, partition, \"offset\", reason, detail)"
			   " SELECT nullif(k, ''), $1, t, p, o, r, d FROM"
			   " unnest($2::text[], $3::int[], $4::bigint[],"
			   " $5::text[], $6::text[], $7::text[]) x(t, p, o, r, d, k)"
			   " ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
			   7, params, err);
cleanup:
	free(tp.p);
	free(pa.p);
	free(of.p);
	free(rs.p);
	free(dt.p);
	free(ky.p);
	return rc;
}

/* the value of column c: integer, or JSON null when SQL NULL */
static json_t *col_int_or_null(PGresult *res, int r, int c)
{
	int64_t v;

	if (PQgetisnull(res, r, c) ||
	    tally_parse_i64(&v, PQgetvalue(res, r, c)) != 0)
		return json_null();
	return json_integer((json_int_t)v);
}

static json_t *col_time(PGresult *res, int r, int c)
{
	char ts[32];
	int64_t ms = 0;

	if (tally_parse_i64(&ms, PQgetvalue(res, r, c)) != 0)
		return json_null();
	tally_fmt_time_ms(ts, ms);
	return json_string(ts);
}

static json_t *col_str_or_null(PGresult *res, int r, int c)
{
	if (PQgetisnull(res, r, c))
		return json_null();
	return json_string(PQgetvalue(res, r, c));
}

/* schemas/totals.md, from the TOTALS_COLS of row r */
static char *totals_json(PGresult *res, int r)
{
	static const char *const keys[] = {
		"schema", "tenant_id", "period_start", "period_end", "version",
		"ai_requests", "max_ai_requests_per_month",
		"workflow_executions", "workflows",
		"workflow_complexity_units", "max_workflows", "input_tokens",
		"output_tokens", "cache_read_tokens", "cache_write_tokens",
		"reasoning_tokens", "api_calls", "storage_gb_months", "cost",
		"monthly_budget", "currency", "budget_state", "updated_at"
	};
	json_t *o = json_object();
	char *out;
	size_t i;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		json_t *v;

		if (i == 0)
			v = json_string("tally.totals/1");
		else if (i == 1)
			v = json_string(PQgetvalue(res, r, 0));
		else if (i == 2 || i == 3)
			v = col_time(res, r, (int)i - 1);
		else if (i <= 16)       /* columns 3..15: integers */
			v = col_int_or_null(res, r, (int)i - 1);
		else if (i <= 21)       /* columns 16..20: text */
			v = col_str_or_null(res, r, (int)i - 1);
		else
			v = col_time(res, r, 21);
		json_object_set_new(o, keys[i], v != NULL ? v : json_null());
	}
	out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return out != NULL ? out : tally_xstrdup("{}");
}

/* Keep one totals row of res (TOTALS_COLS) for publishing. */
static void add_total(tally_agg *agg, PGresult *res, int r)
{
	if (agg->ntotals == agg->cap_totals) {
		agg->cap_totals = agg->cap_totals ? agg->cap_totals * 2 : 64;
		agg->totals = tally_xrealloc(agg->totals, agg->cap_totals *
					     sizeof(*agg->totals));
		agg->totals_key = tally_xrealloc(agg->totals_key,
						 agg->cap_totals *
						 sizeof(*agg->totals_key));
		agg->totals_ack = tally_xrealloc(agg->totals_ack,
						 agg->cap_totals *
						 sizeof(*agg->totals_ack));
	}
	agg->totals[agg->ntotals] = totals_json(res, r);
	agg->totals_key[agg->ntotals] = tally_xstrdup(PQgetvalue(res, r, 0));
	{
		totals_ack *k = &agg->totals_ack[agg->ntotals];

		memset(k, 0, sizeof(*k));
		k->magic = TOTALS_MAGIC;
		if (tally_uuid_parse(k->tenant, PQgetvalue(res, r, 0), 36) != 0 ||
		    tally_parse_i64(&k->ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&k->version, PQgetvalue(res, r, 3)) != 0)
			k->magic = 0; /* cannot happen; then just not marked */
	}
	agg->ntotals++;
}


#define ACKS_MARK_IN_BATCH 65536

/* Mark the versions whose delivery the broker acknowledged. */
static int mark_published(tally_agg *agg, tally_error *err)
{
	sbuf a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
	const char *params[3];
	size_t i;
	int rc;

	agg->nacks_marking = agg->nacks;
	if (agg->nacks == 0)
		return 0;
	sb_puts(&a1, "{");
	sb_puts(&a2, "{");
	sb_puts(&a3, "{");
	for (i = 0; i < agg->nacks; i++) {
		uuid_arr(&a1, agg->acks[i].tenant, i == 0);
		sb_printf(&a2, "%s%" PRId64, i ? "," : "", agg->acks[i].ps);
		sb_printf(&a3, "%s%" PRId64, i ? "," : "", agg->acks[i].version);
	}
	sb_puts(&a1, "}");
	sb_puts(&a2, "}");
	sb_puts(&a3, "}");
	params[0] = a1.p;
	params[1] = a2.p;
	params[2] = a3.p;
	rc = tally_pg_exec(agg->pg, NULL, MARK_PUBLISHED_SQL, 3, params, err);
	free(a1.p);
	free(a2.p);
	free(a3.p);
	return rc;
}

/* After a commit: forget the acknowledgements it marked. */
static void acks_committed(tally_agg *agg)
{
	size_t k = agg->nacks_marking;

	if (k == 0)
		return;
	memmove(agg->acks, agg->acks + k, (agg->nacks - k) * sizeof(*agg->acks));
	agg->nacks -= k;
	agg->nacks_marking = 0;
}

/* Make sure agg_stage exists on this connection (once per connection). */
static int ensure_stage(tally_agg *agg, tally_error *err)
{
	PGconn *conn = tally_pg_conn(agg->pg);
	int pid = PQbackendPID(conn);

	if (agg->stage_conn == conn && agg->stage_pid == pid)
		return 0;
	/*
	 * Inside the batch's transaction: if it rolls back the table is gone
	 * again, so it only counts as created once the batch commits
	 * (stage_pending, confirmed in tally_agg_process).
	 */
	agg->stage_pending = true;
	return simple_exec(agg->pg, NULL, STAGING_SQL, PGRES_COMMAND_OK, err);
}

static void trace(tally_agg *agg, int phase)
{
	int64_t t;

	if (!agg->trace)
		return;
	t = tally_mono_ns();
	agg->phase_us[phase] += (t - agg->phase_t) / 1000;
	agg->phase_t = t;
}

static int apply_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_agg *agg = payload;
	PGresult *res = NULL;
	sbuf at = { 0 }, ap = { 0 };
	const char *params[5];
	size_t i, rows, naff = 0, nst = 0;
	int rc, r;

	(void)pg;
	agg->phase_t = tally_mono_ns();
	clear_totals(agg);
	agg->st.accepted = agg->st.adjusted = 0;
	/* a retried transaction starts again from the batch as classified */
	for (i = 0; i < agg->n; i++)
		if (agg->items[i].dup_db) {
			agg->items[i].dup_db = false;
			agg->items[i].status = ST_OK;
		}
	rc = fence(agg, err);
	if (rc != 0)
		goto cleanup;
	rc = mirror_dead_letters(agg, err);
	/*
	 * Acknowledged totals are marked by tally_agg_outbox (every 10 s, at
	 * start-up and at shutdown), not by every batch: marking here moved
	 * each tenant's row once more per batch (docs/aggregate.md). Only a
	 * long backlog of acknowledgements is marked here, to bound memory.
	 */
	agg->nacks_marking = 0;
	if (rc == 0 && agg->st.gaps > 0)
		rc = record_gaps(agg, err);
	if (rc != 0)
		goto cleanup;
	rc = load_tenants(agg, err);
	/* after the tenant locks: a batch takes no aggregate row before its
	 * tenants, so it never waits for a rerate holding them while holding
	 * a row that rerate wants */
	if (rc == 0 && agg->nacks >= ACKS_MARK_IN_BATCH)
		rc = mark_published(agg, err);
	if (rc != 0)
		goto cleanup;
	assign_periods(agg);
	trace(agg, 0);
	sort_batch(agg, &rows);
	if (rows == 0)
		goto cleanup;
	trace(agg, 1);
	rc = write_batch(agg, rows, err);
	if (rc != 0)
		goto cleanup;
	trace(agg, 2);
	accumulate(agg);
	for (i = 0; i < agg->period.n; i++)
		agg->st.accepted += agg->period.v[i].accepted;
	for (i = 0; i < agg->adj.n; i++) {
		agg->st.accepted += agg->adj.v[i].accepted;
		agg->st.adjusted += agg->adj.v[i].accepted;
	}
	if (agg->st.accepted == 0)
		goto cleanup;
	build_apply(agg, &agg->q3);
	rc = tally_pg_exec_bin(agg->pg, NULL, agg->q3.p, agg->ncols,
			       (const char *const *)agg->colp, agg->coll,
			       agg->colf, err);
	if (rc != 0)
		goto cleanup;
	collect_workflows(agg);
	trace(agg, 3);
	sb_puts(&at, "{");
	sb_puts(&ap, "{");
	for (i = 0; i < agg->period.n; i++) {
		const acc *a = &agg->period.v[i];

		uuid_arr(&at, a->k.tenant, naff == 0);
		sb_printf(&ap, "%s%" PRId64, naff ? "," : "", a->k.t);
		naff++;
	}
	for (i = 0; i < agg->adj.n; i++)
		if (agg->adj.v[i].k.meter == TALLY_METER_STORAGE)
			nst++;
	for (i = 0; i < agg->period.n; i++)
		if (agg->period.v[i].ss > 0)
			nst++;
	/* snapshots, or open periods that may open with an earlier one */
	if (nst > 0 || agg->period.n > 0) {
		rc = storage_recompute(agg, &at, &ap, &naff, err);
		if (rc != 0)
			goto cleanup;
	}
	trace(agg, 4);
	if (naff == 0)
		goto cleanup;
	sb_puts(&at, "}");
	sb_puts(&ap, "}");
	params[0] = at.p;
	params[1] = ap.p;
	params[2] = agg->wf_t.p;
	params[3] = agg->wf_p.p;
	params[4] = agg->wf_w.p;
	rc = tally_pg_exec(agg->pg, &res, TOTALS_SQL, 5, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++) {
		add_total(agg, res, r);
	}
	trace(agg, 5);
cleanup:
	PQclear(res);
	free(at.p);
	free(ap.p);
	return rc;
}

static void publish_totals(tally_agg *agg)
{
	size_t i;

	if (agg->producer == NULL || agg->totals_topic == NULL)
		return;
	for (i = 0; i < agg->ntotals; i++) {
		totals_ack *k = NULL;
		rd_kafka_resp_err_t e;

		if (agg->totals_ack[i].magic == TOTALS_MAGIC) {
			/* freed by tally_agg_delivered() */
			k = tally_xmalloc(sizeof(*k));
			*k = agg->totals_ack[i];
		}
		e = rd_kafka_producev(
			agg->producer, RD_KAFKA_V_TOPIC(agg->totals_topic),
			RD_KAFKA_V_KEY(agg->totals_key[i],
				       strlen(agg->totals_key[i])),
			RD_KAFKA_V_VALUE(agg->totals[i], strlen(agg->totals[i])),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(k), RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
			/* left unpublished: the outbox sweep sends it again */
			free(k);
			tally_log(TALLY_WARN, "aggregate.totals_failed",
				  TALLY_KV_STR("error", rd_kafka_err2str(e)));
		} else {
			agg->st.published++;
			if (k != NULL)
				agg->inflight++;
		}
	}
	rd_kafka_poll(agg->producer, 0);
}

void tally_agg_delivered(tally_agg *agg, const rd_kafka_message_t *rkm)
{
	totals_ack *k = rkm->_private;

	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR && rkm->rkt != NULL &&
	    strcmp(rd_kafka_topic_name(rkm->rkt), agg->dlq_topic) == 0)
		agg->dlq_failed++;
	if (k == NULL || k->magic != TOTALS_MAGIC)
		return;
	if (agg->inflight > 0)
		agg->inflight--;
	if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
		if (agg->nacks == agg->capacks) {
			agg->capacks = agg->capacks ? agg->capacks * 2 : 64;
			agg->acks = tally_xrealloc(agg->acks, agg->capacks *
						   sizeof(*agg->acks));
		}
		agg->acks[agg->nacks++] = *k;
	}
	k->magic = 0;
	free(k);
}

size_t tally_agg_inflight(const tally_agg *agg)
{
	return agg->inflight;
}

static int flush_txn(tally_pg *pg, void *payload, tally_error *err)
{
	(void)pg;
	return mark_published(payload, err);
}

int tally_agg_outbox(tally_agg *agg, bool republish, tally_error *err)
{
	PGresult *res = NULL;
	int rc = 0, r;

	if (agg->nacks > 0) {
		rc = tally_pg_txn(agg->pg, flush_txn, agg, 0, err);
		if (rc != 0)
			return rc;
		acks_committed(agg);
	}
	/* while versions are in flight their acknowledgement is pending */
	if (!republish || agg->producer == NULL || agg->totals_topic == NULL ||
	    agg->inflight > 0)
		return 0;
	rc = tally_pg_exec(agg->pg, &res, UNPUBLISHED_SQL, 0, NULL, err);
	if (rc != 0)
		return rc;
	clear_totals(agg);
	for (r = 0; r < PQntuples(res); r++)
		add_total(agg, res, r);
	PQclear(res);
	if (agg->ntotals > 0)
		tally_log(TALLY_INFO, "aggregate.totals_republish",
			  TALLY_KV_INT("count", agg->ntotals));
	publish_totals(agg);
	clear_totals(agg);
	return 0;
}

int tally_agg_process(tally_agg *agg, const tally_agg_msg *msgs, size_t n,
		      int64_t now_ms, tally_agg_stats *stats, tally_error *err)
{
	return tally_agg_process_decoded(agg, NULL, msgs, n, now_ms, stats,
					 err);
}

int tally_agg_process_decoded(tally_agg *agg, tally_agg_decoded *dec,
			      const tally_agg_msg *msgs, size_t n,
			      int64_t now_ms, tally_agg_stats *stats,
			      tally_error *err)
{
	size_t i;
	int rc;

	memset(&agg->st, 0, sizeof(agg->st));
	if (n == 0)
		goto done;
	if (dec == NULL) {
		dec = &agg->own;
		tally_agg_decode(dec, msgs, n);
	} else if (dec->msgs != msgs || dec->n != n) {
		/* its messages may be gone (tally_agg_detach_range): never re-decode */
		return tally_error_set(err, TALLY_ERROR,
				       "aggregate: decoded set is not this batch");
	}
	agg->dec = dec;
	agg->items = dec->items;
	agg->msgs = msgs;
	agg->n = n;
	agg->now_ms = now_ms;
	collect_parts(agg);
	classify(agg);
	detect_gaps(agg);
	rc = send_dead_letters(agg, err);
	if (rc != 0)
		return rc;
	rc = resolve_models(agg, err);
	if (rc != 0)
		return rc;
	agg->stage_pending = false;
	agg->storage_unpriced = 0;
	rc = tally_pg_txn(agg->pg, apply_txn, agg, 0, err);
	if (rc != 0) {
		agg->stage_conn = NULL; /* created in a rolled-back txn? */
		return rc;
	}
	acks_committed(agg);
	for (i = 0; i < n; i++)
		if (agg->items[i].status == ST_OK)
			seen_add(&agg->seen, agg->items[i].key);
	if (agg->dedupe_slow > 0)
		agg->dedupe_slow--;
	if (agg->stage_pending) {
		agg->stage_conn = tally_pg_conn(agg->pg);
		agg->stage_pid = PQbackendPID(agg->stage_conn);
	}
	if (agg->storage_unpriced > 0)
		tally_log(TALLY_WARN, "aggregate.storage_unpriced",
			  TALLY_KV_INT("segments", agg->storage_unpriced));
	if (agg->trace) {
		trace(agg, 5);
		/* asked for explicitly: shown whatever log.level says */
		tally_log(TALLY_WARN, "aggregate.trace",
			  TALLY_KV_INT("n", n),
			  TALLY_KV_INT("prep_us", agg->phase_us[0]),
			  TALLY_KV_INT("copy_us", agg->phase_us[1]),
			  TALLY_KV_INT("dedupe_us", agg->phase_us[2]),
			  TALLY_KV_INT("apply_us", agg->phase_us[3]),
			  TALLY_KV_INT("storage_us", agg->phase_us[4]),
			  TALLY_KV_INT("totals_commit_us", agg->phase_us[5]));
		memset(agg->phase_us, 0, sizeof(agg->phase_us));
	}
	/* committed: this instance's view of its positions moves on */
	tally_positions_committed(agg->pos, agg->posbuf,
				  batch_positions(agg, agg->posbuf));
	for (i = 0; i < n; i++)
		if (agg->items[i].status == ST_OK ||
		    agg->items[i].status == ST_DUP)
			agg->st.duplicates++;
	agg->st.duplicates -= agg->st.accepted; /* the rest were seen before */
	publish_totals(agg);
done:
	if (stats != NULL)
		*stats = agg->st;
	return 0;
}

/* ------------------------------------------------------------------ */
/* storage rollover: periods with storage and no events                */

/* tenants per rollover transaction */
#define ROLLOVER_CHUNK 1000
/* periods looked at per tenant, the current one included (with monthly
 * periods and a 35-day window, two are inside) */
#define ROLLOVER_BACK 8

/*
 * The next tenants with snapshots after $1 (NULL: from the first), in id
 * order: a loose index scan of the primary key, one probe per tenant
 * however many snapshots each has.
 */
static const char ROLLOVER_TENANTS_SQL[] =
	"WITH RECURSIVE t AS ("
	" (SELECT tenant_id FROM storage_snapshots"
	"  WHERE $1::uuid IS NULL OR tenant_id > $1::uuid"
	"  ORDER BY tenant_id LIMIT 1)"
	" UNION ALL"
	" SELECT (SELECT s.tenant_id FROM storage_snapshots s"
	"  WHERE s.tenant_id > t.tenant_id ORDER BY s.tenant_id LIMIT 1)"
	" FROM t WHERE t.tenant_id IS NOT NULL)"
	" SELECT tenant_id FROM t WHERE tenant_id IS NOT NULL LIMIT $2::int";

/*
 * Of the (tenant, current period) pairs, those whose period has no row
 * yet and opens with storage: the last snapshot before it holds bytes.
 * Both tests are index probes per pair (scalar subqueries: as NOT EXISTS
 * the planner may scan tenant_period_usage, see SEGMENTS_SQL).
 */
static const char ROLLOVER_TARGETS_SQL[] =
	"SELECT x.t, x.ps, x.pe FROM unnest($1::uuid[], $2::bigint[],"
	"  $3::bigint[]) AS x(t, ps, pe)"
	" WHERE (SELECT true FROM tenant_period_usage u"
	"   WHERE u.tenant_id = x.t AND u.period_start = timestamptz 'epoch'"
	"   + x.ps * interval '1 ms') IS NULL"
	" AND (SELECT s.bytes FROM storage_snapshots s"
	"   WHERE s.tenant_id = x.t AND s.occurred_at < timestamptz 'epoch'"
	"   + x.ps * interval '1 ms'"
	"   ORDER BY s.occurred_at DESC, s.bytes DESC LIMIT 1) > 0"
	" ORDER BY 1, 2";

typedef struct rollover {
	tally_agg *agg;
	int64_t now_ms;
	bool first;           /* no chunk committed yet */
	char after[37];       /* last tenant of the committed chunks */
	char last[37];        /* last tenant of this chunk */
	size_t ntenants;      /* tenants in this chunk */
	size_t rows;          /* rows this chunk wrote */
} rollover;

/*
 * The tenants of a chunk (one id per row of res) as a batch's: agg->tenants
 * and tenant_h set, *ids their array literal, last the last id.
 */
static int chunk_tenants(tally_agg *agg, const PGresult *res, sbuf *ids,
			 char last[37], tally_error *err)
{
	size_t n = (size_t)PQntuples(res);
	int r;

	agg->ntenants = 0;
	agg->nbps = 0;
	if (n == 0)
		return 0;
	if (agg->cap_tenants < n) {
		agg->cap_tenants = n;
		agg->tenants = tally_xrealloc(agg->tenants, agg->cap_tenants *
					      sizeof(*agg->tenants));
	}
	hset_init(&agg->tenant_h, n);
	sb_puts(ids, "{");
	for (r = 0; r < PQntuples(res); r++) {
		tenant_info *ti = &agg->tenants[agg->ntenants];

		memset(ti, 0, sizeof(*ti));
		if (tally_uuid_parse(ti->id, PQgetvalue(res, r, 0), 36) != 0) {
			agg->ntenants = 0;
			return tally_error_set(err, TALLY_ERROR,
					       "bad storage tenant id");
		}
		(void)hset_put(&agg->tenant_h, (const uint8_t *)agg->tenants,
			       sizeof(tenant_info), 16,
			       (uint32_t)agg->ntenants);
		uuid_arr(ids, ti->id, agg->ntenants == 0);
		agg->ntenants++;
	}
	sb_puts(ids, "}");
	snprintf(last, 37, "%s", PQgetvalue(res, PQntuples(res) - 1, 0));
	return 0;
}

/*
 * The rows (tenants *at, period starts *ap: array literals still open)
 * that the storage rollover or re-pricing wrote: versions and budget
 * states bumped as a batch bumps them (no workflows), their totals
 * collected for publish_totals(). *rows: how many.
 */
static int bump_versions(tally_agg *agg, sbuf *at, sbuf *ap, size_t *rows,
			 tally_error *err)
{
	PGresult *res = NULL;
	const char *params[5];
	int rc, r;

	sb_puts(at, "}");
	sb_puts(ap, "}");
	params[0] = at->p;
	params[1] = ap->p;
	params[2] = "{}";
	params[3] = "{}";
	params[4] = "{}";
	rc = tally_pg_exec(agg->pg, &res, TOTALS_SQL, 5, params, err);
	if (rc == 0) {
		for (r = 0; r < PQntuples(res); r++)
			add_total(agg, res, r);
		if (rows != NULL)
			*rows = (size_t)PQntuples(res);
	}
	PQclear(res);
	return rc;
}

/* One chunk: ROLLOVER_CHUNK tenants with snapshots after ro->after. */
static int rollover_txn(tally_pg *pg, void *payload, tally_error *err)
{
	rollover *ro = payload;
	tally_agg *agg = ro->agg;
	PGresult *res = NULL;
	sbuf ids = { 0 }, a2 = { 0 }, a3 = { 0 }, at = { 0 }, ap = { 0 };
	starget *tg = NULL;
	hset th = { 0 };
	const char *params[5];
	char lim[16];
	size_t i, n = 0, ntg = 0, naff = 0;
	int64_t bound;
	int rc, r;

	(void)pg;
	clear_totals(agg);
	ro->ntenants = ro->rows = 0;
	agg->storage_unpriced = 0;
	snprintf(lim, sizeof(lim), "%d", ROLLOVER_CHUNK);
	params[0] = ro->first ? NULL : ro->after;
	params[1] = lim;
	rc = tally_pg_exec(agg->pg, &res, ROLLOVER_TENANTS_SQL, 2, params, err);
	if (rc != 0)
		goto cleanup;
	rc = chunk_tenants(agg, res, &ids, ro->last, err);
	ro->ntenants = agg->ntenants;
	PQclear(res);
	res = NULL;
	if (rc != 0 || ro->ntenants == 0)
		goto cleanup;
	bound = ro->now_ms - agg->lateness_ms;
	rc = load_tenant_rows(agg, ids.p, bound, err);
	if (rc != 0)
		goto cleanup;
	/*
	 * each tenant's period containing now and the earlier ones that end
	 * inside the lateness window (a period that began and ended while
	 * tally-aggregate was down has no row either), unless closed
	 */
	sb_reset(&ids);
	sb_puts(&ids, "{");
	sb_puts(&a2, "{");
	sb_puts(&a3, "{");
	for (i = 0; i < agg->ntenants; i++) {
		int64_t t = ro->now_ms, ps, pe;
		bool closed;
		int back;

		for (back = 0; back < ROLLOVER_BACK; back++, t = ps - 1) {
			period_of(agg, &agg->tenants[i], t, &ps, &pe, &closed);
			if (back > 0 && pe <= bound)
				break;
			if (closed)
				continue;
			uuid_arr(&ids, agg->tenants[i].id, n == 0);
			sb_printf(&a2, "%s%" PRId64, n ? "," : "", ps);
			sb_printf(&a3, "%s%" PRId64, n ? "," : "", pe);
			n++;
		}
	}
	sb_puts(&ids, "}");
	sb_puts(&a2, "}");
	sb_puts(&a3, "}");
	if (n == 0)
		goto cleanup;
	params[0] = ids.p;
	params[1] = a2.p;
	params[2] = a3.p;
	rc = tally_pg_exec(agg->pg, &res, ROLLOVER_TARGETS_SQL, 3, params, err);
	if (rc != 0 || PQntuples(res) == 0)
		goto cleanup;
	tg = tally_xcalloc((size_t)PQntuples(res), sizeof(*tg));
	hset_init(&th, (size_t)PQntuples(res));
	for (r = 0; r < PQntuples(res); r++) {
		starget *t = &tg[ntg];

		if (tally_uuid_parse(t->tenant, PQgetvalue(res, r, 0),
				     36) != 0 ||
		    tally_parse_i64(&t->ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t->pe, PQgetvalue(res, r, 2)) != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "bad storage rollover row");
			goto cleanup;
		}
		if (hset_put(&th, (const uint8_t *)tg, sizeof(*tg), STARGET_KEY,
			     (uint32_t)ntg) == ntg)
			ntg++;
	}
	PQclear(res);
	res = NULL;
	/* as a batch's targets: the integral, the price, the row */
	sb_puts(&at, "{");
	sb_puts(&ap, "{");
	/* create only: a row a batch wrote meanwhile wins (it may carry a
	 * snapshot this statement's snapshot did not see) */
	rc = storage_write(agg, tg, ntg, &th, ro->now_ms, SW_CREATE, &at, &ap,
			   &naff, err);
	if (rc != 0 || naff == 0)
		goto cleanup;
	rc = bump_versions(agg, &at, &ap, &ro->rows, err);
cleanup:
	PQclear(res);
	free(tg);
	free(th.slot);
	free(ids.p);
	free(a2.p);
	free(a3.p);
	free(at.p);
	free(ap.p);
	return rc;
}

int tally_agg_storage_rollover(tally_agg *agg, int64_t now_ms, size_t *out,
			       tally_error *err)
{
	rollover ro;
	int rc = 0;

	memset(&ro, 0, sizeof(ro));
	ro.agg = agg;
	ro.now_ms = now_ms;
	ro.first = true;
	if (out != NULL)
		*out = 0;
	do {
		/* a deadlock with a batch is retried; an outage fails fast
		 * (the caller tries again later) */
		rc = tally_pg_txn(agg->pg, rollover_txn, &ro, 3, err);
		if (rc != 0)
			break;
		if (agg->storage_unpriced > 0)
			tally_log(TALLY_WARN, "aggregate.storage_unpriced",
				  TALLY_KV_INT("segments",
					       agg->storage_unpriced));
		publish_totals(agg);
		clear_totals(agg);
		if (out != NULL)
			*out += ro.rows;
		memcpy(ro.after, ro.last, sizeof(ro.after));
		ro.first = false;
		/* a stop waits for this chunk only, not the whole run */
	} while (ro.ntenants == ROLLOVER_CHUNK &&
		 !tally_signals_stop_requested());
	clear_totals(agg);
	agg->ntenants = 0;
	agg->nbps = 0;
	return rc;
}

/* ------------------------------------------------------------------ */
/* tally rerate: storage charges priced again                           */

/*
 * The periods of the chunk's tenants that overlap [$2, $3), with the
 * storage charge they carry now in pico (the row's, plus for a closed
 * period the storage adjustments made since): what the re-pricing is
 * measured against, and whether it starts at or after the retention
 * bound: retention drops partitions and the snapshots older than its bound
 * (keeping each tenant's last one before it), so a period before that no
 * longer has all its segments and is left as it was (counted). The bound
 * is the later of the oldest ledger partition (usage_ledger_pYYYYMMDD) and
 * the one maintenance recorded (ledger_retention, migration 0012: a longer
 * retention recreates older partitions, not older snapshots). No partition
 * at all: none is re-priced.
 */
static const char REPRICE_TARGETS_SQL[] =
	"WITH p AS (SELECT min(to_date(substr(c.relname, 15), 'YYYYMMDD'))"
	"  ::timestamp AT TIME ZONE 'UTC' AS b FROM pg_inherits i"
	"  JOIN pg_class c ON c.oid = i.inhrelid"
	"  WHERE i.inhparent = 'usage_ledger'::regclass"
	"  AND c.relname ~ '^usage_ledger_p[0-9]{8}$'),"
	" lb AS (SELECT CASE WHEN p.b IS NOT NULL THEN greatest(p.b,"
	"  (SELECT snapshots_thinned_before FROM ledger_retention)) END AS b"
	"  FROM p)"
	" SELECT u.tenant_id, (extract(epoch FROM u.period_start) * 1000)::bigint,"
	" (extract(epoch FROM u.period_end) * 1000)::bigint,"
	" (u.storage_cost * 1000000000000)::numeric(60, 0),"
	" (coalesce((SELECT sum(a.cost) FROM usage_adjustments a"
	"  WHERE a.tenant_id = u.tenant_id AND a.period_start = u.period_start"
	"  AND a.kind = 'storage'), 0) * 1000000000000)::numeric(60, 0)"
	"  , coalesce(u.period_start >= lb.b, false)"
	" FROM tenant_period_usage u, lb WHERE u.tenant_id = ANY($1::uuid[])"
	" AND u.period_start < timestamptz 'epoch' + $3::bigint * interval '1 ms'"
	" AND u.period_end > timestamptz 'epoch' + $2::bigint * interval '1 ms'"
	" ORDER BY 1, 2";

/* A decimal integer (optionally signed) of at most 2^127 - 1. */
static int parse_i128(tally_money128 *out, const char *s)
{
	const unsigned __int128 max = ((unsigned __int128)1 << 127) - 1;
	unsigned __int128 u = 0;
	bool neg = *s == '-';

	if (neg)
		s++;
	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		unsigned d = (unsigned)(*s - '0');

		if (*s < '0' || *s > '9' || u > (max - d) / 10)
			return -1;
		u = u * 10 + d;
	}
	*out = neg ? -(tally_money128)u : (tally_money128)u;
	return 0;
}

typedef struct reprice {
	tally_agg *agg;
	int64_t from_ms, to_ms, now_ms;
	const uint8_t *tenant;  /* NULL: every tenant with snapshots */
	bool first;
	char after[37], last[37];
	size_t ntenants;
	tally_agg_reprice_stats n; /* this chunk's (an attempt's) */
} reprice;

/*
 * One chunk of tenants: locked FOR UPDATE in id order (as tally rerate
 * locks its tenants: a batch of theirs holds FOR KEY SHARE until its
 * commit, so the snapshots read here are complete and no batch writes
 * their rows meanwhile), each period of theirs that overlaps the range
 * recomputed as a batch would with the current book: open periods set,
 * closed ones adjusted (kind 'storage'), a period with a segment the book
 * has no price for now left alone.
 */
static int reprice_txn(tally_pg *pg, void *payload, tally_error *err)
{
	reprice *rp = payload;
	tally_agg *agg = rp->agg;
	PGresult *res = NULL;
	sbuf ids = { 0 }, at = { 0 }, ap = { 0 };
	starget *tg = NULL;
	tally_money128 *old = NULL;
	hset th = { 0 };
	const char *params[5];
	char lim[16], from[24], to[24], one[40];
	size_t i, ntg = 0, naff = 0;
	int rc, r;

	(void)pg;
	clear_totals(agg);
	memset(&rp->n, 0, sizeof(rp->n));
	rp->ntenants = 0;
	agg->storage_unpriced = 0;
	if (rp->tenant != NULL) {
		tally_uuid_fmt(one, rp->tenant);
		params[0] = one;
		rc = tally_pg_exec(agg->pg, &res, "SELECT $1::uuid", 1, params,
				   err);
	} else {
		snprintf(lim, sizeof(lim), "%d", ROLLOVER_CHUNK);
		params[0] = rp->first ? NULL : rp->after;
		params[1] = lim;
		rc = tally_pg_exec(agg->pg, &res, ROLLOVER_TENANTS_SQL, 2,
				   params, err);
	}
	if (rc != 0)
		goto cleanup;
	rc = chunk_tenants(agg, res, &ids, rp->last, err);
	rp->ntenants = agg->ntenants;
	PQclear(res);
	res = NULL;
	if (rc != 0 || rp->ntenants == 0)
		goto cleanup;
	params[0] = ids.p;
	rc = tally_pg_exec(agg->pg, NULL, "SELECT 1 FROM tenants WHERE"
			   " id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", 1,
			   params, err);
	if (rc == 0)
		rc = load_tenant_rows(agg, ids.p, rp->from_ms, err);
	if (rc != 0)
		goto cleanup;
	snprintf(from, sizeof(from), "%" PRId64, rp->from_ms);
	snprintf(to, sizeof(to), "%" PRId64, rp->to_ms);
	params[1] = from;
	params[2] = to;
	rc = tally_pg_exec(agg->pg, &res, REPRICE_TARGETS_SQL, 3, params, err);
	if (rc != 0 || PQntuples(res) == 0)
		goto cleanup;
	tg = tally_xcalloc((size_t)PQntuples(res), sizeof(*tg));
	old = tally_xcalloc((size_t)PQntuples(res), sizeof(*old));
	hset_init(&th, (size_t)PQntuples(res));
	for (r = 0; r < PQntuples(res); r++) {
		starget *t = &tg[ntg];
		tally_money128 c = 0, adj = 0;
		uint32_t k;

		if (PQgetvalue(res, r, 5)[0] != 't') {
			rp->n.too_old++; /* before the retention bound */
			continue;
		}
		if (tally_uuid_parse(t->tenant, PQgetvalue(res, r, 0),
				     36) != 0 ||
		    tally_parse_i64(&t->ps, PQgetvalue(res, r, 1)) != 0 ||
		    tally_parse_i64(&t->pe, PQgetvalue(res, r, 2)) != 0 ||
		    parse_i128(&c, PQgetvalue(res, r, 3)) != 0 ||
		    parse_i128(&adj, PQgetvalue(res, r, 4)) != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "bad storage re-pricing row");
			goto cleanup;
		}
		k = hset_find(&agg->tenant_h, (const uint8_t *)agg->tenants,
			      sizeof(tenant_info), 16, t->tenant);
		if (k != UINT32_MAX) {
			int64_t ps, pe;
			bool closed;

			/* closed: billing_periods says so for this period */
			period_of(agg, &agg->tenants[k], t->ps, &ps, &pe,
				  &closed);
			t->closed = closed && ps == t->ps;
		}
		old[ntg] = t->closed ? c + adj : c;
		if (hset_put(&th, (const uint8_t *)tg, sizeof(*tg), STARGET_KEY,
			     (uint32_t)ntg) == ntg)
			ntg++;
	}
	PQclear(res);
	res = NULL;
	sb_puts(&at, "{");
	sb_puts(&ap, "{");
	rc = storage_write(agg, tg, ntg, &th, rp->now_ms, SW_REPRICE, &at, &ap,
			   &naff, err);
	if (rc != 0)
		goto cleanup;
	for (i = 0; i < ntg; i++) {
		if (tg[i].unpriced) {
			rp->n.unpriced++;
			continue;
		}
		if (tg[i].cost == old[i])
			continue;
		rp->n.periods++;
		if (tg[i].closed)
			rp->n.adjusted++;
		rp->n.delta += tg[i].cost - old[i];
	}
	/* without a producer (tally rerate) the outbox publishes them */
	if (naff > 0)
		rc = bump_versions(agg, &at, &ap, NULL, err);
cleanup:
	PQclear(res);
	free(tg);
	free(old);
	free(th.slot);
	free(ids.p);
	free(at.p);
	free(ap.p);
	return rc;
}

int tally_agg__storage_reprice(tally_agg *agg, int64_t from_ms, int64_t to_ms,
			       const uint8_t *tenant, int64_t now_ms,
			       tally_agg_reprice_stats *out, tally_error *err)
{
	reprice rp;
	int rc = 0;

	memset(&rp, 0, sizeof(rp));
	memset(out, 0, sizeof(*out));
	rp.agg = agg;
	rp.from_ms = from_ms;
	rp.to_ms = to_ms;
	rp.now_ms = now_ms;
	rp.tenant = tenant;
	rp.first = true;
	do {
		rc = tally_pg_txn(agg->pg, reprice_txn, &rp, 0, err);
		if (rc != 0)
			break;
		/* committed: only now are the chunk's counts true */
		out->periods += rp.n.periods;
		out->adjusted += rp.n.adjusted;
		out->unpriced += rp.n.unpriced;
		out->too_old += rp.n.too_old;
		out->delta += rp.n.delta;
		publish_totals(agg);
		clear_totals(agg);
		memcpy(rp.after, rp.last, sizeof(rp.after));
		rp.first = false;
	} while (tenant == NULL && rp.ntenants == ROLLOVER_CHUNK);
	clear_totals(agg);
	agg->ntenants = 0;
	agg->nbps = 0;
	return rc;
}

void tally_agg_set_pricebook(tally_agg *agg,
			     const struct tally_pricebook *pb)
{
	agg->pb = pb;
}

int tally_agg_maintain(tally_pg *pg, int lateness_days, int ahead_days,
		       int retention_days, tally_error *err)
{
	char b[16], a[16], r[16], d[16];
	const char *params[4];
	PGresult *res = NULL;
	int rc, i;

	/* dedupe window: the lateness window plus two days of margin */
	snprintf(b, sizeof(b), "%d", lateness_days + 2);
	snprintf(a, sizeof(a), "%d", ahead_days);
	snprintf(r, sizeof(r), "%d", retention_days);
	snprintf(d, sizeof(d), "%d", lateness_days + 2);
	params[0] = b;
	params[1] = a;
	params[2] = r;
	params[3] = d;
	rc = tally_pg_exec(pg, &res,
			   "SELECT action, object FROM tally_ledger_maintain("
			   "$1::int, $2::int, $3::int, $4::int)", 4, params, err);
	if (rc != 0)
		return rc;
	for (i = 0; i < PQntuples(res); i++)
		tally_log(TALLY_INFO, "aggregate.maintain",
			  TALLY_KV_STR("action", PQgetvalue(res, i, 0)),
			  TALLY_KV_STR("object", PQgetvalue(res, i, 1)));
	PQclear(res);
	return 0;
}
