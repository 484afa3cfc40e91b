/*
 * alerts_consumer.c - tally-alerts' pipeline on the shared consumer loop:
 * batches of totals and signals through tally_alerts, the sweep of
 * unproduced alerts, and the webhook delivery thread
 * (include/tally/alerts_consumer.h, docs/alerts.md).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/business_gauges.h"
#include "tally/alerts_consumer.h"
#include "tally/alerts.h"
#include "alerts/alerts_targets.h"
#include "tally/consumer_loop.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/program.h"

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

struct tally_alerts_consumer {
	tally_config *cfg;
	tally_pg *pg;
	tally_alerts *alerts;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_rebalance_ops rb;
	tally_metrics *m;
	bool own_m;
	tally_counter *c_batches, *c_fenced, *c_retries, *c_dlq, *c_existing;
	tally_gauge *g_undelivered;
	atomic_int pg_ok;
	/* the batch */
	rd_kafka_message_t **msgs;
	tally_alerts_msg *views;
	size_t n;
	tally_alerts_stats st;
	int64_t last_sweep;
	/* delivery thread */
	pthread_t th;
	bool th_started;
	/* MRR, ARR, tenants by status, open alerts: refreshed every minute */
	tally_business_gauges *bg;
	atomic_int th_stop;
	pthread_mutex_t mu;
	/* under mu, with the two limits: alerts.webhook_url as the target
	 * "webhook", then alerts.targets */
	tally_alerts_target *targets;
	size_t ntargets;
	int max_attempts;
	int64_t max_age_s;
	char *secrets[TALLY_ALERTS_WEBHOOK_MAX_SECRETS]; /* set at start */
	tally_revenue_rule revenue; /* alerts.*_pct, checked */
};

static int rb_assign(void *ctx, rd_kafka_topic_partition_list_t *parts,
		     tally_error *err)
{
	return tally_alerts_assign(ctx, parts, err);
}

/* batches are processed between polls: nothing is in flight here */
static void rb_revoke(void *ctx, const rd_kafka_topic_partition_list_t *parts)
{
	tally_alerts_revoke(ctx, parts);
}

int tally_alerts_consumer_health(char *detail, size_t len, void *payload)
{
	tally_alerts_consumer *a = payload;
	int ok = atomic_load(&a->pg_ok);

	snprintf(detail, len, "%s", ok ? "ok" : "postgres unavailable");
	return ok ? 0 : 1;
}

/* Sample the pending deliveries and unrouted alerts into the gauge. */
static void sample_undelivered(tally_alerts_consumer *a, tally_pg *pg)
{
	PGresult *res = NULL;
	tally_error err;
	int64_t v = 0;

	if (tally_pg_exec(pg, &res, "SELECT (SELECT count(*) FROM"
			  " alert_deliveries WHERE delivered_at IS NULL AND"
			  " failed_at IS NULL) + (SELECT count(*) FROM alerts"
			  " WHERE routed_at IS NULL)", 0, NULL, &err) == 0 &&
	    tally_parse_i64(&v, PQgetvalue(res, 0, 0)) == 0)
		tally_gauge_set(a->g_undelivered, v);
	PQclear(res);
}

/* The delivery loop: its own connection, never the consumer's. */
static void *deliver_main(void *payload)
{
	tally_alerts_consumer *a = payload;
	tally_pg *pg = NULL;
	tally_error err;
	int64_t last_gauge = 0;
	bool warned = false;

	while (!atomic_load(&a->th_stop)) {
		tally_alerts_delivery d = { NULL, 0,
					    { a->secrets[0], a->secrets[1] },
					    TALLY_ALERTS_WEBHOOK_MAX_SECRETS,
					    WEBHOOK_TIMEOUT_MS, 0, 0 };
		tally_alerts_target *tv;
		int nd = 0, nf = 0, i, rc = 0;

		if (pg == NULL &&
		    tally_pg_connect_cfg(&pg, a->cfg, &err) != 0) {
			tally_log(TALLY_WARN, "alerts.webhook_pg_failed",
				  TALLY_KV_STR("error", err.msg));
			pg = NULL;
		}
		pthread_mutex_lock(&a->mu);
		tv = tally_alerts__targets_copy(a->targets, a->ntargets);
		d.ntargets = a->ntargets;
		d.max_attempts = a->max_attempts;
		d.max_age_s = a->max_age_s;
		pthread_mutex_unlock(&a->mu);
		d.targets = tv;
		if (pg != NULL && d.ntargets > 0)
			rc = tally_alerts_deliver_targets(pg, &d, WEBHOOK_LIMIT,
							  a->m, &nd, &nf, &err);
		/* a missing secret repeats every round: say it once */
		if (rc != 0 && (rc != TALLY_EINVALID || !warned))
			tally_log(TALLY_WARN, "alerts.webhook_round_failed",
				  TALLY_KV_STR("error", err.msg));
		warned = rc == TALLY_EINVALID;
		tally_alerts__targets_free(tv, d.ntargets);
		if (pg != NULL && tally_mono_ns() - last_gauge > 5000000000) {
			sample_undelivered(a, pg);
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

/* alerts.webhook_url (the target "webhook") and alerts.targets. */
static void set_targets(tally_alerts_consumer *a)
{
	size_t n;
	tally_alerts_target *v = tally_alerts__targets_from_config(a->cfg,
								   &n);

	pthread_mutex_lock(&a->mu);
	tally_alerts__targets_free(a->targets, a->ntargets);
	a->targets = v;
	a->ntargets = n;
	a->max_attempts = (int)tally_config_int(a->cfg,
					"alerts.delivery_max_attempts");
	a->max_age_s = tally_config_int(a->cfg, "alerts.delivery_max_age_s");
	pthread_mutex_unlock(&a->mu);
}

/* The revenue rules' thresholds from the config; "" turns one off. On an
 * error the rules in force stay. */
static int load_revenue_rule(tally_alerts_consumer *a, tally_error *err)
{
	static const char *const keys[3] = { "alerts.mrr_change_pct",
					     "alerts.plan_revenue_drop_pct",
					     "alerts.usage_over_plan_pct" };
	tally_revenue_rule r;
	tally_alert_thresholds *th[3] = { &r.mrr_change, &r.plan_drop,
					  &r.usage_over_plan };
	int i;

	for (i = 0; i < 3; i++) {
		const char *v = tally_config_str(a->cfg, keys[i]);

		th[i]->n = 0;
		if (v[0] != '\0' &&
		    tally_alert_thresholds_parse(th[i], v, err) != 0)
			return tally_error_set(err, TALLY_EINVALID, "%s: %s",
					       keys[i], err->msg);
	}
	a->revenue = r;
	return 0;
}

/* Whether a json target is configured (its deliveries are signed). */
static bool needs_secret(tally_alerts_consumer *a)
{
	bool r;

	pthread_mutex_lock(&a->mu);
	r = tally_alerts__targets_signed(a->targets, a->ntargets);
	pthread_mutex_unlock(&a->mu);
	return r;
}

/* ------------------------------------------------------------------ */
/* one batch                                                           */

static size_t g_room(void *ctx)
{
	tally_alerts_consumer *a = ctx;

	return BATCH_MAX - a->n;
}

static void g_take(void *ctx, rd_kafka_message_t **msgs, size_t n,
		   bool first)
{
	tally_alerts_consumer *a = ctx;
	size_t i;

	(void)first;
	for (i = 0; i < n; i++) {
		tally_kafka_msg_view(&a->views[a->n], msgs[i], NULL);
		a->msgs[a->n++] = msgs[i];
	}
}

static void g_drop(void *ctx)
{
	tally_alerts_consumer *a = ctx;

	while (a->n > 0)
		rd_kafka_message_destroy(a->msgs[--a->n]);
}

static int b_attempt(void *ctx, tally_error *err)
{
	tally_alerts_consumer *a = ctx;

	memset(&a->st, 0, sizeof(a->st));
	return tally_alerts_process(a->alerts, a->views, a->n, &a->st, err);
}

static void b_waited(void *ctx)
{
	tally_alerts_consumer *a = ctx;

	rd_kafka_poll(a->producer, 0);
}

static void b_health(void *ctx, bool ok)
{
	tally_alerts_consumer *a = ctx;

	atomic_store(&a->pg_ok, ok ? 1 : 0);
}

/* A committed batch: offsets stored (lag monitoring), counted, logged. */
static void batch_done(tally_alerts_consumer *a)
{
	const tally_alerts_stats *st = &a->st;
	tally_error err;

	if (tally_consumer_store(a->consumer, a->msgs, a->n, &err) != 0)
		tally_log(TALLY_WARN, "alerts.store_failed",
			  TALLY_KV_STR("error", err.msg));
	tally_counter_add(a->c_batches, 1);
	tally_counter_add(a->c_dlq, st->dead_lettered);
	tally_counter_add(a->c_existing, st->existing);
	tally_log(TALLY_DEBUG, "alerts.batch", TALLY_KV_INT("messages", a->n),
		  TALLY_KV_INT("totals", st->totals),
		  TALLY_KV_INT("stale", st->stale),
		  TALLY_KV_INT("signals", st->signals),
		  TALLY_KV_INT("raised", st->raised),
		  TALLY_KV_INT("existing", st->existing),
		  TALLY_KV_INT("dead_lettered", st->dead_lettered),
		  TALLY_KV_INT("produced", st->produced));
}

/*
 * The gathered batch until it is committed, fenced (re-sought) or given
 * up on a stop. Returns 0 (go on) or -1 (fatal).
 */
static int handle_batch(tally_alerts_consumer *a)
{
	tally_batch_ops ops = { 0 };
	tally_error err;

	ops.name = "alerts";
	ops.lane = -1;
	ops.attempt = b_attempt;
	ops.waited = b_waited;
	ops.health = b_health;
	ops.c_fenced = a->c_fenced;
	ops.c_retries = a->c_retries;
	ops.ctx = a;
	switch (tally_loop_batch(&ops)) {
	case TALLY_BATCH_COMMITTED:
		batch_done(a);
		return 0;
	case TALLY_BATCH_FENCED:
		return tally_loop_reseeked("alerts", tally_alerts_reseek(
				a->alerts, tally_consumer_rk(a->consumer),
				a->views, a->n, &err), &err) != 0 ? -1 : 0;
	case TALLY_BATCH_ABANDONED:
		return 0; /* not committed: the next owner redoes it */
	default:
		return -1;
	}
}

static void sweep(tally_alerts_consumer *a, int64_t min_age_ms)
{
	tally_error err;
	int n = 0;

	if (tally_alerts_sweep(a->alerts, min_age_ms, &n, &err) != 0)
		tally_log(TALLY_WARN, "alerts.sweep_failed",
			  TALLY_KV_STR("error", err.msg));
}

static int step(void *ctx)
{
	tally_alerts_consumer *a = ctx;
	tally_gather_ops g = { g_room, g_take, g_drop, a };
	int brc;

	a->n = 0;
	(void)tally_loop_gather(a->consumer, &g, BATCH_MS);
	rd_kafka_poll(a->producer, 0);
	brc = a->n > 0 ? handle_batch(a) : 0;
	g_drop(a);
	if (brc != 0)
		return -1;
	if ((tally_mono_ns() - a->last_sweep) / 1000000 > SWEEP_EVERY_MS) {
		sweep(a, SWEEP_MIN_AGE_MS);
		a->last_sweep = tally_mono_ns();
	}
	/* silence sends no event: tally-alerts' own timer looks for it */
	{
		tally_silence_rule sr = {
			(int)tally_config_int(a->cfg, "alerts.silence_days"),
			(int)tally_config_int(a->cfg,
					      "alerts.silence_active_days") };
		tally_error err;

		if (tally_alerts_silence_tick(a->alerts, &sr, 1000 *
				tally_config_int(a->cfg,
						 "alerts.silence_scan_s"),
				&err) != 0)
			tally_log(TALLY_WARN, "alerts.silence_scan_failed",
				  TALLY_KV_STR("error", err.msg));
		/* the finance views change without an event either */
		if (tally_alerts_revenue_tick(a->alerts, &a->revenue, 1000 *
				tally_config_int(a->cfg,
						 "alerts.revenue_scan_s"),
				&err) != 0)
			tally_log(TALLY_WARN, "alerts.revenue_scan_failed",
				  TALLY_KV_STR("error", err.msg));
	}
	return 0;
}

static void reload(void *ctx)
{
	tally_alerts_consumer *a = ctx;
	tally_error err;

	if (tally_program_reload(a->cfg) != 0)
		return;
	if (tally_alerts_set_thresholds(a->alerts, tally_config_str(
			a->cfg, "alerts.thresholds"), &err) != 0)
		tally_log(TALLY_ERR, "config.reload_failed",
			  TALLY_KV_STR("error", err.msg));
	set_targets(a);
	if (load_revenue_rule(a, &err) != 0)
		tally_log(TALLY_ERR, "config.reload_failed",
			  TALLY_KV_STR("error", err.msg));
	tally_log(TALLY_INFO, "config.reloaded");
}

int tally_alerts_consumer_run(tally_alerts_consumer *a, tally_error *err)
{
	int rc = tally_loop_run(step, reload, a);

	tally_log(TALLY_INFO, "alerts.stopping");
	if (rc != 0)
		return tally_error_set(err, TALLY_ERROR,
				       "a batch failed for good or its"
				       " partitions could not be re-sought");
	return 0;
}

/* ------------------------------------------------------------------ */
/* start and stop                                                      */

static void register_metrics(tally_alerts_consumer *a)
{
	const tally_metric_def defs[] = {
		TALLY_LOOP_METRIC_DEFS("alerts", &a->c_batches, &a->c_fenced,
				       &a->c_retries),
		{ "tally_alerts_dead_lettered_total", NULL,
		  "Messages sent to a dead-letter topic", &a->c_dlq },
		{ "tally_alerts_existing_total", NULL,
		  "Alerts a rule called for that had been raised already",
		  &a->c_existing },
		{ "tally_alerts_undelivered", NULL,
		  "Deliveries pending (neither delivered nor failed) and"
		  " alerts not yet routed to targets (sampled)",
		  .gauge = &a->g_undelivered },
	};

	if (a->m == NULL) {
		a->m = tally_metrics_new();
		a->own_m = true;
	}
	TALLY_METRICS_REGISTER(a->m, defs);
}

/* The connection, the producer of billing.alerts and the engine. */
static int open_engine(tally_alerts_consumer *a, tally_error *err)
{
	tally_alerts_opts ao = { 0 };
	rd_kafka_conf_t *conf;

	if (tally_pg_connect_cfg(&a->pg, a->cfg, err) != 0) {
		tally_log(TALLY_FATAL, "pg.connect_failed",
			  TALLY_KV_STR("error", err->msg));
		return -1;
	}
	atomic_store(&a->pg_ok, 1);
	conf = tally_kafka_conf(a->cfg);
	tally_alerts_producer_conf(conf);
	if (tally_kafka_conf_default(conf, a->cfg, "linger.ms", "5",
				     err) != 0 ||
	    tally_kafka_producer_new(&a->producer, conf, err) != 0) {
		tally_log(TALLY_FATAL, "kafka.producer_failed",
			  TALLY_KV_STR("error", err->msg));
		return -1;
	}
	ao.group = tally_config_str(a->cfg, "alerts.group");
	ao.totals_topic = tally_config_str(a->cfg, "topics.totals");
	ao.signals_topic = tally_config_str(a->cfg, "topics.signals");
	ao.alerts_topic = tally_config_str(a->cfg, "topics.alerts");
	ao.dlq_suffix = tally_config_str(a->cfg, "kafka.dlq_suffix");
	ao.thresholds = tally_config_str(a->cfg, "alerts.thresholds");
	ao.producer = a->producer;
	ao.metrics = a->m;
	if (tally_alerts_new(&a->alerts, a->pg, &ao, err) != 0) {
		tally_log(TALLY_FATAL, "alerts.start_failed",
			  TALLY_KV_STR("error", err->msg));
		return -1;
	}
	return 0;
}

int tally_alerts_consumer_new(tally_alerts_consumer **out, tally_config *cfg,
			      tally_metrics *m, tally_error *err)
{
	tally_alerts_consumer *a = tally_xcalloc(1, sizeof(*a));
	tally_error bge;
	const char *topics[3] = { NULL, NULL, NULL };

	*out = a;
	a->cfg = cfg;
	a->m = m;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_mutex_init(&a->mu, NULL);
	a->msgs = tally_xcalloc(BATCH_MAX, sizeof(*a->msgs));
	a->views = tally_xcalloc(BATCH_MAX, sizeof(*a->views));
	register_metrics(a);
	if (load_revenue_rule(a, err) != 0)
		return err->code;
	/* refused before connecting to anything */
	set_targets(a);
	a->secrets[0] = tally_xstrdup(tally_config_str(cfg,
					"alerts.webhook_secret"));
	a->secrets[1] = tally_xstrdup(tally_config_str(cfg,
					"alerts.webhook_secret_previous"));
	if (needs_secret(a) && a->secrets[0][0] == '\0')
		return tally_error_set(err, TALLY_EINVALID,
			"alerts.webhook_url or a json target of alerts.targets"
			" is set but $TALLY_ALERTS_WEBHOOK_SECRET is not:"
			" JSON deliveries are always signed");
	if (open_engine(a, err) != 0)
		return err->code != 0 ? err->code : TALLY_ERROR;
	/* a crash between commit and produce left these behind */
	sweep(a, 0);
	a->last_sweep = tally_mono_ns();
	topics[0] = tally_config_str(cfg, "topics.totals");
	topics[1] = tally_config_str(cfg, "topics.signals");
	a->rb.name = "alerts";
	a->rb.assign = rb_assign;
	a->rb.revoke = rb_revoke;
	a->rb.ctx = a->alerts;
	a->rb.rejoin_timeout_ms = tally_config_int(cfg,
						   "kafka.rejoin_timeout_ms");
	if (tally_loop_consumer_new(&a->consumer, tally_loop_consumer_conf(cfg),
				    tally_config_str(cfg, "alerts.group"),
				    topics, &a->rb, a->m, err) != 0)
		return err->code != 0 ? err->code : TALLY_ERROR;
	if (pthread_create(&a->th, NULL, deliver_main, a) != 0) {
		tally_log(TALLY_FATAL, "alerts.thread_failed");
		return tally_error_set(err, TALLY_ERROR,
				       "cannot start the delivery thread");
	}
	a->th_started = true;
	if (tally_business_gauges_start(&a->bg,
			tally_config_str(cfg, "database.url"),
			(int)tally_config_int(cfg, "database.retry_max_ms"),
			a->m, 60000, &bge) != 0)
		tally_log(TALLY_WARN, "business_gauges.start_failed",
			  TALLY_KV_STR("error", bge.msg));
	tally_log(TALLY_INFO, "alerts.started",
		  TALLY_KV_STR("totals", topics[0]),
		  TALLY_KV_STR("signals", topics[1]),
		  TALLY_KV_STR("group", tally_config_str(cfg, "alerts.group")));
	return 0;
}

void tally_alerts_consumer_free(tally_alerts_consumer *a)
{
	if (a == NULL)
		return;
	tally_business_gauges_stop(a->bg);
	if (a->th_started) {
		atomic_store(&a->th_stop, 1);
		pthread_join(a->th, NULL);
	}
	tally_consumer_free(a->consumer);
	if (a->producer != NULL) {
		rd_kafka_flush(a->producer, 10000);
		rd_kafka_destroy(a->producer);
	}
	tally_alerts_free(a->alerts);
	tally_pg_free(a->pg);
	if (a->own_m)
		tally_metrics_free(a->m);
	tally_alerts__targets_free(a->targets, a->ntargets);
	free(a->secrets[0]);
	free(a->secrets[1]);
	pthread_mutex_destroy(&a->mu);
	curl_global_cleanup();
	free(a->msgs);
	free(a->views);
	free(a);
}
