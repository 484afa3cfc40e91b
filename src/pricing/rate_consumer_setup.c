/*
 * rate_consumer_setup.c - building tally-rate: options, metrics, the
 * database connection and first price book, the transactional producer and
 * the read_committed consumer (with the measured batching and prefetch
 * settings), and freeing it all.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_int.h"
#include "tally/log.h"
#include "tally/program.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tally_rater__read_opts(tally_rater *r)
{
	const char *u = tally_config_str(r->cfg, "rate.unpriced");
	int i;

	r->batch_size = (size_t)tally_config_int(r->cfg, "rate.batch_size");
	r->batch_ms = (int)tally_config_int(r->cfg, "rate.batch_ms");
	r->unpriced_zero = strcmp(u, "zero") == 0;
	if (!r->unpriced_zero && strcmp(u, "dead_letter") != 0)
		tally_log(TALLY_WARN, "rate.config",
			  TALLY_KV_STR("error", "rate.unpriced must be "
						"dead_letter or zero"),
			  TALLY_KV_STR("using", "dead_letter"));
	for (i = 0; i < 2; i++) {
		struct rate_batch *b = &r->batch[i];

		/* a pending batch keeps its messages over a smaller size */
		b->cap = r->batch_size > b->n ? r->batch_size : b->n;
		b->msgs = tally_xrealloc(b->msgs, b->cap * sizeof(*b->msgs));
		b->out = tally_xrealloc(b->out, b->cap * sizeof(*b->out));
		b->event_ms = tally_xrealloc(b->event_ms,
					     b->cap * sizeof(*b->event_ms));
	}
}

static void register_metrics(tally_rater *r)
{
	const tally_metric_def defs[] = {
		{ "tally_rate_events_total", "outcome=\"rated\"",
		  "Usage events handled by tally-rate", &r->c_rated },
		{ "tally_rate_events_total", "outcome=\"unpriced\"", NULL,
		  &r->c_unpriced },
		{ "tally_rate_events_total", "outcome=\"dead_letter\"", NULL,
		  &r->c_dlq },
		{ "tally_rate_batches_total", NULL,
		  "Committed Kafka transactions", &r->c_batches },
		{ "tally_rate_aborts_total", NULL, "Aborted Kafka transactions",
		  &r->c_aborts },
		{ "tally_rate_price_reloads_total", NULL, "Price book loads",
		  &r->c_reloads },
		{ "tally_rate_price_version", NULL, "Loaded price book version",
		  .gauge = &r->g_version },
	};

	if (r->m == NULL)
		return;
	TALLY_METRICS_REGISTER(r->m, defs);
	r->h_event_lag = tally_metrics_event_to_commit(r->m, "rate");
}

/*
 * Measured on the 2-core box (docs/pricing.md): the broker's CPU per
 * event is what bounds us, so we send fewer, fuller batches.
 * commit_transaction() flushes at once whatever linger.ms says, so
 * a long linger costs no latency at the end of a batch. No
 * compression: on loopback lz4 made the broker (which decompresses
 * to validate) use 60 % more CPU per event and cut throughput by a
 * third. A transaction begun while the coordinator still writes the
 * previous one's markers gets CONCURRENT_TRANSACTIONS; librdkafka
 * retries AddPartitionsToTxn after 20 ms but AddOffsetsToTxn after
 * retry.backoff.ms (100 ms by default: a 100 ms stall in about 1 of 100
 * back-to-back transactions); 20 ms for both. Later retries of any
 * request still back off exponentially to retry.backoff.max.ms.
 * Defaults: a property in the configuration wins.
 */
static const char *const producer_tuning[][2] = {
	{ "linger.ms", "100" },
	{ "batch.num.messages", "100000" },
	{ "compression.type", "none" },
	{ "queue.buffering.max.messages", "2000000" },
	{ "transaction.timeout.ms", "60000" },
	{ "retry.backoff.ms", "20" },
};

/* the transactional producer, its transactions initialised */
static int open_producer(tally_rater *r, tally_config *cfg, tally_error *err)
{
	rd_kafka_conf_t *conf;
	rd_kafka_error_t *kerr;
	int rc;

	conf = tally_kafka_conf(cfg);
	rc = tally_kafka_conf_set(
	    conf, "transactional.id",
	    tally_config_str(cfg, "rate.transactional_id"), err);
	if (rc == 0)
		rc = tally_kafka_conf_defaults(conf, cfg, producer_tuning,
					       sizeof(producer_tuning) /
						       sizeof(producer_tuning[0]),
					       err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		return rc;
	}
	rc = tally_kafka_producer_new(&r->producer, conf, err);
	if (rc != 0)
		return rc;
	kerr = rd_kafka_init_transactions(r->producer, TXN_TIMEOUT_MS);
	if (kerr != NULL) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "init_transactions: %s",
				     rd_kafka_error_string(kerr));
		rd_kafka_error_destroy(kerr);
	}
	return rc;
}

/*
 * At a steady input rate a fetch would return as soon as one byte is
 * there: hundreds of small fetches a second, which cost the broker
 * more than the messages (measured in docs/pricing.md,
 * "Performance"). The broker holds a fetch until 256 KiB (half of
 * one partition's largest answer) or 50 ms; a batch gathers for
 * rate.batch_ms anyway.
 */
static const char *const fetch_tuning[][2] = {
	{ "fetch.min.bytes", "262144" },
	{ "fetch.wait.max.ms", "50" },
};

/* the consumer's settings: offsets are committed only through the
 * transaction; the prefetch depth below */
static int consumer_conf(rd_kafka_conf_t *conf, tally_config *cfg,
			 tally_error *err)
{
	char v[32];
	int rc;

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
		bool qbackoff = tally_kafka_conf_default(conf, cfg,
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
		rc = tally_kafka_conf_default(conf, cfg, "queued.min.messages",
					      v, err);
		snprintf(v, sizeof(v), "%lld", (long long)kb);
		if (rc == 0)
			rc = tally_kafka_conf_default(
				conf, cfg, "queued.max.messages.kbytes", v, err);
		/*
		 * Fetches of at most 2 MiB (512 KiB per partition) instead of
		 * 50 MiB (1 MiB per partition): a fetch buffer lives until its
		 * last message is destroyed. Measured: ~20 MiB less RSS at
		 * the same speed. Only with the short backoff: with 2.0 each
		 * refetch waits ~1 s, so smaller fetches would starve us.
		 */
		if (rc == 0 && qbackoff)
			rc = tally_kafka_conf_default(conf, cfg,
						      "fetch.max.bytes",
						      "2097152", err);
		if (rc == 0 && qbackoff)
			rc = tally_kafka_conf_default(
				conf, cfg, "max.partition.fetch.bytes",
				"524288", err);
	}
	if (rc == 0)
		rc = tally_kafka_conf_defaults(conf, cfg, fetch_tuning,
					       sizeof(fetch_tuning) /
						       sizeof(fetch_tuning[0]),
					       err);
	return rc;
}

int tally_rater_new(tally_rater **out, tally_config *cfg, tally_metrics *m,
		    tally_error *err)
{
	tally_rater *r = tally_xcalloc(1, sizeof(*r));
	const char *topics[2] = { NULL, NULL };
	tally_consumer_opts co;
	rd_kafka_conf_t *conf;
	int rc;

	r->cfg = cfg;
	r->m = m;
	msgpack_sbuffer_init(&r->sb);
	register_metrics(r);
	tally_rater__read_opts(r);
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
		/* LISTEN before the first load */
		(void)tally_rater__prices_notified(r);
		rc = tally_rater__load_book(r, true, err);
	}
	if (rc != 0)
		goto fail;
	r->last_check_ns = tally_mono_ns();

	rc = open_producer(r, cfg, err);
	if (rc != 0)
		goto fail;
	r->out_rkt = rd_kafka_topic_new(r->producer, r->out_topic, NULL);
	if (r->out_rkt == NULL) {
		rc = tally_error_set(err, TALLY_ERROR, "topic %s: %s",
				     r->out_topic,
				     rd_kafka_err2str(rd_kafka_last_error()));
		goto fail;
	}
	conf = tally_kafka_conf(cfg);
	rc = consumer_conf(conf, cfg, err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		goto fail;
	}
	topics[0] = r->in_topic;
	memset(&co, 0, sizeof(co));
	co.group = tally_config_str(cfg, "rate.group");
	co.topics = topics;
	co.read_committed = true;
	co.metrics = r->m; /* consumer lag gauges */
	co.rejoin_timeout_ms = tally_config_int(cfg, "kafka.rejoin_timeout_ms");
	rc = tally_consumer_new(&r->consumer, conf, &co, err);
	if (rc != 0)
		goto fail;
	tally_log(TALLY_INFO, "rate.started",
		  TALLY_KV_STR("topic", r->in_topic),
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

void tally_rater_free(tally_rater *r)
{
	int i;

	if (r == NULL)
		return;
	for (i = 0; i < 2; i++) /* their messages are the consumer's */
		tally_rater__drop_batch(&r->batch[i]);
	tally_consumer_free(r->consumer); /* leaves the group */
	if (r->out_rkt != NULL)
		rd_kafka_topic_destroy(r->out_rkt);
	if (r->producer != NULL) {
		rd_kafka_flush(r->producer, 10000);
		rd_kafka_destroy(r->producer);
	}
	tally_pricebook_free(r->pb);
	tally_rate_ctx_free(r->ctx);
	tally_pg_free(r->pg);
	msgpack_sbuffer_destroy(&r->sb);
	for (i = 0; i < 2; i++) {
		free(r->batch[i].msgs);
		free(r->batch[i].out);
		free(r->batch[i].event_ms);
	}
	free(r);
}

