/*
 * aggregator.c - tally-aggregate's pipeline: start-up, the poll loop that
 * gathers batch N+1 while the lanes commit batch N, and shutdown
 * (include/tally/aggregator.h, docs/aggregate.md "Pipeline").
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregator_int.h"
#include "tally/log.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <stdlib.h>
#include <string.h>

/* Connection, maintenance, prices and lanes (before the consumer). */
static int open_lanes(tally_aggregator *a, tally_error *err)
{
	int l;

	if (tally_pg_connect_cfg(&a->pg, a->cfg, err) != 0) {
		tally_log(TALLY_FATAL, "pg.connect_failed",
			  TALLY_KV_STR("error", err->msg));
		return -1;
	}
	atomic_store(&a->pg_ok, 1);
	if (aggr_maintain(a, a->pg) != 0)
		return tally_error_set(err, TALLY_ERROR,
				       "ledger maintenance failed");
	if (aggr_load_prices(a) != 0)
		return tally_error_set(err, TALLY_ERROR,
				       "loading the prices failed");
	a->nlanes = (int)tally_config_int(a->cfg, "aggregate.lanes");
	if (a->nlanes > MAX_LANES)
		a->nlanes = MAX_LANES; /* the config's range says so already */
	for (l = 0; l < a->nlanes; l++)
		if (aggr_lane_open(a, &a->lanes[l], l, err) != 0) {
			tally_log(TALLY_FATAL, "aggregate.lane_failed",
				  TALLY_KV_INT("lane", l),
				  TALLY_KV_STR("error", err->msg));
			return -1;
		}
	return 0;
}

int tally_aggregator_new(tally_aggregator **out, tally_config *cfg,
			 tally_metrics *m, tally_error *err)
{
	tally_aggregator *a = tally_xcalloc(1, sizeof(*a));
	const char *t = getenv("TALLY_AGG_TRACE");
	int l;

	*out = a;
	a->cfg = cfg;
	a->m = m;
	aggr_register_metrics(a);
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv_work, NULL);
	pthread_cond_init(&a->cv_done, NULL);
	a->sync_init = true;
	a->lateness_days = (int)tally_config_int(cfg, "aggregate.lateness_days");
	aggr_maint_settings(a);
	if (open_lanes(a, err) != 0 || aggr_consumer_open(a, err) != 0)
		return err->code != 0 ? err->code : TALLY_ERROR;
	/* totals a previous run committed but did not get delivered */
	aggr_outbox_all(a, true);
	aggr_storage_rollover(a);
	tally_log(TALLY_INFO, "aggregate.started",
		  TALLY_KV_STR("topic", tally_config_str(cfg, "topics.rated")),
		  TALLY_KV_STR("group", tally_config_str(cfg, "aggregate.group")),
		  TALLY_KV_INT("lanes", a->nlanes));
	a->trace = t != NULL && strcmp(t, "1") == 0;
	for (l = 0; l < a->nlanes; l++) {
		if (pthread_create(&a->lanes[l].worker, NULL, aggr_worker_main,
				   &a->lanes[l]) != 0) {
			tally_log(TALLY_FATAL, "aggregate.thread_failed");
			return tally_error_set(err, TALLY_ERROR,
					       "cannot start lane %d", l);
		}
		a->lanes[l].started = true;
	}
	return 0;
}

/*
 * Gathered from positions a fenced batch left behind: every partition in
 * it goes back to PostgreSQL's position too (none may skip what is
 * dropped here). Returns -1 if one could not (a restart seeks every
 * partition to PostgreSQL's position).
 */
static int discard_gathered(tally_aggregator *a)
{
	tally_error err;
	bool lost = false;
	int l;

	for (l = 0; l < a->nlanes; l++) {
		job *p = &a->lanes[l].jobs[a->next];

		if (p->n > 0 && !tally_signals_stop_requested() &&
		    tally_loop_reseeked("aggregate", tally_agg_reseek(
				a->lanes[l].agg, tally_consumer_rk(a->consumer),
				p->views, p->n, &err), &err) != 0)
			lost = true;
		aggr_job_clear(p);
	}
	a->discard_next = false;
	return lost ? -1 : 0;
}

/* TALLY_AGG_TRACE=1: where the poll thread's time goes. */
static void loop_trace(tally_aggregator *a, size_t got, int64_t t0,
		       int64_t t1, int64_t t2)
{
	int64_t busy = 0;
	int l;

	for (l = 0; l < a->nlanes; l++)
		if (a->lanes[l].busy_ns > busy)
			busy = a->lanes[l].busy_ns;
	tally_log(TALLY_WARN, "aggregate.loop_trace", TALLY_KV_INT("n", got),
		  TALLY_KV_INT("empty_polls", a->empty_polls),
		  TALLY_KV_INT("poll_us", (t1 - t0) / 1000),
		  TALLY_KV_INT("wait_pg_us", (t2 - t1) / 1000),
		  TALLY_KV_INT("prev_pg_us", busy / 1000));
	a->empty_polls = 0;
}

/*
 * While the lanes are in batch N, the gathered batch's new provider/model
 * pairs are registered on the poll thread's own connection, so that their
 * short transaction is not on a lane's path (docs/aggregate.md, "Provider
 * and model names"). A failure costs nothing: the lane registers them.
 */
static void prefetch_models(tally_aggregator *a)
{
	tally_error err;
	size_t reg;
	int l;

	/* a broken connection would reconnect here, on the poll thread */
	if (PQstatus(tally_pg_conn(a->pg)) != CONNECTION_OK)
		return;
	for (l = 0; l < a->nlanes; l++) {
		job *j = &a->lanes[l].jobs[a->next];

		if (j->n == 0)
			continue;
		tally_error_clear(&err);
		if (tally_agg_prefetch_models(a->lanes[l].agg, a->pg, j->dec,
					      j->now_ms, &reg, &err) != 0)
			tally_log(TALLY_DEBUG, "aggregate.models_ahead_failed",
				  TALLY_KV_STR("error", err.msg));
	}
}

/*
 * One turn of the poll loop: gather batch N+1 while batch N is in its
 * transactions, collect N, hand N+1 over. Returns -1 to stop (failure).
 */
static int loop_step(void *ctx)
{
	tally_aggregator *a = ctx;
	size_t bs, got;
	int64_t t0, t1, t2;
	int l;

	bs = (size_t)tally_config_int(a->cfg, "aggregate.batch_size");
	for (l = 0; l < a->nlanes; l++)
		aggr_job_reserve(&a->lanes[l].jobs[a->next],
				 aggr_lane_cap(a, bs));
	t0 = tally_mono_ns();
	got = aggr_gather(a, a->next, bs, (int)tally_config_int(
				  a->cfg, "aggregate.batch_ms"));
	/*
	 * While the batch in flight is still in its transactions, the next
	 * one keeps gathering (up to batch_size): under load batches grow
	 * with PostgreSQL's time, so its fixed cost per batch is paid less
	 * often and no message waits a whole batch for nothing.
	 */
	while (got > 0 && got < bs && !a->discard_next && aggr_lanes_busy(a)) {
		bool full = false;

		got = aggr_gather_more(a, a->next, bs, 10, &full);
		if (full)
			break;
	}
	if (got > 0 && !a->discard_next) {
		/* in key order here, not in the lane with PostgreSQL idle */
		for (l = 0; l < a->nlanes; l++)
			if (a->lanes[l].jobs[a->next].n > 0)
				tally_agg_order_decoded(
					a->lanes[l].jobs[a->next].dec);
		if (aggr_lanes_busy(a))
			prefetch_models(a);
	}
	t1 = tally_mono_ns();
	if (aggr_finish_batch(a, false) != 0 || a->fatal) {
		for (l = 0; l < a->nlanes; l++)
			aggr_job_clear(&a->lanes[l].jobs[a->next]);
		return -1;
	}
	t2 = tally_mono_ns();
	if (a->discard_next)
		return discard_gathered(a);
	if (got == 0)
		a->empty_polls++;
	if (a->trace && got > 0)
		loop_trace(a, got, t0, t1, t2);
	/* PostgreSQL threads idle: delivery reports, housekeeping */
	aggr_housekeeping(a);
	if (got > 0) {
		aggr_start_batch(a, a->next);
		a->next ^= 1;
	}
	return 0;
}

/* SIGHUP: batch sizes, windows, log.level (read at each use) and the
 * maintenance settings the lanes read */
static void reload(void *ctx)
{
	tally_aggregator *a = ctx;

	(void)tally_program_reload(a->cfg);
	aggr_maint_settings(a);
}

int tally_aggregator_run(tally_aggregator *a, tally_error *err)
{
	int rc;

	a->last_maint = a->last_tick = tally_mono_ns();
	a->empty_polls = 0;
	rc = tally_loop_run(loop_step, reload, a);
	/* the batch in flight commits, or is abandoned if it is retrying a
	 * failure (tally_pg_txn stops retrying on a stop): redone next start */
	if (aggr_finish_batch(a, false) != 0)
		rc = -1;
	tally_log(TALLY_INFO, "aggregate.stopping");
	if (rc != 0)
		return tally_error_set(err, TALLY_ERROR,
				       "a batch failed for good or its"
				       " partitions could not be re-sought");
	return 0;
}

void tally_aggregator_free(tally_aggregator *a)
{
	int l, i;

	if (a == NULL)
		return;
	if (a->sync_init) {
		pthread_mutex_lock(&a->mu);
		a->quit = true;
		pthread_cond_broadcast(&a->cv_work);
		pthread_mutex_unlock(&a->mu);
	}
	for (l = 0; l < a->nlanes; l++)
		if (a->lanes[l].started) {
			pthread_join(a->lanes[l].worker, NULL);
			a->lanes[l].started = false;
		}
	tally_consumer_free(a->consumer);
	/* mark what was delivered; the rest is republished next start */
	for (l = 0; l < a->nlanes; l++)
		if (a->lanes[l].producer != NULL)
			rd_kafka_flush(a->lanes[l].producer, 10000);
	aggr_outbox_all(a, false);
	for (l = 0; l < MAX_LANES; l++) {
		lane *ln = &a->lanes[l];

		tally_agg_free(ln->agg);
		ln->agg = NULL;
		if (ln->producer != NULL)
			rd_kafka_destroy(ln->producer);
		tally_pg_free(ln->pg);
		for (i = 0; i < 2; i++)
			aggr_job_free(&ln->jobs[i]);
	}
	tally_pricebook_free(a->pb);
	tally_pg_free(a->pg);
	if (a->own_m)
		tally_metrics_free(a->m);
	if (a->sync_init) {
		pthread_mutex_destroy(&a->mu);
		pthread_cond_destroy(&a->cv_work);
		pthread_cond_destroy(&a->cv_done);
	}
	free(a);
}
