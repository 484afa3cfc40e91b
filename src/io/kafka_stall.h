#ifndef TALLY_IO_KAFKA_STALL_H
#define TALLY_IO_KAFKA_STALL_H

/*
 * kafka_stall.h - the liveness check of a subscribed consumer
 * (kafka.rejoin_timeout_ms, docs/operations.md "Consumer liveness").
 *
 * A consumer that has held no assignment (no assign callback since it
 * subscribed or since its last revoke) for longer than the limit while a
 * broker answers a metadata request is stuck in librdkafka's group
 * protocol: a rebalance that never completes (for example an unassign
 * that waits for an offset commit to a coordinator that never answers).
 * The check then logs kafka.consumer_stalled, counts it, sets
 * tally_consumer_stalled() and asks the loop to stop; the program exits
 * non-zero and its supervisor starts it again. A broker that does not
 * answer is an outage, not a stall: the check waits for it.
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

#include "tally/metrics.h"

typedef struct tally_kafka_stall {
	int64_t limit_ns;         /* 0: the check is off */
	int64_t unassigned_since; /* mono ns; 0 while an assignment is held */
	int64_t counted_from;     /* mono ns: the wait the limit applies to
				   * (restarts when a probe finds no broker) */
	int64_t next_probe;       /* mono ns: no metadata probe before */
	int64_t gauge_at;         /* mono ns of the last gauge update */
	rd_kafka_conf_t *probe;   /* the probe client's conf (owned) */
	bool fired;
} tally_kafka_stall;

/*
 * The conf of the probe client from a consumer's conf (brokers, security,
 * the log and error callbacks; none of the group's properties), or NULL.
 */
rd_kafka_conf_t *tally_kafka_stall_conf(const rd_kafka_conf_t *consumer);

/* Start without an assignment at now (the consumer subscribes); probe is
 * taken over (NULL only with the check off). */
void tally_kafka_stall_init(tally_kafka_stall *s, int64_t limit_ms,
			    rd_kafka_conf_t *probe, int64_t now);

void tally_kafka_stall_free(tally_kafka_stall *s);

/* The assign callback ran (an empty assignment counts: the group is
 * steady, this member simply has no partition). */
void tally_kafka_stall_assigned(tally_kafka_stall *s);

/* The revoke callback ran: the wait for the next assignment starts. */
void tally_kafka_stall_revoked(tally_kafka_stall *s, int64_t now);

/*
 * Called between polls. Updates the gauge
 * tally_kafka_consumer_unassigned_seconds{group} (m may be NULL). Without
 * an assignment, probes the brokers from a quarter of the limit after the
 * wait began, then every quarter of the limit (at most every 5 s), with a
 * client of its own (a metadata request, at most 2 s:
 * the consumer's own handle may be the one that cannot reach them): when
 * none answers, the wait counts again from then, so that the group gets
 * the whole limit to settle once Kafka is back; past the limit with a
 * broker answering, it fires. Returns true when it fired now.
 */
bool tally_kafka_stall_check(tally_kafka_stall *s, const char *group,
			     tally_metrics *m);

/* True once any consumer of the process fired (the exit status). */
bool tally_kafka_stall_seen(void);

/*
 * Close and destroy a consumer whose group protocol is stuck: on a thread,
 * waiting at most wait_ms for it (consumer_close() and destroy() wait for
 * the same rebalance that never completes); past that the handle is left
 * to the process exit. q (may be NULL) is destroyed first.
 */
void tally_kafka_stall_close(rd_kafka_t *rk, rd_kafka_queue_t *q,
			     int wait_ms);

#endif /* TALLY_IO_KAFKA_STALL_H */
