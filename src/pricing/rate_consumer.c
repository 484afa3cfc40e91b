/*
 * rate_consumer.c - the tally-rate loop: consume billing.usage, rate each
 * event against the current price book, produce billing.usage.rated (and
 * dead letters) and commit the input offsets, all in one Kafka transaction
 * per batch (see rate_consumer.h).
 *
 * Key decision: the book is a plain pointer swapped only between batches,
 * so a batch is never priced with two books; the rating context's cache
 * notices the swap by itself. Any error inside a transaction aborts it and
 * seeks the consumer back to the committed offsets, so the batch is redone
 * from scratch; a fatal producer error (fenced by a newer instance) ends
 * the process, which systemd restarts. That is why the retry is not
 * tally_loop_batch's: retrying the batch in memory does not poll, so a
 * rebalance (or an eviction after max.poll.interval.ms) goes unseen and
 * the retried transaction would carry messages of partitions another
 * instance now owns; going back to Kafka keeps each batch to the current
 * assignment.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_int.h"
#include "tally/codec.h"
#include "tally/consumer_loop.h"
#include "tally/log.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <stdio.h>
#include <string.h>

/*
 * Seek each partition of the aborted batch back to its first offset in the
 * batch. Batches commit in order, so that is the committed position; it
 * needs no round trip to the group coordinator (rd_kafka_committed(),
 * which failed the rewind, and so skipped the batch, whenever the
 * coordinator was the thing failing). Partitions not in the batch did not
 * move.
 */
static void rewind_batch(tally_rater *r, size_t n)
{
	rd_kafka_t *rk = tally_consumer_rk(r->consumer);
	rd_kafka_topic_partition_list_t *parts =
		rd_kafka_topic_partition_list_new(8);
	rd_kafka_error_t *kerr;
	size_t i;

	for (i = 0; i < n; i++) {
		const rd_kafka_message_t *m = r->msgs[i];
		const char *t = rd_kafka_topic_name(m->rkt);
		rd_kafka_topic_partition_t *p =
			rd_kafka_topic_partition_list_find(parts, t,
							   m->partition);

		if (p == NULL) {
			p = rd_kafka_topic_partition_list_add(parts, t,
							      m->partition);
			p->offset = m->offset;
		} else if (m->offset < p->offset) {
			p->offset = m->offset;
		}
	}
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

static int produce(tally_rater *r, const rd_kafka_message_t *in,
		   const void *val, size_t len, tally_error *err)
{
	rd_kafka_resp_err_t e;

	for (;;) {
		e = rd_kafka_producev(r->producer, RD_KAFKA_V_RKT(r->out_rkt),
				      RD_KAFKA_V_KEY(in->key, in->key_len),
				      RD_KAFKA_V_VALUE((void *)val, len),
				      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				      RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(r->producer, 10);
	}
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
		return tally_error_set(err, TALLY_ETRANSIENT, "produce: %s",
				       rd_kafka_err2str(e));
	return 0;
}

static int dead_letter(tally_rater *r, const rd_kafka_message_t *in,
		       const char *reason, const char *detail,
		       tally_error *err)
{
	int rc;

	for (;;) {
		rc = tally_dlq_send(r->producer, r->dlq_topic, in, "tally-rate",
				    reason, detail, err);
		if (rc == 0 || !strstr(err->msg, "ueue full"))
			break;
		rd_kafka_poll(r->producer, 10);
	}
	if (rc == 0)
		r->n_dlq++;
	return rc;
}

/* Rate and produce one message inside the open transaction. */
static int handle(tally_rater *r, const rd_kafka_message_t *in,
		  int64_t now_ms, tally_error *err)
{
	tally_usage_event ev;
	tally_rated_event re;
	tally_codec_error cerr;
	tally_error rerr;
	int rc;

	memset(&cerr, 0, sizeof(cerr));
	if (tally_codec_decode_usage(&ev, in->payload, in->len, &cerr) != 0) {
		char detail[220];

		snprintf(detail, sizeof(detail), "%s: %s", cerr.field,
			 cerr.detail);
		return dead_letter(r, in, cerr.reason ? cerr.reason : "invalid",
				   detail, err);
	}
	tally_error_clear(&rerr);
	rc = tally_rate_event(&re, r->pb, &ev, r->ctx, &rerr);
	if (rc == TALLY_ENOTFOUND) {
		r->n_unpriced++;
		if (!r->unpriced_zero)
			return dead_letter(r, in, "unpriced", rerr.msg, err);
	} else if (rc != 0) {
		return dead_letter(r, in,
				   rc == TALLY_EOVERFLOW ? "cost_overflow"
							 : "invalid_quantity",
				   rerr.msg, err);
	}
	re.rated_at_ms = now_ms;
	r->sb.size = 0;
	tally_codec_encode_rated(&r->sb, &re);
	rc = produce(r, in, r->sb.data, r->sb.size, err);
	if (rc == 0)
		r->event_ms[r->n_rated++] = ev.time_ms;
	return rc;
}

static int kerr_to_rc(rd_kafka_error_t *kerr, const char *what,
		      tally_error *err)
{
	int rc = rd_kafka_error_is_fatal(kerr) ? TALLY_ERROR : TALLY_ETRANSIENT;

	tally_error_set(err, rc, "%s: %s", what, rd_kafka_error_string(kerr));
	return rc;
}

/* the next offset of each partition of the batch, for the transaction */
static rd_kafka_topic_partition_list_t *next_offsets(tally_rater *r,
						     size_t n)
{
	rd_kafka_topic_partition_list_t *offs =
		rd_kafka_topic_partition_list_new(8);
	size_t i;

	for (i = 0; i < n; i++) {
		const char *t = rd_kafka_topic_name(r->msgs[i]->rkt);
		rd_kafka_topic_partition_t *p =
		    rd_kafka_topic_partition_list_find(offs, t,
						       r->msgs[i]->partition);
		if (p == NULL)
			p = rd_kafka_topic_partition_list_add(
				offs, t, r->msgs[i]->partition);
		if (r->msgs[i]->offset + 1 > p->offset)
			p->offset = r->msgs[i]->offset + 1;
	}
	return offs;
}

/*
 * Abort the open transaction after rc (kerr: the Kafka error, if any) and
 * rewind the batch so that it is consumed again. Returns TALLY_ERROR when
 * the producer is fenced or broken (the process must end), else 0.
 */
static int abort_batch(tally_rater *r, size_t n, rd_kafka_error_t *kerr,
		       int rc, tally_error *err)
{
	tally_log(TALLY_WARN, "rate.txn_abort", TALLY_KV_STR("error", err->msg),
		  TALLY_KV_INT("messages", (int64_t)n));
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
		rewind_batch(r, n);
	}
	if (r->c_aborts != NULL)
		tally_counter_add(r->c_aborts, 1);
	if (rc != TALLY_ERROR)
		rc = 0; /* the batch will be consumed again */
	return rc;
}

/* Event time to commit of the transaction's rated events (an event
 * stamped in the future counts as 0). */
static void observe_event_lag(tally_rater *r)
{
	int64_t now_ms = tally_now_ms();
	uint64_t i;

	for (i = 0; i < r->n_rated; i++) {
		int64_t lag = now_ms - r->event_ms[i];

		tally_histogram_observe(r->h_event_lag,
					lag > 0 ? (uint64_t)lag * 1000 : 0);
	}
}

int tally_rater_step(tally_rater *r, size_t *nout, tally_error *err)
{
	rd_kafka_t *crk = tally_consumer_rk(r->consumer);
	rd_kafka_topic_partition_list_t *offs = NULL;
	rd_kafka_consumer_group_metadata_t *cgmd = NULL;
	rd_kafka_error_t *kerr = NULL;
	size_t n, i;
	int64_t now_ms, t_poll, t_got, t_rated, t_sent;
	int rc = 0;

	if (nout != NULL)
		*nout = 0;
	t_poll = tally_mono_ns();
	n = tally_loop_gather_into(r->consumer, r->msgs, r->batch_size,
				   r->batch_ms);
	if (n == 0)
		return 0;
	t_got = tally_mono_ns();
	now_ms = tally_now_ms();
	r->n_rated = r->n_unpriced = r->n_dlq = 0;
	kerr = rd_kafka_begin_transaction(r->producer);
	if (kerr != NULL) {
		rc = kerr_to_rc(kerr, "begin_transaction", err);
		goto abort;
	}
	for (i = 0; i < n; i++) {
		rc = handle(r, r->msgs[i], now_ms, err);
		if (rc != 0)
			goto abort;
	}
	t_rated = tally_mono_ns();
	offs = next_offsets(r, n);
	cgmd = rd_kafka_consumer_group_metadata(crk);
	kerr = rd_kafka_send_offsets_to_transaction(r->producer, offs, cgmd,
						    TXN_TIMEOUT_MS);
	if (kerr != NULL) {
		rc = kerr_to_rc(kerr, "send_offsets_to_transaction", err);
		goto abort;
	}
	t_sent = tally_mono_ns();
	for (;;) {
		kerr = rd_kafka_commit_transaction(r->producer, TXN_TIMEOUT_MS);
		if (kerr == NULL)
			break;
		if (rd_kafka_error_is_retriable(kerr) &&
		    !tally_signals_stop_requested()) {
			rd_kafka_error_destroy(kerr);
			continue;
		}
		rc = kerr_to_rc(kerr, "commit_transaction", err);
		goto abort;
	}
	/* counted once per committed transaction, not per message */
	if (r->c_batches != NULL) {
		tally_counter_add(r->c_batches, 1);
		tally_counter_add(r->c_rated, r->n_rated);
		tally_counter_add(r->c_unpriced, r->n_unpriced);
		tally_counter_add(r->c_dlq, r->n_dlq);
		observe_event_lag(r);
	}
	if (nout != NULL)
		*nout = n;
	/* where a batch's time goes: waiting for input, rating + producing
	 * (the only part on our CPU), offsets + commit (broker round trips) */
	tally_log(TALLY_DEBUG, "rate.batch",
		  TALLY_KV_INT("messages", (int64_t)n),
		  TALLY_KV_INT("poll_us", (t_got - t_poll) / 1000),
		  TALLY_KV_INT("rate_us", (t_rated - t_got) / 1000),
		  TALLY_KV_INT("offsets_us", (t_sent - t_rated) / 1000),
		  TALLY_KV_INT("commit_us", (tally_mono_ns() - t_sent) / 1000));
	goto cleanup;
abort:
	rc = abort_batch(r, n, kerr, rc, err);
cleanup:
	if (kerr != NULL)
		rd_kafka_error_destroy(kerr);
	if (cgmd != NULL)
		rd_kafka_consumer_group_metadata_destroy(cgmd);
	if (offs != NULL)
		rd_kafka_topic_partition_list_destroy(offs);
	for (i = 0; i < n; i++)
		rd_kafka_message_destroy(r->msgs[i]);
	return rc;
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
