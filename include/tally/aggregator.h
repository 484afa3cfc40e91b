#ifndef TALLY_AGGREGATOR_H
#define TALLY_AGGREGATOR_H

/**
 * @file tally/aggregator.h
 * @brief tally-aggregate's pipeline: billing.usage.rated -> usage ledger
 *        and per-tenant aggregates in PostgreSQL, exactly once
 *        (docs/aggregate.md; one batch of lane L is tally_agg_process()
 *        on lane L's connection).
 *
 * Consumer group aggregate.group on topics.rated (read_committed). The
 * calling thread polls Kafka and gathers batch N+1 (decoding it as it
 * comes) while batch N is in PostgreSQL. A batch is split into
 * aggregate.lanes lanes by partition (partition % lanes); each lane has
 * its own thread, PostgreSQL connection, tally_agg and producer, and
 * commits its part (data and its partitions' positions) in its own
 * transaction. At most one batch is in flight; a lane's Kafka offsets are
 * stored only after its commit (for lag monitoring: positions live in
 * consumer_offsets); a rebalance first waits for every lane (a revocation
 * abandons a lane that is retrying), and the batch being gathered across
 * a rebalance is dropped. Housekeeping between batches: ledger
 * maintenance and the storage rollover hourly, prices and the totals
 * outbox every 10 s.
 */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

#include <stddef.h>

typedef struct tally_aggregator tally_aggregator;

/**
 * Connect, maintain the ledger, load the storage prices, open the lanes
 * and subscribe; publish the totals a previous run left unpublished and
 * run the storage rollover once.
 * @param cfg borrowed; must outlive the aggregator (reloaded on SIGHUP)
 * @param m   metrics registry (borrowed); NULL: one of its own
 */
int tally_aggregator_new(tally_aggregator **out, tally_config *cfg,
			 tally_metrics *m, tally_error *err) TALLY_MUSTCHECK;

/**
 * Health for /healthz and /readyz (a tally_health_fn; payload: the
 * aggregator): unhealthy while PostgreSQL fails.
 */
int tally_aggregator_health(char *detail, size_t len, void *payload);

/**
 * Loop until SIGTERM/SIGINT (tally_signals): the batch in flight commits
 * (or, if it is retrying a failure, is abandoned and redone next start).
 * SIGHUP reloads batch sizes, windows and log.level.
 * @return 0, or TALLY_ERROR when a batch failed for good or positions
 *         could not be re-read after a fence (a restart resumes exactly)
 */
int tally_aggregator_run(tally_aggregator *a, tally_error *err)
	TALLY_MUSTCHECK;

/** Leave the group, flush the producers, mark delivered totals, free. */
void tally_aggregator_free(tally_aggregator *a);

#endif /* TALLY_AGGREGATOR_H */
