#ifndef TALLY_PERIODS_H
#define TALLY_PERIODS_H

/**
 * @file tally/periods.h
 * @brief Billing-period arithmetic (pure: no I/O, exact integers, UTC).
 */

#include <stdint.h>

/**
 * The billing period [start, end) containing t (half-open) for a tenant
 * whose current period is [cps, cpe) (cpe <= cps, e.g. both 0: the calendar
 * month, UTC). If cps and cpe have the same time of day and are 1..12
 * months apart on one anchor day (the larger of their days, the other
 * clamped to its month end: Jan 31 -> Feb 29, Apr 30 -> May 31), the periods
 * are that many months long and start on the anchor day, clamped to each
 * month's end, at cps's time of day (Stripe's billing_cycle_anchor: Jan 31,
 * Feb 29, Mar 31, Apr 30, May 31). Otherwise they repeat cpe - cps in
 * milliseconds from cps.
 */
void tally_agg_period(int64_t *start, int64_t *end, int64_t cps, int64_t cpe,
		      int64_t t);

#endif /* TALLY_PERIODS_H */
