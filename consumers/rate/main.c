/*
 * tally-rate - billing.usage -> billing.usage.rated with Kafka transactions
 * (exactly once). Thin main over src/rate_consumer.c:
 *   args -> config -> rater -> loop -> close -> free.
 *   tally-rate --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the batch, commit, leave the group. SIGHUP: reload
 * the config and the price book between batches.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/program.h"
#include "tally/rate_consumer.h"

TALLY_CONSUMER_VTABLE(rater, tally_rater, tally_rater, "rate",
		      "rate.stopped", NULL);

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-rate", "--metrics-listen", "rate.metrics_listen",
		NULL, NULL, NULL
	};

	return tally_program_run_consumer(&popts, &rater, argc, argv);
}
