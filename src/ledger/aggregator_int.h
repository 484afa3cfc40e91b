#ifndef TALLY_AGGREGATOR_INT_H
#define TALLY_AGGREGATOR_INT_H

/*
 * aggregator_int.h - tally-aggregate's pipeline (private to libtally):
 * aggregator.c (new, run, free), aggregator_lanes.c (the PostgreSQL
 * threads), aggregator_gather.c (batches from Kafka, decoded ahead),
 * aggregator_kafka.c (the consumer: tuning, rebalances) and
 * aggregator_housekeeping.c (maintenance, prices, outbox, metrics).
 */

#include "tally/aggregate.h"
#include "tally/aggregator.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/pricebook.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

typedef struct tally_aggregator tally_aggregator;


/* One lane's part of a batch: the messages (owned) and their views. */
typedef struct job {
	rd_kafka_message_t **msgs; /* NULL once detached (tally_agg_detach_range) */
	tally_agg_msg *views;
	size_t n, cap;
	tally_agg_decoded *dec; /* decoded by the poll thread (ahead) */
	bool *keep;             /* messages that must stay (dead letters) */
	int64_t now_ms;         /* the batch's clock for the time window */
	char *topics[8];        /* names the views point to (job-owned) */
	size_t ntopics;
} job;

/* PostgreSQL thread state */
enum { W_IDLE, W_BUSY, W_DONE };

#define MAX_LANES 8

/*
 * A lane: one PostgreSQL thread with its own connection, aggregator and
 * producer (whose delivery reports reach only this lane's tally_agg). The
 * lane's agg, pg and producer are used by its thread while state is
 * W_BUSY and by the poll thread otherwise (tally_aggregator.mu hands
 * them over).
 */
typedef struct lane {
	tally_aggregator *a;
	int idx;
	tally_pg *pg;
	tally_agg *agg;
	rd_kafka_t *producer;
	pthread_t worker;
	bool started;
	int state, result;
	job jobs[2];          /* its part of the batch in flight / gathered */
	job *cur;             /* in flight (or finished, not yet collected) */
	int64_t busy_ns;      /* time in its last batch */
} lane;

struct tally_aggregator {
	tally_config *cfg;
	tally_pg *pg;         /* housekeeping: maintenance, prices */
	tally_consumer *consumer;
	tally_rebalance_ops rb; /* the consumer's rebalance callbacks */
	tally_metrics *m;
	bool own_m;           /* m is ours to free */
	bool sync_init;       /* mu and the condition variables exist */
	int64_t last_maint, last_tick, empty_polls;
	tally_counter *c_accepted, *c_dup, *c_dlq, *c_adj, *c_batches,
		*c_fenced, *c_retries, *c_gaps, *c_fallbacks,
		*c_known;
	tally_pricebook *pb;  /* storage GB-month prices */
	int64_t pb_version;
	tally_histogram *h_batch;
	tally_histogram *h_event_lag; /* event time to commit, accepted events */
	atomic_int pg_ok;     /* set by the lanes, read by /healthz */
	lane lanes[MAX_LANES];
	int nlanes;
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_done;
	bool quit;
	atomic_int abandon;   /* revocation: stop retrying the batch */
	bool fatal;           /* a batch failed for good */
	bool discard_next;    /* fenced: the batch gathered meanwhile is stale */
	int next;             /* index of the jobs to gather into */
	bool trace;
	/* maintenance settings, copied by the poll thread (start, reload) */
	int lateness_days;    /* set once at start: not reloadable */
	atomic_int ahead_days, retention_days;
};

/* aggregator_lanes.c */
int aggr_lane_of(const tally_aggregator *a, int32_t partition);
size_t aggr_lane_cap(const tally_aggregator *a, size_t max);
int aggr_lane_open(tally_aggregator *a, lane *ln, int idx, tally_error *err);
void *aggr_worker_main(void *arg);
int aggr_finish_batch(tally_aggregator *a, bool rebalance);
void aggr_start_batch(tally_aggregator *a, int slot);

/* aggregator_gather.c */
size_t aggr_gather(tally_aggregator *a, int slot, size_t max, int timeout_ms);
/* go on gathering into jobs[slot] for at most timeout_ms (the batch's
 * clock kept); returns the batch's messages so far (0 after a rebalance
 * dropped them); *full: a lane's part is full, nothing was polled */
size_t aggr_gather_more(tally_aggregator *a, int slot, size_t max,
			int timeout_ms, bool *full);
/* true while a lane is still in the batch handed over */
bool aggr_lanes_busy(tally_aggregator *a);
int aggr_store_offsets(tally_aggregator *a, const job *j, tally_error *err);
void aggr_job_reserve(job *j, size_t cap);
void aggr_job_clear(job *j);
void aggr_job_free(job *j);

/* aggregator_kafka.c */
int aggr_consumer_open(tally_aggregator *a, tally_error *err);

/* aggregator_housekeeping.c */
void aggr_maint_settings(tally_aggregator *a);
int aggr_maintain(tally_aggregator *a, tally_pg *pg);
void aggr_storage_rollover(tally_aggregator *a);
int aggr_load_prices(tally_aggregator *a);
void aggr_outbox_all(tally_aggregator *a, bool republish);
void aggr_register_metrics(tally_aggregator *a);
void aggr_housekeeping(tally_aggregator *a);

#endif /* TALLY_AGGREGATOR_INT_H */
