/*
 * tally-aggregate - rated usage into per-tenant aggregates in PostgreSQL,
 * exactly once (see include/tally/aggregate.h and docs/aggregate.md).
 *
 *   tally-aggregate --config FILE [--metrics-listen HOST:PORT]
 *
 * Consumer group aggregate.group on topics.rated (read_committed). Each
 * batch (aggregate.batch_size messages or aggregate.batch_ms) is one
 * PostgreSQL transaction that also moves the positions in consumer_offsets;
 * the Kafka offsets are stored only afterwards, for lag monitoring. On
 * assignment the consumer starts where PostgreSQL says.
 *
 * Threads (docs/aggregate.md, "Pipeline" and "Lanes"): this one polls
 * Kafka and gathers batch N+1 while batch N is in PostgreSQL. A batch is
 * split into aggregate.lanes lanes by partition (partition % lanes); each
 * lane has its own thread, PostgreSQL connection, tally_agg and producer,
 * and commits its part (data and its partitions' positions) in its own
 * transaction, so the lanes of one instance never write the same
 * partition and PostgreSQL works on as many cores as there are lanes.
 * At most one batch is in flight; a lane's Kafka offsets are stored only
 * after its commit; a rebalance first waits for every lane (a revocation
 * abandons a lane that is retrying), so no partition is written across an
 * assignment change, and the batch being gathered across a rebalance is
 * dropped.
 *
 * SIGTERM/SIGINT: finish the batch, commit, leave the group, exit 0 (a
 * second signal exits at once). SIGHUP: reload batch sizes, windows and
 * log.level. Exit 1 on a start-up error or an error that retrying does not
 * cure (positions are in PostgreSQL: a restart resumes exactly).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/aggregate.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#define DAY_MS INT64_C(86400000)

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

/* outcome of a batch on the PostgreSQL thread */
enum { R_COMMITTED, R_FENCED, R_ABANDONED, R_FATAL };
/* PostgreSQL thread state */
enum { W_IDLE, W_BUSY, W_DONE };

#define MAX_LANES 8

typedef struct app app;

/*
 * A lane: one PostgreSQL thread with its own connection, aggregator and
 * producer (whose delivery reports reach only this lane's tally_agg). The
 * lane's agg, pg and producer are used by its thread while state is
 * W_BUSY and by the poll thread otherwise (app.mu hands them over).
 */
typedef struct lane {
	app *a;
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

struct app {
	tally_config *cfg;
	tally_pg *pg;         /* housekeeping: maintenance, prices */
	tally_consumer *consumer;
	tally_metrics *m;
	tally_counter *c_accepted, *c_dup, *c_dlq, *c_adj, *c_batches,
		*c_fenced, *c_retries, *c_gaps, *c_fallbacks;
	tally_pricebook *pb;  /* storage GB-month prices */
	int64_t pb_version;
	tally_histogram *h_batch;
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

static int finish_batch(app *a, bool rebalance);

/* The lane that writes a partition: fixed, so a lane keeps its partitions
 * (their fence values and the keys it committed lately) across batches. */
static int lane_of(const app *a, int32_t partition)
{
	return (int)((uint32_t)partition % (uint32_t)a->nlanes);
}

/* A lane's part of a batch of max events: at most this many (memory). */
static size_t lane_cap(const app *a, size_t max)
{
	return (max + (size_t)a->nlanes - 1) / (size_t)a->nlanes;
}

static int on_assign(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;
	tally_error err;
	int l, i, rc = 0;

	/* nothing may be in flight while positions are read */
	(void)finish_batch(a, true);
	/* each lane reads and fences its own partitions */
	for (l = 0; l < a->nlanes && rc == 0; l++) {
		rd_kafka_topic_partition_list_t *sub =
			rd_kafka_topic_partition_list_new(parts->cnt);

		for (i = 0; i < parts->cnt; i++)
			if (lane_of(a, parts->elems[i].partition) == l)
				rd_kafka_topic_partition_list_add(
					sub, parts->elems[i].topic,
					parts->elems[i].partition);
		if (sub->cnt > 0)
			rc = tally_agg_assign(a->lanes[l].agg, sub, &err);
		for (i = 0; rc == 0 && i < sub->cnt; i++)
			rd_kafka_topic_partition_list_find(
				parts, sub->elems[i].topic,
				sub->elems[i].partition)->offset =
				sub->elems[i].offset;
		rd_kafka_topic_partition_list_destroy(sub);
	}
	if (rc != 0)
		tally_log(TALLY_WARN, "aggregate.assign_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

static void on_revoke(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;

	/*
	 * The in-flight batch (if any) finishes before the partitions go:
	 * each lane's part committed (its offsets are stored now) or, if it
	 * is retrying a PostgreSQL failure, abandoned (the next owner redoes
	 * it from consumer_offsets). The batch being gathered is dropped by
	 * the poll.
	 */
	atomic_store(&a->abandon, 1);
	(void)finish_batch(a, true);
	atomic_store(&a->abandon, 0);
	for (int l = 0; l < a->nlanes; l++)
		tally_agg_revoke(a->lanes[l].agg, parts);
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

static int health(char *detail, size_t len, void *payload)
{
	app *a = payload;

	int ok = atomic_load(&a->pg_ok);

	snprintf(detail, len, "%s", ok ? "ok" : "postgres unavailable");
	return ok ? 0 : 1;
}

/* the reloadable maintenance settings (poll thread: start, SIGHUP) */
static void maint_settings(app *a)
{
	atomic_store(&a->ahead_days, (int)tally_config_int(
			     a->cfg, "aggregate.partitions_ahead_days"));
	atomic_store(&a->retention_days, (int)tally_config_int(
			     a->cfg, "aggregate.retention_days"));
}

static int maintain(app *a, tally_pg *pg)
{
	tally_error err;
	/* runs on a lane's thread too: no config reads (a reload frees
	 * values), only what the poll thread copied */
	int rc = tally_agg_maintain(pg, a->lateness_days,
				    atomic_load(&a->ahead_days),
				    atomic_load(&a->retention_days), &err);

	if (rc != 0)
		tally_log(TALLY_ERR, "aggregate.maintain_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

/*
 * Storage of periods no event has reached (docs/aggregate.md, "Storage:
 * GB-months"): lane 0's aggregator writes them, so only while the lanes
 * are idle (poll thread, between finish_batch and start_batch). A failure
 * is logged; the next run (an hour later) does it.
 */
static void storage_rollover(app *a)
{
	tally_error err;
	size_t rows = 0;

	if (tally_agg_storage_rollover(a->lanes[0].agg, tally_now_ms(), &rows,
				       &err) != 0)
		tally_log(TALLY_ERR, "aggregate.storage_rollover_failed",
			  TALLY_KV_INT("rows", rows),
			  TALLY_KV_STR("error", err.msg));
	else
		tally_log(TALLY_INFO, "aggregate.storage_rollover",
			  TALLY_KV_INT("rows", rows));
}

/* Load (or reload when its version moved) the book for storage prices;
 * the lanes are idle. */
static int load_prices(app *a)
{
	tally_pricebook *pb = NULL;
	tally_error err;
	int64_t v = 0;

	if (tally_pricebook_pg_version(&v, a->pg, &err) != 0)
		goto fail;
	if (a->pb != NULL && v == a->pb_version)
		return 0;
	if (tally_pricebook_load_pg(&pb, a->pg, &err) != 0)
		goto fail;
	for (int l = 0; l < a->nlanes; l++)
		if (a->lanes[l].agg != NULL)
			tally_agg_set_pricebook(a->lanes[l].agg, pb);
	tally_pricebook_free(a->pb);
	a->pb = pb;
	a->pb_version = v;
	tally_log(TALLY_INFO, "aggregate.prices_loaded",
		  TALLY_KV_INT("version", v));
	return 0;
fail:
	tally_log(TALLY_WARN, "aggregate.prices_failed",
		  TALLY_KV_STR("error", err.msg));
	return -1;
}

static tally_agg_opts agg_opts(app *a, rd_kafka_t *producer, char *dlq,
			       size_t dlqlen)
{
	tally_agg_opts o = { 0 };

	snprintf(dlq, dlqlen, "%s%s", tally_config_str(a->cfg, "topics.rated"),
		 tally_config_str(a->cfg, "kafka.dlq_suffix"));
	o.group = tally_config_str(a->cfg, "aggregate.group");
	o.lateness_ms = tally_config_int(a->cfg, "aggregate.lateness_days") *
			DAY_MS;
	o.future_ms = tally_config_int(a->cfg, "aggregate.future_tolerance_s") *
		      1000;
	o.producer = producer;
	o.dlq_topic = dlq;
	o.totals_topic = tally_config_str(a->cfg, "topics.totals");
	o.pricebook = a->pb;
	return o;
}

/* the job's copy of a topic name: views outlive their messages */
static const char *job_topic(job *j, const char *name)
{
	size_t k;

	for (k = 0; k < j->ntopics; k++)
		if (strcmp(j->topics[k], name) == 0)
			return j->topics[k];
	if (j->ntopics == sizeof(j->topics) / sizeof(j->topics[0]))
		return name; /* cannot happen: one topic is consumed */
	j->topics[j->ntopics] = tally_xstrdup(name);
	return j->topics[j->ntopics++];
}

/* append message m to the job (which has room) */
static void job_add(job *j, rd_kafka_message_t *m)
{
	size_t i = j->n++;

	j->msgs[i] = m;
	j->views[i].topic = job_topic(j, rd_kafka_topic_name(m->rkt));
	j->views[i].partition = m->partition;
	j->views[i].offset = m->offset;
	j->views[i].payload = m->payload;
	j->views[i].len = m->len;
	j->views[i].rkm = m;
}

static bool stop_batch(app *a)
{
	return tally_signals_stop_requested() || atomic_load(&a->abandon);
}

/*
 * A lane's PostgreSQL thread: process its part of one batch until it is
 * committed, fenced, abandoned (revocation, stop) or failed for good.
 */
static int run_batch(lane *ln, job *j)
{
	app *a = ln->a;
	tally_agg_stats st;
	tally_error err;
	int64_t t0 = tally_mono_ns();
	int attempt = 0, errors = 0, rc;
	size_t n = j->n;
	tally_agg_msg *views = j->views;

	for (;;) {
		rc = tally_agg_process_decoded(ln->agg, j->dec, views, n,
					       j->now_ms, &st, &err);
		if (rc == 0) {
			atomic_store(&a->pg_ok, 1);
			break;
		}
		if (rc == TALLY_AGG_FENCED) {
			tally_counter_add(a->c_fenced, 1);
			tally_log(TALLY_WARN, "aggregate.fenced",
				  TALLY_KV_INT("lane", ln->idx),
				  TALLY_KV_STR("error", err.msg));
			return R_FENCED;
		}
		if (stop_batch(a))
			return R_ABANDONED; /* not committed: redone later */
		tally_counter_add(a->c_retries, 1);
		if (rc == TALLY_ETRANSIENT) {
			atomic_store(&a->pg_ok, 0);
		} else if (++errors >= 5) {
			tally_log(TALLY_FATAL, "aggregate.batch_failed",
				  TALLY_KV_INT("lane", ln->idx),
				  TALLY_KV_STR("error", err.msg));
			return R_FATAL;
		} else {
			/* e.g. a missing ledger partition: maintain, retry */
			(void)maintain(a, ln->pg);
		}
		int64_t wait = tally_backoff_ms(attempt++, 200, 10000);
		tally_log(TALLY_WARN, "aggregate.retry",
			  TALLY_KV_INT("lane", ln->idx),
			  TALLY_KV_STR("error", err.msg),
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait));
		for (; wait > 0 && !stop_batch(a); wait -= 50)
			tally_sleep_ms(wait < 50 ? wait : 50);
		if (stop_batch(a))
			return R_ABANDONED;
		rd_kafka_poll(ln->producer, 0);
	}
	tally_counter_add(a->c_batches, 1);
	tally_counter_add(a->c_accepted, st.accepted);
	tally_counter_add(a->c_dup, st.duplicates);
	tally_counter_add(a->c_dlq, st.dead_lettered);
	tally_counter_add(a->c_adj, st.adjusted);
	tally_counter_add(a->c_gaps, st.gaps);
	tally_counter_add(a->c_fallbacks, st.dedupe_fallbacks);
	ln->busy_ns = tally_mono_ns() - t0;
	tally_histogram_observe(a->h_batch, (uint64_t)(ln->busy_ns / 1000));
	tally_log(TALLY_DEBUG, "aggregate.batch", TALLY_KV_INT("lane", ln->idx),
		  TALLY_KV_INT("messages", n),
		  TALLY_KV_INT("accepted", st.accepted),
		  TALLY_KV_INT("duplicates", st.duplicates),
		  TALLY_KV_INT("dead_lettered", st.dead_lettered),
		  TALLY_KV_INT("adjusted", st.adjusted));
	return R_COMMITTED;
}

static void *worker_main(void *arg)
{
	lane *ln = arg;
	app *a = ln->a;
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

/* destroy the messages still held (dead letters; all after a drop) */
static void job_drop(job *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->msgs[k] != NULL)
			rd_kafka_message_destroy(j->msgs[k]);
	j->n = 0;
}

static void job_clear(job *j)
{
	job_drop(j);
	for (size_t k = 0; k < j->ntopics; k++)
		free(j->topics[k]);
	j->ntopics = 0;
}

/*
 * Gather a batch (at most max messages, at most timeout_ms) into the
 * lanes' jobs[slot] in chunks, and decode each chunk as it comes, while
 * the previous batch is in its transactions. The messages whose events
 * are decoded and inside the time window are destroyed at once (the
 * strings still needed are copied by tally_agg_detach_range): a batch then
 * holds ~0.3 KiB per event instead of ~1.4 KiB with the Kafka message and
 * its share of the fetch buffer, and at most one chunk of messages is
 * alive at a time. A rebalance during the gathering drops what came before
 * it (it belongs to the old assignment).
 */
#define GATHER_CHUNK 2048

static size_t gather(app *a, int slot, size_t max, int timeout_ms)
{
	int64_t deadline = tally_mono_ns() + (int64_t)timeout_ms * 1000000;
	unsigned gen = tally_consumer_generation(a->consumer);
	rd_kafka_message_t *chunk[GATHER_CHUNK];
	size_t got = 0, from[MAX_LANES], k, i, room;
	size_t per_lane = lane_cap(a, max);
	int64_t now_ms = 0;
	int l;

	for (l = 0; l < a->nlanes; l++)
		a->lanes[l].jobs[slot].n = 0;
	for (;;) {
		int64_t left = (deadline - tally_mono_ns()) / 1000000;

		/* a whole poll may go to one lane */
		room = GATHER_CHUNK;
		for (l = 0; l < a->nlanes; l++)
			if (per_lane - a->lanes[l].jobs[slot].n < room)
				room = per_lane - a->lanes[l].jobs[slot].n;
		if (room == 0 || left <= 0)
			break;
		k = tally_consumer_poll_batch(a->consumer, chunk, room,
					      (int)left);
		if (tally_consumer_generation(a->consumer) != gen) {
			for (l = 0; l < a->nlanes; l++)
				job_drop(&a->lanes[l].jobs[slot]);
			got = 0;
			gen = tally_consumer_generation(a->consumer);
		}
		if (k == 0)
			continue;
		if (got == 0)
			now_ms = tally_now_ms();
		for (l = 0; l < a->nlanes; l++)
			from[l] = a->lanes[l].jobs[slot].n;
		for (i = 0; i < k; i++)
			job_add(&a->lanes[lane_of(a, chunk[i]->partition)]
					 .jobs[slot], chunk[i]);
		for (l = 0; l < a->nlanes; l++) {
			lane *ln = &a->lanes[l];
			job *j = &ln->jobs[slot];

			if (j->n == from[l])
				continue;
			j->now_ms = now_ms;
			tally_agg_decode_range(j->dec, j->views, from[l], j->n);
			(void)tally_agg_detach_range(ln->agg, j->dec, now_ms,
						     j->keep, from[l], j->n);
			for (i = from[l]; i < j->n; i++) {
				if (j->keep[i])
					continue;
				rd_kafka_message_destroy(j->msgs[i]);
				j->msgs[i] = NULL;
				j->views[i].rkm = NULL;
				j->views[i].payload = NULL;
				j->views[i].len = 0;
			}
		}
		got += k;
	}
	return got;
}

/* After the commit: the lane's next offsets, for lag monitoring. */
static int store_offsets(app *a, const job *j, tally_error *err)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
	size_t i;
	int rc;

	for (i = 0; i < j->n; i++)
		tally_offsets_note(l, j->views[i].topic, j->views[i].partition,
				   j->views[i].offset);
	rc = tally_consumer_store_list(a->consumer, l, err);
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

/* room for a lane's part of a batch */
static void job_reserve(job *j, size_t cap)
{
	if (j->dec == NULL)
		j->dec = tally_agg_decoded_new();
	if (cap <= j->cap)
		return;
	free(j->msgs);
	free(j->views);
	j->cap = cap;
	j->msgs = tally_xcalloc(cap, sizeof(*j->msgs));
	j->views = tally_xcalloc(cap, sizeof(*j->views));
	free(j->keep);
	j->keep = tally_xcalloc(cap, sizeof(*j->keep));
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
static int finish_batch(app *a, bool rebalance)
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

		if (r[l] < 0)
			continue;
		ln->cur = NULL;
		if (r[l] == R_COMMITTED && store_offsets(a, j, &err) != 0)
			tally_log(TALLY_WARN, "aggregate.store_failed",
				  TALLY_KV_STR("error", err.msg));
		/*
		 * Not committed: the batch gathered meanwhile starts after
		 * this one and must not be applied before it (the fence
		 * compares positions, not the batch's first offsets). A
		 * rebalance drops it anyway and seeks to PostgreSQL's
		 * positions; on a stop it is dropped and redone next start.
		 */
		if ((r[l] == R_FENCED || r[l] == R_ABANDONED) && !rebalance)
			a->discard_next = true;
		/* (abandoned without a stop or a rebalance does not happen
		 * today; if it did, its partitions go back too) */
		if ((r[l] == R_FENCED || r[l] == R_ABANDONED) && !rebalance &&
		    !tally_signals_stop_requested() &&
		    tally_agg_reseek(ln->agg, tally_consumer_rk(a->consumer),
				     j->views, j->n, &err) != 0) {
			/* going on would skip what was not committed */
			tally_log(TALLY_FATAL, "aggregate.reseek_failed",
				  TALLY_KV_STR("error", err.msg));
			fatal = 1;
		}
		job_clear(j);
		if (r[l] == R_FATAL)
			fatal = 1;
	}
	if (fatal)
		a->fatal = true;
	return fatal;
}

/* hand the lanes' parts of the gathered batch to their threads */
static void start_batch(app *a, int slot)
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
static int lane_open(app *a, lane *ln, int idx, tally_error *err)
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
	if (tally_kafka_conf_set(conf, "linger.ms", "20", err) != 0 ||
	    tally_kafka_producer_new(&ln->producer, conf, err) != 0)
		return -1;
	ao = agg_opts(a, ln->producer, dlq, sizeof(dlq));
	/* a lane sees its share of the traffic: the same time span of
	 * committed keys in its share of the default ring */
	ao.recent_keys = 65536 / (size_t)a->nlanes;
	return tally_agg_new(&ln->agg, ln->pg, &ao, err);
}

/*
 * The totals outbox of every lane (the lanes are idle): acknowledged
 * versions are marked by each lane; the sweep that publishes again what
 * is unpublished covers every tenant, so one lane does it, and only when
 * no lane has totals in flight (or it would send those twice).
 */
static void outbox_all(app *a, bool republish)
{
	tally_error err;
	size_t inflight = 0;
	int l;

	for (l = a->nlanes - 1; l >= 0; l--) {
		lane *ln = &a->lanes[l];

		if (ln->agg == NULL)
			continue;
		if (l == 0)
			republish = republish && inflight == 0;
		if (tally_agg_outbox(ln->agg, l == 0 && republish, &err) != 0)
			tally_log(TALLY_WARN, "aggregate.outbox_failed",
				  TALLY_KV_INT("lane", l),
				  TALLY_KV_STR("error", err.msg));
		inflight += tally_agg_inflight(ln->agg);
	}
}

static void register_metrics(app *a)
{
	a->m = tally_metrics_new();
	a->c_accepted = tally_metrics_counter(a->m,
		"tally_aggregate_events_total", "outcome=\"accepted\"",
		"Rated events by outcome");
	a->c_dup = tally_metrics_counter(a->m, "tally_aggregate_events_total",
		"outcome=\"duplicate\"", NULL);
	a->c_dlq = tally_metrics_counter(a->m, "tally_aggregate_events_total",
		"outcome=\"dead_letter\"", NULL);
	a->c_adj = tally_metrics_counter(a->m,
		"tally_aggregate_adjustments_total", NULL,
		"Accepted events that went to a closed period");
	a->c_batches = tally_metrics_counter(a->m,
		"tally_aggregate_batches_total", NULL, "Committed batches");
	a->c_fenced = tally_metrics_counter(a->m,
		"tally_aggregate_fenced_total", NULL,
		"Batches refused by the consumer_offsets fence");
	a->c_retries = tally_metrics_counter(a->m,
		"tally_aggregate_retries_total", NULL,
		"Batch attempts that failed and were retried");
	a->c_gaps = tally_metrics_counter(a->m,
		"tally_aggregate_offset_gaps_total", NULL,
		"Partitions resumed at the log start after retention deleted"
		" unread offsets (recorded in consumer_offset_gaps)");
	a->c_fallbacks = tally_metrics_counter(a->m,
		"tally_aggregate_dedupe_fallbacks_total", NULL,
		"Batches whose plain dedupe insert met a key already in"
		" PostgreSQL and were deduplicated with ON CONFLICT instead");
	a->h_batch = tally_metrics_histogram(a->m,
		"tally_aggregate_batch_seconds", NULL,
		"Time to process and commit one batch", NULL, 0);
}

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-aggregate", "--metrics-listen", "aggregate.metrics_listen",
		NULL, NULL, NULL
	};
	const char *topics[2] = { NULL, NULL };
	app a = { 0 };
	tally_error err = { 0 };
	tally_metrics_server *srv = NULL;
	tally_consumer_opts co = { 0 };
	rd_kafka_conf_t *conf;
	int64_t last_maint, last_tick;
	int i, l, rc = EXIT_FAILURE;
	bool sync_init = false;

	/* peak RSS at batch 20 000: 62 -> 57 MiB, same speed (docs/aggregate.md) */
	tally_program_bound_heap(128 * 1024);

	if (tally_program_start(&a.cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	register_metrics(&a);
	pthread_mutex_init(&a.mu, NULL);
	pthread_cond_init(&a.cv_work, NULL);
	pthread_cond_init(&a.cv_done, NULL);
	sync_init = true;
	a.lateness_days = (int)tally_config_int(a.cfg, "aggregate.lateness_days");
	maint_settings(&a);

	if (tally_pg_connect_cfg(&a.pg, a.cfg, &err) != 0) {
		tally_log(TALLY_FATAL, "pg.connect_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	atomic_store(&a.pg_ok, 1);
	if (maintain(&a, a.pg) != 0)
		goto cleanup;
	if (load_prices(&a) != 0)
		goto cleanup;
	a.nlanes = (int)tally_config_int(a.cfg, "aggregate.lanes");
	if (a.nlanes > MAX_LANES)
		a.nlanes = MAX_LANES; /* the config's range says so already */
	for (l = 0; l < a.nlanes; l++)
		if (lane_open(&a, &a.lanes[l], l, &err) != 0) {
			tally_log(TALLY_FATAL, "aggregate.lane_failed",
				  TALLY_KV_INT("lane", l),
				  TALLY_KV_STR("error", err.msg));
			goto cleanup;
		}

	conf = tally_kafka_conf(a.cfg);
	{
		char v[24];

		snprintf(v, sizeof(v), "%lld", (long long)tally_config_int(
			 a.cfg, "kafka.session_timeout_ms"));
		if (tally_kafka_conf_set(conf, "session.timeout.ms", v, &err) != 0)
			tally_log(TALLY_WARN, "kafka.conf",
				  TALLY_KV_STR("error", err.msg));
		/*
		 * Room for a PostgreSQL restart before we are thrown out, and
		 * a bounded prefetch (RSS vs throughput: measured in
		 * docs/aggregate.md, "Performance"). librdkafka stops fetching
		 * a partition whose queue reached queued.max.messages.kbytes
		 * and, before 2.1, looks at it again only after a fixed 1 s
		 * (issue #2879; 2.1 added fetch.queue.backoff.ms). So the
		 * queue must hold about a second of consumption per partition
		 * or the consumer starves: 12 MiB per partition. With
		 * fetch.queue.backoff.ms (librdkafka >= 2.2; ops/install-deps
		 * builds 2.12.1) 1 MiB is enough: measured at batch 5 000,
		 * 10 000 and 20 000 as fast as 4 MiB, and 10 MiB smaller.
		 * Fetches of at most 2 MiB (512 KiB per partition) instead of
		 * 50 MiB: a fetch buffer lives until its last message is
		 * destroyed. TALLY_AGG_KAFKA_CONF="name=value,..." overrides
		 * these (for measurements).
		 */
		tally_error qerr;
		bool qbackoff = tally_kafka_conf_set(conf,
			"fetch.queue.backoff.ms", "10", &qerr) == 0;

		if (tally_kafka_conf_set(conf, "max.poll.interval.ms", "600000",
					 &err) != 0 ||
		    tally_kafka_conf_set(conf, "queued.max.messages.kbytes",
					 qbackoff ? "1024" : "12288", &err) != 0 ||
		    tally_kafka_conf_set(conf, "fetch.max.bytes", "2097152",
					 &err) != 0 ||
		    tally_kafka_conf_set(conf, "max.partition.fetch.bytes",
					 "524288", &err) != 0 ||
		    tally_kafka_conf_set(conf, "fetch.wait.max.ms", "100",
					 &err) != 0)
			tally_log(TALLY_WARN, "kafka.conf",
				  TALLY_KV_STR("error", err.msg));
		if (getenv("TALLY_AGG_KAFKA_CONF") != NULL) {
			char *dup = strdup(getenv("TALLY_AGG_KAFKA_CONF"));
			char *save = NULL, *kv;

			for (kv = strtok_r(dup, ",", &save); kv != NULL;
			     kv = strtok_r(NULL, ",", &save)) {
				char *eq = strchr(kv, '=');

				if (eq == NULL)
					continue;
				*eq = '\0';
				if (tally_kafka_conf_set(conf, kv, eq + 1,
							 &err) != 0)
					tally_log(TALLY_WARN, "kafka.conf",
						  TALLY_KV_STR("error", err.msg));
			}
			free(dup);
		}
	}
	topics[0] = tally_config_str(a.cfg, "topics.rated");
	co.group = tally_config_str(a.cfg, "aggregate.group");
	co.topics = topics;
	co.read_committed = true;
	co.on_assign = on_assign;
	co.on_revoke = on_revoke;
	co.payload = &a;
	if (tally_consumer_new(&a.consumer, conf, &co, &err) != 0) {
		tally_log(TALLY_FATAL, "kafka.consumer_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	if (tally_metrics_serve(&srv, a.m, tally_config_str(a.cfg,
				"aggregate.metrics_listen"), health, health, &a,
				&err) != 0)
		/* a second instance on the same host: run without /metrics */
		tally_log(TALLY_WARN, "metrics.serve_failed",
			  TALLY_KV_STR("error", err.msg));
	for (l = 0; l < a.nlanes; l++)
		tally_agg_set_consumer(a.lanes[l].agg,
				       tally_consumer_rk(a.consumer));
	/* totals a previous run committed but did not get delivered */
	outbox_all(&a, true);
	storage_rollover(&a);
	tally_log(TALLY_INFO, "aggregate.started",
		  TALLY_KV_STR("topic", topics[0]),
		  TALLY_KV_STR("group", co.group),
		  TALLY_KV_INT("lanes", a.nlanes));

	{
		const char *t = getenv("TALLY_AGG_TRACE");

		a.trace = t != NULL && strcmp(t, "1") == 0;
	}
	for (l = 0; l < a.nlanes; l++) {
		if (pthread_create(&a.lanes[l].worker, NULL, worker_main,
				   &a.lanes[l]) != 0) {
			tally_log(TALLY_FATAL, "aggregate.thread_failed");
			goto cleanup;
		}
		a.lanes[l].started = true;
	}
	last_maint = last_tick = tally_mono_ns();
	rc = EXIT_SUCCESS;
	int64_t empty_polls = 0;

	while (!tally_signals_stop_requested()) {
		size_t bs, got;
		int64_t t0, t1, t2, busy = 0;

		if (tally_signals_reload_requested()) {
			(void)tally_program_reload(a.cfg);
			maint_settings(&a);
		}
		bs = (size_t)tally_config_int(a.cfg, "aggregate.batch_size");
		for (l = 0; l < a.nlanes; l++)
			job_reserve(&a.lanes[l].jobs[a.next], lane_cap(&a, bs));
		/* gather batch N+1 while batch N is in its transactions */
		t0 = tally_mono_ns();
		got = gather(&a, a.next, bs,
			     (int)tally_config_int(a.cfg, "aggregate.batch_ms"));
		t1 = tally_mono_ns();
		if (finish_batch(&a, false) != 0 || a.fatal) {
			for (l = 0; l < a.nlanes; l++)
				job_clear(&a.lanes[l].jobs[a.next]);
			rc = EXIT_FAILURE;
			break;
		}
		t2 = tally_mono_ns();
		if (a.discard_next) {
			/*
			 * Gathered from positions a fenced batch left behind:
			 * every partition in it goes back to PostgreSQL's
			 * position too (none may skip what is dropped here).
			 */
			bool lost = false;

			for (l = 0; l < a.nlanes; l++) {
				job *p = &a.lanes[l].jobs[a.next];

				if (p->n > 0 && !tally_signals_stop_requested() &&
				    tally_agg_reseek(a.lanes[l].agg,
						     tally_consumer_rk(a.consumer),
						     p->views, p->n, &err) != 0) {
					tally_log(TALLY_FATAL,
						  "aggregate.reseek_failed",
						  TALLY_KV_STR("error", err.msg));
					lost = true;
				}
				job_clear(p);
			}
			a.discard_next = false;
			if (lost) {
				/* a restart seeks every partition to
				 * PostgreSQL's position */
				rc = EXIT_FAILURE;
				break;
			}
			continue;
		}
		if (got == 0)
			empty_polls++;
		if (a.trace && got > 0) {
			for (l = 0; l < a.nlanes; l++)
				if (a.lanes[l].busy_ns > busy)
					busy = a.lanes[l].busy_ns;
			tally_log(TALLY_WARN, "aggregate.loop_trace",
				  TALLY_KV_INT("n", got),
				  TALLY_KV_INT("empty_polls", empty_polls),
				  TALLY_KV_INT("poll_us", (t1 - t0) / 1000),
				  TALLY_KV_INT("wait_pg_us", (t2 - t1) / 1000),
				  TALLY_KV_INT("prev_pg_us", busy / 1000));
			empty_polls = 0;
		}
		/* PostgreSQL threads idle: delivery reports, housekeeping */
		for (l = 0; l < a.nlanes; l++)
			rd_kafka_poll(a.lanes[l].producer, 0);
		if ((tally_mono_ns() - last_tick) / 1000000 > 10000) {
			/* price changes; the totals outbox */
			(void)load_prices(&a);
			outbox_all(&a, true);
			last_tick = tally_mono_ns();
		}
		if ((tally_mono_ns() - last_maint) / 1000000 > 3600000) {
			(void)maintain(&a, a.pg);
			storage_rollover(&a);
			last_maint = tally_mono_ns();
		}
		if (got > 0) {
			start_batch(&a, a.next);
			a.next ^= 1;
		}
	}
	/* the batch in flight commits, or is abandoned if it is retrying a
	 * failure (tally_pg_txn stops retrying on a stop): redone next start */
	if (finish_batch(&a, false) != 0)
		rc = EXIT_FAILURE;
	tally_log(TALLY_INFO, "aggregate.stopping");

cleanup:
	if (sync_init) {
		pthread_mutex_lock(&a.mu);
		a.quit = true;
		pthread_cond_broadcast(&a.cv_work);
		pthread_mutex_unlock(&a.mu);
	}
	for (l = 0; l < a.nlanes; l++)
		if (a.lanes[l].started) {
			pthread_join(a.lanes[l].worker, NULL);
			a.lanes[l].started = false;
		}
	tally_metrics_server_free(srv);
	tally_consumer_free(a.consumer);
	/* mark what was delivered; the rest is republished next start */
	for (l = 0; l < a.nlanes; l++)
		if (a.lanes[l].producer != NULL)
			rd_kafka_flush(a.lanes[l].producer, 10000);
	outbox_all(&a, false);
	for (l = 0; l < MAX_LANES; l++) {
		lane *ln = &a.lanes[l];

		tally_agg_free(ln->agg);
		ln->agg = NULL;
		if (ln->producer != NULL)
			rd_kafka_destroy(ln->producer);
		tally_pg_free(ln->pg);
		for (i = 0; i < 2; i++) {
			job_clear(&ln->jobs[i]);
			free(ln->jobs[i].msgs);
			free(ln->jobs[i].views);
			free(ln->jobs[i].keep);
			tally_agg_decoded_free(ln->jobs[i].dec);
		}
	}
	tally_pricebook_free(a.pb);
	tally_pg_free(a.pg);
	tally_metrics_free(a.m);
	tally_config_free(a.cfg);
	if (sync_init) {
		pthread_mutex_destroy(&a.mu);
		pthread_cond_destroy(&a.cv_work);
		pthread_cond_destroy(&a.cv_done);
	}
	return rc;
}
