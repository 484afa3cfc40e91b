/*
 * tally-alerts - budget, plan-limit, revenue, churn and billing-signal
 * alerts (see include/tally/alerts.h and docs/alerts.md).
 *
 *   tally-alerts --config FILE [--metrics-listen HOST:PORT]
 *
 * Consumer group alerts.group on topics.totals and topics.signals. Each
 * batch is one PostgreSQL transaction (alerts + positions in
 * consumer_offsets behind a fence); new alerts are produced to
 * topics.alerts after the commit. At start-up, and every 30 s, alerts that
 * were committed but never produced are produced (the sweep). A delivery
 * thread with its own connection POSTs undelivered alerts to
 * alerts.webhook_url, retrying with backoff; it never blocks the consumer.
 *
 * SIGTERM/SIGINT: finish the batch, commit, leave the group, exit 0 (a
 * second signal exits at once). SIGHUP: reload alerts.thresholds,
 * alerts.webhook_url and log.level. Exit 1 on a start-up error or an error
 * that retrying does not cure (positions are in PostgreSQL).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_MAX 1000
#define BATCH_MS 200
#define SWEEP_EVERY_MS 30000
#define SWEEP_MIN_AGE_MS 60000   /* leave in-flight produces alone */
#define WEBHOOK_TIMEOUT_MS 10000
#define WEBHOOK_LIMIT 50         /* alerts per delivery round */

typedef struct app {
	tally_config *cfg;
	tally_pg *pg;
	tally_alerts *alerts;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_metrics *m;
	tally_counter *c_batches, *c_fenced, *c_retries, *c_stale, *c_dlq,
		*c_existing;
	tally_gauge *g_undelivered;
	atomic_int pg_ok;
	/* delivery thread */
	pthread_t th;
	bool th_started;
	atomic_int th_stop;
	pthread_mutex_t mu;
	char *webhook_url; /* under mu */
} app;

static int on_assign(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;
	tally_error err;
	int rc = tally_alerts_assign(a->alerts, parts, &err);

	if (rc != 0)
		tally_log(TALLY_WARN, "alerts.assign_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

static void on_revoke(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	app *a = payload;

	/* batches are processed between polls: nothing is in flight here */
	tally_alerts_revoke(a->alerts, parts);
}

static int health(char *detail, size_t len, void *payload)
{
	app *a = payload;
	int ok = atomic_load(&a->pg_ok);

	snprintf(detail, len, "%s", ok ? "ok" : "postgres unavailable");
	return ok ? 0 : 1;
}

/* The webhook delivery loop: its own connection, never the consumer's. */
static void *deliver_main(void *payload)
{
	app *a = payload;
	tally_pg *pg = NULL;
	tally_error err;
	int64_t last_gauge = 0;

	while (!atomic_load(&a->th_stop)) {
		char *url;
		int nd = 0, nf = 0, i;

		if (pg == NULL &&
		    tally_pg_connect_cfg(&pg, a->cfg, &err) != 0) {
			tally_log(TALLY_WARN, "alerts.webhook_pg_failed",
				  TALLY_KV_STR("error", err.msg));
			pg = NULL;
		}
		pthread_mutex_lock(&a->mu);
		url = a->webhook_url[0] ? tally_xstrdup(a->webhook_url) : NULL;
		pthread_mutex_unlock(&a->mu);
		if (pg != NULL && url != NULL &&
		    tally_alerts_deliver(pg, url, WEBHOOK_TIMEOUT_MS,
					 WEBHOOK_LIMIT, a->m, &nd, &nf,
					 &err) != 0)
			tally_log(TALLY_WARN, "alerts.webhook_round_failed",
				  TALLY_KV_STR("error", err.msg));
		free(url);
		if (pg != NULL && tally_mono_ns() - last_gauge > 5000000000) {
			PGresult *res = NULL;
			int64_t v = 0;

			if (tally_pg_exec(pg, &res, "SELECT count(*) FROM alerts"
					  " WHERE delivered_at IS NULL", 0,
					  NULL, &err) == 0 &&
			    tally_parse_i64(&v, PQgetvalue(res, 0, 0)) == 0)
				tally_gauge_set(a->g_undelivered, v);
			PQclear(res);
			last_gauge = tally_mono_ns();
		}
		/* a full round may have more waiting: go again at once */
		if (nd + nf >= WEBHOOK_LIMIT)
			continue;
		for (i = 0; i < 10 && !atomic_load(&a->th_stop); i++)
			tally_sleep_ms(100);
	}
	tally_pg_free(pg);
	return NULL;
}

static void set_webhook_url(app *a)
{
	pthread_mutex_lock(&a->mu);
	free(a->webhook_url);
	a->webhook_url = tally_xstrdup(tally_config_str(a->cfg,
							"alerts.webhook_url"));
	pthread_mutex_unlock(&a->mu);
}

/*
 * Process one batch until it is committed, fenced or we are told to stop.
 * Returns 0 (committed or fenced: go on) or non-zero (fatal).
 */
static int handle_batch(app *a, rd_kafka_message_t **msgs, size_t n,
			tally_alerts_msg *views)
{
	tally_alerts_stats st = { 0 };
	tally_error err;
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
		int64_t wait;

		rc = tally_alerts_process(a->alerts, views, n, &st, &err);
		if (rc == 0) {
			atomic_store(&a->pg_ok, 1);
			break;
		}
		if (rc == TALLY_ALERTS_FENCED) {
			tally_counter_add(a->c_fenced, 1);
			tally_log(TALLY_WARN, "alerts.fenced",
				  TALLY_KV_STR("error", err.msg));
			if (tally_alerts_reseek(a->alerts,
						tally_consumer_rk(a->consumer),
						views, n, &err) != 0) {
				/* going on would skip the batch just dropped:
				 * a restart seeks from PostgreSQL */
				tally_log(TALLY_FATAL, "alerts.reseek_failed",
					  TALLY_KV_STR("error", err.msg));
				return 1;
			}
			return 0;
		}
		if (tally_signals_stop_requested())
			return 0; /* not committed: the next owner redoes it */
		tally_counter_add(a->c_retries, 1);
		if (rc == TALLY_ETRANSIENT) {
			atomic_store(&a->pg_ok, 0);
		} else if (++errors >= 5) {
			tally_log(TALLY_FATAL, "alerts.batch_failed",
				  TALLY_KV_STR("error", err.msg));
			return 1;
		}
		wait = tally_backoff_ms(attempt++, 200, 10000);
		tally_log(TALLY_WARN, "alerts.retry",
			  TALLY_KV_STR("error", err.msg),
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait));
		tally_signals_sleep_ms((long)wait);
		rd_kafka_poll(a->producer, 0);
	}
	if (tally_consumer_store(a->consumer, msgs, n, &err) != 0)
		tally_log(TALLY_WARN, "alerts.store_failed",
			  TALLY_KV_STR("error", err.msg));
	tally_counter_add(a->c_batches, 1);
	tally_counter_add(a->c_dlq, st.dead_lettered);
	tally_counter_add(a->c_existing, st.existing);
	tally_log(TALLY_DEBUG, "alerts.batch", TALLY_KV_INT("messages", n),
		  TALLY_KV_INT("totals", st.totals),
		  TALLY_KV_INT("stale", st.stale),
		  TALLY_KV_INT("signals", st.signals),
		  TALLY_KV_INT("raised", st.raised),
		  TALLY_KV_INT("existing", st.existing),
		  TALLY_KV_INT("dead_lettered", st.dead_lettered),
		  TALLY_KV_INT("produced", st.produced));
	return 0;
}

static void register_metrics(app *a)
{
	a->m = tally_metrics_new();
	a->c_batches = tally_metrics_counter(a->m,
		"tally_alerts_batches_total", NULL, "Committed batches");
	a->c_fenced = tally_metrics_counter(a->m, "tally_alerts_fenced_total",
		NULL, "Batches refused by the consumer_offsets fence");
	a->c_retries = tally_metrics_counter(a->m,
		"tally_alerts_retries_total", NULL,
		"Batch attempts that failed and were retried");
	a->c_dlq = tally_metrics_counter(a->m,
		"tally_alerts_dead_lettered_total", NULL,
		"Messages sent to a dead-letter topic");
	a->c_existing = tally_metrics_counter(a->m,
		"tally_alerts_existing_total", NULL,
		"Alerts a rule called for that had been raised already");
	a->g_undelivered = tally_metrics_gauge(a->m,
		"tally_alerts_undelivered", NULL,
		"Alerts not yet delivered to the webhook (sampled)");
}

static void sweep(app *a)
{
	tally_error err;
	int n = 0;

	if (tally_alerts_sweep(a->alerts, 0, &n, &err) != 0)
		tally_log(TALLY_WARN, "alerts.sweep_failed",
			  TALLY_KV_STR("error", err.msg));
}

int main(int argc, char **argv)
{
	static const tally_program_opts popts = {
		"tally-alerts", "--metrics-listen", "alerts.metrics_listen",
		NULL, NULL, NULL
	};
	const char *topics[3] = { NULL, NULL, NULL };
	app a;
	tally_error err = { 0 };
	tally_metrics_server *srv = NULL;
	tally_consumer_opts co = { 0 };
	tally_alerts_opts ao = { 0 };
	rd_kafka_conf_t *conf;
	rd_kafka_message_t **msgs = NULL;
	tally_alerts_msg *views = NULL;
	int64_t last_sweep;
	int rc = EXIT_FAILURE;

	memset(&a, 0, sizeof(a));
	if (tally_program_start(&a.cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_mutex_init(&a.mu, NULL);
	a.webhook_url = tally_xstrdup("");
	register_metrics(&a);

	if (tally_pg_connect_cfg(&a.pg, a.cfg, &err) != 0) {
		tally_log(TALLY_FATAL, "pg.connect_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	atomic_store(&a.pg_ok, 1);
	conf = tally_kafka_conf(a.cfg);
	tally_alerts_producer_conf(conf);
	if (tally_kafka_conf_set(conf, "linger.ms", "5", &err) != 0 ||
	    tally_kafka_producer_new(&a.producer, conf, &err) != 0) {
		tally_log(TALLY_FATAL, "kafka.producer_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	ao.group = tally_config_str(a.cfg, "alerts.group");
	ao.totals_topic = tally_config_str(a.cfg, "topics.totals");
	ao.signals_topic = tally_config_str(a.cfg, "topics.signals");
	ao.alerts_topic = tally_config_str(a.cfg, "topics.alerts");
	ao.dlq_suffix = tally_config_str(a.cfg, "kafka.dlq_suffix");
	ao.thresholds = tally_config_str(a.cfg, "alerts.thresholds");
	ao.producer = a.producer;
	ao.metrics = a.m;
	if (tally_alerts_new(&a.alerts, a.pg, &ao, &err) != 0) {
		tally_log(TALLY_FATAL, "alerts.start_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	/* a crash between commit and produce left these behind */
	sweep(&a);
	last_sweep = tally_mono_ns();

	conf = tally_kafka_conf(a.cfg);
	{
		char v[24];

		snprintf(v, sizeof(v), "%lld", (long long)tally_config_int(
			 a.cfg, "kafka.session_timeout_ms"));
		if (tally_kafka_conf_set(conf, "session.timeout.ms", v,
					 &err) != 0 ||
		    tally_kafka_conf_set(conf, "max.poll.interval.ms",
					 "600000", &err) != 0)
			tally_log(TALLY_WARN, "kafka.conf",
				  TALLY_KV_STR("error", err.msg));
	}
	topics[0] = ao.totals_topic;
	topics[1] = ao.signals_topic;
	co.group = ao.group;
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
				"alerts.metrics_listen"), health, health, &a,
				&err) != 0)
		/* a second instance on the same host: run without /metrics */
		tally_log(TALLY_WARN, "metrics.serve_failed",
			  TALLY_KV_STR("error", err.msg));
	set_webhook_url(&a);
	if (pthread_create(&a.th, NULL, deliver_main, &a) != 0) {
		tally_log(TALLY_FATAL, "alerts.thread_failed");
		goto cleanup;
	}
	a.th_started = true;
	tally_log(TALLY_INFO, "alerts.started",
		  TALLY_KV_STR("totals", topics[0]),
		  TALLY_KV_STR("signals", topics[1]),
		  TALLY_KV_STR("group", co.group));

	msgs = tally_xcalloc(BATCH_MAX, sizeof(*msgs));
	views = tally_xcalloc(BATCH_MAX, sizeof(*views));
	rc = EXIT_SUCCESS;
	while (!tally_signals_stop_requested()) {
		size_t n, k;
		int brc;

		if (tally_signals_reload_requested()) {
			if (tally_program_reload(a.cfg) == 0) {
				if (tally_alerts_set_thresholds(a.alerts,
					tally_config_str(a.cfg,
						"alerts.thresholds"),
					&err) != 0)
					tally_log(TALLY_ERR,
						  "config.reload_failed",
						  TALLY_KV_STR("error",
							       err.msg));
				set_webhook_url(&a);
				tally_log(TALLY_INFO, "config.reloaded");
			}
		}
		n = tally_consumer_poll_batch(a.consumer, msgs, BATCH_MAX,
					      BATCH_MS);
		rd_kafka_poll(a.producer, 0);
		brc = n > 0 ? handle_batch(&a, msgs, n, views) : 0;
		for (k = 0; k < n; k++)
			rd_kafka_message_destroy(msgs[k]);
		if (brc != 0) {
			rc = EXIT_FAILURE;
			break;
		}
		if ((tally_mono_ns() - last_sweep) / 1000000 > SWEEP_EVERY_MS) {
			tally_error serr;
			int ns = 0;

			if (tally_alerts_sweep(a.alerts, SWEEP_MIN_AGE_MS, &ns,
					       &serr) != 0)
				tally_log(TALLY_WARN, "alerts.sweep_failed",
					  TALLY_KV_STR("error", serr.msg));
			last_sweep = tally_mono_ns();
		}
	}
	tally_log(TALLY_INFO, "alerts.stopping");

cleanup:
	if (a.th_started) {
		atomic_store(&a.th_stop, 1);
		pthread_join(a.th, NULL);
	}
	tally_metrics_server_free(srv);
	tally_consumer_free(a.consumer);
	if (a.producer != NULL) {
		rd_kafka_flush(a.producer, 10000);
		rd_kafka_destroy(a.producer);
	}
	tally_alerts_free(a.alerts);
	tally_pg_free(a.pg);
	tally_metrics_free(a.m);
	tally_config_free(a.cfg);
	free(a.webhook_url);
	pthread_mutex_destroy(&a.mu);
	curl_global_cleanup();
	free(msgs);
	free(views);
	return rc;
}
