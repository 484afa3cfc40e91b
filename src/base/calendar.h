/*
 * calendar.h - civil (proleptic Gregorian, UTC) dates in exact integer
 * arithmetic (libtally-internal). No time zones: every instant is UTC.
 */
#ifndef TALLY_BASE_CALENDAR_H
#define TALLY_BASE_CALENDAR_H

#include <stdbool.h>
#include <stdint.h>

#define TALLY_MS_PER_DAY INT64_C(86400000)

/** a / b rounded towards negative infinity (b != 0). */
int64_t tally_floor_div(int64_t a, int64_t b);
/** Days since 1970-01-01 of y-m-d (H. Hinnant's algorithm); m 1..12. */
int64_t tally_days_from_civil(int64_t y, int m, int d);
/** The date of a day number (inverse of tally_days_from_civil). */
void tally_civil_from_days(int64_t days, int64_t *y, int *m, int *d);
bool tally_is_leap_year(int64_t y);
/** Days in month m (1..12) of year y. */
int tally_days_in_month(int64_t y, int m);
/** Unix ms of 00:00 UTC on the first day of the month holding t_ms. */
int64_t tally_month_start_ms(int64_t t_ms);

#endif
