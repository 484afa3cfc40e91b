#ifndef TALLY_STRIPE_CONSUMER_H
#define TALLY_STRIPE_CONSUMER_H

/**
 * @file tally/stripe_consumer.h
 * @brief tally-stripe: consumer group stripe.group (tally.stripe) on
 *        billing.commands and billing.stripe-events. Carries out billing
 *        commands against Stripe, mirrors Stripe events into PostgreSQL
 *        (tally/stripe_sync.h), runs the dunning clock, reports usage to
 *        Stripe meters and publishes billing.signals from the outbox.
 *
 * Offsets are stored only after a message reached a final state in
 * PostgreSQL (done, duplicate or dead-lettered). A transient failure
 * (Stripe or PostgreSQL down) retries the same message with backoff, so
 * the partition waits rather than skipping; effects are idempotent.
 *
 * Delivery reports decide: a signal is marked published, and a dead letter
 * counts as sent (so its offset may be stored), only when its own delivery
 * report is successful; a drained queue proves nothing.
 */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

typedef struct tally_stripe_consumer tally_stripe_consumer;

/**
 * Connect to PostgreSQL, create the Stripe client, the producer (signals,
 * dead letters) and the consumer.
 * @param cfg borrowed; must outlive the consumer (reloaded on SIGHUP)
 * @param m   metrics registry (borrowed, not NULL)
 */
int tally_stripe_consumer_new(tally_stripe_consumer **out, tally_config *cfg,
			      tally_metrics *m, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Loop until SIGTERM/SIGINT (tally_signals): batches of messages, then the
 * signals outbox, the dunning clock (every minute) and the meters (every
 * stripe.meter_interval_s). On SIGHUP the config is reloaded. Before
 * returning, the last batch's delivery reports are settled.
 * @return 0
 */
int tally_stripe_consumer_run(tally_stripe_consumer *c, tally_error *err)
	TALLY_MUSTCHECK;

/** Leave the group, flush the producer and free. */
void tally_stripe_consumer_free(tally_stripe_consumer *c);

#endif /* TALLY_STRIPE_CONSUMER_H */
