#ifndef TALLY_AGGREGATE_H
#define TALLY_AGGREGATE_H

/**
 * @file tally/aggregate.h
 * @brief Rated usage -> usage_ledger, usage_hourly, tenant_period_usage and
 *        usage_adjustments in PostgreSQL, exactly once (docs/aggregate.md).
 *
 * Key design decision: one PostgreSQL transaction per batch, set-based (one
 * COPY into a temporary staging table and one statement of chained
 * data-modifying CTEs), and the Kafka positions of the batch are committed
 * in the same transaction behind a fence: consumer_offsets.next_offset must
 * still hold the value this instance last read or wrote for the partition
 * (compare-and-set), so an instance that lost its partitions without
 * noticing (a zombie) cannot apply a batch twice. Deduplication by (tenant,
 * 128-bit digest of source and id) catches everything else.
 *
 * Works on plain message views, so tests drive it without a broker. Not
 * thread-safe: one tally_agg per consumer thread.
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/consumer_loop.h"
#include "tally/pg.h"
#include "tally/periods.h"

/**
 * Returned by tally_agg_process() when the positions in PostgreSQL are not
 * the ones this instance expected: another instance advanced a partition.
 * Nothing was written; the caller re-seeks with tally_agg_reseek().
 */
#define TALLY_AGG_FENCED TALLY_EFENCED

typedef struct tally_agg tally_agg;
struct tally_pricebook;

typedef struct tally_agg_opts {
	const char *group;          /* consumer_offsets.consumer_group */
	int64_t lateness_ms;        /* older than now - lateness: dead letter */
	int64_t future_ms;          /* newer than now + future: dead letter */
	rd_kafka_t *producer;       /* DLQ + totals; NULL = PG only (tests) */
	const char *dlq_topic;      /* e.g. "billing.usage.rated.dlq" */
	const char *totals_topic;   /* e.g. "billing.totals"; NULL = none */
	/* storage prices (GB-month); borrowed, may be NULL (storage costs 0) */
	const struct tally_pricebook *pricebook;
	/* keys of committed events kept in memory to recognise re-sent events
	 * without asking PostgreSQL (docs/aggregate.md); 0 = 65536 */
	size_t recent_keys;
	/* distinct provider/model names per tenant (tenant_models); an event
	 * naming one more is a dead letter; 0 = 1000 */
	size_t max_models_per_tenant;
	/* distinct workflows and users known committed, kept in memory so a
	 * batch sends only new ones (docs/aggregate.md); 0 = none kept */
	size_t known_keys;
} tally_agg_opts;

/** One consumed message (a view: nothing is owned). */
typedef tally_kafka_msg tally_agg_msg;

typedef struct tally_agg_stats {
	size_t accepted;      /* new rows in the ledger */
	size_t duplicates;    /* already seen (in this batch or before) */
	size_t adjusted;      /* accepted into a closed period (adjustment) */
	size_t dead_lettered; /* undecodable or out of the time window */
	size_t published;     /* totals messages produced */
	size_t gaps;          /* partitions whose next offsets retention deleted */
	size_t known_skipped; /* workflows and users not sent: known committed */
	size_t dedupe_fallbacks; /* batches whose plain dedupe insert met a key
				  * already in PostgreSQL (then ON CONFLICT) */
} tally_agg_stats;

/**
 * New aggregator over pg (borrowed; must outlive it). Strings in opts are
 * copied; the producer is borrowed.
 */
int tally_agg_new(tally_agg **out, tally_pg *pg, const tally_agg_opts *opts,
		  tally_error *err) TALLY_MUSTCHECK;

/** NULL is a no-op. */
void tally_agg_free(tally_agg *agg);

/**
 * Replace the book used to price storage GB-months (after a reload).
 * Borrowed: it must outlive its use, i.e. until the next call or free.
 */
void tally_agg_set_pricebook(tally_agg *agg,
			     const struct tally_pricebook *pb);

/**
 * Partitions were assigned: set each element's offset to the position in
 * consumer_offsets (RD_KAFKA_OFFSET_BEGINNING when there is none) and
 * remember it as the fence value. Suitable as (part of) the on_assign
 * callback.
 * @return 0 or a pg error (TALLY_ETRANSIENT: retry the assignment)
 */
int tally_agg_assign(tally_agg *agg, rd_kafka_topic_partition_list_t *parts,
		     tally_error *err) TALLY_MUSTCHECK;

/** Partitions were revoked: forget their fence values. */
void tally_agg_revoke(tally_agg *agg,
		      const rd_kafka_topic_partition_list_t *parts);

/**
 * Process one batch (messages in consumption order): decode, dead-letter
 * what is invalid or out of the time window (flushed before the commit),
 * then one transaction: fence, dedupe, ledger, aggregates, adjustments,
 * dead_letters mirror, positions. After the commit, publish the affected
 * tenants' period totals. PostgreSQL failures are retried (with reconnect)
 * for up to database.retry_max_ms before TALLY_ETRANSIENT is returned; the
 * batch can then simply be processed again.
 * @param now_ms   the clock for the lateness window (tally_now_ms())
 * @param stats    may be NULL
 * @return 0, TALLY_AGG_FENCED (nothing written: call tally_agg_reseek()),
 *         TALLY_ETRANSIENT or TALLY_ERROR
 */
int tally_agg_process(tally_agg *agg, const tally_agg_msg *msgs, size_t n,
		      int64_t now_ms, tally_agg_stats *stats, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * A batch decoded ahead: tally_agg_decode() touches no tally_agg state, so
 * a consumer can decode batch N+1 on its own thread while batch N is in
 * its transaction, and hand it to tally_agg_process_decoded().
 */
typedef struct tally_agg_decoded tally_agg_decoded;

tally_agg_decoded *tally_agg_decoded_new(void);

/** NULL is a no-op. */
void tally_agg_decoded_free(tally_agg_decoded *d);

/**
 * Compute the dedupe keys of the next decodes into d with agg's key
 * setting (tally_agg_timeled_from_ms). A new d computes them as on a
 * database where every time-ordered id is time-led.
 */
void tally_agg_decoded_use(tally_agg_decoded *d, const tally_agg *agg);

/** Decode msgs (views; they must outlive d's use) into d. */
void tally_agg_decode(tally_agg_decoded *d, const tally_agg_msg *msgs,
		      size_t n);

/**
 * Decode msgs[from, to) into d, keeping what [0, from) holds (from 0
 * starts a new batch): a batch can be decoded as it is gathered.
 */
void tally_agg_decode_range(tally_agg_decoded *d, const tally_agg_msg *msgs,
			    size_t from, size_t to);

/**
 * Sort d's decodable events by dedupe key, on the thread that decoded
 * them (while the batch before is in its transaction): the batch's COPYs
 * then only leave out the events that do not go in. Decoding more into
 * d undoes it.
 */
void tally_agg_order_decoded(tally_agg_decoded *d);

/**
 * Copy the few strings the batch still needs (provider, model,
 * workflow_id) out of the messages [from, to) of d (decoded already) whose
 * event time lies inside the time window at now_ms, so that those
 * messages can be destroyed before the batch is processed (memory: a
 * Kafka message and its fetch buffer weigh more than the decoded event).
 * keep[i], for i in [from, to), tells which message must stay:
 * undecodable, outside the window, or with a time-led id made before the
 * dedupe window (dead letters are copies of the original message). Process the batch with the same now_ms. Reads only
 * the window settings of agg (any thread). Returns the number detached.
 */
size_t tally_agg_detach_range(const tally_agg *agg, tally_agg_decoded *d,
			      int64_t now_ms, bool *keep, size_t from,
			      size_t to);

/**
 * Register ahead the provider/model pairs of a decoded batch that agg has
 * not cached, on pg (a connection other than agg's), so that its
 * tally_agg_process_decoded() finds them cached. Safe while another thread
 * is in tally_agg_process_decoded() on agg (the cache has its lock); one
 * attempt; a failure leaves the work to the batch itself. The events of
 * pairs cached already get their ids here, so that the batch looks up
 * only the rest.
 *
 * @param now_ms      the batch's clock for the time window
 * @param registered  the pairs of the batch now cached
 */
int tally_agg_prefetch_models(tally_agg *agg, tally_pg *pg,
			      tally_agg_decoded *dec, int64_t now_ms,
			      size_t *registered, tally_error *err);

/**
 * tally_agg_process() with the messages already decoded into dec by
 * tally_agg_decode(dec, msgs, n) (with dec NULL they are decoded here;
 * a dec of other msgs or n is an error). The same batch may be processed
 * again with the same dec after a failure.
 */
int tally_agg_process_decoded(tally_agg *agg, tally_agg_decoded *dec,
			      const tally_agg_msg *msgs, size_t n,
			      int64_t now_ms, tally_agg_stats *stats,
			      tally_error *err) TALLY_MUSTCHECK;

/**
 * After TALLY_AGG_FENCED: read the positions of the batch's partitions from
 * consumer_offsets, remember them as fence values and seek the consumer rk
 * there (rk may be NULL in tests). Partitions no longer assigned are left
 * alone: the rebalance that took them resets them anyway.
 */
int tally_agg_reseek(tally_agg *agg, rd_kafka_t *rk,
		     const tally_agg_msg *msgs, size_t n, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * The consumer whose cached log start offsets reveal offsets deleted by
 * retention before they were read (recorded in consumer_offset_gaps; see
 * docs/aggregate.md). Borrowed; NULL (the default) disables the check.
 */
void tally_agg_set_consumer(tally_agg *agg, rd_kafka_t *rk);

/**
 * The producer's delivery report for rkm (call it from the dr_msg_cb of
 * opts.producer, on the thread that uses agg): a billing.totals message the
 * broker acknowledged is remembered, and the next transaction moves
 * tenant_period_usage.published_version up to its version. Messages that
 * are not totals (dead letters) are ignored.
 */
void tally_agg_delivered(tally_agg *agg, const rd_kafka_message_t *rkm);

/** Totals messages produced and not yet reported delivered (or failed). */
size_t tally_agg_inflight(const tally_agg *agg);

/**
 * The totals outbox: mark acknowledged versions now (own transaction) and,
 * if republish and nothing is in flight, publish again the latest totals
 * of every tenant-period whose published_version < version (a crash
 * between commit and publish, a failed delivery). Call at start-up, then
 * periodically, and at shutdown after flushing the producer.
 * @return 0 or a pg error
 */
int tally_agg_outbox(tally_agg *agg, bool republish, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Storage rollover: give every tenant that holds storage its row for the
 * period containing now_ms, when no event has created it (a dormant
 * account, a gauge that reports only on change). A tenant qualifies if it
 * has storage_snapshots, its period containing now_ms (as a batch
 * decides it: billing_periods, else the tenant's current period repeated,
 * else the UTC calendar month) is open and has no tenant_period_usage row
 * yet, and its last snapshot before that period holds bytes > 0. The row
 * is written as a batch would write it (storage integral and cost, cost =
 * storage_cost, version bumped, budget_state) and its totals are
 * published like a batch's (the outbox sends them again if that fails).
 * Chunks of 1 000 tenants, one transaction each, whose tenants rows are
 * taken FOR KEY SHARE in id order first (as a batch does). A second run
 * changes nothing. Call it with the aggregator idle (no batch of agg in
 * progress), e.g. hourly.
 * @param out  rows written by the committed chunks; may be NULL
 * @return 0 or a pg error (chunks committed before it stay committed)
 */
int tally_agg_storage_rollover(tally_agg *agg, int64_t now_ms, size_t *out,
			       tally_error *err) TALLY_MUSTCHECK;

/**
 * Ledger housekeeping (tally_ledger_maintain in SQL): create the day
 * partitions from the lateness window to ahead_days ahead, drop the ones
 * older than retention_days, forget dedupe keys older than the window
 * (usage_dedupe's day partitions: created ahead, dropped after it).
 */
int tally_agg_maintain(tally_pg *pg, int lateness_days, int ahead_days,
		       int retention_days, tally_error *err) TALLY_MUSTCHECK;

/**
 * The time-led key setting (dedupe_settings.timeled_from, read by
 * tally_agg_new) in unix ms, for tally_dedupe_key(); INT64_MIN when every
 * time-ordered id is time-led.
 */
int64_t tally_agg_timeled_from_ms(const tally_agg *agg);


/** The end of the times rerate accepts: 10000-01-01T00:00:00Z in unix ms. */
#define TALLY_RERATE_TIME_MAX INT64_C(253402300800000)

/** What `tally rerate` re-prices: [from_ms, to_ms), optionally one tenant
 *  and/or one model name; 0 <= from_ms < to_ms <= TALLY_RERATE_TIME_MAX. */
typedef struct tally_rerate_opts {
	int64_t from_ms, to_ms;
	const uint8_t *tenant_id; /* NULL = every tenant */
	const char *model;        /* NULL = every model */
	size_t stage_bytes;       /* changed rows held before they are sent
				   * to the day's stage (0 = 8 MiB) */
} tally_rerate_opts;

typedef struct tally_rerate_stats {
	int64_t rows_seen;     /* ledger rows in the range (storage excluded) */
	int64_t rows_changed;  /* re-priced (cost or price_id differ) */
	int64_t unpriced;      /* no price in the book now: left unchanged */
	int64_t adjusted;      /* of the changed, in closed periods */
	char cost_delta[48];   /* exact decimal, new minus old */
	/* storage (not with a model filter): periods overlapping the range
	 * whose storage charge the book now prices differently */
	int64_t storage_periods;  /* charges that moved */
	int64_t storage_adjusted; /* of them, closed periods (adjustments) */
	int64_t storage_unpriced; /* left alone: no storage price now */
	int64_t storage_too_old;  /* left alone: before the retention bound */
	char storage_delta[48];   /* exact decimal, new minus old */
} tally_rerate_stats;

/**
 * Price the ledger rows of the range again with pb. Rows whose cost or
 * price_id change are updated (prev_price_id keeps the replaced id), and
 * the cost differences go into usage_hourly, the open periods'
 * tenant_period_usage and, for closed periods, usage_adjustments (kind
 * 'rerate'). One transaction per UTC day of the range; a second run with
 * the same book changes nothing. Runs of rerate are serialised with an
 * advisory lock (a concurrent run gets TALLY_ETRANSIENT). Storage
 * snapshot rows cost 0 in the ledger; the storage charge is the
 * period's: unless opts->model is set, the storage charge of every period
 * overlapping the range is recomputed with pb afterwards (open periods
 * set, closed ones adjusted with kind 'storage'; one transaction per
 * 1 000 tenants with snapshots, a period with a segment pb has no price
 * for is left alone). Row locks are taken in tally-aggregate's
 * order (ledger, usage_hourly, tenant_period_usage, each by key), so the
 * two can run at the same time; a deadlock or serialisation failure is
 * retried. The stats count committed slices only.
 * @param stats may be NULL
 * @return 0, TALLY_EINVALID for a bad range, TALLY_ETRANSIENT or
 *         TALLY_ERROR
 */
int tally_agg_rerate(tally_pg *pg, const struct tally_pricebook *pb,
		     const tally_rerate_opts *opts, tally_rerate_stats *stats,
		     tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_AGGREGATE_H */
