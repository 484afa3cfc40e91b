/*
 * tally-stripe - billing commands and Stripe events into PostgreSQL and
 * Stripe, dunning, meters, billing.signals. Thin main over
 * src/stripe/stripe_consumer.c (tally/stripe_consumer.h):
 *   tally-stripe --config FILE [--metrics-listen HOST:PORT]
 * SIGTERM/SIGINT: finish the message, settle the signals, leave the group.
 * SIGHUP: reload the config.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/program.h"
#include "tally/stripe_consumer.h"

TALLY_CONSUMER_VTABLE(stripe, tally_stripe_consumer, tally_stripe_consumer,
		      "stripe", "stripe.stop", NULL);

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-stripe", "--metrics-listen", "stripe.metrics_listen",
		NULL, NULL, NULL
	};

	return tally_program_run_consumer(&popts, &stripe, argc, argv);
}
