#ifndef TALLY_RELAY_H
#define TALLY_RELAY_H

/**
 * @file tally/relay.h
 * @brief tally-relay: Stripe webhooks and usage events onto Kafka, verified,
 *        durable before any 2xx.
 *
 * An HTTP server (libmicrohttpd, internal thread pool) accepts
 * `POST relay.path`, verifies `Stripe-Signature` (tally/webhook.h) with
 * relay.webhook_secret and relay.webhook_secret_previous, checks that the
 * body is a Stripe event (JSON object, "id" starting "evt_", "type"), and
 * produces the raw body to topics.stripe_events with the idempotent
 * producer (acks=all). The connection is suspended until librdkafka's
 * delivery report arrives: 200 only when it succeeded, 503 when Kafka could
 * not take the event within relay.produce_timeout_ms. Key: the customer id
 * (data.object.customer, or data.object.id for a customer object), else
 * the event id. Headers: stripe-signature, received-at (unix ms),
 * content-type. Rejections: 400 (signature, timestamp, body; counted by
 * reason, never produced; a request without a plausible signature header
 * before its body is read), 413 (> relay.max_body, or a record too large
 * for Kafka), 405 / 404. A body not complete within relay.body_timeout_ms
 * or past the relay-wide relay.max_buffered closes its connection
 * (counted as 408 body_timeout / 503 busy). Connections are bounded in
 * all, per address, in memory and in idle time.
 * The same listener takes usage events on `POST relay.intake_path`
 * (default /v1/events; "" turns it off): JSON, JSON arrays and CloudEvents
 * (structured and batched), authenticated by per-tenant API keys
 * (tally/api_keys.h, read from database.url and trusted for
 * relay.key_ttl_ms), rate-limited per key by the tenant's plan (429 with
 * Retry-After), each event validated by the codec and checked against the
 * key's tenant, the valid ones produced to topics.usage (tally/producer.h,
 * acks=all): 202 when all are acknowledged, 207 listing each rejected
 * index with its reason and field, 503 when Kafka did not take them in
 * time (docs/relay.md).
 * A separate listener (relay.admin_listen) serves /healthz, /readyz (Kafka
 * reachable) and /metrics.
 */

#include <stddef.h>

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

typedef struct tally_relay tally_relay;

/**
 * Create the producer and start listening on relay.listen.
 * @param cfg     read during the call only
 * @param m       borrowed registry for the relay's series; must outlive it
 * @return 0, TALLY_EINVALID (no webhook secret, bad listen address, bad
 *         Kafka setting, relay.max_body too large for message.max.bytes)
 *         or TALLY_ERROR (cannot bind)
 */
int tally_relay_new(tally_relay **out, const tally_config *cfg,
		    tally_metrics *m, tally_error *err) TALLY_MUSTCHECK;

/** The bound TCP port (useful with "HOST:0"). */
int tally_relay_port(const tally_relay *r);

/** The admin listener's bound TCP port (relay.admin_listen). */
int tally_relay_admin_port(const tally_relay *r);

/**
 * Apply the reloadable keys of cfg (relay.tolerance_s). Call from the
 * thread that owns cfg, after tally_config_reload().
 */
void tally_relay_reload(tally_relay *r, const tally_config *cfg);

/**
 * True when the producer hit a fatal error (idempotence broken): the
 * process should exit non-zero and be restarted.
 */
int tally_relay_failed(const tally_relay *r);

/**
 * Stop accepting connections, answer 503 to requests that arrive on open
 * connections, wait for every produced event's delivery report (bounded by
 * relay.produce_timeout_ms), flush and stop the server. Idempotent.
 */
void tally_relay_stop(tally_relay *r);

/** Stop (if needed) and free. NULL is a no-op. */
void tally_relay_free(tally_relay *r);

#endif /* TALLY_RELAY_H */
