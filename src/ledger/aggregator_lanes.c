/*
 * aggregator_lanes.c - tally-aggregate's lanes: one PostgreSQL thread per
 * lane, with its own connection, tally_agg and producer, committing its
 * part of each batch; the poll thread hands batches over and collects
 * them (docs/aggregate.md, "Lanes").
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregator_int.h"
#include "ledger/aggregate_int.h"
#include "base/calendar.h"
#include "tally/log.h"
#include "tally/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

/* The lane that writes a partition: fixed, so a lane keeps its partitions
 * (their fence values and the keys it committed lately) across batches. */
int aggr_lane_of(const tally_aggregator *a, int32_t partition)
{
	return (int)((uint32_t)partition % (uint32_t)a->nlanes);
}

/* A lane's part of a batch of max events: at most this many (memory). */
size_t aggr_lane_cap(const tally_aggregator *a, size_t max)
{
	return (max + (size_t)a->nlanes - 1) / (size_t)a->nlanes;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
	lane *ln = opaque;

	(void)rk;
	/* totals acknowledged: the outbox mark moves (runs on the thread
	 * that owns the lane at the time) */
	if (ln != NULL && ln->agg != NULL)
		tally_agg_delivered(ln->agg, rkm);
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		tally_log(TALLY_ERR, "aggregate.delivery_failed",
			  TALLY_KV_STR("topic", rd_kafka_topic_name(rkm->rkt)),
			  TALLY_KV_STR("error", rd_kafka_err2str(rkm->err)));
}

static tally_agg_opts agg_opts(tally_aggregator *a, rd_kafka_t *producer,
			       char *dlq, size_t dlqlen)
{
	tally_agg_opts o = { 0 };

	snprintf(dlq, dlqlen, "%s%s", tally_config_str(a->cfg, "topics.rated"),
		 tally_config_str(a->cfg, "kafka.dlq_suffix"));
	o.group = tally_config_str(a->cfg, "aggregate.group");
	o.lateness_ms = tally_config_int(a->cfg, "aggregate.lateness_days") *
			TALLY_MS_PER_DAY;
	o.future_ms = tally_config_int(a->cfg, "aggregate.future_tolerance_s") *
		      1000;
	o.producer = producer;
	o.dlq_topic = dlq;
	o.totals_topic = tally_config_str(a->cfg, "topics.totals");
	o.pricebook = a->pb;
	o.max_models_per_tenant = (size_t)tally_config_int(
		a->cfg, "aggregate.max_models_per_tenant");
	return o;
}

/* A lane's batch as tally_loop_batch runs it. */
typedef struct lane_batch {
	lane *ln;
	job *j;
	tally_agg_stats st;
} lane_batch;

static int lb_attempt(void *ctx, tally_error *err)
{
	lane_batch *b = ctx;

	return tally_agg_process_decoded(b->ln->agg, b->j->dec, b->j->views,
					 b->j->n, b->j->now_ms, &b->st, err);
}

/* revocation: stop retrying the batch (its partitions go elsewhere) */
static bool lb_abandon(void *ctx)
{
	lane_batch *b = ctx;

	return atomic_load(&b->ln->a->abandon);
}

/* e.g. a missing ledger partition: maintain, retry */
static void lb_failed(void *ctx)
{
	lane_batch *b = ctx;

	(void)aggr_maintain(b->ln->a, b->ln->pg);
}

static void lb_waited(void *ctx)
{
	lane_batch *b = ctx;

	rd_kafka_poll(b->ln->producer, 0);
}

static void lb_health(void *ctx, bool ok)
{
	lane_batch *b = ctx;

	atomic_store(&b->ln->a->pg_ok, ok ? 1 : 0);
}

/* Event time to commit of the batch's accepted events (no allocation;
 * an event stamped in the future counts as 0). */
static void observe_event_lag(tally_histogram *h, const job *j)
{
	int64_t now_ms = tally_now_ms();
	size_t i;

	for (i = 0; i < j->dec->n; i++) {
		const item *it = &j->dec->items[i];
		int64_t lag = now_ms - it->re.ev.time_ms;

		if (it->bad || it->status != ST_OK)
			continue;
		tally_histogram_observe(h, lag > 0 ? (uint64_t)lag * 1000 : 0);
	}
}

/* A committed batch's counters and its debug line. */
static void batch_done(lane *ln, const job *j, const tally_agg_stats *st,
		       int64_t t0)
{
	tally_aggregator *a = ln->a;

	tally_counter_add(a->c_batches, 1);
	tally_counter_add(a->c_accepted, st->accepted);
	tally_counter_add(a->c_dup, st->duplicates);
	tally_counter_add(a->c_dlq, st->dead_lettered);
	tally_counter_add(a->c_adj, st->adjusted);
	tally_counter_add(a->c_gaps, st->gaps);
	tally_counter_add(a->c_fallbacks, st->dedupe_fallbacks);
	tally_counter_add(a->c_known, st->known_skipped);
	ln->busy_ns = tally_mono_ns() - t0;
	tally_histogram_observe(a->h_batch, (uint64_t)(ln->busy_ns / 1000));
	observe_event_lag(a->h_event_lag, j);
	tally_log(TALLY_DEBUG, "aggregate.batch", TALLY_KV_INT("lane", ln->idx),
		  TALLY_KV_INT("messages", j->n),
		  TALLY_KV_INT("accepted", st->accepted),
		  TALLY_KV_INT("duplicates", st->duplicates),
		  TALLY_KV_INT("dead_lettered", st->dead_lettered),
		  TALLY_KV_INT("adjusted", st->adjusted));
}

/*
 * A lane's PostgreSQL thread: process its part of one batch until it is
 * committed, fenced, abandoned (revocation, stop) or failed for good.
 */
static int run_batch(lane *ln, job *j)
{
	lane_batch b;
	tally_batch_ops ops = { 0 };
	int64_t t0 = tally_mono_ns();
	enum tally_batch_outcome r;

	memset(&b, 0, sizeof(b));
	b.ln = ln;
	b.j = j;
	ops.name = "aggregate";
	ops.lane = ln->idx;
	ops.attempt = lb_attempt;
	ops.abandon = lb_abandon;
	ops.failed = lb_failed;
	ops.waited = lb_waited;
	ops.health = lb_health;
	ops.c_fenced = ln->a->c_fenced;
	ops.c_retries = ln->a->c_retries;
	ops.ctx = &b;
	r = tally_loop_batch(&ops);
	if (r == TALLY_BATCH_COMMITTED)
		batch_done(ln, j, &b.st, t0);
	return (int)r;
}

void *aggr_worker_main(void *arg)
{
	lane *ln = arg;
	tally_aggregator *a = ln->a;
	char name[16];

	snprintf(name, sizeof(name), "agg-postgres-%d", ln->idx);
	(void)prctl(PR_SET_NAME, name, 0, 0, 0); /* for top/perf */
	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (ln->state != W_BUSY && !a->quit)
			pthread_cond_wait(&a->cv_work, &a->mu);
		if (ln->state != W_BUSY)
			break;
		pthread_mutex_unlock(&a->mu);
		int r = run_batch(ln, ln->cur);
		pthread_mutex_lock(&a->mu);
		ln->result = r;
		ln->state = W_DONE;
		pthread_cond_broadcast(&a->cv_done);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

bool aggr_lanes_busy(tally_aggregator *a)
{
	bool busy = false;
	int l;

	pthread_mutex_lock(&a->mu);
	for (l = 0; l < a->nlanes; l++)
		busy = busy || a->lanes[l].state == W_BUSY;
	pthread_mutex_unlock(&a->mu);
	return busy;
}

/*
 * Poll thread: wait for the lanes of the batch in flight (if any) and
 * collect them. A committed lane's Kafka offsets are stored now (after its
 * commit, for lag monitoring). A fenced one re-seeks its partitions to
 * what PostgreSQL says (not inside a rebalance: the new assignment does
 * that) and makes the batch gathered meanwhile stale (the caller re-seeks
 * its partitions too and drops it). Afterwards the lanes' agg, pg and
 * producer belong to this thread until the next batch is handed over.
 * Returns 1 if a lane failed for good.
 */
int aggr_finish_batch(tally_aggregator *a, bool rebalance)
{
	tally_error err;
	int r[MAX_LANES], l, fatal = 0;

	pthread_mutex_lock(&a->mu);
	for (l = 0; l < a->nlanes; l++) {
		while (a->lanes[l].state == W_BUSY)
			pthread_cond_wait(&a->cv_done, &a->mu);
		r[l] = a->lanes[l].state == W_DONE ? a->lanes[l].result : -1;
		a->lanes[l].state = W_IDLE;
	}
	pthread_mutex_unlock(&a->mu);
	for (l = 0; l < a->nlanes; l++) {
		lane *ln = &a->lanes[l];
		job *j = ln->cur;
		bool not_committed = r[l] == TALLY_BATCH_FENCED ||
				     r[l] == TALLY_BATCH_ABANDONED;

		if (r[l] < 0)
			continue;
		ln->cur = NULL;
		if (r[l] == TALLY_BATCH_COMMITTED &&
		    aggr_store_offsets(a, j, &err) != 0)
			tally_log(TALLY_WARN, "aggregate.store_failed",
				  TALLY_KV_STR("error", err.msg));
		/*
		 * Not committed: the batch gathered meanwhile starts after
		 * this one and must not be applied before it (the fence
		 * compares positions, not the batch's first offsets). A
		 * rebalance drops it anyway and seeks to PostgreSQL's
		 * positions; on a stop it is dropped and redone next start.
		 */
		if (not_committed && !rebalance)
			a->discard_next = true;
		/* (abandoned without a stop or a rebalance does not happen
		 * today; if it did, its partitions go back too) */
		if (not_committed && !rebalance &&
		    !tally_signals_stop_requested() &&
		    tally_loop_reseeked("aggregate", tally_agg_reseek(
				ln->agg, tally_consumer_rk(a->consumer),
				j->views, j->n, &err), &err) != 0)
			fatal = 1; /* going on would skip what was not committed */
		aggr_job_clear(j);
		if (r[l] == TALLY_BATCH_FATAL)
			fatal = 1;
	}
	if (fatal)
		a->fatal = true;
	return fatal;
}

/* hand the lanes' parts of the gathered batch to their threads */
void aggr_start_batch(tally_aggregator *a, int slot)
{
	pthread_mutex_lock(&a->mu);
	for (int l = 0; l < a->nlanes; l++) {
		lane *ln = &a->lanes[l];

		if (ln->jobs[slot].n == 0)
			continue;
		ln->cur = &ln->jobs[slot];
		ln->state = W_BUSY;
	}
	pthread_cond_broadcast(&a->cv_work);
	pthread_mutex_unlock(&a->mu);
}

/* a lane's connection, producer (delivery reports to it) and aggregator */
int aggr_lane_open(tally_aggregator *a, lane *ln, int idx, tally_error *err)
{
	rd_kafka_conf_t *conf;
	tally_agg_opts ao;
	char dlq[256];

	ln->a = a;
	ln->idx = idx;
	if (tally_pg_connect_cfg(&ln->pg, a->cfg, err) != 0)
		return -1;
	conf = tally_kafka_conf(a->cfg);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_opaque(conf, ln);
	if (tally_kafka_conf_default(conf, a->cfg, "linger.ms", "20",
				     err) != 0 ||
	    tally_kafka_producer_new(&ln->producer, conf, err) != 0)
		return -1;
	ao = agg_opts(a, ln->producer, dlq, sizeof(dlq));
	/* a lane sees its share of the traffic: the same time span of
	 * committed keys in its share of the default ring */
	ao.recent_keys = 65536 / (size_t)a->nlanes;
	ao.known_keys = (size_t)tally_config_int(a->cfg,
						 "aggregate.known_keys") /
			(size_t)a->nlanes;
	return tally_agg_new(&ln->agg, ln->pg, &ao, err);
}
