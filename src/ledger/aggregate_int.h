#ifndef TALLY_AGGREGATE_INT_H
#define TALLY_AGGREGATE_INT_H

/*
 * aggregate_int.h - the aggregator's state and what its files share
 * (private to libtally). One file per step of a batch: decode.c (decode,
 * classify), models.c, offsets.c (positions, fence, retention gaps),
 * tenants.c (the batch's tenants and billing periods; the arithmetic is
 * periods.c), copy.c (binary COPY, the stage; the encoders pg_binary.h),
 * dedupe.c, deltas.c, apply.c (the batch's transaction), isolate.c
 * (the events PostgreSQL refuses, found after a failed batch),
 * storage.c (GB-months), dead_letters.c, users.c (active users),
 * totals_outbox.c; rollover.c and
 * rerate_storage.c reuse them outside batches; aggregate.c holds the
 * public entry points.
 */

#include "tally/aggregate.h"
#include "tally/codec.h"
#include "tally/dead_letters.h"
#include "tally/event.h"
#include "tally/money.h"
#include "tally/positions.h"
#include "base/hashset.h"
#include "ledger/known_keys.h"
#include "io/outbox.h"
#include "base/strbuf.h"

#include <pthread.h>

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 * not there. A ring of keys and a tally_hashset index into it: 2.5 MiB for the
 * default 65 536 keys (tally_agg_opts.recent_keys).
 */
typedef struct seen_ring {
	uint8_t (*keys)[32];  /* the ring */
	uint32_t *hashes;     /* their item khash, for the index's deletions */
	tally_hashset h;      /* index into it */
	uint32_t cap, head, n;
} seen_ring;

/* ST_HOLD: left out of the rows for now (isolate.c's probes) */
enum { ST_OK = 0, ST_DUP, ST_DLQ, ST_HOLD };

/*
 * What a batch still reads of a decoded tally_rated_event (same member
 * names): the event id, source and subject are in the dedupe key, the
 * tenant is the key's first half (item.key), the cost components and the
 * currency are not stored. Two batches of items are alive at a time, so
 * this is RSS (256 bytes per item: 60 000 of them at the default batch).
 */
typedef struct agg_event {
	tally_str provider, model, workflow_id, subject;
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

/* members ordered largest first: no padding inside */
typedef struct item {
	uint8_t key[32]; /* tenant_id + digest: the dedupe key */
	agg_rated re;
	const char *reason;
	int64_t ps, pe; /* billing period */
	int status;
	uint32_t detail; /* dead letters: offset of the text in agg->details */
	int32_t provider_id, model_id;
	bool closed;
	bool dup_db;    /* seen in an earlier batch (set by dedupe()) */
	bool bad;       /* undecodable (the codec error is in the decoded set) */
	bool dl_sent;   /* dead letter produced (this attempt at the batch) */
	uint32_t khash; /* tally_hash_bytes(key, 32), computed once at decode */
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
	int64_t timeled_from_ms;  /* dedupe keys: tally_dedupe_key() */
	item **order;             /* decodable items in key order, if ordered */
	size_t norder, cap_order;
	bool ordered;             /* order is of the items as they are now */
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
	tally_hashset h;
} accmap;

/* A totals message's row in the outbox (its identity): once the broker
 * acknowledges it, published_version moves up to version. */
typedef struct totals_ack {
	uint8_t tenant[16];
	int64_t ps, version;
	bool valid;           /* parsed (else produced, never marked) */
} totals_ack;

/* canonical provider name, NUL, canonical model name, NUL, zero-padded:
 * the codec's limits (64 and TALLY_ID_MAX bytes) */
#define AGG_MODEL_KEY (64 + 1 + TALLY_ID_MAX + 1)

typedef struct model_ids {
	char key[AGG_MODEL_KEY];
	int32_t provider_id, model_id;
} model_ids;

/* a (tenant, model) pair known to be in tenant_models */
typedef struct tenant_model {
	uint8_t tenant[16];
	int32_t model_id;
} tenant_model;

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
	int64_t timeled_from_ms; /* dedupe_settings, read by tally_agg_new */
	rd_kafka_t *producer;
	rd_kafka_t *consumer_rk; /* for the log start offsets; may be NULL */
	size_t dlq_failed;       /* dead letters whose delivery failed */

	tally_positions *pos;

	model_ids *models;       /* names -> ids (models.c) */
	size_t nmodels, capmodels;
	tally_hashset models_h;
	tenant_model *tms;       /* pairs in tenant_models (models.c) */
	size_t ntms, captms;
	tally_hashset tms_h;
	/* models, tms and their indexes: the lane's thread and the poll
	 * thread's tally_agg_prefetch_models() both use them */
	pthread_mutex_t models_mu;
	size_t max_models;       /* per tenant */
	uint32_t *model_slot;    /* per item: its pending pair (models.c) */
	size_t cap_model_slot;

	/* per batch */
	item *items;            /* = dec->items of the batch */
	tally_agg_decoded own;  /* when the caller did not decode ahead */
	tally_agg_decoded *dec;
	tally_hashset dedupe, tenant_h;
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
	tally_strbuf copy, q1, q2, q3;
	tally_strbuf cols[APPLY_COLS]; /* the delta arrays (build_apply) */
	const char *colp[APPLY_COLS];
	int coll[APPLY_COLS], colf[APPLY_COLS]; /* lengths; 1 = binary */
	int ncols;
	tally_strbuf details; /* dead letters' details (item.detail) */
	tally_dead_letters *dead; /* the batch's dead_letters rows */
	char **totals;  /* JSON per affected tenant-period, after commit */
	char **totals_key;
	totals_ack *totals_ack;
	tally_outbox *outbox; /* billing.totals; NULL without a producer */
	size_t nacks_marking; /* acknowledged, being marked in this txn */
	size_t ntotals, cap_totals;
	tally_agg_stats st;
	accmap hourly, period, adj; /* deltas of the batch */
	item **sorted;        /* the batch in key order (agg_sort_batch) */
	size_t cap_sorted, nsorted;
	bool ledger_staged;   /* the ledger rows are in agg_stage, not written */
	bool apply_ready;     /* deltas and apply statement built (copy waits) */
	bool collected;       /* workflows and users collected (copy waits) */
	size_t nstorage;
	const struct tally_pricebook *pb; /* storage prices; may be NULL */
	size_t storage_unpriced;
	PGconn *stage_conn;   /* the connection agg_stage exists on */
	int stage_pid;
	bool stage_pending;
	bool trace;               /* TALLY_AGG_TRACE=1: per-phase timings */
	seen_ring seen;       /* keys committed lately (dedupe()) */
	tally_known_keys known; /* workflows and users known committed */
	int dedupe_slow;      /* batches left on the ON CONFLICT path */
	int dedupe_streak;    /* fallbacks since the last fast success */
	/* distinct workflows of the batch (totals) */
	tally_strbuf wf_t, wf_p, wf_w;
	size_t nwf;
	/* distinct subjects of the batch (totals; users.c) */
	tally_strbuf us_t, us_p, us_s;
	uint32_t *us_idx;     /* their index: item + 1, 0 = empty */
	size_t us_cap;
	int64_t phase_us[8], phase_t;
};

enum copy_kind { COPY_DEDUPE, COPY_LEDGER, COPY_STAGE, COPY_SNAPSHOTS };

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

/*
 * How agg_storage_write writes the open periods: SW_BATCH and SW_REPRICE set
 * them (upsert), SW_CREATE only creates missing rows (the rollover).
 * SW_REPRICE leaves a period with an unpriced segment as it is (tally
 * rerate: a price missing from the book now is not a price of 0).
 */
enum { SW_BATCH, SW_CREATE, SW_REPRICE };

#define ACKS_MARK_IN_BATCH 65536

/*
 * A period's budget_state from its cost and the tenant's monthly budget,
 * both SQL expressions given as string literals ("u.cost",
 * "t.monthly_budget"). A NULL budget (no tenants row) or one <= 0 is
 * unlimited; warning from 80 %.
 */
#define TALLY_AGG_BUDGET_STATE_SQL(cost, budget)                          \
	" CASE WHEN (" budget ") IS NULL OR (" budget ") <= 0"             \
	"  THEN 'unlimited'"                                               \
	"  WHEN (" cost ") >= (" budget ") THEN 'exceeded'"                \
	"  WHEN (" cost ") * 100 >= (" budget ") * 80 THEN 'warning'"      \
	"  ELSE 'ok' END"

/* What tally_agg__storage_reprice changed (committed chunks only). */
typedef struct tally_agg_reprice_stats {
	int64_t periods;        /* periods whose storage charge moved */
	int64_t adjusted;       /* of them, closed: an adjustment each */
	int64_t unpriced;       /* left alone: a segment has no price now */
	int64_t too_old;        /* left alone: starts before the oldest ledger
				 * partition (retention thinned its snapshots) */
	tally_money128 delta;   /* pico, new minus old */
} tally_agg_reprice_stats;

/*
 * tally rerate's storage part: the storage charge (GB-months priced at the
 * price in force at each segment's start) of every period overlapping
 * [from_ms, to_ms) of the tenants with snapshots (or of `tenant` alone),
 * recomputed with agg's price book: open periods set, closed ones adjusted
 * (usage_adjustments kind 'storage'), versions bumped for the totals.
 * Chunks of 1 000 tenants, one transaction each, the tenants locked FOR
 * UPDATE (docs/aggregate.md, "Re-pricing").
 */
int tally_agg__storage_reprice(tally_agg *agg, int64_t from_ms, int64_t to_ms,
			       const uint8_t *tenant, int64_t now_ms,
			       tally_agg_reprice_stats *out, tally_error *err);


/* The dedupe window beyond the lateness window (tally_agg_maintain keeps
 * keys for lateness_days + 2 days). */
#define AGG_DEDUPE_MARGIN_MS (INT64_C(2) * 86400000)

/* The id time of a time-led key (top bit 0: bytes 0-5), or -1 (md5 form). */
static inline int64_t agg_key_time_ms(const item *it)
{
	const uint8_t *k = it->key + 16;
	int64_t t = 0;
	int i;

	if (k[0] & 0x80)
		return -1;
	for (i = 0; i < 6; i++)
		t = (t << 8) | k[i];
	return t;
}

/* A time-led key whose id time is older than the dedupe window: its day
 * partition may be dropped already, so a re-send could not be recognised
 * (too_late, like an event time before the lateness window). */
static inline bool agg_id_before_window(const tally_agg *agg, const item *it,
					int64_t now_ms)
{
	int64_t t = agg_key_time_ms(it);

	return t >= 0 && t < now_ms - agg->lateness_ms - AGG_DEDUPE_MARGIN_MS;
}

/*
 * A time-led key whose id time is past the future tolerance: refused like
 * an event time in the future, so the DEFAULT partition of usage_dedupe
 * (days without a partition) stays empty and a clock-skewed id is seen.
 */
static inline bool agg_id_in_future(const tally_agg *agg, const item *it,
				    int64_t now_ms)
{
	return agg_key_time_ms(it) > now_ms + agg->future_ms;
}

/* decode.c */
enum { WIN_OK, WIN_LATE, WIN_FUTURE, WIN_ID_OLD, WIN_ID_FUTURE };
int agg_window_check(const tally_agg *agg, const item *it, int64_t now_ms);
const char *agg_item_detail(const tally_agg *agg, const item *it);
void agg_item_set_detail(tally_agg *agg, item *it, const char *fmt, ...)
	TALLY_PRINTF(3, 4);
void agg_classify(tally_agg *agg);

/* dedupe.c */
void agg_seen_init(seen_ring *r, size_t cap);
/* the (tenant, period, id) of kind (TALLY_KNOWN_*) known committed:
 * true; otherwise noted for tally_known_commit after the batch */
bool agg_known(tally_agg *agg, int kind, const item *it, const tally_str *id);
bool agg_seen_has(const seen_ring *r, const item *it);
void agg_seen_add(seen_ring *r, const item *it);
int agg_write_batch(tally_agg *agg, size_t rows, tally_error *err);

/* models.c */
int agg_resolve_models(tally_agg *agg, tally_error *err);
void agg_models_free(tally_agg *agg);

/* offsets.c */
size_t agg_batch_positions(const tally_agg *agg, tally_position *out);
void agg_collect_parts(tally_agg *agg);
void agg_detect_gaps(tally_agg *agg);
int agg_record_gaps(tally_agg *agg, tally_error *err);
int agg_fence(tally_agg *agg, tally_error *err);

/* dead_letters.c */
int agg_send_dead_letters(tally_agg *agg, tally_error *err);
int agg_mirror_dead_letters(tally_agg *agg, tally_error *err);

/* tenants.c */
void agg_uuid_arr(tally_strbuf *b, const uint8_t *id, bool first);
int agg_load_tenants(tally_agg *agg, tally_error *err);
int agg_load_tenant_rows(tally_agg *agg, const char *ids, int64_t mint,
			 tally_error *err);
void agg_assign_periods(tally_agg *agg);
void agg_period_of(const tally_agg *agg, const tenant_info *ti, int64_t t,
		   int64_t *ps, int64_t *pe, bool *closed);
int agg_chunk_tenants(tally_agg *agg, const PGresult *res, tally_strbuf *ids,
		      char last[37], tally_error *err);
/* tenants per storage chunk (rollover, re-pricing) */
#define AGG_STORAGE_CHUNK 1000
int agg_storage_tenants(tally_agg *agg, const char *after, PGresult **res,
			tally_error *err);

/* copy.c */
int64_t agg_item_qty(const agg_event *ev);
void agg_sort_batch(tally_agg *agg, size_t *n);
/* C work run while PostgreSQL finishes a COPY already sent */
typedef void (*agg_meanwhile)(tally_agg *agg);
int agg_copy_rows(tally_agg *agg, enum copy_kind kind, size_t *rows,
		  PGresult **res, agg_meanwhile meanwhile, tally_error *err);
int agg_copy_all(tally_agg *agg, enum copy_kind kind, size_t *rows,
		 agg_meanwhile meanwhile, tally_error *err);

/* deltas.c */
void agg_accumulate(tally_agg *agg);

/* apply.c */
void agg_trace(tally_agg *agg, int phase);
int agg_apply_prepare(tally_agg *agg, tally_error *err);
int agg_apply_rows(tally_agg *agg, tally_error *err);
void agg_apply_ahead(tally_agg *agg);
void agg_collect_ahead(tally_agg *agg);
int agg_apply_txn(tally_pg *pg, void *payload, tally_error *err);

/* isolate.c */
bool agg_refused_for_data(const tally_error *err);
const char *agg_refusal_reason(const tally_error *err);
int agg_isolate(tally_agg *agg, size_t *found, tally_error *err);

/* storage.c */
int agg_storage_recompute(tally_agg *agg, tally_strbuf *at, tally_strbuf *ap,
			  size_t *naff, tally_error *err);
int agg_storage_write(tally_agg *agg, starget *tg, size_t ntg,
		      const tally_hashset *th, int64_t now_ms, int mode,
		      tally_strbuf *at, tally_strbuf *ap, size_t *naff,
		      tally_error *err);

/* totals_outbox.c */
void agg_clear_totals(tally_agg *agg);
int agg_mark_published(tally_agg *agg, tally_error *err);
void agg_acks_committed(tally_agg *agg);
size_t agg_acks_pending(const tally_agg *agg);
void agg_publish_totals(tally_agg *agg);
int agg_bump_versions(tally_agg *agg, tally_strbuf *at, tally_strbuf *ap,
		      const char *const dist[6], size_t *rows,
		      tally_error *err);

/* users.c */
void agg_collect_users(tally_agg *agg);
void agg_users_free(tally_agg *agg);

#endif /* TALLY_AGGREGATE_INT_H */
