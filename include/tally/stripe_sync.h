#ifndef TALLY_STRIPE_SYNC_H
#define TALLY_STRIPE_SYNC_H

/**
 * @file tally/stripe_sync.h
 * @brief Keeps PostgreSQL and Stripe in agreement: billing commands, webhook
 *        event mirroring, dunning, usage reporting to Stripe meters and
 *        reconciliation. No Kafka here (tally-stripe feeds it), so all of it
 *        runs in tests against PostgreSQL and stripe-mock.
 *
 * Exactly-once effects come from PostgreSQL, not from the transport:
 * - a command is a row in billing_commands; each Stripe POST it causes has a
 *   deterministic Idempotency-Key ("tally-cmd-<command id>-<step>") recorded
 *   in stripe_requests with the id of the object it produced, so a replay
 *   (even days later, when Stripe has forgotten the key) fetches that object
 *   instead of creating another;
 * - a webhook event is a row in stripe_events, inserted in the same
 *   transaction as its effects;
 * - mirrored objects carry (as_of, as_of_rank): an older event never
 *   overwrites newer state;
 * - signals for billing.signals go to billing_signals_outbox in the same
 *   transaction, and are published from there (tally_stripe_sync_publish).
 *
 * Not thread-safe: one per consumer thread.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

#include "tally/command.h"
#include "tally/common.h"
#include "tally/config.h"
#include "tally/pg.h"
#include "tally/stripe.h"

typedef struct tally_stripe_sync tally_stripe_sync;

/** Wall clock in unix ms; injectable so tests control dunning time. */
typedef int64_t (*tally_clock_fn)(void *payload);

typedef struct tally_stripe_sync_opts {
	tally_pg *pg;               /* borrowed */
	tally_stripe *stripe;       /* borrowed; NULL = no API calls */
	const tally_config *cfg;    /* borrowed: prices, trial and dunning */
	const char *const *webhook_secrets; /* for re-verification */
	size_t nsecrets;            /* 0: events are not re-verified */
	tally_clock_fn clock;       /* NULL: tally_now_ms */
	void *clock_payload;
	int meter_rate_per_s;       /* meter events per second; 0: 25 */
} tally_stripe_sync_opts;

int tally_stripe_sync_new(tally_stripe_sync **out,
			  const tally_stripe_sync_opts *opts, tally_error *err)
	TALLY_MUSTCHECK;
void tally_stripe_sync_free(tally_stripe_sync *ss);

/**
 * Carry out one command. The outcome (succeeded, or failed with Stripe's
 * error) is written to billing_commands and tenants.
 * @return 0 when the command reached a final state (including "failed");
 *         TALLY_EDUPLICATE when it had already (no Stripe call made);
 *         TALLY_ETRANSIENT when Stripe or PostgreSQL is unavailable (the
 *         command stays pending: deliver it again later);
 *         TALLY_EINVALID for a command that cannot be recorded at all.
 */
int tally_stripe_sync_command(tally_stripe_sync *ss, const tally_command *cmd,
			      tally_error *err) TALLY_MUSTCHECK;

/**
 * Mirror one Stripe event (raw webhook body as relayed). The carried
 * Stripe-Signature is re-verified without timestamp tolerance when secrets
 * were given.
 * @param[out] outcome "applied", "stale", "ignored", "unknown_tenant";
 *             may be NULL
 * @return 0; TALLY_EDUPLICATE (event id already processed);
 *         TALLY_EINVALID (bad signature or not an event: dead-letter);
 *         TALLY_ETRANSIENT
 */
int tally_stripe_sync_event(tally_stripe_sync *ss, const char *body,
			    size_t len, const char *sig_header,
			    const char **outcome, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Dunning tick: tenants past_due for stripe.auto_suspend_days (by the
 * clock) become suspended, each transition recorded and signalled once.
 * @param[out] n transitions made (may be NULL)
 */
int tally_stripe_sync_dunning(tally_stripe_sync *ss, int *n, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Report closed hours of usage_hourly (meter ai.tokens: input + output
 * tokens) to POST /v1/billing/meter_events for tenants with a Stripe
 * customer. Identifier = "tly-" + hash(tenant, meter, hour) + "-r<rev>";
 * late usage for a reported hour goes out as a delta with the next
 * revision. Hours older than 35 days are recorded as outside_window.
 * Rate-limited to opts.meter_rate_per_s.
 * @param[out] n meter events sent (may be NULL)
 */
int tally_stripe_sync_report_meters(tally_stripe_sync *ss, int *n,
				    tally_error *err) TALLY_MUSTCHECK;

/**
 * Page through Stripe's subscriptions and invoices and write each
 * difference from PostgreSQL to out (one line each: missing, status,
 * amount, period). With apply, PostgreSQL is fixed from Stripe.
 * @param[out] ndiff differences found (may be NULL)
 */
int tally_stripe_sync_reconcile(tally_stripe_sync *ss, bool apply, FILE *out,
				int *ndiff, tally_error *err) TALLY_MUSTCHECK;

/**
 * Publish unpublished signals from the outbox to topic (key = tenant id,
 * value = JSON per schemas/signals.md), wait for delivery, mark them.
 * @param[out] n signals published (may be NULL)
 */
int tally_stripe_sync_publish(tally_stripe_sync *ss, rd_kafka_t *producer,
			      const char *topic, int *n, tally_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_STRIPE_SYNC_H */
