#ifndef TALLY_PRODUCER_H
#define TALLY_PRODUCER_H

/**
 * @file tally/producer.h
 * @brief The producer API for workflow engines: publish usage events (and
 *        commands) to Kafka safely and cheaply.
 *
 * - Idempotent producer (enable.idempotence=true, acks=all): a retry inside
 *   librdkafka never duplicates or reorders a message.
 * - Every event is validated by the strict codec before it is queued, so a
 *   bad event is refused at the caller (TALLY_EINVALID) instead of becoming
 *   a dead letter downstream.
 * - Message key = tenant id (36-char text); value = msgpack (schemas/);
 *   CloudEvents Kafka-binding headers ce_id, ce_source, ce_type, ce_time,
 *   ce_specversion=1.0 and content-type=application/msgpack.
 * - Delivery results are reported per message through the on_delivery
 *   callback, which runs inside tally_producer_poll() / _flush() on the
 *   calling thread, with the opaque passed to send.
 *
 * Threads: send/poll/flush may be called from several threads (sends are
 * serialised by an internal mutex, the _sb sends are not); callbacks run on
 * the polling thread (several threads polling: on any of them).
 */

#include <stdbool.h>
#include <stdint.h>

#include "tally/command.h"
#include "tally/common.h"
#include "tally/config.h"
#include "tally/event.h"

typedef struct tally_producer tally_producer;

/** Outcome of one message. */
typedef struct tally_delivery {
	int code;            /* 0, or TALLY_ETRANSIENT / TALLY_ERROR */
	const char *errstr;  /* librdkafka's text when code != 0 */
	const char *topic;
	int32_t partition;
	int64_t offset;      /* -1 when not delivered */
	void *opaque;        /* as given to send */
} tally_delivery;

typedef void (*tally_delivery_fn)(const tally_delivery *dr, void *payload);

typedef struct tally_producer_opts {
	const char *topic;           /* NULL: config topics.usage */
	tally_delivery_fn on_delivery; /* may be NULL */
	void *payload;               /* for on_delivery */
	const char *ce_source;       /* ce_source of commands; NULL: "tally" */
	int linger_ms;               /* 0: 5 ms */
	bool bulk;                   /* large batches (backfills): linger_ms
				      * then matters more than latency */
	int message_timeout_ms;      /* 0: librdkafka's default (300 s) */
} tally_producer_opts;

/**
 * Create a producer from cfg (kafka.brokers, kafka.client_id, ...).
 * opts may be NULL for defaults. cfg is only read during the call.
 * @param[out] out  free with tally_producer_free()
 * @return 0 or TALLY_ERROR / TALLY_EINVALID with err filled
 */
int tally_producer_new(tally_producer **out, const tally_config *cfg,
		       const tally_producer_opts *opts, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Validate, encode and queue one usage event on the producer's topic.
 * Copies everything: ev may be reused as soon as the call returns. When the
 * local queue is full the call serves delivery reports and waits (up to
 * 10 s) for room.
 * @return 0 (queued: exactly one on_delivery follows), TALLY_EINVALID (bad
 *         event; nothing queued, reason in err), TALLY_ETRANSIENT (queue
 *         stayed full) or TALLY_ERROR (fatal producer error)
 */
int tally_producer_send_usage(tally_producer *p, const tally_usage_event *ev,
			      void *opaque, tally_error *err) TALLY_MUSTCHECK;

/** Same for a rated event (topic: as configured in opts). */
int tally_producer_send_rated(tally_producer *p, const tally_rated_event *re,
			      void *opaque, tally_error *err) TALLY_MUSTCHECK;

/** Same for a command (topic: as configured in opts). */
int tally_producer_send_command(tally_producer *p, const tally_command *cmd,
				void *opaque, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * The three sends above, encoding into sb (the caller's msgpack_sbuffer,
 * reused; one per thread) instead of the producer's own buffer, so
 * threads sending at once do not wait for each other.
 */
int tally_producer_send_usage_sb(tally_producer *p,
				 const tally_usage_event *ev,
				 struct msgpack_sbuffer *sb, void *opaque,
				 tally_error *err) TALLY_MUSTCHECK;
int tally_producer_send_rated_sb(tally_producer *p,
				 const tally_rated_event *re,
				 struct msgpack_sbuffer *sb, void *opaque,
				 tally_error *err) TALLY_MUSTCHECK;
int tally_producer_send_command_sb(tally_producer *p,
				   const tally_command *cmd,
				   struct msgpack_sbuffer *sb, void *opaque,
				   tally_error *err) TALLY_MUSTCHECK;

/**
 * Queue an already-encoded message with the tally key/headers; used by the
 * generator. value is copied. ce_type/ce_id/ce_source as given.
 */
int tally_producer_send_raw(tally_producer *p, const uint8_t tenant[16],
			    const char *ce_id, uint32_t ce_id_len,
			    const char *ce_source, uint32_t ce_source_len,
			    const char *ce_type, int64_t time_ms,
			    const void *value, size_t len, void *opaque,
			    tally_error *err) TALLY_MUSTCHECK;

/** Serve delivery reports; returns how many were served. */
int tally_producer_poll(tally_producer *p, int timeout_ms);

/**
 * Wait until every queued message has its delivery report (served to
 * on_delivery) or timeout_ms passes.
 * @return 0, or TALLY_ETRANSIENT with the number still queued in err
 */
int tally_producer_flush(tally_producer *p, int timeout_ms, tally_error *err)
	TALLY_MUSTCHECK;

/** Messages queued but not yet reported. */
int tally_producer_outstanding(tally_producer *p);

/** Counters since creation. */
void tally_producer_counts(tally_producer *p, uint64_t *delivered,
			   uint64_t *failed);

/** The underlying librdkafka handle (borrowed), e.g. for admin calls. */
struct rd_kafka_s *tally_producer_rk(tally_producer *p);

/**
 * Flush (up to 30 s) and destroy. Reports still pending after that are
 * lost to the caller (logged). NULL is a no-op.
 */
void tally_producer_free(tally_producer *p);

#endif /* TALLY_PRODUCER_H */
