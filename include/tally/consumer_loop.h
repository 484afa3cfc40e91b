#ifndef TALLY_CONSUMER_LOOP_H
#define TALLY_CONSUMER_LOOP_H

/**
 * @file tally/consumer_loop.h
 * @brief The loop every exactly-once consumer runs (tally-aggregate,
 *        tally-alerts): message views, batch gathering, one batch retried
 *        with back-off behind the PostgreSQL position fence, stop on a
 *        signal, and the rebalance callbacks that read positions from
 *        consumer_offsets.
 *
 * The engines (tally_agg, tally_alerts) keep the positions and the fence;
 * this module is the policy around them, so that each consumer does not
 * write its own: what is retried and how long, when a batch is given up,
 * what is logged (events "<name>.fenced", "<name>.retry",
 * "<name>.batch_failed", "<name>.assign_failed", "<name>.reseek_failed")
 * and counted.
 *
 * tally-aggregate and tally-alerts use all of it. tally-rate runs
 * tally_loop_run and tally_loop_gather_into; its retry stays its own (a
 * failed Kafka transaction is aborted, the consumer rewound and the batch
 * polled again by the next step, see tally/rate_consumer.h). tally-stripe
 * runs tally_loop_run, tally_loop_gather_into and tally_loop_batch for
 * each message (its own back-off, no fence: effects are idempotent).
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/metrics.h"

/** One consumed message (a view: nothing is owned). */
typedef struct tally_kafka_msg {
	const char *topic;
	int32_t partition;
	int64_t offset;
	const void *payload;
	size_t len;
	const rd_kafka_message_t *rkm; /* for the DLQ copy; may be NULL */
} tally_kafka_msg;

/**
 * The view of m. topic: the name the view points to (NULL: m's topic
 * name, valid as long as m is).
 */
void tally_kafka_msg_view(tally_kafka_msg *v, const rd_kafka_message_t *m,
			  const char *topic);

/* ------------------------------------------------------------------ */
/* gathering a batch                                                   */

/** Messages polled at most at a time by tally_loop_gather(). */
#define TALLY_GATHER_CHUNK 2048

/** Where a batch being gathered goes (the consumer's own buffers). */
typedef struct tally_gather_ops {
	/** how many more messages the batch takes (0: it is full) */
	size_t (*room)(void *ctx);
	/** take over msgs[0, n); first: the first ones since the start or
	 *  the last drop (e.g. the batch's clock starts) */
	void (*take)(void *ctx, rd_kafka_message_t **msgs, size_t n,
		     bool first);
	/** a rebalance: destroy what was taken (the old assignment's) */
	void (*drop)(void *ctx);
	void *ctx;
} tally_gather_ops;

/**
 * Poll chunks of at most TALLY_GATHER_CHUNK messages into ops until room()
 * says the batch is full or timeout_ms have passed. A rebalance while
 * gathering drops what came before it.
 * @return the messages taken since the last drop
 */
size_t tally_loop_gather(tally_consumer *c, const tally_gather_ops *ops,
			 int timeout_ms);

/**
 * tally_loop_gather() into msgs[0, max) (for a consumer whose batch is a
 * plain array, e.g. tally-rate, tally-stripe).
 * @return the messages in msgs, owned by the caller
 */
size_t tally_loop_gather_into(tally_consumer *c, rd_kafka_message_t **msgs,
			      size_t max, int timeout_ms);

/* ------------------------------------------------------------------ */
/* one batch: retry, back-off, fence                                   */

/** How a batch ended (tally_loop_batch). */
enum tally_batch_outcome {
	TALLY_BATCH_COMMITTED,
	TALLY_BATCH_FENCED,    /* nothing written: re-seek, then go on */
	TALLY_BATCH_ABANDONED, /* stop or revocation: not committed */
	TALLY_BATCH_FATAL      /* failed for good (logged): exit */
};

/**
 * The rows of a tally_metric_def table (tally/metrics.h) for the counters
 * of a consumer of this loop, name a string literal (e.g. "aggregate"):
 * tally_<name>_batches_total (committed batches), and the c_fenced and
 * c_retries of tally_batch_ops.
 */
#define TALLY_LOOP_METRIC_DEFS(name, batches, fenced, retries)             \
	{ "tally_" name "_batches_total", NULL, "Committed batches",       \
	  (batches) },                                                     \
	{ "tally_" name "_fenced_total", NULL,                             \
	  "Batches refused by the consumer_offsets fence", (fenced) },     \
	{ "tally_" name "_retries_total", NULL,                            \
	  "Batch attempts that failed and were retried", (retries) }

typedef struct tally_batch_ops {
	const char *name; /* log event prefix, e.g. "aggregate" */
	int lane;         /* logged as "lane" when >= 0 */
	/** one attempt: 0, TALLY_EFENCED, TALLY_ETRANSIENT or an error */
	int (*attempt)(void *ctx, tally_error *err);
	/** give up now (a revocation); NULL: only on a stop signal */
	bool (*abandon)(void *ctx);
	/** after a failure that is not transient (e.g. maintenance, which
	 *  creates a missing partition); may be NULL */
	void (*failed)(void *ctx);
	/** after each back-off wait (e.g. serve delivery reports); may be
	 *  NULL */
	void (*waited)(void *ctx);
	/** PostgreSQL reachable (after a commit) or not (a transient
	 *  failure), for /healthz; may be NULL */
	void (*health)(void *ctx, bool ok);
	tally_counter *c_fenced, *c_retries; /* may be NULL */
	/** back-off between attempts; 0: 200 ms .. 10 s */
	int64_t backoff_min_ms, backoff_max_ms;
	/** attempt() logs its own failures: no "<name>.retry" */
	bool quiet_retries;
	void *ctx;
} tally_batch_ops;

/**
 * Run attempts until one commits or is fenced. A transient failure is
 * retried for as long as it lasts, any other 5 times, with exponential
 * back-off (200 ms .. 10 s unless ops say) between attempts; a stop
 * signal or abandon()
 * ends the wait and the batch (not committed: redone from
 * consumer_offsets by whoever owns the partition next).
 */
enum tally_batch_outcome tally_loop_batch(const tally_batch_ops *ops);

/* ------------------------------------------------------------------ */
/* rebalances and re-seeking                                           */

/** The consumer's side of a rebalance (payload of the callbacks). */
typedef struct tally_rebalance_ops {
	const char *name; /* log event prefix */
	/** positions of parts from consumer_offsets (e.g. tally_agg_assign) */
	int (*assign)(void *ctx, rd_kafka_topic_partition_list_t *parts,
		      tally_error *err);
	/** forget the fence values of parts (e.g. tally_agg_revoke) */
	void (*revoke)(void *ctx, const rd_kafka_topic_partition_list_t *parts);
	/** before either: finish the work in flight (revoking: give up
	 *  what is retrying); NULL when batches run between polls */
	void (*drain)(void *ctx, bool revoking);
	void *ctx;
	/* kafka.rejoin_timeout_ms (tally_consumer_opts); 0: no check */
	int64_t rejoin_timeout_ms;
} tally_rebalance_ops;

/**
 * Subscribe as group to topics (NULL-terminated), read_committed, with
 * rebalances handled by rb (borrowed: it must outlive the consumer) and
 * the lag of each partition exported on m (NULL: none). conf is taken
 * over. Logs kafka.consumer_failed on failure.
 */
int tally_loop_consumer_new(tally_consumer **out, rd_kafka_conf_t *conf,
			    const char *group, const char **topics,
			    const tally_rebalance_ops *rb, tally_metrics *m,
			    tally_error *err)
	TALLY_MUSTCHECK;

/**
 * A consumer conf from cfg with session.timeout.ms from
 * kafka.session_timeout_ms and room (max.poll.interval.ms 10 min) for a
 * batch that waits out a PostgreSQL restart.
 */
rd_kafka_conf_t *tally_loop_consumer_conf(tally_config *cfg);

/**
 * After a fence: reseek_rc is what re-seeking the batch's partitions to
 * PostgreSQL's positions returned (e.g. tally_agg_reseek). Logs
 * "<name>.reseek_failed" when it failed: going on would skip what was not
 * committed (a restart seeks every partition from PostgreSQL).
 * @return reseek_rc
 */
int tally_loop_reseeked(const char *name, int reseek_rc,
			const tally_error *err);

/* ------------------------------------------------------------------ */
/* the loop                                                            */

/**
 * Call step(ctx) until a stop signal or until it returns non-zero; on
 * SIGHUP, reload(ctx) first (may be NULL).
 * @return 0 on a stop, else step's value
 */
int tally_loop_run(int (*step)(void *ctx), void (*reload)(void *ctx),
		   void *ctx);

#endif /* TALLY_CONSUMER_LOOP_H */
