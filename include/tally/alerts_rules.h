#ifndef TALLY_ALERTS_RULES_H
#define TALLY_ALERTS_RULES_H

/**
 * @file tally/alerts_rules.h
 * @brief The alert rules (docs/alerts.md): decoding of the two inputs
 *        (billing.totals, billing.signals), thresholds, the stable alert id
 *        and the pure functions that turn one input message (plus a little
 *        context) into the alerts it calls for. No I/O: the engine that
 *        stores, produces and delivers alerts is tally/alerts.h.
 *
 * Key design decision: an alert is identified by its primary key (tenant,
 * kind, period_start, threshold) and nothing else, so the rules need no
 * memory of what was raised before: a threshold crossed yields the alert
 * again on every evaluation and the store keeps the first. The alert id is
 * a function of the same key (tally_alert_id()), so receivers can dedupe.
 *
 * Amounts are int64 pico-units; comparisons use 128-bit products. No
 * floating point.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/codec.h"
#include "tally/common.h"
#include "tally/money.h"
/** Alert kinds, as in the alerts.kind CHECK constraint. */
typedef enum {
	TALLY_ALERT_BUDGET = 0,
	TALLY_ALERT_PLAN_LIMIT,
	TALLY_ALERT_PAYMENT_FAILED,
	TALLY_ALERT_DUNNING,
	TALLY_ALERT_SUBSCRIPTION_CANCELLED,
	TALLY_ALERT_DOWNGRADE,
	TALLY_ALERT_TRIAL_ENDING,
	TALLY_ALERT_CHURN_RISK,
	TALLY_ALERT_REVENUE,
	TALLY_ALERT_DISPUTE,
	/* on the business as a whole (no tenant, docs/alerts.md) */
	TALLY_ALERT_MRR_DROP,
	TALLY_ALERT_MRR_RISE,
	TALLY_ALERT_PLAN_REVENUE_DROP,
	/* one tenant, from the finance views */
	TALLY_ALERT_USAGE_OVER_PLAN,
	TALLY_ALERT_KIND_N
} tally_alert_kind;

/** "budget", "plan_limit", ...; NULL when out of range. */
const char *tally_alert_kind_name(tally_alert_kind k);

/** Thresholds for the dunning kind (not a percentage: a stage). */
#define TALLY_ALERT_DUNNING_PAST_DUE 1
#define TALLY_ALERT_DUNNING_SUSPENDED 2
/**
 * churn_risk thresholds: 0 = cancellation scheduled, 50 = usage drop,
 * 100 = usage stopped entirely (silence).
 */
#define TALLY_ALERT_CHURN_SCHEDULED 0
#define TALLY_ALERT_CHURN_USAGE_DROP 50
#define TALLY_ALERT_CHURN_SILENCE 100
/** Silence rule: the days of history before the silence that count. */
#define TALLY_ALERT_SILENCE_HISTORY_DAYS 28
/** revenue threshold: usage cost >= 100 % of the plan's monthly price. */
#define TALLY_ALERT_REVENUE_PCT 100
/** revenue threshold of a refund signal (not a percentage). */
#define TALLY_ALERT_REVENUE_REFUND 0
/**
 * Usage-drop rule: the previous period's cost must be at least this much
 * (1 currency unit) for a drop to count, so tiny tenants do not flap.
 */
#define TALLY_ALERT_CHURN_MIN_PICO TALLY_PICO_PER_UNIT

#define TALLY_ALERT_MAX_THRESHOLDS 16

/** Percentages, strictly increasing, each 1..1000. */
typedef struct tally_alert_thresholds {
	int n;
	int pct[TALLY_ALERT_MAX_THRESHOLDS];
} tally_alert_thresholds;

/**
 * Parse "50,80,100" (spaces allowed, sorted and de-duplicated on output).
 * @return 0 or TALLY_EINVALID
 */
int tally_alert_thresholds_parse(tally_alert_thresholds *out, const char *s,
				 tally_error *err) TALLY_MUSTCHECK;

/** One message of billing.totals (schemas/totals.md), decoded. */
typedef struct tally_totals {
	uint8_t tenant_id[16];
	int64_t period_start_ms;
	int64_t period_end_ms;     /* -1 when absent */
	int64_t version;           /* per (tenant, period); grows */
	int64_t ai_requests;
	int64_t max_ai_requests;   /* -1: unlimited / unknown */
	int64_t workflows;         /* `workflows`, else workflow_executions */
	int64_t max_workflows;     /* -1: unlimited */
	int64_t users;             /* distinct subjects (active users) */
	int64_t max_users;         /* -1: unlimited */
	int64_t cost_pico;
	int64_t budget_pico;       /* -1: no budget (NULL or <= 0) */
	char currency[4];
} tally_totals;

/**
 * Decode one totals message (JSON object). Unknown keys are ignored.
 * @return 0 or TALLY_EINVALID with err filled (reason: "not_json",
 *         "missing_field", "wrong_type", "bad_value", "unsupported_schema")
 */
int tally_totals_from_json(tally_totals *out, const char *buf, size_t len,
			   tally_codec_error *err) TALLY_MUSTCHECK;

/** Signal kinds of billing.signals (schemas/signals.md). */
typedef enum {
	TALLY_SIGNAL_OTHER = 0,            /* recognised: no alert */
	TALLY_SIGNAL_PAYMENT_FAILED,
	TALLY_SIGNAL_PAYMENT_SUCCEEDED,
	TALLY_SIGNAL_SUBSCRIPTION_CANCELLED,
	TALLY_SIGNAL_CANCELLATION_SCHEDULED,
	TALLY_SIGNAL_DOWNGRADE,
	TALLY_SIGNAL_UPGRADE,
	TALLY_SIGNAL_TRIAL_ENDING,
	TALLY_SIGNAL_DISPUTE,
	TALLY_SIGNAL_STATUS_CHANGED,       /* also "dunning" */
	TALLY_SIGNAL_REFUND,
} tally_signal_kind;

/** One message of billing.signals, decoded. */
typedef struct tally_signal {
	uint8_t tenant_id[16];
	tally_signal_kind kind;
	char kind_name[48];        /* as received */
	char signal_id[64];        /* "" when absent */
	int64_t time_ms;           /* when it happened */
	int64_t period_start_ms;   /* billing period it concerns; -1 absent */
	char to_status[24];        /* status_to: new tenant status */
	char from_status[24];      /* status_from */
	bool at_period_end;        /* cancellation only scheduled */
	bool closed;               /* dispute: closed (no new alert) */
	char *json;                /* the signal, compact JSON (owned) */
} tally_signal;

/**
 * Decode one signal (JSON object). Unknown kinds decode as
 * TALLY_SIGNAL_OTHER (forward compatible: no alert, not a dead letter).
 * On success out->json is allocated: release with tally_signal_dispose().
 * @return 0 or TALLY_EINVALID with err filled
 */
int tally_signal_from_json(tally_signal *out, const char *buf, size_t len,
			   tally_codec_error *err) TALLY_MUSTCHECK;

void tally_signal_dispose(tally_signal *s);

/** Bytes of an alert's subject, the terminator included. */
#define TALLY_ALERT_SUBJECT_MAX 64

/** One alert to raise. */
typedef struct tally_alert {
	uint8_t id[16];
	uint8_t tenant_id[16];
	tally_alert_kind kind;
	int64_t period_start_ms;
	int threshold;
	/* what within the key it is about (plan_revenue_drop: the plan);
	 * "" for every other kind */
	char subject[TALLY_ALERT_SUBJECT_MAX];
	char *payload;             /* compact JSON object (owned) */
} tally_alert;

typedef struct tally_alert_list {
	tally_alert *v;
	size_t n, cap;
} tally_alert_list;

void tally_alert_list_init(tally_alert_list *l);
/** Free every payload; the list is empty and reusable afterwards. */
void tally_alert_list_clear(tally_alert_list *l);
void tally_alert_list_dispose(tally_alert_list *l);

/**
 * The stable alert id: the first 16 bytes of
 * SHA-256("tally.alert/1|<tenant uuid>|<kind>|<period_start>|<threshold>")
 * with the UUID version nibble set to 5 and the RFC 4122 variant bits, where
 * <tenant uuid> is lower-case with dashes, <period_start> is RFC 3339 UTC
 * with milliseconds ("2026-11-01T00:00:00.000Z") and <threshold> decimal.
 */
void tally_alert_id(uint8_t out[16], const uint8_t tenant_id[16],
		    tally_alert_kind kind, int64_t period_start_ms,
		    int threshold);

/**
 * Append an alert (its id from the key, subject included); payload, a
 * compact JSON object, is taken over. subject is shorter than
 * TALLY_ALERT_SUBJECT_MAX ("" for none).
 */
void tally_alert_list_push(tally_alert_list *l, const uint8_t tenant[16],
			   tally_alert_kind kind, int64_t period_start,
			   int threshold, const char *subject, char *payload);

/**
 * tally_alert_id() of a key with a subject: "|<subject>" is appended to
 * the hashed text when subject is not "" (so ids without one are
 * unchanged).
 */
void tally_alert_id_subject(uint8_t out[16], const uint8_t tenant_id[16],
			    tally_alert_kind kind, int64_t period_start_ms,
			    int threshold, const char *subject);

/** What the totals rules need besides the message (from PostgreSQL). */
typedef struct tally_alert_context {
	int64_t plan_price_pico;   /* tenant's plan monthly price; -1 unknown */
	const char *plan;          /* plan id, may be NULL */
	/* the period just before the totals' one (ends where it starts) */
	int64_t prev_start_ms;     /* -1: unknown / not adjacent */
	int64_t prev_cost_pico;
	/* and the one before that (ends where prev starts) */
	int64_t prev2_start_ms;    /* -1: unknown / not adjacent */
	int64_t prev2_cost_pico;
} tally_alert_context;

/** A context with nothing known (every field -1 / NULL). */
void tally_alert_context_init(tally_alert_context *ctx);

/**
 * The alerts a totals message calls for (appended to out), in this order:
 * - budget, per threshold T: cost * 100 >= monthly_budget * T
 *   (no budget: none);
 * - plan_limit, per threshold T: for AI requests, workflows or users,
 *   used * 100 >= limit * T (limit unknown/unlimited or <= 0: none); one
 *   alert per threshold whichever metric crossed it, the payload lists the
 *   metrics at or above it;
 * - revenue, threshold 100: cost >= the plan's monthly price (> 0);
 * - churn_risk, threshold 50, for the previous period: when the two periods
 *   before the totals' period are known and adjacent, the older one cost at
 *   least TALLY_ALERT_CHURN_MIN_PICO and the newer one at most half of it
 *   (prev * 2 <= prev2).
 */
void tally_alerts_eval_totals(tally_alert_list *out, const tally_totals *t,
			      const tally_alert_context *ctx,
			      const tally_alert_thresholds *th);

/**
 * The alerts a signal calls for (appended to out), threshold 0 unless
 * said otherwise, period = the signal's period_start, or else the UTC
 * calendar month of its time:
 * payment_failed -> payment_failed; subscription_cancelled -> (at period
 * end: churn_risk/0) else subscription_cancelled; cancellation_scheduled ->
 * churn_risk/0; downgrade -> downgrade; trial_ending -> trial_ending;
 * dispute (opened; closed ones raise nothing) -> dispute, with period =
 * the signal's own time so that every dispute is one alert; refund ->
 * revenue/0, also keyed by its own time; dunning or status_changed to
 * past_due -> dunning/1, to suspended -> dunning/2, to cancelled ->
 * subscription_cancelled; others (payment_succeeded, upgrade, unknown
 * kinds): none.
 */
void tally_alerts_eval_signal(tally_alert_list *out, const tally_signal *s);

/** The silence rule's settings (alerts.silence_days, .silence_active_days). */
typedef struct tally_silence_rule {
	int silence_days;     /* N >= 1: days without usage */
	int active_days;      /* K >= 1: days with usage among the 28 before */
} tally_silence_rule;

/** What is known of one tenant's recent usage (from usage_hourly). */
typedef struct tally_silence_facts {
	uint8_t tenant_id[16];
	int64_t last_hour_ms;  /* start of its last hour with usage; -1 none */
	int active_days;       /* distinct UTC days with usage in the
	                          TALLY_ALERT_SILENCE_HISTORY_DAYS days ending
	                          with that hour */
} tally_silence_facts;

/**
 * Churn from silence: the tenant had usage (on at least r->active_days of
 * the 28 days up to its last hour with usage) and then none for at least
 * r->silence_days whole days up to now_ms. The silence begins at the end
 * of the last hour with usage, and that instant is the episode's key:
 * churn_risk/100 with period_start = silence start, so a rescan yields the
 * same alert and a new episode (usage resumed, then stopped again) a new
 * one. Appends at most one alert; nothing when never active.
 * @return true when an alert was appended
 */
bool tally_alerts_eval_silence(tally_alert_list *out,
			       const tally_silence_facts *f,
			       const tally_silence_rule *r, int64_t now_ms);

/**
 * Revenue alerts on the business (docs/alerts.md "Revenue alerts"): the
 * thresholds of each rule, percentages (n = 0: the rule is off).
 */
typedef struct tally_revenue_rule {
	tally_alert_thresholds mrr_change;      /* alerts.mrr_change_pct */
	tally_alert_thresholds plan_drop;       /* .plan_revenue_drop_pct */
	tally_alert_thresholds usage_over_plan; /* .usage_over_plan_pct */
} tally_revenue_rule;

/**
 * Company MRR in one currency (3 upper-case letters, the alert's subject)
 * of month_ms (cur) against the month before (prev), exact
 * pico-units: per threshold T, mrr_rise/T when (cur - prev) * 100 >
 * prev * T, mrr_drop/T when (prev - cur) * 100 > prev * T ("more than":
 * exactly T % raises nothing). Nothing when prev <= 0 (no base for a
 * percentage). The alerts are on the business: tenant = nil UUID.
 * @return alerts appended
 */
int tally_alerts_eval_mrr(tally_alert_list *out, int64_t month_ms,
			  const char *currency, tally_money128 prev,
			  tally_money128 cur,
			  const tally_alert_thresholds *th);

/**
 * One plan's revenue in one currency of month_ms (cur) against the month
 * before (prev): plan_revenue_drop/T with subject = "plan/CUR" when
 * (prev - cur) * 100 > prev * T; nothing when prev <= 0, the plan id is
 * empty or too long for a subject, or the currency is not 3 upper-case
 * letters. On the business (nil tenant). @return alerts appended
 */
int tally_alerts_eval_plan_revenue(tally_alert_list *out, int64_t month_ms,
				   const char *plan, const char *currency,
				   tally_money128 prev,
				   tally_money128 cur,
				   const tally_alert_thresholds *th);

/**
 * A tenant's usage revenue of month_ms against its plan's monthly price:
 * usage_over_plan/T when usage * 100 > price * T (T = 200: more than
 * twice the price); nothing when price <= 0. @return alerts appended
 */
int tally_alerts_eval_usage_over_plan(tally_alert_list *out,
				      const uint8_t tenant_id[16],
				      int64_t month_ms, const char *plan,
				      tally_money128 usage,
				      tally_money128 price,
				      const tally_alert_thresholds *th);

/** Start of the UTC calendar month containing t (unix ms). */
int64_t tally_alert_month_start(int64_t t_ms);

#endif /* TALLY_ALERTS_RULES_H */
