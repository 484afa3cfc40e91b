#ifndef TALLY_ALERTS_CONSUMER_H
#define TALLY_ALERTS_CONSUMER_H

/**
 * @file tally/alerts_consumer.h
 * @brief tally-alerts' pipeline: billing.totals and billing.signals ->
 *        alerts in PostgreSQL, billing.alerts and the webhook
 *        (docs/alerts.md; the rules are tally_alerts, tally/alerts.h).
 *
 * Consumer group alerts.group on topics.totals and topics.signals
 * (read_committed), run on the shared consumer loop (tally/consumer_loop.h):
 * each batch is one PostgreSQL transaction (alerts + positions in
 * consumer_offsets behind a fence), retried with back-off; new alerts are
 * produced to topics.alerts after the commit. At start-up, and every 30 s,
 * alerts committed but never produced are produced (the sweep). Periodic
 * scans raise churn from silence and revenue alerts on the business. A
 * delivery thread with its own connection POSTs alerts to their targets
 * (alerts.webhook_url, alerts.targets: json or slack, routed by kind),
 * each target retried with back-off on its own; it never blocks the
 * consumer.
 */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

#include <stddef.h>

typedef struct tally_alerts_consumer tally_alerts_consumer;

/**
 * Connect, create the producer and the engine, produce what a previous
 * run left unproduced, subscribe and start the delivery thread.
 * @param cfg borrowed; must outlive the consumer (reloaded on SIGHUP)
 * @param m   metrics registry (borrowed); NULL: one of its own
 */
int tally_alerts_consumer_new(tally_alerts_consumer **out, tally_config *cfg,
			      tally_metrics *m, tally_error *err)
	TALLY_MUSTCHECK;

/** Health for /healthz and /readyz (payload: the consumer). */
int tally_alerts_consumer_health(char *detail, size_t len, void *payload);

/**
 * Loop until SIGTERM/SIGINT; SIGHUP reloads alerts.thresholds,
 * alerts.webhook_url, alerts.targets, the silence and revenue rules and
 * log.level.
 * @return 0, or TALLY_ERROR when a batch failed for good or positions
 *         could not be re-read after a fence (a restart resumes exactly)
 */
int tally_alerts_consumer_run(tally_alerts_consumer *c, tally_error *err)
	TALLY_MUSTCHECK;

/** Stop the delivery thread, leave the group, flush, free. */
void tally_alerts_consumer_free(tally_alerts_consumer *c);

#endif /* TALLY_ALERTS_CONSUMER_H */
