/*
 * aggregate_batch_support.h - for the test_aggregate*.c programs that run
 * tally-aggregate's batch logic against a real PostgreSQL (no broker):
 * the Check fixture, the aggregators and one batch run.
 */
#ifndef TALLY_TEST_AGGREGATE_BATCH_SUPPORT_H
#define TALLY_TEST_AGGREGATE_BATCH_SUPPORT_H

#include "aggregate_pg_support.h"
#include "check_main.h"
#include "tally/money.h"

static inline void setup(void)
{
	aggpg_setup("agg");
}

static inline void teardown(void)
{
	aggpg_teardown();
}

static inline tally_agg *new_agg_keys(size_t recent_keys)
{
	return aggpg_new(NULL, recent_keys);
}

static inline tally_agg *new_agg(void)
{
	return aggpg_new(NULL, 0);
}

static inline tally_agg *new_agg_priced(const tally_pricebook *pb)
{
	return aggpg_new(pb, 0);
}

static inline int run(tally_agg *agg, batch *b, int64_t now,
		      tally_agg_stats *st)
{
	tally_error err;
	int rc = tally_agg_process(agg, b->m, b->n, now, st, &err);

	if (rc != 0 && rc != TALLY_AGG_FENCED)
		ck_abort_msg("process: %s", err.msg);
	return rc;
}

#endif
