/*
 * alerts_rules.c - the alert rules: one decoded totals message or signal
 * plus a little context -> the list of alerts it calls for. Pure: no I/O.
 *
 * Key design decision: an alert is its primary key (tenant, kind,
 * period_start, threshold). Rules never ask "was this raised before?"; they
 * say what holds now and the engine's INSERT ... ON CONFLICT DO NOTHING
 * keeps the first. See docs/alerts.md.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_rules.h"
#include "tally/event.h"

#include "base/calendar.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef tally_money128 i128;

/* ------------------------------------------------------------------ */
/* names, thresholds, ids                                              */

static const char *const kind_names[TALLY_ALERT_KIND_N] = {
	"budget",        "plan_limit", "payment_failed",
	"dunning",       "subscription_cancelled",
	"downgrade",     "trial_ending", "churn_risk",
	"revenue",       "dispute",
	"mrr_drop",      "mrr_rise",   "plan_revenue_drop",
	"usage_over_plan",
};

const char *tally_alert_kind_name(tally_alert_kind k)
{
	if ((int)k < 0 || k >= TALLY_ALERT_KIND_N)
		return NULL;
	return kind_names[k];
}

int tally_alert_thresholds_parse(tally_alert_thresholds *out, const char *s,
				 tally_error *err)
{
	tally_alert_thresholds t = { 0 };
	const char *p = s;

	while (*p != '\0') {
		char num[16];
		size_t len = 0;
		int64_t v;
		int i, j;

		while (*p == ' ' || *p == '\t')
			p++;
		while (p[len] >= '0' && p[len] <= '9')
			len++;
		if (len == 0 || len >= sizeof(num))
			return tally_error_set(err, TALLY_EINVALID,
					       "alerts.thresholds: expected a "
					       "list of percentages like "
					       "\"50,80,100\"");
		memcpy(num, p, len);
		num[len] = '\0';
		p += len;
		if (tally_parse_i64(&v, num) != 0 || v < 1 || v > 1000)
			return tally_error_set(err, TALLY_EINVALID,
					       "alerts.thresholds: %s is not "
					       "in 1..1000", num);
		for (i = 0; i < t.n && t.pct[i] < v; i++)
			;
		if (i == t.n || t.pct[i] != v) {
			if (t.n == TALLY_ALERT_MAX_THRESHOLDS)
				return tally_error_set(err, TALLY_EINVALID,
						       "alerts.thresholds: "
						       "more than %d values",
						       TALLY_ALERT_MAX_THRESHOLDS);
			for (j = t.n; j > i; j--)
				t.pct[j] = t.pct[j - 1];
			t.pct[i] = (int)v;
			t.n++;
		}
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == ',')
			p++;
		else if (*p != '\0')
			return tally_error_set(err, TALLY_EINVALID,
					       "alerts.thresholds: unexpected "
					       "'%c'", *p);
	}
	if (t.n == 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "alerts.thresholds: empty");
	*out = t;
	return 0;
}

void tally_alert_id(uint8_t out[16], const uint8_t tenant_id[16],
		    tally_alert_kind kind, int64_t period_start_ms,
		    int threshold)
{
	tally_alert_id_subject(out, tenant_id, kind, period_start_ms,
			       threshold, "");
}

void tally_alert_id_subject(uint8_t out[16], const uint8_t tenant_id[16],
			    tally_alert_kind kind, int64_t period_start_ms,
			    int threshold, const char *subject)
{
	char tid[37], ps[32], buf[256];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int n;

	tally_uuid_fmt(tid, tenant_id);
	tally_fmt_time_ms(ps, period_start_ms);
	n = snprintf(buf, sizeof(buf), "tally.alert/1|%s|%s|%s|%d%s%s", tid,
		     tally_alert_kind_name(kind), ps, threshold,
		     subject[0] ? "|" : "", subject);
	if (n < 0 || (size_t)n >= sizeof(buf))
		abort(); /* subject is shorter than TALLY_ALERT_SUBJECT_MAX */
	if (EVP_Digest(buf, (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1)
		abort(); /* OpenSSL cannot fail on SHA-256 short of OOM */
	memcpy(out, md, 16);
	out[6] = (uint8_t)((out[6] & 0x0f) | 0x50); /* version 5 */
	out[8] = (uint8_t)((out[8] & 0x3f) | 0x80); /* RFC 4122 variant */
}

int64_t tally_alert_month_start(int64_t t_ms)
{
	return tally_month_start_ms(t_ms);
}
/* ------------------------------------------------------------------ */
/* rules                                                               */

void tally_alert_list_init(tally_alert_list *l)
{
	memset(l, 0, sizeof(*l));
}

void tally_alert_list_clear(tally_alert_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->v[i].payload);
	l->n = 0;
}

void tally_alert_list_dispose(tally_alert_list *l)
{
	tally_alert_list_clear(l);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

void tally_alert_context_init(tally_alert_context *ctx)
{
	ctx->plan_price_pico = -1;
	ctx->plan = NULL;
	ctx->prev_start_ms = -1;
	ctx->prev_cost_pico = -1;
	ctx->prev2_start_ms = -1;
	ctx->prev2_cost_pico = -1;
}

/* Append an alert; payload (a JSON text) is taken over. */
static void push(tally_alert_list *l, const uint8_t tenant[16],
		 tally_alert_kind kind, int64_t period_start, int threshold,
		 char *payload)
{
	tally_alert_list_push(l, tenant, kind, period_start, threshold, "",
			      payload);
}

void tally_alert_list_push(tally_alert_list *l, const uint8_t tenant[16],
			   tally_alert_kind kind, int64_t period_start,
			   int threshold, const char *subject, char *payload)
{
	tally_alert *a;

	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 8;
		l->v = tally_xrealloc(l->v, l->cap * sizeof(*l->v));
	}
	a = &l->v[l->n++];
	memcpy(a->tenant_id, tenant, 16);
	a->kind = kind;
	a->period_start_ms = period_start;
	a->threshold = threshold;
	a->payload = payload;
	snprintf(a->subject, sizeof(a->subject), "%s", subject);
	tally_alert_id_subject(a->id, tenant, kind, period_start, threshold,
			       a->subject);
}

static char *dump(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);

	json_decref(o);
	if (s == NULL)
		abort();
	return s;
}

/* floor(used * 100 / limit) with two decimals, e.g. "80.00" (limit > 0) */
static void fmt_pct(char out[32], int64_t used, int64_t limit)
{
	i128 bp = (i128)used * 10000 / limit;
	int64_t v = bp > INT64_MAX ? INT64_MAX : (int64_t)bp;

	snprintf(out, 32, "%" PRId64 ".%02d", v / 100, (int)(v % 100));
}

static json_t *money_json(int64_t pico)
{
	char b[48];

	tally_money_fmt(b, sizeof(b), pico);
	return json_string(b);
}

static bool reached(int64_t used, int64_t limit, int pct)
{
	return limit > 0 && (i128)used * 100 >= (i128)limit * pct;
}

/* Fields every totals alert carries. */
static json_t *totals_base(const tally_totals *t, const char *rule)
{
	json_t *o = json_object();
	char b[32];

	json_object_set_new(o, "rule", json_string(rule));
	json_object_set_new(o, "totals_version", json_integer(t->version));
	json_object_set_new(o, "currency", json_string(t->currency));
	if (t->period_end_ms >= 0) {
		tally_fmt_time_ms(b, t->period_end_ms);
		json_object_set_new(o, "period_end", json_string(b));
	}
	return o;
}

/* Merge src's keys into o, then release src. */
static void merge(json_t *o, json_t *src)
{
	json_object_update(o, src);
	json_decref(src);
}

static json_t *metric_json(const char *name, int64_t used, int64_t limit,
			   bool money)
{
	json_t *o = json_object();
	char pct[32];

	fmt_pct(pct, used, limit);
	json_object_set_new(o, "metric", json_string(name));
	json_object_set_new(o, "used", money ? money_json(used) :
				       json_integer(used));
	json_object_set_new(o, "limit", money ? money_json(limit) :
					json_integer(limit));
	json_object_set_new(o, "percent", json_string(pct));
	return o;
}

void tally_alerts_eval_totals(tally_alert_list *out, const tally_totals *t,
			      const tally_alert_context *ctx,
			      const tally_alert_thresholds *th)
{
	int i;

	for (i = 0; i < th->n; i++) {
		int T = th->pct[i];
		json_t *o;

		if (!reached(t->cost_pico, t->budget_pico, T))
			continue;
		o = totals_base(t, "cost >= monthly_budget * threshold / 100");
		merge(o, metric_json("cost", t->cost_pico,
						  t->budget_pico, true));
		push(out, t->tenant_id, TALLY_ALERT_BUDGET, t->period_start_ms,
		     T, dump(o));
	}
	for (i = 0; i < th->n; i++) {
		int T = th->pct[i];
		json_t *o, *arr = json_array();

		if (reached(t->ai_requests, t->max_ai_requests, T))
			json_array_append_new(arr, metric_json(
				"ai_requests", t->ai_requests,
				t->max_ai_requests, false));
		if (reached(t->workflows, t->max_workflows, T))
			json_array_append_new(arr, metric_json(
				"workflows", t->workflows, t->max_workflows,
				false));
		if (reached(t->users, t->max_users, T))
			json_array_append_new(arr, metric_json(
				"users", t->users, t->max_users, false));
		if (json_array_size(arr) == 0) {
			json_decref(arr);
			continue;
		}
		o = totals_base(t, "used >= limit * threshold / 100");
		json_object_set_new(o, "metrics", arr);
		push(out, t->tenant_id, TALLY_ALERT_PLAN_LIMIT,
		     t->period_start_ms, T, dump(o));
	}
	if (ctx->plan_price_pico > 0 &&
	    reached(t->cost_pico, ctx->plan_price_pico,
		    TALLY_ALERT_REVENUE_PCT)) {
		json_t *o = totals_base(t, "usage cost >= plan monthly price");

		merge(o, metric_json("cost", t->cost_pico,
						  ctx->plan_price_pico, true));
		if (ctx->plan != NULL)
			json_object_set_new(o, "plan", json_string(ctx->plan));
		push(out, t->tenant_id, TALLY_ALERT_REVENUE,
		     t->period_start_ms, TALLY_ALERT_REVENUE_PCT, dump(o));
	}
	if (ctx->prev_start_ms >= 0 && ctx->prev2_start_ms >= 0 &&
	    ctx->prev2_cost_pico >= TALLY_ALERT_CHURN_MIN_PICO &&
	    ctx->prev_cost_pico >= 0 &&
	    (i128)ctx->prev_cost_pico * 2 <= (i128)ctx->prev2_cost_pico) {
		json_t *o = json_object();
		char b[32], pct[32];

		json_object_set_new(o, "rule", json_string(
			"previous period cost <= half of the one before"));
		json_object_set_new(o, "reason", json_string("usage_drop"));
		json_object_set_new(o, "cost", money_json(ctx->prev_cost_pico));
		json_object_set_new(o, "previous_cost",
				    money_json(ctx->prev2_cost_pico));
		tally_fmt_time_ms(b, ctx->prev2_start_ms);
		json_object_set_new(o, "previous_period_start",
				    json_string(b));
		fmt_pct(pct, ctx->prev2_cost_pico - ctx->prev_cost_pico,
			ctx->prev2_cost_pico);
		json_object_set_new(o, "drop_percent", json_string(pct));
		json_object_set_new(o, "currency", json_string(t->currency));
		push(out, t->tenant_id, TALLY_ALERT_CHURN_RISK,
		     ctx->prev_start_ms, TALLY_ALERT_CHURN_USAGE_DROP, dump(o));
	}
}

bool tally_alerts_eval_silence(tally_alert_list *out,
			       const tally_silence_facts *f,
			       const tally_silence_rule *r, int64_t now_ms)
{
	int64_t start, silent_ms;
	json_t *o;
	char b[32];

	if (f->last_hour_ms < 0 || r->silence_days < 1 ||
	    f->active_days < r->active_days || f->active_days < 1)
		return false;
	start = f->last_hour_ms + TALLY_MS_PER_DAY / 24;
	silent_ms = now_ms - start;
	if (silent_ms < (int64_t)r->silence_days * TALLY_MS_PER_DAY)
		return false;
	o = json_object();
	json_object_set_new(o, "rule", json_string(
		"no usage for silence_days after usage on at least"
		" active_days of the 28 days before"));
	json_object_set_new(o, "reason", json_string("silence"));
	tally_fmt_time_ms(b, f->last_hour_ms);
	json_object_set_new(o, "last_usage_hour", json_string(b));
	tally_fmt_time_ms(b, start);
	json_object_set_new(o, "silent_since", json_string(b));
	json_object_set_new(o, "silent_days",
			    json_integer(silent_ms / TALLY_MS_PER_DAY));
	json_object_set_new(o, "silence_days", json_integer(r->silence_days));
	json_object_set_new(o, "active_days", json_integer(f->active_days));
	json_object_set_new(o, "history_days",
			    json_integer(TALLY_ALERT_SILENCE_HISTORY_DAYS));
	push(out, f->tenant_id, TALLY_ALERT_CHURN_RISK, start,
	     TALLY_ALERT_CHURN_SILENCE, dump(o));
	return true;
}

static char *signal_payload(const tally_signal *s, const char *rule)
{
	size_t n = strlen(s->json) + strlen(rule) + 32;
	char *p = tally_xmalloc(n);

	/* rule is one of our literals (no quotes); s->json is valid JSON */
	snprintf(p, n, "{\"rule\":\"%s\",\"signal\":%s}", rule, s->json);
	return p;
}

void tally_alerts_eval_signal(tally_alert_list *out, const tally_signal *s)
{
	int64_t ps = s->period_start_ms >= 0 ? s->period_start_ms :
			     tally_alert_month_start(s->time_ms);
	tally_alert_kind kind;
	int threshold = 0;
	const char *rule;

	switch (s->kind) {
	case TALLY_SIGNAL_PAYMENT_FAILED:
		kind = TALLY_ALERT_PAYMENT_FAILED;
		rule = "payment_failed";
		break;
	case TALLY_SIGNAL_SUBSCRIPTION_CANCELLED:
		if (s->at_period_end) {
			kind = TALLY_ALERT_CHURN_RISK;
			threshold = TALLY_ALERT_CHURN_SCHEDULED;
			rule = "cancellation scheduled at period end";
		} else {
			kind = TALLY_ALERT_SUBSCRIPTION_CANCELLED;
			rule = "subscription_cancelled";
		}
		break;
	case TALLY_SIGNAL_CANCELLATION_SCHEDULED:
		kind = TALLY_ALERT_CHURN_RISK;
		threshold = TALLY_ALERT_CHURN_SCHEDULED;
		rule = "cancellation scheduled at period end";
		break;
	case TALLY_SIGNAL_DOWNGRADE:
		kind = TALLY_ALERT_DOWNGRADE;
		rule = "downgrade";
		break;
	case TALLY_SIGNAL_TRIAL_ENDING:
		kind = TALLY_ALERT_TRIAL_ENDING;
		rule = "trial_ending";
		break;
	case TALLY_SIGNAL_DISPUTE:
		if (s->closed)
			return;
		kind = TALLY_ALERT_DISPUTE;
		rule = "dispute opened";
		/* every dispute matters: one alert each, keyed by its time */
		ps = s->time_ms;
		break;
	case TALLY_SIGNAL_REFUND:
		kind = TALLY_ALERT_REVENUE;
		threshold = TALLY_ALERT_REVENUE_REFUND;
		rule = "refund";
		ps = s->time_ms;
		break;
	case TALLY_SIGNAL_STATUS_CHANGED:
		if (strcmp(s->to_status, "past_due") == 0) {
			kind = TALLY_ALERT_DUNNING;
			threshold = TALLY_ALERT_DUNNING_PAST_DUE;
			rule = "status -> past_due";
		} else if (strcmp(s->to_status, "suspended") == 0) {
			kind = TALLY_ALERT_DUNNING;
			threshold = TALLY_ALERT_DUNNING_SUSPENDED;
			rule = "status -> suspended";
		} else if (strcmp(s->to_status, "cancelled") == 0 ||
			   strcmp(s->to_status, "canceled") == 0) {
			kind = TALLY_ALERT_SUBSCRIPTION_CANCELLED;
			rule = "status -> cancelled";
		} else {
			return;
		}
		break;
	default:
		return; /* payment_succeeded, upgrade, unknown: no alert */
	}
	push(out, s->tenant_id, kind, ps, threshold, signal_payload(s, rule));
}
