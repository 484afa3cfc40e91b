#ifndef TALLY_BUSINESS_GAUGES_H
#define TALLY_BUSINESS_GAUGES_H

/**
 * @file tally/business_gauges.h
 * @brief Business figures as Prometheus gauges, read from the finance
 *        views (docs/finance.md) on a thread of their own with
 *        a connection of their own, every interval (a minute in
 *        tally-alerts); never per scrape, so a scrape costs PostgreSQL
 *        nothing. Code: src/alerts/business_gauges.c.
 *
 * Gauges (amounts are integers in minor units, rounded by PostgreSQL's
 * numeric, never through a float):
 *   tally_business_mrr_cents{currency=...} MRR of the current UTC month,
 *                                         per currency (never added up)
 *   tally_business_arr_cents{currency=...} ARR (12 x MRR), per currency
 *   tally_business_paying_tenants         tenants with a paying subscription
 *                                         in the current month
 *   tally_business_tenants{status=...}    tenants by status (past_due and
 *                                         suspended always present)
 *   tally_business_alerts_open{kind=...}  alerts of the current UTC month
 *                                         not yet delivered to the webhook
 *   tally_business_refresh_failures_total refreshes that failed (logged)
 *   tally_business_refreshed_seconds      unix time of the last refresh
 */

#include "tally/metrics.h"
#include "tally/pg.h"

typedef struct tally_business_gauges tally_business_gauges;

/**
 * One refresh on pg into m (registers the gauges on first use). Returns 0,
 * or the database error (gauges keep their previous values).
 */
int tally_business_gauges_refresh(tally_pg *pg, tally_metrics *m,
				  tally_error *err) TALLY_MUSTCHECK;

/**
 * Start the refresh thread: it connects to database_url (retrying up to
 * retry_max_ms each time), refreshes at once, then every interval_ms.
 * m is borrowed and must outlive tally_business_gauges_stop().
 */
int tally_business_gauges_start(tally_business_gauges **out,
				const char *database_url, int retry_max_ms,
				tally_metrics *m, long interval_ms,
				tally_error *err) TALLY_MUSTCHECK;

/** Stop the thread (waits for a refresh in progress) and free. NULL: no-op. */
void tally_business_gauges_stop(tally_business_gauges *bg);

#endif /* TALLY_BUSINESS_GAUGES_H */
