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
#include "tally/pricebook.h"
#include "tally/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS INT64_C(86400000)

typedef struct app {
	tally_config *cfg;
	tally_pg *pg;
	tally_agg *agg;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_metrics *m;
	tally_counter *c_accepted, *c_dup, *c_dlq, *c_adj, *c_batches,
		*c_fenced, *c_retries, *c_gaps;
	tally_pricebook *pb;  /* storage GB-month prices */
	int64_t pb_version;
	tally_histogram *h_batch;
	volatile int pg_ok;
} app;

static int on_assign(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;
	tally_error err;
	int rc = tally_agg_assign(a->agg, parts, &err);

	if (rc != 0)
		tally_log(TALLY_WARN, "aggregate.assign_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

static void on_revoke(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;

	/* batches are processed between polls: nothing is in flight here */
	tally_agg_revoke(a->agg, parts);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
	app *a = opaque;

	(void)rk;
	/* totals acknowledged: the outbox mark moves (runs on this thread) */
	if (a != NULL && a->agg != NULL)
		tally_agg_delivered(a->agg, rkm);
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		tally_log(TALLY_ERR, "aggregate.delivery_failed",
			  TALLY_KV_STR("topic", rd_kafka_topic_name(rkm->rkt)),
			  TALLY_KV_STR("error", rd_kafka_err2str(rkm->err)));
}

static int health(char *detail, size_t len, void *payload)
{
	app *a = payload;

	snprintf(detail, len, "%s", a->pg_ok ? "ok" : "postgres unavailable");
	return a->pg_ok ? 0 : 1;
}

static int maintain(app *a)
{
	tally_error err;
	int rc = tally_agg_maintain(
		a->pg, (int)tally_config_int(a->cfg, "aggregate.lateness_days"),
		(int)tally_config_int(a->cfg, "aggregate.partitions_ahead_days"),
		(int)tally_config_int(a->cfg, "aggregate.retention_days"), &err);

	if (rc != 0)
		tally_log(TALLY_ERR, "aggregate.maintain_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

/* Load (or reload when its version moved) the book for storage prices. */
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
	if (a->agg != NULL)
		tally_agg_set_pricebook(a->agg, pb);
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

static tally_agg_opts agg_opts(app *a, char *dlq, size_t dlqlen)
{
	tally_agg_opts o = { 0 };

	snprintf(dlq, dlqlen, "%s%s", tally_config_str(a->cfg, "topics.rated"),
		 tally_config_str(a->cfg, "kafka.dlq_suffix"));
	o.group = tally_config_str(a->cfg, "aggregate.group");
	o.lateness_ms = tally_config_int(a->cfg, "aggregate.lateness_days") *
			DAY_MS;
	o.future_ms = tally_config_int(a->cfg, "aggregate.future_tolerance_s") *
		      1000;
	o.producer = a->producer;
	o.dlq_topic = dlq;
	o.totals_topic = tally_config_str(a->cfg, "topics.totals");
	o.pricebook = a->pb;
	return o;
}

/*
 * Process one batch until it is committed, fenced or we are told to stop.
 * Returns 0 (committed or fenced: go on) or non-zero (fatal).
 */
static int handle_batch(app *a, rd_kafka_message_t **msgs, size_t n,
			tally_agg_msg *views)
{
	tally_agg_stats st;
	tally_error err;
	int64_t t0 = tally_mono_ns();
	int attempt = 0, errors = 0, rc;
	size_t i;

	for (i = 0; i < n; i++) {
		views[i].topic = rd_kafka_topic_name(msgs[i]->rkt);
		views[i].partition = msgs[i]->partition;
		views[i].offset = msgs[i]->offset;
		views[i].payload = msgs[i]->payload;
		views[i].len = msgs[i]->len;
		views[i].rkm = msgs[i];
	}
	for (;;) {
		rc = tally_agg_process(a->agg, views, n, tally_now_ms(), &st,
				       &err);
		if (rc == 0) {
			a->pg_ok = 1;
			break;
		}
		if (rc == TALLY_AGG_FENCED) {
			tally_counter_add(a->c_fenced, 1);
			tally_log(TALLY_WARN, "aggregate.fenced",
				  TALLY_KV_STR("error", err.msg));
			if (tally_agg_reseek(a->agg, tally_consumer_rk(a->consumer),
					     views, n, &err) != 0)
				tally_log(TALLY_WARN, "aggregate.reseek_failed",
					  TALLY_KV_STR("error", err.msg));
			return 0;
		}
		if (tally_signals_stop_requested())
			return 0; /* not committed: the next owner redoes it */
		tally_counter_add(a->c_retries, 1);
		if (rc == TALLY_ETRANSIENT) {
			a->pg_ok = 0;
		} else if (++errors >= 5) {
			tally_log(TALLY_FATAL, "aggregate.batch_failed",
				  TALLY_KV_STR("error", err.msg));
			return 1;
		} else {
			/* e.g. a missing ledger partition: maintain, retry */
			(void)maintain(a);
		}
		int64_t wait = tally_backoff_ms(attempt++, 200, 10000);
		tally_log(TALLY_WARN, "aggregate.retry",
			  TALLY_KV_STR("error", err.msg),
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait));
		tally_signals_sleep_ms((long)wait);
		/* keep the group membership alive while PostgreSQL is away */
		rd_kafka_poll(a->producer, 0);
	}
	if (tally_consumer_store(a->consumer, msgs, n, &err) != 0)
		tally_log(TALLY_WARN, "aggregate.store_failed",
			  TALLY_KV_STR("error", err.msg));
	tally_counter_add(a->c_batches, 1);
	tally_counter_add(a->c_accepted, st.accepted);
	tally_counter_add(a->c_dup, st.duplicates);
	tally_counter_add(a->c_dlq, st.dead_lettered);
	tally_counter_add(a->c_adj, st.adjusted);
	tally_counter_add(a->c_gaps, st.gaps);
	tally_histogram_observe(a->h_batch,
				(uint64_t)((tally_mono_ns() - t0) / 1000));
	tally_log(TALLY_DEBUG, "aggregate.batch", TALLY_KV_INT("messages", n),
		  TALLY_KV_INT("accepted", st.accepted),
		  TALLY_KV_INT("duplicates", st.duplicates),
		  TALLY_KV_INT("dead_lettered", st.dead_lettered),
		  TALLY_KV_INT("adjusted", st.adjusted));
	return 0;
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
	a->h_batch = tally_metrics_histogram(a->m,
		"tally_aggregate_batch_seconds", NULL,
		"Time to process and commit one batch", NULL, 0);
}

int main(int argc, char **argv)
{
	const char *cfg_path = NULL, *listen = NULL;
	const char *topics[2] = { NULL, NULL };
	app a = { 0 };
	tally_error err = { 0 };
	tally_metrics_server *srv = NULL;
	tally_consumer_opts co = { 0 };
	rd_kafka_conf_t *conf;
	rd_kafka_message_t **msgs = NULL;
	tally_agg_msg *views = NULL;
	tally_agg_opts ao;
	char dlq[256];
	size_t cap;
	int64_t last_maint, last_tick;
	int i, lv, rc = EXIT_FAILURE;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			cfg_path = argv[++i];
		} else if (strcmp(argv[i], "--metrics-listen") == 0 &&
			   i + 1 < argc) {
			listen = argv[++i];
		} else {
			fprintf(stderr, "usage: tally-aggregate --config FILE "
					"[--metrics-listen HOST:PORT]\n");
			return strcmp(argv[i], "--help") == 0 ? 0 : 2;
		}
	}
	tally_log_init("tally-aggregate", TALLY_INFO);
	if (tally_config_load(&a.cfg, cfg_path, &err) != 0) {
		tally_log(TALLY_FATAL, "config.error",
			  TALLY_KV_STR("error", err.msg));
		return EXIT_FAILURE;
	}
	lv = tally_log_level_parse(tally_config_str(a.cfg, "log.level"));
	if (lv >= 0)
		tally_log_set_level((tally_log_level)lv);
	if (listen != NULL)
		tally_config_set(a.cfg, "aggregate.metrics_listen", listen);
	tally_signals_install();
	register_metrics(&a);

	if (tally_pg_connect_cfg(&a.pg, a.cfg, &err) != 0) {
		tally_log(TALLY_FATAL, "pg.connect_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	a.pg_ok = 1;
	if (maintain(&a) != 0)
		goto cleanup;
	if (load_prices(&a) != 0)
		goto cleanup;
	conf = tally_kafka_conf(a.cfg);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_opaque(conf, &a);
	if (tally_kafka_conf_set(conf, "linger.ms", "20", &err) != 0 ||
	    tally_kafka_producer_new(&a.producer, conf, &err) != 0) {
		tally_log(TALLY_FATAL, "kafka.producer_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	ao = agg_opts(&a, dlq, sizeof(dlq));
	if (tally_agg_new(&a.agg, a.pg, &ao, &err) != 0)
		goto cleanup;

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
		 * a bounded prefetch (RSS): about one large batch of rated
		 * events (~250 bytes each) queued ahead, fetched in pieces of
		 * at most 4 MiB instead of librdkafka's 50 MiB default.
		 */
		if (tally_kafka_conf_set(conf, "max.poll.interval.ms", "600000",
					 &err) != 0 ||
		    tally_kafka_conf_set(conf, "queued.max.messages.kbytes",
					 "6144", &err) != 0 ||
		    tally_kafka_conf_set(conf, "fetch.max.bytes", "4194304",
					 &err) != 0 ||
		    tally_kafka_conf_set(conf, "max.partition.fetch.bytes",
					 "1048576", &err) != 0)
			tally_log(TALLY_WARN, "kafka.conf",
				  TALLY_KV_STR("error", err.msg));
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
	tally_agg_set_consumer(a.agg, tally_consumer_rk(a.consumer));
	/* totals a previous run committed but did not get delivered */
	if (tally_agg_outbox(a.agg, true, &err) != 0)
		tally_log(TALLY_WARN, "aggregate.outbox_failed",
			  TALLY_KV_STR("error", err.msg));
	tally_log(TALLY_INFO, "aggregate.started",
		  TALLY_KV_STR("topic", topics[0]),
		  TALLY_KV_STR("group", co.group));

	cap = (size_t)tally_config_int(a.cfg, "aggregate.batch_size");
	msgs = tally_xcalloc(cap, sizeof(*msgs));
	views = tally_xcalloc(cap, sizeof(*views));
	last_maint = last_tick = tally_mono_ns();
	rc = EXIT_SUCCESS;
	while (!tally_signals_stop_requested()) {
		size_t n, bs;
		int brc;

		if (tally_signals_reload_requested()) {
			if (tally_config_reload(a.cfg, &err) != 0)
				tally_log(TALLY_ERR, "config.reload_failed",
					  TALLY_KV_STR("error", err.msg));
			lv = tally_log_level_parse(tally_config_str(a.cfg,
								    "log.level"));
			if (lv >= 0)
				tally_log_set_level((tally_log_level)lv);
		}
		bs = (size_t)tally_config_int(a.cfg, "aggregate.batch_size");
		if (bs > cap) {
			free(msgs);
			free(views);
			cap = bs;
			msgs = tally_xcalloc(cap, sizeof(*msgs));
			views = tally_xcalloc(cap, sizeof(*views));
		}
		n = tally_consumer_poll_batch(a.consumer, msgs, bs,
			(int)tally_config_int(a.cfg, "aggregate.batch_ms"));
		rd_kafka_poll(a.producer, 0);
		brc = n > 0 ? handle_batch(&a, msgs, n, views) : 0;
		for (size_t k = 0; k < n; k++)
			rd_kafka_message_destroy(msgs[k]);
		if (brc != 0) {
			rc = EXIT_FAILURE;
			break;
		}
		if ((tally_mono_ns() - last_tick) / 1000000 > 10000) {
			/* price changes; the totals outbox */
			(void)load_prices(&a);
			if (tally_agg_outbox(a.agg, true, &err) != 0)
				tally_log(TALLY_WARN, "aggregate.outbox_failed",
					  TALLY_KV_STR("error", err.msg));
			last_tick = tally_mono_ns();
		}
		if ((tally_mono_ns() - last_maint) / 1000000 > 3600000) {
			(void)maintain(&a);
			last_maint = tally_mono_ns();
		}
	}
	tally_log(TALLY_INFO, "aggregate.stopping");

cleanup:
	tally_metrics_server_free(srv);
	tally_consumer_free(a.consumer);
	if (a.producer != NULL) {
		rd_kafka_flush(a.producer, 10000);
		/* mark what was delivered; the rest is republished next start */
		if (a.agg != NULL && tally_agg_outbox(a.agg, false, &err) != 0)
			tally_log(TALLY_WARN, "aggregate.outbox_failed",
				  TALLY_KV_STR("error", err.msg));
		tally_agg_free(a.agg);
		a.agg = NULL;
		rd_kafka_destroy(a.producer);
	}
	tally_agg_free(a.agg);
	tally_pricebook_free(a.pb);
	tally_pg_free(a.pg);
	tally_metrics_free(a.m);
	tally_config_free(a.cfg);
	free(msgs);
	free(views);
	return rc;
}
