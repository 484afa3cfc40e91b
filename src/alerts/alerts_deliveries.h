/*
 * alerts_deliveries.h - the per-target delivery rows of tally-alerts in
 * PostgreSQL (alert_deliveries): routing, claiming, recording an outcome
 * (libtally-internal; the POSTs are alerts_webhook.c).
 */
#ifndef TALLY_ALERTS_DELIVERIES_H
#define TALLY_ALERTS_DELIVERIES_H

#include "tally/alerts.h"

/* Columns of a claimed row. */
enum { DL_TENANT, DL_ALERT, DL_TARGET, DL_JSON, DL_ATTEMPTS, DL_TENANT_NAME };

/* One alert_deliveries row per unrouted alert and target receiving its
 * kind; the alerts are marked routed. */
int tally_alerts__route(tally_pg *pg, const tally_alerts_delivery *d,
			tally_error *err) TALLY_MUSTCHECK;

/* Up to limit due rows of d's targets, leased; columns DL_*. */
int tally_alerts__claim(tally_pg *pg, const tally_alerts_delivery *d,
			int limit, PGresult **res, tally_error *err)
	TALLY_MUSTCHECK;

/*
 * The outcome of one POST: why NULL = delivered, else the failure (the
 * next try scheduled, or given up at d's limits: *gave_up). attempts
 * receives the row's attempts as text. The alert's summary follows.
 */
int tally_alerts__record(tally_pg *pg, const char *tid, const char *id,
			 const char *target, const char *why,
			 const tally_alerts_delivery *d, bool *gave_up,
			 char attempts[16], tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_ALERTS_DELIVERIES_H */
