#ifndef TALLY_RATE_CONSUMER_H
#define TALLY_RATE_CONSUMER_H

/**
 * @file tally/rate_consumer.h
 * @brief tally-rate: billing.usage -> billing.usage.rated, exactly once,
 *        with Kafka transactions (consume-transform-produce).
 *
 * Each batch (up to rate.batch_size messages or rate.batch_ms) is one Kafka
 * transaction on a producer with a transactional.id unique per instance
 * (rate.transactional_id; default tally-rate-<host>-<pid>, or
 * $TALLY_TRANSACTIONAL_ID for a stable one): the rated events, the dead letters of invalid
 * input (billing.usage.dlq, reason headers) and the input offsets
 * (rd_kafka_send_offsets_to_transaction) commit together or not at all. On
 * failure the transaction is aborted and the consumer rewinds to the last
 * committed positions. A restarted instance with the same transactional.id
 * fences the old one and aborts what it left open; downstream reads
 * read_committed.
 *
 * The price book is swapped only between batches: on SIGHUP, on a
 * tally_prices notification (LISTEN on the rater's connection, read without
 * blocking between batches), and when the version counter in PostgreSQL
 * changes (checked every rate.price_check_s, a safety net).
 */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

typedef struct tally_rater tally_rater;

/**
 * Create the consumer, the transactional producer (init_transactions) and
 * load the price book from database.url.
 * @param cfg borrowed; must outlive the rater (reloaded on SIGHUP)
 * @param m   metrics registry, may be NULL
 */
int tally_rater_new(tally_rater **out, tally_config *cfg, tally_metrics *m,
		    tally_error *err) TALLY_MUSTCHECK;

/**
 * Run one step: poll a batch and rate it; commit the batch rated by the
 * previous step in a transaction meanwhile. A batch that is not full is
 * committed in the same step. Until the input stops, a full batch commits
 * one step after it was polled.
 * @param[out] n number of input messages committed (may be NULL)
 * @return 0, or TALLY_ERROR on a fatal producer error (exit and restart)
 */
int tally_rater_step(tally_rater *r, size_t *n, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * The rated_at (ms) that the batches committed by the last step carry
 * (every event of a batch the same: the time its rating began): at most 2.
 * For tests that tell committed from aborted output without markers.
 */
size_t tally_rater_committed_stamps(const tally_rater *r, int64_t stamps[2]);

/**
 * Loop over tally_rater_step() until SIGTERM/SIGINT (tally_signals); on
 * SIGHUP reload the config and the price book between batches.
 */
int tally_rater_run(tally_rater *r, tally_error *err) TALLY_MUSTCHECK;

/** Leave the group (after the last committed batch) and free. */
void tally_rater_free(tally_rater *r);

#endif /* TALLY_RATE_CONSUMER_H */
