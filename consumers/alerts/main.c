/*
 * tally-alerts - budget, plan-limit, revenue, churn and billing-signal
 * alerts. Thin main over src/alerts/alerts_consumer.c (see
 * include/tally/alerts_consumer.h and docs/alerts.md):
 *   args -> config -> consumer -> loop -> free.
 *   tally-alerts --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the batch, commit, leave the group, exit 0 (a
 * second signal exits at once). SIGHUP: reload alerts.thresholds,
 * alerts.webhook_url, alerts.targets, the silence and revenue rules and
 * log.level. Exit 1 on a start-up error or an error
 * that retrying does not cure (positions are in PostgreSQL).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_consumer.h"
#include "tally/program.h"

TALLY_CONSUMER_VTABLE(alerts, tally_alerts_consumer, tally_alerts_consumer,
		      "alerts", NULL, tally_alerts_consumer_health);

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-alerts", "--metrics-listen", "alerts.metrics_listen",
		NULL, NULL, NULL
	};

	return tally_program_run_consumer(&popts, &alerts, argc, argv);
}
