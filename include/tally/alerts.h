#ifndef TALLY_ALERTS_H
#define TALLY_ALERTS_H

/**
 * @file tally/alerts.h
 * @brief The engine of tally-alerts (DESIGN.md §3 "Alerts", docs/alerts.md):
 *        applies the rules of tally/alerts_rules.h to per-tenant period
 *        totals (billing.totals) and billing signals (billing.signals),
 *        writes the alerts to PostgreSQL, produces them to billing.alerts
 *        and delivers them to their targets (JSON webhooks, Slack).
 *
 * Alerts are keyed by (tenant, kind, period_start, threshold):
 * INSERT ... ON CONFLICT DO NOTHING keeps the first, so replays and
 * duplicates raise nothing new.
 *
 * Exactly once: one PostgreSQL transaction per batch holds the alert
 * inserts, the totals version high-water marks, the dead-letter mirror and
 * the consumer positions behind a compare-and-set fence (as tally-aggregate
 * does). Only rows actually inserted are produced to billing.alerts, after
 * the commit; rows whose produce did not complete keep produced_at NULL and
 * are produced again by tally_alerts_sweep() (at start-up and on a timer).
 * Webhook delivery runs on its own connection (tally_alerts_deliver()).
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/alerts_rules.h"
#include "tally/common.h"
#include "tally/consumer_loop.h"
#include "tally/metrics.h"
#include "tally/pg.h"

/* ------------------------------------------------------------------ */
/* engine (PostgreSQL + Kafka)                                         */

typedef struct tally_alerts tally_alerts;

typedef struct tally_alerts_opts {
	const char *group;          /* consumer_offsets.consumer_group */
	const char *totals_topic;   /* e.g. "billing.totals" */
	const char *signals_topic;  /* e.g. "billing.signals" */
	const char *alerts_topic;   /* e.g. "billing.alerts"; NULL = none */
	const char *dlq_suffix;     /* ".dlq" */
	const char *thresholds;     /* "50,80,100" */
	rd_kafka_t *producer;       /* borrowed; NULL = PG only (tests). Its
	                               conf must come through
	                               tally_alerts_producer_conf(). */
	tally_metrics *metrics;     /* borrowed; may be NULL */
} tally_alerts_opts;

/** Returned by tally_alerts_process() when the fence did not hold. */
#define TALLY_ALERTS_FENCED TALLY_EFENCED

/** One consumed message (a view: nothing owned). */
typedef tally_kafka_msg tally_alerts_msg;

typedef struct tally_alerts_stats {
	size_t totals;        /* totals messages evaluated */
	size_t stale;         /* totals ignored: version not newer */
	size_t signals;       /* signals evaluated */
	size_t raised;        /* alerts inserted (new) */
	size_t existing;      /* alerts already there */
	size_t dead_lettered;
	size_t produced;      /* alerts produced to billing.alerts */
} tally_alerts_stats;

/** Set the delivery-report callback the engine relies on. */
void tally_alerts_producer_conf(rd_kafka_conf_t *conf);

/** pg, producer and metrics are borrowed and must outlive the engine. */
int tally_alerts_new(tally_alerts **out, tally_pg *pg,
		     const tally_alerts_opts *opts, tally_error *err)
	TALLY_MUSTCHECK;
void tally_alerts_free(tally_alerts *a);

/** New thresholds (SIGHUP). @return 0 or TALLY_EINVALID (kept old). */
int tally_alerts_set_thresholds(tally_alerts *a, const char *s,
				tally_error *err) TALLY_MUSTCHECK;

/** on_assign: positions from consumer_offsets (as tally_agg_assign). */
int tally_alerts_assign(tally_alerts *a,
			rd_kafka_topic_partition_list_t *parts,
			tally_error *err) TALLY_MUSTCHECK;
void tally_alerts_revoke(tally_alerts *a,
			 const rd_kafka_topic_partition_list_t *parts);

/**
 * Process one batch: decode (dead letters are produced and flushed before
 * the commit), then one transaction: fence, totals versions, rules, alert
 * inserts, dead_letters mirror, positions. After the commit the new
 * alerts are produced to alerts_topic and marked produced_at.
 * @return 0, TALLY_ALERTS_FENCED (nothing written; call
 *         tally_alerts_reseek()), TALLY_ETRANSIENT or TALLY_ERROR
 */
int tally_alerts_process(tally_alerts *a, const tally_alerts_msg *msgs,
			 size_t n, tally_alerts_stats *stats, tally_error *err)
	TALLY_MUSTCHECK;

/** After TALLY_ALERTS_FENCED: re-read positions and seek rk (may be NULL). */
int tally_alerts_reseek(tally_alerts *a, rd_kafka_t *rk,
			const tally_alerts_msg *msgs, size_t n,
			tally_error *err) TALLY_MUSTCHECK;

/**
 * Produce alerts that were committed but never produced (produced_at
 * NULL, raised at least min_age_ms ago) and mark them.
 * @param[out] n alerts produced (may be NULL)
 */
int tally_alerts_sweep(tally_alerts *a, int64_t min_age_ms, int *n,
		       tally_error *err) TALLY_MUSTCHECK;

/** Secrets a delivery is signed with: the current and the previous one. */
#define TALLY_ALERTS_WEBHOOK_MAX_SECRETS 2

/** The single webhook (alerts.webhook_url); all borrowed for the call. */
typedef struct tally_alerts_webhook {
	const char *url;      /* NULL or "": nothing is delivered */
	/* secrets[0] current, secrets[1] previous during a rotation ("" or
	 * NULL: none); each non-empty one adds a v1= to Tally-Signature */
	const char *secrets[TALLY_ALERTS_WEBHOOK_MAX_SECRETS];
	size_t nsecrets;
	int timeout_ms;       /* per POST, connect included */
	/* give up (delivery_failed_at) after this many failed POSTs, or when
	 * a POST fails this long after the first attempt; both >= 1 */
	int max_attempts;
	int64_t max_age_s;
} tally_alerts_webhook;

/**
 * Churn from silence (docs/alerts.md): one scan of usage_hourly for
 * tenants with a live subscription (status active, trialing or past_due)
 * silent for r->silence_days as of now_ms (injectable for tests), through
 * tally_alerts_eval_silence(); new churn_risk/100 alerts are inserted,
 * produced and left for the delivery targets like any other. A rescan of
 * the same episode raises nothing (same key). Call it between batches (it uses the
 * engine's batch state).
 * @param[out] raised alerts inserted (may be NULL)
 */
int tally_alerts_scan_silence(tally_alerts *a, const tally_silence_rule *r,
			      int64_t now_ms, int *raised, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Revenue alerts on the business (docs/alerts.md "Revenue alerts"): one
 * scan of the finance views as of now_ms (injectable for tests). Company
 * MRR (finance_mrr.mrr) and each plan's revenue
 * (finance_revenue_by_plan.plan_revenue + usage_revenue) of the last
 * complete month against the month before; each tenant's usage revenue
 * (finance_usage_monthly) of the last complete and the current month
 * against its plan's monthly price; through tally_alerts_eval_mrr(),
 * _plan_revenue() and _usage_over_plan(). Keyed by month and threshold, so
 * a rescan raises nothing new. Call it between batches.
 * @param[out] raised alerts inserted (may be NULL)
 */
int tally_alerts_scan_revenue(tally_alerts *a, const tally_revenue_rule *r,
			      int64_t now_ms, int *raised, tally_error *err)
	TALLY_MUSTCHECK;

/** tally_alerts_scan_revenue() at the wall clock, as the silence tick. */
int tally_alerts_revenue_tick(tally_alerts *a, const tally_revenue_rule *r,
			      int64_t every_ms, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * tally_alerts_scan_silence() at the wall clock when every_ms have passed
 * (monotonic) since the last scan; the first call scans. every_ms <= 0:
 * never.
 */
int tally_alerts_silence_tick(tally_alerts *a, const tally_silence_rule *r,
			      int64_t every_ms, tally_error *err)
	TALLY_MUSTCHECK;

/** What a target posts: the alert JSON, signed; or Slack's blocks. */
typedef enum {
	TALLY_ALERTS_TARGET_JSON = 0,
	TALLY_ALERTS_TARGET_SLACK
} tally_alerts_target_type;

/** Names of targets are at most this long (alert_deliveries.target). */
#define TALLY_ALERTS_TARGET_NAME_MAX 64

/** One delivery target (alerts.targets); all borrowed for the call. */
typedef struct tally_alerts_target {
	const char *name;     /* alert_deliveries.target; unique */
	tally_alerts_target_type type;
	const char *url;      /* NULL or "": the target is skipped */
	const char *kinds;    /* "budget,mrr_drop": kinds it receives;
	                         NULL or "": every kind */
	const char *link;     /* slack: link template (tally_alerts_link);
	                         NULL or "": none */
} tally_alerts_target;

/** Where and how a delivery round posts; all borrowed for the call. */
typedef struct tally_alerts_delivery {
	const tally_alerts_target *targets;
	size_t ntargets;
	/* JSON targets' signing secrets, as in tally_alerts_webhook */
	const char *secrets[TALLY_ALERTS_WEBHOOK_MAX_SECRETS];
	size_t nsecrets;
	int timeout_ms;
	int max_attempts;     /* >= 1 */
	int64_t max_age_s;    /* >= 1 */
} tally_alerts_delivery;

/**
 * One delivery round to several targets (docs/alerts.md "Targets"):
 * 1. route: each alert not routed yet gets one alert_deliveries row per
 *    target whose kinds include its kind (alerts.routed_at is set; a
 *    target added later does not receive older alerts);
 * 2. claim (under a lease, FOR UPDATE SKIP LOCKED) up to limit due rows
 *    of the targets given, and POST each: a json target the alert JSON as
 *    on billing.alerts with Content-Type, Tally-Delivery-Id,
 *    X-Tally-Alert-Id and `Tally-Signature: t=<unix s>,v1=<hex
 *    HMAC-SHA256 of "<t>.<body>">`, one v1 per secret (Stripe's scheme);
 *    a slack target tally_alerts_slack_body() with no signature (the
 *    Slack URL is the secret);
 * 3. record, per row: a 2xx sets delivered_at; anything else counts an
 *    attempt, records last_error and schedules the next try after
 *    min(2^attempts, 300) s, or, at max_attempts attempts or max_age_s
 *    after the first one, gives up (failed_at). The alert's delivery
 *    columns are refreshed from its rows. Each POST counts in
 *    tally_alerts_deliveries_total{target,outcome="delivered|retry|
 *    failed"}.
 * Refuses (TALLY_EINVALID) a json target with a URL but no secret (nothing
 * is ever delivered unsigned), invalid limits and duplicate names. Uses
 * its own pg: call it from the delivery thread.
 * @param[out] delivered, failed (may be NULL)
 */
int tally_alerts_deliver_targets(tally_pg *pg, const tally_alerts_delivery *d,
				 int limit, tally_metrics *metrics,
				 int *delivered, int *failed, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * tally_alerts_deliver_targets() with one json target named "webhook"
 * (every kind) posting to wh->url: the single-webhook configuration
 * (alerts.webhook_url). No URL: nothing is routed or delivered.
 */
int tally_alerts_deliver(tally_pg *pg, const tally_alerts_webhook *wh,
			 int limit, tally_metrics *metrics, int *delivered,
			 int *failed, tally_error *err) TALLY_MUSTCHECK;

/** The target the single-webhook configuration becomes. */
#define TALLY_ALERTS_WEBHOOK_TARGET "webhook"

/**
 * Put deliveries back to pending (attempts, first attempt and failure
 * cleared, due now): those of the alert with this id (delivered or
 * failed), or, with id NULL, every delivery that gave up; target NULL:
 * every target, else that one only. The alerts' delivery columns follow.
 * @param[out] n deliveries put back
 * @return 0, TALLY_EINVALID for an id that is not a uuid, or the error
 */
int tally_alerts_redeliver_target(tally_pg *pg, const char *id,
				  const char *target, int64_t *n,
				  tally_error *err) TALLY_MUSTCHECK;

/** tally_alerts_redeliver_target() for every target. */
int tally_alerts_redeliver(tally_pg *pg, const char *id, int64_t *n,
			   tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_ALERTS_H */
