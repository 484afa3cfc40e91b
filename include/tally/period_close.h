#ifndef TALLY_PERIOD_CLOSE_H
#define TALLY_PERIOD_CLOSE_H

/**
 * @file tally/period_close.h
 * @brief The closer's side of the period-close protocol (docs/aggregate.md,
 *        "Closing a period").
 */

#include "tally/common.h"
#include "tally/pg.h"

#include <stdint.h>

/**
 * Mark the billing period [period_start, period_end) (unix seconds) of a
 * tenant 'invoiced' by invoice_id, in one statement: the tenant row FOR
 * UPDATE first (it waits for batches that may have read the period as open;
 * later batches wait for this commit), then the billing_periods row. A period
 * already closed keeps its first invoice and takes no lock. Safe outside a
 * transaction (the lock is held until the row is in).
 */
int tally_period_close(tally_pg *pg, const char *tenant_id,
		       int64_t period_start, int64_t period_end,
		       const char *invoice_id, tally_error *err)
	TALLY_MUSTCHECK;

#endif
