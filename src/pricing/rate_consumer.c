/*
 * rate_consumer.c - the tally-rate loop: consume billing.usage, rate each
 * event against the current price book, produce billing.usage.rated (and
 * dead letters) and commit the input offsets, all in one Kafka transaction
 * per batch (see rate_consumer.h).
 *
 * Key decisions: the book is a plain pointer swapped only between
 * batches, so a batch is never priced with two books; the rating context's
 * cache notices the swap by itself. Any error inside a transaction aborts
 * it and seeks the consumer back to the committed offsets, so the batch is
 * redone from scratch; a fatal producer error (fenced by a newer instance)
 * ends the process, which systemd restarts. That is why the retry is not
 * tally_loop_batch's: retrying the batch in memory does not poll, so a
 * rebalance (or an eviction after max.poll.interval.ms) goes unseen and
 * the retried transaction would carry messages of partitions another
 * instance now owns; going back to Kafka keeps each batch to the current
 * assignment.
 *
 * In a backlog half of a batch's time is the broker's (sending the
 * offsets, committing), so a full batch is rated while the previous one's
 * transaction commits on a second thread, and produced in the next step.
 * The consumer is polled only when no transaction is open, as before; a
 * rebalance between a batch's gathering and its transaction drops the
 * rated batch, whose partitions start again from the committed offsets.
 * A batch that is not full (the input is not a backlog) commits at once.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_int.h"
#include "tally/consumer_loop.h"
#include "tally/log.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* merge the first offsets in l into parts (the lowest wins) */
static void add_firsts(rd_kafka_topic_partition_list_t *parts,
		       const rd_kafka_topic_partition_list_t *l)
{
	int i;

	for (i = 0; i < l->cnt; i++)
		tally_rater__merge_offset(parts, l->elems[i].topic,
					  l->elems[i].partition,
					  l->elems[i].offset, false);
}

/*
 * Seek each partition of the aborted batch p (and of the batch g gathered
 * after it, dropped with it) back to its first offset there. Batches
 * commit in order, so that is the committed position; it needs no round
 * trip to the group coordinator (rd_kafka_committed(), which failed the
 * rewind, and so skipped the batch, whenever the coordinator was the thing
 * failing). Partitions in neither did not move.
 */
static void rewind_batches(tally_rater *r, const struct rate_batch *p,
			   const struct rate_batch *g)
{
	rd_kafka_t *rk = tally_consumer_rk(r->consumer);
	rd_kafka_topic_partition_list_t *parts =
		rd_kafka_topic_partition_list_new(8);
	rd_kafka_error_t *kerr;

	add_firsts(parts, p->firsts);
	if (g != NULL && g->firsts != NULL)
		add_firsts(parts, g->firsts);
	kerr = rd_kafka_seek_partitions(rk, parts, 10000);
	if (kerr != NULL) {
		/* e.g. revoked meanwhile: its new owner starts from the
		 * committed offset anyway */
		tally_log(TALLY_ERR, "rate.rewind_failed",
			  TALLY_KV_STR("error", rd_kafka_error_string(kerr)));
		rd_kafka_error_destroy(kerr);
	}
	rd_kafka_topic_partition_list_destroy(parts);
}

static int kerr_to_rc(rd_kafka_error_t *kerr, const char *what,
		      tally_error *err)
{
	int rc = rd_kafka_error_is_fatal(kerr) ? TALLY_ERROR : TALLY_ETRANSIENT;

	tally_error_set(err, rc, "%s: %s", what, rd_kafka_error_string(kerr));
	return rc;
}

/* the end of one transaction: offsets and commit, on its own thread or
 * inline; the producer is not touched elsewhere meanwhile */
struct txn_end {
	rd_kafka_t *producer;
	const rd_kafka_topic_partition_list_t *offs;
	rd_kafka_consumer_group_metadata_t *cgmd;
	rd_kafka_error_t *kerr; /* NULL: committed */
	const char *what;
	int64_t t_sent; /* when the offsets were in */
};

static void *txn_end_run(void *arg)
{
	struct txn_end *t = arg;

	t->what = "send_offsets_to_transaction";
	t->kerr = rd_kafka_send_offsets_to_transaction(t->producer, t->offs,
						       t->cgmd, TXN_TIMEOUT_MS);
	t->t_sent = tally_mono_ns();
	if (t->kerr != NULL)
		return NULL;
	t->what = "commit_transaction";
	for (;;) {
		t->kerr = rd_kafka_commit_transaction(t->producer,
						      TXN_TIMEOUT_MS);
		if (t->kerr == NULL || !rd_kafka_error_is_retriable(t->kerr) ||
		    tally_signals_stop_requested())
			break;
		rd_kafka_error_destroy(t->kerr);
	}
	return NULL;
}

/*
 * Abort the open transaction of p after rc (kerr: the Kafka error, if any)
 * and rewind p and g so that they are consumed again. Returns TALLY_ERROR
 * when the producer is fenced or broken (the process must end), else 0.
 */
static int abort_batch(tally_rater *r, const struct rate_batch *p,
		       const struct rate_batch *g, rd_kafka_error_t *kerr,
		       int rc, tally_error *err)
{
	tally_log(TALLY_WARN, "rate.txn_abort", TALLY_KV_STR("error", err->msg),
		  TALLY_KV_INT("messages", (int64_t)p->n));
	if (kerr != NULL && rd_kafka_error_is_fatal(kerr)) {
		rc = TALLY_ERROR;
	} else {
		rd_kafka_error_t *aerr =
			rd_kafka_abort_transaction(r->producer, TXN_TIMEOUT_MS);
		if (aerr != NULL) {
			if (rd_kafka_error_is_fatal(aerr))
				rc = TALLY_ERROR;
			tally_log(TALLY_ERR, "rate.abort_failed",
				  TALLY_KV_STR("error",
					       rd_kafka_error_string(aerr)));
			rd_kafka_error_destroy(aerr);
		}
		rewind_batches(r, p, g);
	}
	if (r->c_aborts != NULL)
		tally_counter_add(r->c_aborts, 1);
	if (rc != TALLY_ERROR)
		rc = 0; /* the batches will be consumed again */
	return rc;
}

/* Event time to commit of the transaction's rated events (an event
 * stamped in the future counts as 0). */
static void observe_event_lag(tally_rater *r, const struct rate_batch *b)
{
	int64_t now_ms = tally_now_ms();
	uint64_t i;

	for (i = 0; i < b->n_rated; i++) {
		int64_t lag = now_ms - b->event_ms[i];

		tally_histogram_observe(r->h_event_lag,
					lag > 0 ? (uint64_t)lag * 1000 : 0);
	}
}

static void count_committed(tally_rater *r, const struct rate_batch *b)
{
	/* counted once per committed transaction, not per message */
	if (r->c_batches != NULL) {
		tally_counter_add(r->c_batches, 1);
		tally_counter_add(r->c_rated, b->n_rated);
		tally_counter_add(r->c_unpriced, b->n_unpriced);
		tally_counter_add(r->c_dlq, b->n_dlq);
		observe_event_lag(r, b);
	}
	r->committed_at[r->n_committed_at++] = b->rated_at_ms;
}

/*
 * Produce the rated batch p in a transaction and commit it. When g is not
 * NULL, g is rated meanwhile (the commit runs on a second thread) and, if
 * p's transaction fails, rewound with it. Returns 0 (p committed, or
 * aborted and rewound: *committed says which), or TALLY_ERROR.
 */
static int transact(tally_rater *r, struct rate_batch *p,
		    struct rate_batch *g, bool *committed, tally_error *err)
{
	rd_kafka_t *crk = tally_consumer_rk(r->consumer);
	struct txn_end t = { r->producer, NULL, NULL, NULL, NULL, 0 };
	rd_kafka_error_t *kerr;
	pthread_t th;
	bool threaded = false;
	int64_t t0 = tally_mono_ns(), t_produced;
	int rc;

	*committed = false;
	kerr = rd_kafka_begin_transaction(r->producer);
	if (kerr != NULL) {
		rc = kerr_to_rc(kerr, "begin_transaction", err);
		goto abort;
	}
	rc = tally_rater__produce_batch(r, p, err);
	if (rc != 0)
		goto abort;
	t_produced = tally_mono_ns();
	t.offs = p->nexts;
	t.cgmd = rd_kafka_consumer_group_metadata(crk);
	if (g != NULL)
		threaded = pthread_create(&th, NULL, txn_end_run, &t) == 0;
	if (!threaded)
		(void)txn_end_run(&t);
	if (g != NULL)
		tally_rater__rate_batch(r, g);
	if (threaded)
		(void)pthread_join(th, NULL);
	rd_kafka_consumer_group_metadata_destroy(t.cgmd);
	kerr = t.kerr;
	if (kerr != NULL) {
		rc = kerr_to_rc(kerr, t.what, err);
		goto abort;
	}
	count_committed(r, p);
	*committed = true;
	/* where a transaction's time goes: producing (ours), then offsets
	 * and commit (broker round trips; rating the next batch overlaps) */
	tally_log(TALLY_DEBUG, "rate.batch",
		  TALLY_KV_INT("messages", (int64_t)p->n),
		  TALLY_KV_INT("produce_us", (t_produced - t0) / 1000),
		  TALLY_KV_INT("offsets_us", (t.t_sent - t_produced) / 1000),
		  TALLY_KV_INT("commit_us", (tally_mono_ns() - t.t_sent) / 1000),
		  TALLY_KV_INT("overlapped", threaded));
	return 0;
abort:
	rc = abort_batch(r, p, g, kerr, rc, err);
	if (kerr != NULL)
		rd_kafka_error_destroy(kerr);
	if (g != NULL)
		tally_rater__drop_batch(g);
	return rc;
}

int tally_rater_step(tally_rater *r, size_t *nout, tally_error *err)
{
	struct rate_batch *p = &r->batch[r->pend], *g = &r->batch[!r->pend];
	bool full, committed;
	size_t done = 0;
	int rc = 0;

	r->n_committed_at = 0;
	g->n = tally_loop_gather_into(r->consumer, g->msgs, r->batch_size,
				      r->batch_ms);
	if (g->n > 0)
		tally_rater__gathered(r, g);
	full = g->n > 0 && g->n >= r->batch_size;
	if (p->n > 0 && p->gen != tally_consumer_generation(r->consumer))
		/* a rebalance since p was gathered: its partitions start
		 * again from the committed offsets */
		tally_rater__drop_batch(p);
	if (p->n > 0) {
		/* rate g while p commits */
		rc = transact(r, p, g->n > 0 ? g : NULL, &committed, err);
		if (committed)
			done += p->n;
		tally_rater__drop_batch(p);
		if (rc != 0 || !committed) {
			if (nout != NULL)
				*nout = done;
			return rc;
		}
	} else if (g->n > 0) {
		tally_rater__rate_batch(r, g);
	}
	if (g->n > 0 && !full) {
		/* not a backlog: no reason to keep g waiting */
		rc = transact(r, g, NULL, &committed, err);
		if (committed)
			done += g->n;
		tally_rater__drop_batch(g);
	}
	r->pend = g->n > 0 ? !r->pend : r->pend;
	if (nout != NULL)
		*nout = done;
	return rc;
}

size_t tally_rater_committed_stamps(const tally_rater *r, int64_t stamps[2])
{
	size_t i;

	for (i = 0; i < r->n_committed_at; i++)
		stamps[i] = r->committed_at[i];
	return r->n_committed_at;
}

/* tally_rater_run's state between tally_loop_run's calls */
struct rate_run {
	tally_rater *r;
	tally_error *err;
	bool reload; /* SIGHUP since the last batch: reload the book too */
};

static void run_reload(void *ctx)
{
	struct rate_run *run = ctx;

	(void)tally_program_reload(run->r->cfg);
	tally_rater__read_opts(run->r);
	run->reload = true;
}

static int run_step(void *ctx)
{
	struct rate_run *run = ctx;

	tally_rater__refresh_prices(run->r, run->reload);
	run->reload = false;
	return tally_rater_step(run->r, NULL, run->err);
}

int tally_rater_run(tally_rater *r, tally_error *err)
{
	struct rate_run run = { r, err, false };

	return tally_loop_run(run_step, run_reload, &run);
}
