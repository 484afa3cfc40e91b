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
 * the process, which systemd restarts.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/codec.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"
#include "tally/rate_consumer.h"
#include "tally/program.h"
#include "tally/rating.h"
#include "tally/signals.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TXN_TIMEOUT_MS 60000

struct tally_rater {
	tally_config *cfg;
	tally_metrics *m;
	tally_pg *pg;
	tally_pricebook *pb;
	tally_rate_ctx *ctx;
	tally_consumer *consumer;
	rd_kafka_t *producer;
	char in_topic[256], out_topic[256], dlq_topic[256];
	size_t batch_size;
	int batch_ms;
	bool unpriced_zero;
	int64_t last_check_ns;
	PGconn *listen_conn; /* connection LISTENing on tally_prices */
	rd_kafka_message_t **msgs;
	msgpack_sbuffer sb;
	uint64_t n_rated, n_unpriced, n_dlq; /* of the open transaction */
	tally_counter *c_rated, *c_dlq, *c_unpriced, *c_batches, *c_aborts,
		*c_reloads;
	tally_gauge *g_version;
};

static void read_opts(tally_rater *r)
{
	const char *u = tally_config_str(r->cfg, "rate.unpriced");

	r->batch_size = (size_t)tally_config_int(r->cfg, "rate.batch_size");
	r->batch_ms = (int)tally_config_int(r->cfg, "rate.batch_ms");
	r->unpriced_zero = strcmp(u, "zero") == 0;
	if (!r->unpriced_zero && strcmp(u, "dead_letter") != 0)
		tally_log(TALLY_WARN, "rate.config",
			  TALLY_KV_STR("error", "rate.unpriced must be "
						"dead_letter or zero"),
			  TALLY_KV_STR("using", "dead_letter"));
	r->msgs = tally_xrealloc(r->msgs, r->batch_size * sizeof(*r->msgs));
}

/*
 * true when the book may have changed: a tally_prices notification arrived
 * (the 0002 trigger sends one on every change), or the connection is new
 * and LISTEN was (re)issued, so notifications may have been missed. Never
 * blocks: PQconsumeInput reads only what the socket already holds (libpq's
 * socket is non-blocking), and no query is in flight between batches.
 */
static bool prices_notified(tally_rater *r)
{
	PGconn *conn;
	PGnotify *nt;
	PGresult *res = NULL;
	tally_error lerr;
	bool hit = false;

	tally_error_clear(&lerr);
	if (tally_pg_ensure(r->pg, &lerr) != 0)
		return false; /* the version check reports it */
	conn = tally_pg_conn(r->pg);
	if (conn != r->listen_conn) {
		if (tally_pg_exec(r->pg, &res, "LISTEN tally_prices", 0, NULL,
				  &lerr) != 0) {
			tally_log(TALLY_WARN, "rate.listen_failed",
				  TALLY_KV_STR("error", lerr.msg));
			return false;
		}
		PQclear(res);
		r->listen_conn = conn;
		hit = true;
	}
	if (PQconsumeInput(conn) == 0)
		return hit; /* broken: the next tally_pg_ensure reconnects */
	for (;;) {
		nt = PQnotifies(conn);
		if (nt == NULL)
			break;
		if (strcmp(nt->relname, "tally_prices") == 0)
			hit = true;
		PQfreemem(nt);
	}
	return hit;
}

static int load_book(tally_rater *r, bool force, tally_error *err)
{
	tally_pricebook *pb = NULL;
	int64_t v = 0;
	int rc;

	if (!force && r->pb != NULL) {
		rc = tally_pricebook_pg_version(&v, r->pg, err);
		if (rc != 0)
			return rc;
		if (v == tally_pricebook_version(r->pb))
			return 0;
	}
	rc = tally_pricebook_load_pg(&pb, r->pg, err);
	if (rc != 0)
		return rc;
	tally_pricebook_free(r->pb); /* only between batches: no reader */
	r->pb = pb;
	if (r->g_version != NULL)
		tally_gauge_set(r->g_version, tally_pricebook_version(pb));
	if (r->c_reloads != NULL)
		tally_counter_add(r->c_reloads, 1);
	tally_log(TALLY_INFO, "rate.prices_loaded",
		  TALLY_KV_INT("version", tally_pricebook_version(pb)),
		  TALLY_KV_INT("models", (int64_t)tally_pricebook_models(pb)));
	return 0;
}

static void register_metrics(tally_rater *r)
{
	if (r->m == NULL)
		return;
	r->c_rated = tally_metrics_counter(r->m, "tally_rate_events_total",
					   "outcome=\"rated\"",
					   "Usage events handled by tally-rate");
	r->c_unpriced = tally_metrics_counter(r->m, "tally_rate_events_total",
					      "outcome=\"unpriced\"", NULL);
	r->c_dlq = tally_metrics_counter(r->m, "tally_rate_events_total",
					 "outcome=\"dead_letter\"", NULL);
	r->c_batches = tally_metrics_counter(r->m, "tally_rate_batches_total",
					     NULL,
					     "Committed Kafka transactions");
	r->c_aborts = tally_metrics_counter(r->m, "tally_rate_aborts_total",
					    NULL,
					    "Aborted Kafka transactions");
	r->c_reloads = tally_metrics_counter(r->m,
					     "tally_rate_price_reloads_total",
					     NULL, "Price book loads");
	r->g_version = tally_metrics_gauge(r->m, "tally_rate_price_version",
					   NULL, "Loaded price book version");
}

int tally_rater_new(tally_rater **out, tally_config *cfg, tally_metrics *m,
		    tally_error *err)
{
	tally_rater *r = tally_xcalloc(1, sizeof(*r));
	const char *topics[2] = { NULL, NULL };
	tally_consumer_opts co;
	rd_kafka_conf_t *conf;
	rd_kafka_error_t *kerr;
	char v[32];
	int rc;

	r->cfg = cfg;
	r->m = m;
	msgpack_sbuffer_init(&r->sb);
	register_metrics(r);
	read_opts(r);
	snprintf(r->in_topic, sizeof(r->in_topic), "%s",
		 tally_config_str(cfg, "topics.usage"));
	snprintf(r->out_topic, sizeof(r->out_topic), "%s",
		 tally_config_str(cfg, "topics.rated"));
	snprintf(r->dlq_topic, sizeof(r->dlq_topic), "%s%s", r->in_topic,
		 tally_config_str(cfg, "kafka.dlq_suffix"));
	r->ctx = tally_rate_ctx_new();

	rc = tally_pg_connect(&r->pg, tally_config_str(cfg, "database.url"),
			      (int)tally_config_int(cfg,
						    "database.retry_max_ms"),
			      err);
	if (rc == 0) {
		(void)prices_notified(r); /* LISTEN before the first load */
		rc = load_book(r, true, err);
	}
	if (rc != 0)
		goto fail;
	r->last_check_ns = tally_mono_ns();

	/* transactional producer */
	conf = tally_kafka_conf(cfg);
	rc = tally_kafka_conf_set(conf, "transactional.id",
				  tally_config_str(cfg, "rate.transactional_id"),
				  err);
	/*
	 * Measured on the 2-core box (docs/pricing.md): the broker's CPU per
	 * event is what bounds us, so we send fewer, fuller batches.
	 * commit_transaction() flushes at once whatever linger.ms says, so
	 * a long linger costs no latency at the end of a batch. No
	 * compression: on loopback lz4 made the broker (which decompresses
	 * to validate) use 60 % more CPU per event and cut throughput by a
	 * third.
	 */
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "linger.ms", "100", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "batch.num.messages", "100000",
					  err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "compression.type", "none",
					  err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "queue.buffering.max.messages",
					  "2000000", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "transaction.timeout.ms",
					  "60000", err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		goto fail;
	}
	rc = tally_kafka_producer_new(&r->producer, conf, err);
	if (rc != 0)
		goto fail;
	kerr = rd_kafka_init_transactions(r->producer, TXN_TIMEOUT_MS);
	if (kerr != NULL) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "init_transactions: %s",
				     rd_kafka_error_string(kerr));
		rd_kafka_error_destroy(kerr);
		goto fail;
	}

	/* consumer: offsets are committed only through the transaction */
	conf = tally_kafka_conf(cfg);
	snprintf(v, sizeof(v), "%lld",
		 (long long)tally_config_int(cfg, "kafka.session_timeout_ms"));
	rc = tally_kafka_conf_set(conf, "enable.auto.commit", "false", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "session.timeout.ms", v, err);
	/*
	 * Prefetch depth (measured in docs/pricing.md, "Performance").
	 * librdkafka stops fetching a partition once its queue holds
	 * queued.min.messages or queued.max.messages.kbytes, and looks at it
	 * again only after fetch.queue.backoff.ms. Before 2.2 that backoff
	 * was a fixed ~1 s, so the queue had to hold over a second of input
	 * (500 000 messages, ~0.5 GB of RSS) or we sat idle until
	 * rate.batch_ms ran out. With fetch.queue.backoff.ms = 10
	 * (librdkafka >= 2.2; ops/install-deps builds 2.12.1) a queue of
	 * a few batches keeps us as fast at a fraction of the memory, so
	 * the default rate.prefetch_messages is small; with an older
	 * library it must be raised again (we warn).
	 */
	if (rc == 0) {
		int64_t pre = tally_config_int(cfg, "rate.prefetch_messages");
		int64_t kb = pre / 2; /* ~0.5 KB per queued message */
		tally_error qerr;
		bool qbackoff = tally_kafka_conf_set(conf,
			"fetch.queue.backoff.ms", "10", &qerr) == 0;

		if (!qbackoff && kb < 65536)
			kb = 65536; /* 2.0: never the bound, as before */
		if (kb < 1024)
			kb = 1024;
		if (kb > 2097151)
			kb = 2097151; /* librdkafka's maximum */
		if (!qbackoff && pre < 500000)
			tally_log(TALLY_WARN, "rate.prefetch_small",
				  TALLY_KV_STR("reason",
					       "librdkafka < 2.2 has no "
					       "fetch.queue.backoff.ms; set "
					       "rate.prefetch_messages >= "
					       "500000 or tally-rate starves"),
				  TALLY_KV_STR("librdkafka",
					       rd_kafka_version_str()));
		snprintf(v, sizeof(v), "%lld", (long long)pre);
		rc = tally_kafka_conf_set(conf, "queued.min.messages", v, err);
		snprintf(v, sizeof(v), "%lld", (long long)kb);
		if (rc == 0)
			rc = tally_kafka_conf_set(conf,
						  "queued.max.messages.kbytes",
						  v, err);
		/*
		 * Fetches of at most 2 MiB (512 KiB per partition) instead of
		 * 50 MiB (1 MiB per partition): a fetch buffer lives until its
		 * last message is destroyed. Measured: ~20 MiB less RSS at
		 * the same speed. Only with the short backoff: with 2.0 each
		 * refetch waits ~1 s, so smaller fetches would starve us.
		 */
		if (rc == 0 && qbackoff)
			rc = tally_kafka_conf_set(conf, "fetch.max.bytes",
						  "2097152", err);
		if (rc == 0 && qbackoff)
			rc = tally_kafka_conf_set(conf,
						  "max.partition.fetch.bytes",
						  "524288", err);
	}
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		goto fail;
	}
	topics[0] = r->in_topic;
	memset(&co, 0, sizeof(co));
	co.group = tally_config_str(cfg, "rate.group");
	co.topics = topics;
	co.read_committed = true;
	rc = tally_consumer_new(&r->consumer, conf, &co, err);
	if (rc != 0)
		goto fail;
	tally_log(TALLY_INFO, "rate.started", TALLY_KV_STR("topic", r->in_topic),
		  TALLY_KV_STR("rated", r->out_topic),
		  TALLY_KV_STR("group", co.group),
		  TALLY_KV_STR("transactional_id",
			       tally_config_str(cfg, "rate.transactional_id")));
	*out = r;
	return 0;
fail:
	tally_rater_free(r);
	return rc;
}

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

static int produce(tally_rater *r, const char *topic,
		   const rd_kafka_message_t *in, const void *val, size_t len,
		   tally_error *err)
{
	rd_kafka_resp_err_t e;

	for (;;) {
		e = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(topic),
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
	rc = produce(r, r->out_topic, in, r->sb.data, r->sb.size, err);
	if (rc == 0)
		r->n_rated++;
	return rc;
}

static int kerr_to_rc(rd_kafka_error_t *kerr, const char *what,
		      tally_error *err)
{
	int rc = rd_kafka_error_is_fatal(kerr) ? TALLY_ERROR : TALLY_ETRANSIENT;

	tally_error_set(err, rc, "%s: %s", what, rd_kafka_error_string(kerr));
	return rc;
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
	n = tally_consumer_poll_batch(r->consumer, r->msgs, r->batch_size,
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
	/* next offset per partition of this batch */
	offs = rd_kafka_topic_partition_list_new(8);
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

int tally_rater_run(tally_rater *r, tally_error *err)
{
	int64_t check_ns;
	int rc;

	while (!tally_signals_stop_requested()) {
		bool reload = tally_signals_reload_requested();

		if (reload) {
			(void)tally_program_reload(r->cfg);
			read_opts(r);
		}
		check_ns = tally_config_int(r->cfg, "rate.price_check_s") *
			   INT64_C(1000000000);
		/*
		 * A NOTIFY makes the next batch use the new book; the periodic
		 * version check stays as a safety net (a notification is lost
		 * while the connection is down, and LISTEN is only re-issued
		 * on the next call).
		 */
		if (prices_notified(r) || reload ||
		    tally_mono_ns() - r->last_check_ns >= check_ns) {
			tally_error perr;

			tally_error_clear(&perr);
			/* between batches: no event is being rated */
			if (tally_pg_ensure(r->pg, &perr) != 0 ||
			    load_book(r, reload, &perr) != 0)
				tally_log(TALLY_WARN, "rate.prices_check_failed",
					  TALLY_KV_STR("error", perr.msg));
			r->last_check_ns = tally_mono_ns();
		}
		rc = tally_rater_step(r, NULL, err);
		if (rc != 0)
			return rc;
	}
	return 0;
}

void tally_rater_free(tally_rater *r)
{
	if (r == NULL)
		return;
	tally_consumer_free(r->consumer); /* leaves the group */
	if (r->producer != NULL) {
		rd_kafka_flush(r->producer, 10000);
		rd_kafka_destroy(r->producer);
	}
	tally_pricebook_free(r->pb);
	tally_rate_ctx_free(r->ctx);
	tally_pg_free(r->pg);
	msgpack_sbuffer_destroy(&r->sb);
	free(r->msgs);
	free(r);
}
