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
 *   transaction, and are published from there (tally_stripe_sync_publish):
 *   a row is marked published only when its own Kafka delivery report says
 *   it was delivered. Publication is at-least-once: a crash between the
 *   delivery and the mark publishes the signal again after a restart, with
 *   the same signal id (receivers dedupe on it); a row marked published is
 *   never produced again.
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
	int publish_wait_ms;        /* wait for delivery reports; 0: 10 s */
} tally_stripe_sync_opts;

int tally_stripe_sync_new(tally_stripe_sync **out,
			  const tally_stripe_sync_opts *opts, tally_error *err)
	TALLY_MUSTCHECK;
/** Free; destroy the signals producer first (signals in flight are
 *  forgotten: their rows stay unpublished). NULL is a no-op. */
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
 * Install the delivery report callback that signal publishing relies on
 * (rd_kafka_conf_set_dr_msg_cb) on the conf of the signals producer, before
 * rd_kafka_new. A program with its own dr_msg_cb calls
 * tally_stripe_sync_on_delivery() from it instead.
 */
void tally_stripe_sync_producer_conf(rd_kafka_conf_t *conf);

/**
 * Record the delivery report of a signal message (its per-message opaque
 * identifies the outbox row). Call from the producer's dr_msg_cb.
 * @return true if rkm was a signal, false for any other message
 */
bool tally_stripe_sync_on_delivery(const rd_kafka_message_t *rkm);

/**
 * Publish unpublished signals from the outbox to topic (key = tenant id,
 * value = JSON per schemas/signals.md, header signal-id), each with a
 * per-message opaque; serve delivery reports (rd_kafka_poll) for up to
 * opts.publish_wait_ms; mark published exactly the rows whose report was
 * successful. Failed deliveries leave their rows unpublished (produced
 * again on a later call); reports still missing at the deadline stay in
 * flight and are settled by a later call (their signals are not produced
 * again meanwhile). Call from the thread that polls producer, always with
 * the producer and topic of the first call.
 * @param[out] n rows marked published by this call (may be NULL)
 * @return 0; TALLY_ETRANSIENT when a delivery failed, a produce call
 *         failed or reports are still missing; TALLY_EINVALID for another
 *         producer or topic; PostgreSQL errors
 */
int tally_stripe_sync_publish(tally_stripe_sync *ss, rd_kafka_t *producer,
			      const char *topic, int *n, tally_error *err)
	TALLY_MUSTCHECK;

/** Signals produced whose delivery report has not been settled. */
int tally_stripe_sync_signals_in_flight(const tally_stripe_sync *ss);

#endif /* TALLY_STRIPE_SYNC_H */
