#ifndef TALLY_AGGREGATE_INT_H
#define TALLY_AGGREGATE_INT_H

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

#endif /* TALLY_AGGREGATE_INT_H */
