/*
 * tally-rate - billing.usage -> billing.usage.rated with Kafka transactions
 * (exactly once). Thin main over src/rate_consumer.c:
 *   args -> config -> rater -> loop -> close -> free.
 *   tally-rate --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the batch, commit, leave the group. SIGHUP: reload
 * the config and the price book between batches.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/config.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/rate_consumer.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-rate", "--metrics-listen", "rate.metrics_listen",
		NULL, NULL, NULL
	};
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_metrics_server *srv = NULL;
	tally_rater *r = NULL;
	tally_error err;
	int rc = EXIT_FAILURE;

	if (tally_program_start(&cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	tally_error_clear(&err);
	m = tally_metrics_new();
	if (tally_rater_new(&r, cfg, m, &err) != 0) {
		tally_log(TALLY_FATAL, "rate.start_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	if (tally_metrics_serve(&srv, m,
				tally_config_str(cfg, "rate.metrics_listen"),
				NULL, NULL, NULL, &err) != 0)
		/* a second instance on the same host: run without /metrics */
		tally_log(TALLY_WARN, "metrics.serve_failed",
			  TALLY_KV_STR("error", err.msg));
	if (tally_rater_run(r, &err) != 0) {
		tally_log(TALLY_FATAL, "rate.fatal",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	tally_log(TALLY_INFO, "rate.stopped");
	rc = EXIT_SUCCESS;
cleanup:
	tally_rater_free(r);
	tally_metrics_server_free(srv);
	tally_metrics_free(m);
	tally_config_free(cfg);
	return rc;
}
