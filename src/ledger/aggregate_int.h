#ifndef TALLY_AGGREGATE_INT_H
#define TALLY_AGGREGATE_INT_H

#include "tally/aggregate.h"
#include "tally/money.h"

/*
 * aggregate_int.h - SQL shared by the consumer (aggregate.c) and
 * `tally rerate` (aggregate_rerate.c); private to libtally.
 */

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

#endif /* TALLY_AGGREGATE_INT_H */
