/*
 * tally-alerts - budget, plan-limit, revenue, churn and billing-signal
 * alerts. Thin main over src/alerts/alerts_consumer.c (see
 * include/tally/alerts_consumer.h and docs/alerts.md):
 *   args -> config -> consumer -> loop -> free.
 *   tally-alerts --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the batch, commit, leave the group, exit 0 (a
 * second signal exits at once). SIGHUP: reload alerts.thresholds,
 * alerts.webhook_url and log.level. Exit 1 on a start-up error or an error
 * that retrying does not cure (positions are in PostgreSQL).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_consumer.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/program.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-alerts", "--metrics-listen", "alerts.metrics_listen",
		NULL, NULL, NULL
	};
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_metrics_server *srv = NULL;
	tally_alerts_consumer *c = NULL;
	tally_error err;
	int rc = EXIT_FAILURE;

	if (tally_program_start(&cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	tally_error_clear(&err);
	m = tally_metrics_new();
	if (tally_alerts_consumer_new(&c, cfg, m, &err) != 0) {
		tally_log(TALLY_FATAL, "alerts.start_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	if (tally_metrics_serve(&srv, m,
				tally_config_str(cfg, "alerts.metrics_listen"),
				tally_alerts_consumer_health,
				tally_alerts_consumer_health, c, &err) != 0)
		/* a second instance on the same host: run without /metrics */
		tally_log(TALLY_WARN, "metrics.serve_failed",
			  TALLY_KV_STR("error", err.msg));
	if (tally_alerts_consumer_run(c, &err) != 0) {
		tally_log(TALLY_FATAL, "alerts.fatal",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	rc = EXIT_SUCCESS;
cleanup:
	tally_metrics_server_free(srv);
	tally_alerts_consumer_free(c);
	tally_metrics_free(m);
	tally_config_free(cfg);
	return rc;
}
