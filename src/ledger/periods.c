/*
 * periods.c - billing periods: the period [start, end) of a time for a
 * tenant's current period (pure arithmetic on UTC civil time; no I/O).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/periods.h"
#include "base/calendar.h"

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
