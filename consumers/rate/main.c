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
#include "tally/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	const char *cfg_path = NULL, *listen = NULL;
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_metrics_server *srv = NULL;
	tally_rater *r = NULL;
	tally_error err;
	int i, lv, rc = EXIT_FAILURE;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			cfg_path = argv[++i];
		} else if (strcmp(argv[i], "--metrics-listen") == 0 &&
			   i + 1 < argc) {
			listen = argv[++i];
		} else {
			fprintf(stderr, "usage: tally-rate --config FILE "
					"[--metrics-listen HOST:PORT]\n");
			return strcmp(argv[i], "--help") == 0 ? 0 : 2;
		}
	}
	tally_log_init("tally-rate", TALLY_INFO);
	tally_error_clear(&err);
	if (tally_config_load(&cfg, cfg_path, &err) != 0) {
		tally_log(TALLY_FATAL, "config.error",
			  TALLY_KV_STR("error", err.msg));
		return EXIT_FAILURE;
	}
	lv = tally_log_level_parse(tally_config_str(cfg, "log.level"));
	if (lv >= 0)
		tally_log_set_level((tally_log_level)lv);
	if (listen != NULL)
		tally_config_set(cfg, "rate.metrics_listen", listen);
	tally_signals_install();
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
