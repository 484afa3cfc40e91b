#ifndef TALLY_KAFKA_H
#define TALLY_KAFKA_H

/**
 * @file tally/kafka.h
 * @brief Kafka plumbing shared by every consumer: configuration from
 *        tally_config, librdkafka's log routed into the JSON log, a batch
 *        consumer with manual offset store whose rebalance callback lets the
 *        caller choose start offsets (from PostgreSQL), and a dead-letter
 *        producer that keeps the original bytes and adds reason headers.
 *
 * Offsets: enable.auto.offset.store=false; the caller stores offsets with
 * tally_consumer_store() only after the data they cover is committed.
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"

/**
 * A new librdkafka conf with bootstrap servers, client.id, the log and
 * error callbacks, the properties of kafka.properties and of the program's
 * own list (e.g. rate.kafka.properties: security.protocol, sasl.username,
 * ssl.ca.location ...), then sasl.password and ssl.key.password from
 * $KAFKA_SASL_PASSWORD / $KAFKA_SSL_KEY_PASSWORD. Caller owns it
 * (rd_kafka_conf_destroy or hand it to rd_kafka_new).
 */
rd_kafka_conf_t *tally_kafka_conf(const tally_config *cfg);

/**
 * The error callback tally_kafka_conf() installs: logs kafka.error, and
 * kafka.auth_failed for authentication and TLS failures, which it also
 * remembers for the start-up check of tally_kafka_producer_new() and
 * tally_consumer_new(). A caller that sets its own error callback calls
 * this one from it to keep that check.
 */
void tally_kafka_error_cb(rd_kafka_t *rk, int err, const char *reason,
			  void *opaque);

/** Set one property; returns 0 or TALLY_EINVALID with librdkafka's text. */
int tally_kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
			 const char *value, tally_error *err) TALLY_MUSTCHECK;

/**
 * A program's tuned default for one property: set unless the
 * configuration's kafka.properties or the program's own list names it
 * (an operator's value wins over the built-in tuning). Returns 0 or
 * TALLY_EINVALID with librdkafka's text.
 */
int tally_kafka_conf_default(rd_kafka_conf_t *conf, const tally_config *cfg,
			     const char *name, const char *value,
			     tally_error *err) TALLY_MUSTCHECK;

/** tally_kafka_conf_default() for each {name, value} pair of kv, in
 * order; stops at the first error. */
int tally_kafka_conf_defaults(rd_kafka_conf_t *conf, const tally_config *cfg,
			      const char *const kv[][2], size_t n,
			      tally_error *err) TALLY_MUSTCHECK;

/**
 * Create a producer from conf (which it takes ownership of, even on error).
 * The idempotent producer is on unless the caller set it otherwise.
 * Like tally_consumer_new(), it first asks the broker for metadata (up to
 * 10 s): a rejected password or an untrusted certificate fails here with
 * TALLY_EINVALID and librdkafka's cause (which names the broker), instead
 * of being retried for ever. The check relies on tally_kafka_error_cb()
 * being called (tally_kafka_conf() installs it).
 */
int tally_kafka_producer_new(rd_kafka_t **out, rd_kafka_conf_t *conf,
			     tally_error *err) TALLY_MUSTCHECK;

/**
 * Called on assignment with the partitions about to be assigned; set each
 * element's .offset to where consumption must start (e.g. from
 * consumer_offsets), or leave RD_KAFKA_OFFSET_INVALID for the committed
 * Kafka offset. Return non-zero to fail (the consumer retries the
 * assignment after a backoff).
 */
typedef int (*tally_assign_fn)(rd_kafka_topic_partition_list_t *parts,
			       void *payload);
/** Called before partitions are taken away: abandon in-flight work. */
typedef void (*tally_revoke_fn)(rd_kafka_topic_partition_list_t *parts,
				void *payload);

typedef struct tally_consumer tally_consumer;

typedef struct tally_consumer_opts {
	const char *group;
	const char **topics;     /* NULL-terminated */
	bool read_committed;
	tally_assign_fn on_assign; /* may be NULL */
	tally_revoke_fn on_revoke; /* may be NULL */
	void *payload;
	/* consumer lag gauges go here (src/io/kafka_lag.h); NULL: none */
	tally_metrics *metrics;
	/* kafka.rejoin_timeout_ms: longest wait for an assignment while a
	 * broker answers before the consumer counts as stalled
	 * (src/io/kafka_stall.h); 0: no such check */
	int64_t rejoin_timeout_ms;
} tally_consumer_opts;

/** conf is taken over, even on error. */
int tally_consumer_new(tally_consumer **out, rd_kafka_conf_t *conf,
		       const tally_consumer_opts *opts, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Fill msgs with up to max messages, waiting at most timeout_ms for the
 * batch to fill. Partition EOFs are skipped; consumer errors are logged.
 * If a rebalance happens while the batch fills, the messages gathered so far
 * are destroyed and the call returns what arrived after it (positions are
 * reset by the assign callback anyway).
 * @return number of messages; caller destroys each with
 *         rd_kafka_message_destroy().
 */
size_t tally_consumer_poll_batch(tally_consumer *c, rd_kafka_message_t **msgs,
				 size_t max, int timeout_ms);

/** Incremented on every assignment change; lets callers detect rebalances. */
unsigned tally_consumer_generation(const tally_consumer *c);

/**
 * True once the consumer held no assignment for longer than
 * opts.rejoin_timeout_ms while a broker answered: it logged
 * kafka.consumer_stalled and asked the loop to stop
 * (tally_signals_request_stop()); tally_consumer_free() then closes it
 * with a bounded wait.
 */
bool tally_consumer_stalled(const tally_consumer *c);

/** True once any consumer of this process stalled (exit status 1). */
bool tally_kafka_stalled(void);

/**
 * Store (for the next Kafka commit) offset+1 of the last message of each
 * partition in msgs. Call only after the data is durable.
 */
int tally_consumer_store(tally_consumer *c, rd_kafka_message_t **msgs,
			 size_t n, tally_error *err) TALLY_MUSTCHECK;

/**
 * The same from positions kept apart from their messages: note() raises
 * the offset to store for (topic, partition) in l to offset+1; store_list()
 * stores l (empty: nothing). Call store_list() only after the data is
 * durable.
 */
void tally_offsets_note(rd_kafka_topic_partition_list_t *l, const char *topic,
			int32_t partition, int64_t offset);
int tally_consumer_store_list(tally_consumer *c,
			      const rd_kafka_topic_partition_list_t *l,
			      tally_error *err) TALLY_MUSTCHECK;

rd_kafka_t *tally_consumer_rk(tally_consumer *c);

/** Leave the group cleanly (commits stored offsets) and destroy. */
void tally_consumer_free(tally_consumer *c);

/**
 * Produce a copy of rkm (key, value, headers) to dlq_topic with headers
 * x-tally-reason (stable code), x-tally-detail, x-tally-source-topic,
 * x-tally-source-partition, x-tally-source-offset, x-tally-consumer.
 * Asynchronous; the caller flushes or commits its transaction.
 */
int tally_dlq_send(rd_kafka_t *producer, const char *dlq_topic,
		   const rd_kafka_message_t *rkm, const char *consumer,
		   const char *reason, const char *detail, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Create topics if missing (admin API); partitions per topic. Used by
 * tests and `tally topics create`.
 */
int tally_kafka_create_topics(rd_kafka_t *rk, const char **topics,
			      int partitions, tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_KAFKA_H */
