/*
 * tally-stripe - billing commands and Stripe events into PostgreSQL and
 * Stripe, dunning, meters, billing.signals. Thin main over
 * src/stripe/stripe_consumer.c (tally/stripe_consumer.h):
 *   tally-stripe --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the message, settle the signals, leave the group.
 * SIGHUP: reload the config.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/config.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/program.h"
#include "tally/stripe_consumer.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-stripe", "--metrics-listen", "stripe.metrics_listen",
		NULL, NULL, NULL
	};
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_metrics_server *srv = NULL;
	tally_stripe_consumer *c = NULL;
	tally_error err;
	int rc = 1;

	if (tally_program_start(&cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = 1;
	tally_error_clear(&err);
	m = tally_metrics_new();
	if (tally_stripe_consumer_new(&c, cfg, m, &err) != 0) {
		tally_log(TALLY_FATAL, "stripe.start_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	if (tally_metrics_serve(&srv, m,
				tally_config_str(cfg, "stripe.metrics_listen"),
				NULL, NULL, NULL, &err) != 0)
		tally_log(TALLY_WARN, "metrics.serve",
			  TALLY_KV_STR("error", err.msg));
	tally_log(TALLY_INFO, "stripe.start",
		  TALLY_KV_STR("group", tally_config_str(cfg, "stripe.group")));
	rc = tally_stripe_consumer_run(c, &err);
cleanup:
	tally_metrics_server_free(srv);
	tally_stripe_consumer_free(c);
	tally_metrics_free(m);
	tally_config_free(cfg);
	tally_log(TALLY_INFO, "stripe.stop");
	return rc;
}
