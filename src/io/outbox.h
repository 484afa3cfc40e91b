/*
 * outbox.h - the Kafka side of a transactional outbox (libtally-internal).
 *
 * A consumer commits rows that must reach a topic (totals, alerts,
 * signals) in its PostgreSQL transaction, produces them after the commit,
 * and marks them published once the broker acknowledged them; what is
 * never acknowledged stays unmarked and a sweep produces it again (at
 * least once; consumers of the topic are idempotent). The SQL (which rows,
 * how they are marked) is the caller's; this module produces, tracks each
 * message's row identity through its delivery report, and keeps the
 * acknowledged identities until the caller has marked them.
 *
 * Use: tally_outbox_produce() per row after the commit;
 * tally_outbox_delivered() (or tally_outbox_report(), when the callback
 * does not know the outbox) from the producer's dr_msg_cb (rd_kafka_poll
 * on the thread that owns the outbox); tally_outbox_acked() -> UPDATE ...
 * in a transaction -> after its commit tally_outbox_forget(); sweep only
 * when tally_outbox_inflight() is 0 (a row in flight would be sent twice),
 * or leave out the rows tally_outbox_each_inflight() names. Synchronous
 * publishers wait with tally_outbox_wait(). Not thread-safe.
 */
#ifndef TALLY_IO_OUTBOX_H
#define TALLY_IO_OUTBOX_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

#include "tally/common.h"

typedef struct tally_outbox tally_outbox;

/** One message of a row (views; copied by tally_outbox_produce). */
typedef struct tally_outbox_msg {
	const char *key;
	size_t key_len;
	const char *value;
	size_t len;
	/* the row's identity, ident_len bytes, handed back once
	 * acknowledged; NULL: the message is not tracked */
	const void *ident;
	/* name, value, name, value, ..., NULL; may be NULL */
	const char *const *headers;
} tally_outbox_msg;

/**
 * An outbox producing to topic (copied) with producer (borrowed; its
 * dr_msg_cb must call tally_outbox_delivered). ident_len: the size of a
 * row identity (> 0).
 */
tally_outbox *tally_outbox_new(rd_kafka_t *producer, const char *topic,
			       size_t ident_len);

/**
 * NULL is a no-op. Messages still in flight are forgotten (their rows stay
 * unmarked): free it after the producer is destroyed, or when no report
 * of its messages can be served any more.
 */
void tally_outbox_free(tally_outbox *o);

/**
 * Called from the delivery report of a tracked message that failed, with
 * its row identity (e.g. to log which row stays unmarked).
 */
typedef void (*tally_outbox_failed_fn)(const void *ident,
				       rd_kafka_resp_err_t err, void *ctx);

/** Set (or, fn NULL, clear) the failure callback. */
void tally_outbox_on_failure(tally_outbox *o, tally_outbox_failed_fn fn,
			     void *ctx);

/**
 * Produce m. @return 0, or TALLY_ETRANSIENT when the producer refused it
 * (e.g. its queue is full): the row stays unmarked for the sweep.
 */
int tally_outbox_produce(tally_outbox *o, const tally_outbox_msg *m,
			 tally_error *err) TALLY_MUSTCHECK;

/**
 * A delivery report: true if rkm was a tracked message of o (then counted
 * as acknowledged or failed), false otherwise (not o's: the caller's).
 */
bool tally_outbox_delivered(tally_outbox *o, const rd_kafka_message_t *rkm);

/**
 * A delivery report for whichever outbox tracked rkm (for a dr_msg_cb
 * that does not know the outbox): as tally_outbox_delivered() on it.
 */
bool tally_outbox_report(const rd_kafka_message_t *rkm);

/** Tracked messages produced and not reported yet. */
size_t tally_outbox_inflight(const tally_outbox *o);

/** Call fn with the identity of each tracked message in flight. */
void tally_outbox_each_inflight(const tally_outbox *o,
				void (*fn)(const void *ident, void *ctx),
				void *ctx);

/** Tracked messages whose delivery failed, since the outbox was made. */
size_t tally_outbox_failed(const tally_outbox *o);

/**
 * The identities acknowledged and not forgotten yet, oldest first: *n of
 * them, ident_len bytes each (valid until the next call on o).
 */
const void *tally_outbox_acked(const tally_outbox *o, size_t *n);

/** Forget the n oldest acknowledged identities (their mark committed). */
void tally_outbox_forget(tally_outbox *o, size_t n);

/**
 * Serve delivery reports until nothing tracked is in flight or timeout_ms
 * passed. @return what is still in flight
 */
size_t tally_outbox_wait(tally_outbox *o, int timeout_ms);

#endif
