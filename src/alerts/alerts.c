/*
 * alerts.c - the alert rules (pure: one totals message or signal plus a
 * little context -> a list of alerts) and the tally-alerts engine (one
 * PostgreSQL transaction per batch with fenced positions, produce after
 * commit, sweep of unproduced alerts, webhook delivery).
 *
 * Key design decision: an alert is its primary key (tenant, kind,
 * period_start, threshold). Rules never ask "was this raised before?"; they
 * say what holds now, INSERT ... ON CONFLICT DO NOTHING keeps the first, and
 * only rows actually inserted are announced. Replays and duplicates
 * therefore raise nothing new. See docs/alerts.md.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts.h"
#include "tally/positions.h"
#include "tally/event.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include "events/codec_int.h"
#include "base/calendar.h"

#include <curl/curl.h>
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
	char tid[37], ps[32], buf[256];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int n;

	tally_uuid_fmt(tid, tenant_id);
	tally_fmt_time_ms(ps, period_start_ms);
	n = snprintf(buf, sizeof(buf), "tally.alert/1|%s|%s|%s|%d", tid,
		     tally_alert_kind_name(kind), ps, threshold);
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
/* decoding                                                            */

static int fail_json(tally_codec_error *err, const json_error_t *je)
{
	return tally_codec__fail(err, "not_json", "", "line %d: %s", je->line,
				 je->text);
}

static int get_uuid(uint8_t out[16], json_t *o, const char *key,
		    tally_codec_error *err)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL || json_is_null(v))
		return tally_codec__fail(err, "missing_field", key,
					 "%s is required", key);
	if (!json_is_string(v))
		return tally_codec__fail(err, "wrong_type", key,
					 "%s must be a string", key);
	if (tally_uuid_parse(out, json_string_value(v),
			     (uint32_t)json_string_length(v)) != 0)
		return tally_codec__fail(err, "bad_value", key,
					 "%s is not a UUID", key);
	return 0;
}

/* Unix ms or RFC 3339. 1 when absent (and not required). */
static int get_time(int64_t *out, json_t *o, const char *key, bool required,
		    tally_codec_error *err)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL || json_is_null(v)) {
		if (required)
			return tally_codec__fail(err, "missing_field", key,
						 "%s is required", key);
		return 1;
	}
	if (json_is_integer(v)) {
		*out = (int64_t)json_integer_value(v);
	} else if (json_is_string(v)) {
		if (tally_codec__parse_rfc3339(out, json_string_value(v),
					       (uint32_t)json_string_length(v))
		    != 0)
			return tally_codec__fail(err, "bad_value", key,
						 "%s is not RFC 3339", key);
	} else {
		return tally_codec__fail(err, "wrong_type", key,
					 "%s must be unix ms or RFC 3339",
					 key);
	}
	if (*out < 0 || *out > TALLY_CODEC_TIME_MAX)
		return tally_codec__fail(err, "bad_value", key,
					 "%s out of range", key);
	return 0;
}

/* Non-negative integer; 1 when absent or null (*out untouched). */
static int get_count(int64_t *out, json_t *o, const char *key,
		     tally_codec_error *err)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL || json_is_null(v))
		return 1;
	if (!json_is_integer(v))
		return tally_codec__fail(err, "wrong_type", key,
					 "%s must be an integer", key);
	if (json_integer_value(v) < 0)
		return tally_codec__fail(err, "bad_value", key,
					 "%s must not be negative", key);
	*out = (int64_t)json_integer_value(v);
	return 0;
}

/* Exact decimal string (or integer) in currency units -> pico. 1: absent */
static int get_money(int64_t *out, json_t *o, const char *key,
		     tally_codec_error *err)
{
	json_t *v = json_object_get(o, key);
	int rc;

	if (v == NULL || json_is_null(v))
		return 1;
	if (json_is_string(v)) {
		rc = tally_money_parse(out, json_string_value(v),
				       json_string_length(v));
		if (rc == TALLY_EOVERFLOW)
			return tally_codec__fail(err, "overflow", key,
						 "%s too large", key);
		if (rc != 0)
			return tally_codec__fail(err, "bad_value", key,
						 "%s is not an exact decimal",
						 key);
		return 0;
	}
	if (json_is_integer(v)) {
		i128 p = (i128)json_integer_value(v) * TALLY_PICO_PER_UNIT;
		if (p > INT64_MAX || p < INT64_MIN)
			return tally_codec__fail(err, "overflow", key,
						 "%s too large", key);
		*out = (int64_t)p;
		return 0;
	}
	/* a float would not be exact: money travels as decimal strings */
	return tally_codec__fail(err, "wrong_type", key,
				 "%s must be a decimal string", key);
}

static void get_str(char *out, size_t n, json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	out[0] = '\0';
	if (json_is_string(v))
		snprintf(out, n, "%s", json_string_value(v));
}

int tally_totals_from_json(tally_totals *out, const char *buf, size_t len,
			   tally_codec_error *err)
{
	json_error_t je;
	json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	json_t *v;
	tally_totals t;
	int rc;

	memset(&t, 0, sizeof(t));
	t.period_end_ms = -1;
	t.max_ai_requests = -1;
	t.max_workflows = -1;
	t.budget_pico = -1;
	if (o == NULL)
		return fail_json(err, &je);
	if (!json_is_object(o)) {
		rc = tally_codec__fail(err, "wrong_type", "",
				       "totals must be a JSON object");
		goto cleanup;
	}
	v = json_object_get(o, "schema");
	if (v != NULL && (!json_is_string(v) ||
			  strncmp(json_string_value(v), "tally.totals/1",
				  15) != 0)) {
		rc = tally_codec__fail(err, "unsupported_schema", "schema",
				       "expected tally.totals/1");
		goto cleanup;
	}
	rc = get_uuid(t.tenant_id, o, "tenant_id", err);
	if (rc == 0)
		rc = get_time(&t.period_start_ms, o, "period_start", true, err);
	if (rc == 0 && get_time(&t.period_end_ms, o, "period_end", false,
				err) < 0)
		rc = TALLY_EINVALID;
	if (rc == 0) {
		rc = get_count(&t.version, o, "version", err);
		if (rc == 1)
			rc = tally_codec__fail(err, "missing_field", "version",
					       "version is required");
	}
	if (rc == 0) {
		rc = get_money(&t.cost_pico, o, "cost", err);
		if (rc == 1)
			rc = tally_codec__fail(err, "missing_field", "cost",
					       "cost is required");
	}
	if (rc == 0 && get_money(&t.budget_pico, o, "monthly_budget", err) < 0)
		rc = TALLY_EINVALID;
	if (rc == 0 && t.budget_pico <= 0)
		t.budget_pico = -1;
	if (rc == 0 && get_count(&t.ai_requests, o, "ai_requests", err) < 0)
		rc = TALLY_EINVALID;
	if (rc == 0 && get_count(&t.max_ai_requests, o,
				 "max_ai_requests_per_month", err) < 0)
		rc = TALLY_EINVALID;
	/* distinct workflows when the totals carry them, else executions */
	if (rc == 0) {
		int w = get_count(&t.workflows, o, "workflows", err);
		if (w == 1)
			w = get_count(&t.workflows, o, "workflow_executions",
				      err);
		if (w < 0)
			rc = TALLY_EINVALID;
	}
	if (rc == 0 && get_count(&t.max_workflows, o, "max_workflows", err) < 0)
		rc = TALLY_EINVALID;
	if (rc != 0)
		goto cleanup;
	if (t.max_ai_requests == 0)
		t.max_ai_requests = -1;
	if (t.max_workflows == 0)
		t.max_workflows = -1;
	get_str(t.currency, sizeof(t.currency), o, "currency");
	if (t.currency[0] == '\0')
		memcpy(t.currency, "USD", 4);
	if (t.period_end_ms >= 0 && t.period_end_ms <= t.period_start_ms) {
		rc = tally_codec__fail(err, "bad_value", "period_end",
				       "period_end must follow period_start");
		goto cleanup;
	}
	*out = t;
cleanup:
	json_decref(o);
	return rc;
}

static const struct {
	const char *name;
	tally_signal_kind kind;
} signal_names[] = {
	{ "payment_failed", TALLY_SIGNAL_PAYMENT_FAILED },
	{ "invoice.payment_failed", TALLY_SIGNAL_PAYMENT_FAILED },
	{ "payment_succeeded", TALLY_SIGNAL_PAYMENT_SUCCEEDED },
	{ "invoice.paid", TALLY_SIGNAL_PAYMENT_SUCCEEDED },
	{ "subscription_cancelled", TALLY_SIGNAL_SUBSCRIPTION_CANCELLED },
	{ "subscription_canceled", TALLY_SIGNAL_SUBSCRIPTION_CANCELLED },
	{ "cancellation_scheduled", TALLY_SIGNAL_CANCELLATION_SCHEDULED },
	{ "subscription_cancel_scheduled",
	  TALLY_SIGNAL_CANCELLATION_SCHEDULED },
	{ "downgrade", TALLY_SIGNAL_DOWNGRADE },
	{ "plan_downgraded", TALLY_SIGNAL_DOWNGRADE },
	{ "upgrade", TALLY_SIGNAL_UPGRADE },
	{ "plan_upgraded", TALLY_SIGNAL_UPGRADE },
	{ "trial_ending", TALLY_SIGNAL_TRIAL_ENDING },
	{ "trial_will_end", TALLY_SIGNAL_TRIAL_ENDING },
	{ "dispute", TALLY_SIGNAL_DISPUTE },
	{ "dispute_created", TALLY_SIGNAL_DISPUTE },
	{ "status_changed", TALLY_SIGNAL_STATUS_CHANGED },
	{ "status_change", TALLY_SIGNAL_STATUS_CHANGED },
	{ "tenant_status_changed", TALLY_SIGNAL_STATUS_CHANGED },
	{ "dunning", TALLY_SIGNAL_STATUS_CHANGED },
	{ "refund", TALLY_SIGNAL_REFUND },
};

static tally_signal_kind signal_kind_parse(const char *s)
{
	size_t i;

	for (i = 0; i < sizeof(signal_names) / sizeof(signal_names[0]); i++)
		if (strcmp(signal_names[i].name, s) == 0)
			return signal_names[i].kind;
	return TALLY_SIGNAL_OTHER;
}

int tally_signal_from_json(tally_signal *out, const char *buf, size_t len,
			   tally_codec_error *err)
{
	json_error_t je;
	json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	json_t *v, *data;
	tally_signal s;
	const char *kkey = "kind";
	int rc = 0, r;

	memset(&s, 0, sizeof(s));
	s.period_start_ms = -1;
	if (o == NULL)
		return fail_json(err, &je);
	if (!json_is_object(o)) {
		rc = tally_codec__fail(err, "wrong_type", "",
				       "a signal must be a JSON object");
		goto cleanup;
	}
	rc = get_uuid(s.tenant_id, o, "tenant_id", err);
	if (rc != 0)
		goto cleanup;
	v = json_object_get(o, kkey);
	if (v == NULL) {
		kkey = "type";
		v = json_object_get(o, kkey);
	}
	if (v == NULL || json_is_null(v)) {
		rc = tally_codec__fail(err, "missing_field", "kind",
				       "kind is required");
		goto cleanup;
	}
	if (!json_is_string(v) || json_string_length(v) == 0 ||
	    json_string_length(v) >= sizeof(s.kind_name)) {
		rc = tally_codec__fail(err, "wrong_type", kkey,
				       "%s must be a short string", kkey);
		goto cleanup;
	}
	snprintf(s.kind_name, sizeof(s.kind_name), "%s", json_string_value(v));
	s.kind = signal_kind_parse(s.kind_name);
	r = get_time(&s.time_ms, o, "time", false, err);
	if (r == 1)
		r = get_time(&s.time_ms, o, "occurred_at", true, err);
	if (r != 0) {
		rc = TALLY_EINVALID;
		goto cleanup;
	}
	/* fields may sit at the top level or in a "data" object */
	data = json_object_get(o, "data");
	if (!json_is_object(data))
		data = o;
	r = get_time(&s.period_start_ms, o, "period_start", false, err);
	if (r == 1 && data != o)
		r = get_time(&s.period_start_ms, data, "period_start", false,
			     err);
	if (r < 0) {
		rc = TALLY_EINVALID;
		goto cleanup;
	}
	if (r == 1)
		s.period_start_ms = -1;
	get_str(s.signal_id, sizeof(s.signal_id), o, "signal_id");
	if (s.signal_id[0] == '\0')
		get_str(s.signal_id, sizeof(s.signal_id), o, "id");
	get_str(s.to_status, sizeof(s.to_status), data, "status_to");
	if (s.to_status[0] == '\0')
		get_str(s.to_status, sizeof(s.to_status), data, "to_status");
	get_str(s.from_status, sizeof(s.from_status), data, "status_from");
	if (s.from_status[0] == '\0')
		get_str(s.from_status, sizeof(s.from_status), data,
			"from_status");
	s.closed = json_is_true(json_object_get(data, "closed"));
	v = json_object_get(data, "at_period_end");
	if (v == NULL)
		v = json_object_get(data, "cancel_at_period_end");
	s.at_period_end = json_is_true(v);
	if (s.kind == TALLY_SIGNAL_STATUS_CHANGED && s.to_status[0] == '\0') {
		rc = tally_codec__fail(err, "missing_field", "status_to",
				       "%s needs status_to", s.kind_name);
		goto cleanup;
	}
	s.json = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	if (s.json == NULL)
		abort(); /* jansson fails only on OOM here */
	*out = s;
cleanup:
	json_decref(o);
	return rc;
}

void tally_signal_dispose(tally_signal *s)
{
	free(s->json);
	s->json = NULL;
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
	tally_alert_id(a->id, tenant, kind, period_start, threshold);
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

/* ------------------------------------------------------------------ */
/* engine                                                              */

/* An alert as published: the billing.alerts value and the webhook body. */
#define ALERT_JSON                                                         \
	"json_build_object('id', id, 'tenant_id', tenant_id, 'kind', kind,"  \
	" 'period_start', to_char(period_start AT TIME ZONE 'UTC',"         \
	" 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'threshold', threshold,"     \
	" 'payload', payload, 'raised_at', to_char(raised_at AT TIME ZONE"  \
	" 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text"

#define MS_TS(p) "(timestamptz 'epoch' + " p "::bigint * interval '1 ms')"
#define TS_MS(c) "(extract(epoch FROM " c ") * 1000)::bigint"

typedef tally_position bpart;

typedef enum { IT_TOTALS, IT_SIGNAL, IT_DEAD } item_type;

typedef struct item {
	item_type type;
	tally_totals totals;
	tally_signal signal;
	const char *reason;
	char detail[256];
	const tally_alerts_msg *msg;
} item;

/* A row inserted by the batch, produced after the commit. */
typedef struct outrow {
	char tenant[37];
	char id[37];
	char *json;
	int status; /* 0 pending, 1 delivered, -1 failed */
} outrow;

struct tally_alerts {
	tally_pg *pg;
	char *group, *totals_topic, *signals_topic, *alerts_topic;
	char *totals_dlq, *signals_dlq;
	rd_kafka_t *producer;
	tally_metrics *m;
	tally_alert_thresholds th;
	tally_positions *pos;
	/* per batch */
	bpart *parts;
	size_t nparts, capparts;
	item *items;
	size_t nitems, capitems;
	outrow *out;
	size_t nout, capout;
	tally_alert_list list;
	size_t stale, existing;
	/* metrics */
	tally_counter *c_stale, *c_totals, *c_signals, *c_produced;
	tally_counter *c_produce_failed;
	tally_histogram *h_batch;
};

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	int *status = m->_private;

	(void)rk;
	(void)opaque;
	if (status != NULL)
		*status = m->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 1 : -1;
}

void tally_alerts_producer_conf(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
}

static char *cat2(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = tally_xmalloc(la + lb + 1);

	memcpy(s, a, la);
	memcpy(s + la, b, lb + 1);
	return s;
}

int tally_alerts_new(tally_alerts **out, tally_pg *pg,
		     const tally_alerts_opts *opts, tally_error *err)
{
	tally_alerts *a;
	tally_alert_thresholds th;
	const char *sfx = opts->dlq_suffix ? opts->dlq_suffix : ".dlq";
	int rc;

	rc = tally_alert_thresholds_parse(&th, opts->thresholds ?
					  opts->thresholds : "50,80,100", err);
	if (rc != 0)
		return rc;
	a = tally_xcalloc(1, sizeof(*a));
	a->pg = pg;
	a->th = th;
	a->group = tally_xstrdup(opts->group);
	a->pos = tally_positions_new(opts->group);
	a->totals_topic = tally_xstrdup(opts->totals_topic);
	a->signals_topic = tally_xstrdup(opts->signals_topic);
	a->alerts_topic = opts->alerts_topic ?
				  tally_xstrdup(opts->alerts_topic) : NULL;
	a->totals_dlq = cat2(opts->totals_topic, sfx);
	a->signals_dlq = cat2(opts->signals_topic, sfx);
	a->producer = opts->producer;
	a->m = opts->metrics;
	tally_alert_list_init(&a->list);
	if (a->m != NULL) {
		a->c_totals = tally_metrics_counter(a->m,
			"tally_alerts_totals_total", NULL,
			"billing.totals messages evaluated");
		a->c_stale = tally_metrics_counter(a->m,
			"tally_alerts_totals_stale_total", NULL,
			"totals ignored: version not newer than one seen");
		a->c_signals = tally_metrics_counter(a->m,
			"tally_alerts_signals_total", NULL,
			"billing.signals messages evaluated");
		a->c_produced = tally_metrics_counter(a->m,
			"tally_alerts_produced_total", NULL,
			"alerts produced to billing.alerts");
		a->c_produce_failed = tally_metrics_counter(a->m,
			"tally_alerts_produce_failed_total", NULL,
			"alerts whose produce failed (the sweep retries)");
		a->h_batch = tally_metrics_histogram(a->m,
			"tally_alerts_batch_seconds", NULL,
			"time to process one batch", NULL, 0);
	}
	*out = a;
	return 0;
}

static void clear_batch(tally_alerts *a)
{
	size_t i;

	for (i = 0; i < a->nitems; i++)
		if (a->items[i].type == IT_SIGNAL)
			tally_signal_dispose(&a->items[i].signal);
	a->nitems = 0;
	a->nparts = 0;
	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	tally_alert_list_clear(&a->list);
}

void tally_alerts_free(tally_alerts *a)
{
	if (a == NULL)
		return;
	clear_batch(a);
	tally_alert_list_dispose(&a->list);
	tally_positions_free(a->pos);
	free(a->parts);
	free(a->items);
	free(a->out);
	free(a->group);
	free(a->totals_topic);
	free(a->signals_topic);
	free(a->alerts_topic);
	free(a->totals_dlq);
	free(a->signals_dlq);
	free(a);
}

int tally_alerts_set_thresholds(tally_alerts *a, const char *s,
				tally_error *err)
{
	tally_alert_thresholds th;
	int rc = tally_alert_thresholds_parse(&th, s, err);

	if (rc == 0)
		a->th = th;
	return rc;
}

static void count(tally_alerts *a, const char *name, const char *labels,
		  const char *help)
{
	if (a->m != NULL)
		tally_counter_add(tally_metrics_counter(a->m, name, labels,
							help), 1);
}

static void cadd(tally_counter *c, uint64_t n)
{
	if (c != NULL && n > 0)
		tally_counter_add(c, n);
}

/* positions ---------------------------------------------------------- */

int tally_alerts_assign(tally_alerts *a,
			rd_kafka_topic_partition_list_t *parts,
			tally_error *err)
{
	return tally_positions_assign(a->pos, a->pg, parts, err);
}

void tally_alerts_revoke(tally_alerts *a,
			 const rd_kafka_topic_partition_list_t *parts)
{
	tally_positions_revoke(a->pos, parts);
}

int tally_alerts_reseek(tally_alerts *a, rd_kafka_t *rk,
			const tally_alerts_msg *msgs, size_t n,
			tally_error *err)
{
	tally_position *b = tally_xcalloc(n ? n : 1, sizeof(*b));
	size_t i;
	int rc;

	for (i = 0; i < n; i++) {
		b[i].topic = msgs[i].topic;
		b[i].partition = msgs[i].partition;
	}
	rc = tally_positions_reseek(a->pos, a->pg, rk, b, n, err);
	free(b);
	return rc;
}

/* the batch transaction ---------------------------------------------- */

/* 1: newer version recorded; 0: stale */
static int totals_fresh(tally_alerts *a, const tally_totals *t, int *fresh,
			tally_error *err)
{
	PGresult *res = NULL;
	char tid[37], ps[24], v[24];
	const char *params[3];
	int rc;

	tally_uuid_fmt(tid, t->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, t->period_start_ms);
	snprintf(v, sizeof(v), "%" PRId64, t->version);
	params[0] = tid;
	params[1] = ps;
	params[2] = v;
	rc = tally_pg_exec(a->pg, &res,
		"INSERT INTO alert_totals_versions AS x (tenant_id,"
		" period_start, version) VALUES ($1::uuid, " MS_TS("$2")
		", $3::bigint) ON CONFLICT (tenant_id, period_start) DO"
		" UPDATE SET version = EXCLUDED.version, updated_at = now()"
		" WHERE x.version < EXCLUDED.version RETURNING 1",
		3, params, err);
	if (rc == 0)
		*fresh = PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

static int64_t pico_or(const char *s, int64_t dflt)
{
	int64_t v;

	if (tally_money_parse(&v, s, strlen(s)) != 0)
		return dflt;
	return v;
}

/* Plan price and the two periods before the totals' one. */
static int load_context(tally_alerts *a, const tally_totals *t,
			tally_alert_context *ctx, char *plan, size_t plansz,
			tally_error *err)
{
	PGresult *res = NULL;
	char tid[37], ps[24];
	const char *params[2];
	int64_t s0 = 0, e0 = 0, s1 = 0, e1 = 0;
	int rc;

	tally_alert_context_init(ctx);
	tally_uuid_fmt(tid, t->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, t->period_start_ms);
	params[0] = tid;
	params[1] = ps;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT p.monthly_price::text, p.id FROM tenants t"
		" JOIN plans p ON p.id = t.subscription_plan"
		" WHERE t.id = $1::uuid", 1, params, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) == 1) {
		ctx->plan_price_pico = pico_or(PQgetvalue(res, 0, 0), -1);
		snprintf(plan, plansz, "%s", PQgetvalue(res, 0, 1));
		ctx->plan = plan;
	}
	PQclear(res);
	res = NULL;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT " TS_MS("period_start") ", " TS_MS("period_end")
		", cost::text FROM tenant_period_usage WHERE tenant_id ="
		" $1::uuid AND period_start < " MS_TS("$2")
		" ORDER BY period_start DESC LIMIT 2", 2, params, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) >= 1 &&
	    tally_parse_i64(&s0, PQgetvalue(res, 0, 0)) == 0 &&
	    tally_parse_i64(&e0, PQgetvalue(res, 0, 1)) == 0 &&
	    e0 == t->period_start_ms) {
		ctx->prev_start_ms = s0;
		ctx->prev_cost_pico = pico_or(PQgetvalue(res, 0, 2), -1);
		if (PQntuples(res) == 2 &&
		    tally_parse_i64(&s1, PQgetvalue(res, 1, 0)) == 0 &&
		    tally_parse_i64(&e1, PQgetvalue(res, 1, 1)) == 0 &&
		    e1 == s0) {
			ctx->prev2_start_ms = s1;
			ctx->prev2_cost_pico =
				pico_or(PQgetvalue(res, 1, 2), -1);
		}
		if (ctx->prev_cost_pico < 0 || ctx->prev2_cost_pico < 0)
			ctx->prev_start_ms = ctx->prev2_start_ms = -1;
	}
cleanup:
	PQclear(res);
	return rc;
}

static int insert_alert(tally_alerts *a, const tally_alert *al,
			tally_error *err)
{
	PGresult *res = NULL;
	char id[37], tid[37], ps[24], th[16];
	const char *params[6];
	int rc;

	tally_uuid_fmt(id, al->id);
	tally_uuid_fmt(tid, al->tenant_id);
	snprintf(ps, sizeof(ps), "%" PRId64, al->period_start_ms);
	snprintf(th, sizeof(th), "%d", al->threshold);
	params[0] = id;
	params[1] = tid;
	params[2] = tally_alert_kind_name(al->kind);
	params[3] = ps;
	params[4] = th;
	params[5] = al->payload;
	rc = tally_pg_exec(a->pg, &res,
		"INSERT INTO alerts (id, tenant_id, kind, period_start,"
		" threshold, payload) VALUES ($1::uuid, $2::uuid, $3, "
		MS_TS("$4") ", $5::int, $6::jsonb) ON CONFLICT DO NOTHING"
		" RETURNING " ALERT_JSON, 6, params, err);
	if (rc == 0 && PQntuples(res) == 1) {
		outrow *o;

		if (a->nout == a->capout) {
			a->capout = a->capout ? a->capout * 2 : 16;
			a->out = tally_xrealloc(a->out,
						a->capout * sizeof(*a->out));
		}
		o = &a->out[a->nout++];
		memcpy(o->tenant, tid, 37);
		memcpy(o->id, id, 37);
		o->json = tally_xstrdup(PQgetvalue(res, 0, 0));
		o->status = 0;
	} else if (rc == 0) {
		a->existing++;
	}
	PQclear(res);
	return rc;
}

static int mirror_dead(tally_alerts *a, const item *it, tally_error *err)
{
	const tally_alerts_msg *m = it->msg;
	char pb[16], ob[24], key[64] = "";
	const char *params[8];
	int formats[8] = { 0 }, lengths[8] = { 0 };
	PGresult *res;

	if (m->rkm != NULL && m->rkm->key != NULL && m->rkm->key_len > 0)
		snprintf(key, sizeof(key), "%.*s",
			 (int)(m->rkm->key_len < 63 ? m->rkm->key_len : 63),
			 (const char *)m->rkm->key);
	snprintf(pb, sizeof(pb), "%d", (int)m->partition);
	snprintf(ob, sizeof(ob), "%" PRId64, m->offset);
	params[0] = key[0] ? key : NULL;
	params[1] = a->group;
	params[2] = m->topic;
	params[3] = pb;
	params[4] = ob;
	params[5] = it->reason;
	params[6] = it->detail;
	params[7] = m->payload;
	formats[7] = 1; /* the payload as raw bytes */
	lengths[7] = (int)m->len;
	/* binary parameter: PQexecParams directly (tally_pg_exec is text) */
	res = PQexecParams(tally_pg_conn(a->pg),
		"INSERT INTO dead_letters (tenant_id, consumer_group, topic,"
		" partition, \"offset\", reason, detail, payload) VALUES ($1,"
		" $2, $3, $4::int, $5::bigint, $6, $7, $8::bytea)"
		" ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
		8, NULL, params, lengths, formats, 0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		int rc = tally_pg__classify(tally_pg_conn(a->pg), res, err);
		PQclear(res);
		return rc;
	}
	PQclear(res);
	return 0;
}

static int batch_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_alerts *a = payload;
	size_t i, j;
	int rc;

	(void)pg;
	/* a retry starts from scratch: nothing of a rolled-back try stays */
	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	a->stale = a->existing = 0;
	rc = tally_positions_fence(a->pos, a->pg, a->parts, a->nparts, err);
	for (i = 0; i < a->nitems && rc == 0; i++) {
		item *it = &a->items[i];

		tally_alert_list_clear(&a->list);
		if (it->type == IT_TOTALS) {
			tally_alert_context ctx;
			char plan[64];
			int fresh = 0;

			rc = totals_fresh(a, &it->totals, &fresh, err);
			if (rc != 0)
				break;
			if (!fresh) {
				a->stale++;
				continue;
			}
			rc = load_context(a, &it->totals, &ctx, plan,
					  sizeof(plan), err);
			if (rc != 0)
				break;
			tally_alerts_eval_totals(&a->list, &it->totals, &ctx,
						 &a->th);
		} else if (it->type == IT_SIGNAL) {
			tally_alerts_eval_signal(&a->list, &it->signal);
		} else {
			rc = mirror_dead(a, it, err);
			continue;
		}
		for (j = 0; j < a->list.n && rc == 0; j++)
			rc = insert_alert(a, &a->list.v[j], err);
	}
	tally_alert_list_clear(&a->list);
	return rc;
}

static size_t pending_after_wait(const tally_alerts *a)
{
	size_t k, pending = 0;

	for (k = 0; k < a->nout; k++)
		pending += a->out[k].status == 0;
	return pending;
}

/* Produce the rows in a->out; mark the delivered ones produced_at. */
static int produce_rows(tally_alerts *a, size_t *produced, tally_error *err)
{
	size_t i, ok = 0, pi, pt, cap;
	char *ids = NULL, *tids = NULL;
	int rc = 0;

	*produced = 0;
	if (a->producer == NULL || a->alerts_topic == NULL || a->nout == 0)
		return 0;
	for (i = 0; i < a->nout; i++) {
		outrow *o = &a->out[i];
		rd_kafka_resp_err_t e = rd_kafka_producev(
			a->producer, RD_KAFKA_V_TOPIC(a->alerts_topic),
			RD_KAFKA_V_KEY(o->tenant, 36),
			RD_KAFKA_V_VALUE(o->json, strlen(o->json)),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(&o->status), RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
			o->status = -1;
	}
	/* every opaque points into a->out: wait until each is reported */
	for (i = 0; i < 30 && pending_after_wait(a) > 0; i++)
		rd_kafka_flush(a->producer, 1000);
	if (pending_after_wait(a) > 0) {
		/*
		 * Still unreported after 30 s: purge them so no delivery
		 * report can arrive after a->out is reused; the sweep
		 * produces them again later.
		 */
		rd_kafka_purge(a->producer, RD_KAFKA_PURGE_F_QUEUE |
					    RD_KAFKA_PURGE_F_INFLIGHT);
		while (pending_after_wait(a) > 0)
			rd_kafka_poll(a->producer, 100);
	}
	cap = a->nout * 37 + 3;
	ids = tally_xmalloc(cap);
	tids = tally_xmalloc(cap);
	pi = pt = 0;
	ids[pi++] = '{';
	tids[pt++] = '{';
	for (i = 0; i < a->nout; i++) {
		if (a->out[i].status != 1)
			continue;
		if (ok > 0) {
			ids[pi++] = ',';
			tids[pt++] = ',';
		}
		memcpy(ids + pi, a->out[i].id, 36);
		memcpy(tids + pt, a->out[i].tenant, 36);
		pi += 36;
		pt += 36;
		ok++;
	}
	ids[pi++] = '}';
	tids[pt++] = '}';
	ids[pi] = '\0';
	tids[pt] = '\0';
	cadd(a->c_produced, ok);
	cadd(a->c_produce_failed, a->nout - ok);
	if (ok > 0) {
		const char *params[2] = { tids, ids };

		rc = tally_pg_exec(a->pg, NULL,
			"UPDATE alerts a SET produced_at = now() FROM"
			" unnest($1::uuid[], $2::uuid[]) x(t, i)"
			" WHERE a.tenant_id = x.t AND a.id = x.i",
			2, params, err);
	}
	*produced = ok;
	free(ids);
	free(tids);
	return rc;
}

static int dlq_send(tally_alerts *a, const item *it, tally_error *err)
{
	const char *dlq = strcmp(it->msg->topic, a->totals_topic) == 0 ?
				  a->totals_dlq : a->signals_dlq;
	char labels[160], t[100];

	tally_metrics_escape_label(t, sizeof(t), it->msg->topic);
	snprintf(labels, sizeof(labels), "topic=\"%s\",reason=\"%s\"", t,
		 it->reason);
	count(a, "tally_alerts_dead_letters_total", labels,
	      "messages dead-lettered, by source topic and reason");
	tally_log(TALLY_WARN, "alerts.dead_letter",
		  TALLY_KV_STR("topic", it->msg->topic),
		  TALLY_KV_INT("partition", it->msg->partition),
		  TALLY_KV_INT("offset", it->msg->offset),
		  TALLY_KV_STR("reason", it->reason));
	if (a->producer == NULL || it->msg->rkm == NULL)
		return 0;
	return tally_dlq_send(a->producer, dlq, it->msg->rkm, a->group,
			      it->reason, it->detail, err);
}

static void add_part(tally_alerts *a, const tally_alerts_msg *m)
{
	size_t k;

	for (k = 0; k < a->nparts; k++)
		if (a->parts[k].partition == m->partition &&
		    strcmp(a->parts[k].topic, m->topic) == 0) {
			if (m->offset + 1 > a->parts[k].next)
				a->parts[k].next = m->offset + 1;
			return;
		}
	if (a->nparts == a->capparts) {
		a->capparts = a->capparts ? a->capparts * 2 : 16;
		a->parts = tally_xrealloc(a->parts,
					  a->capparts * sizeof(*a->parts));
	}
	a->parts[a->nparts].topic = m->topic;
	a->parts[a->nparts].partition = m->partition;
	a->parts[a->nparts].next = m->offset + 1;
	a->nparts++;
}

int tally_alerts_process(tally_alerts *a, const tally_alerts_msg *msgs,
			 size_t n, tally_alerts_stats *stats, tally_error *err)
{
	int64_t t0 = tally_mono_ns();
	size_t i, ndead = 0, ntotals = 0, nsignals = 0, produced = 0;
	int rc = 0;

	clear_batch(a);
	if (n == 0)
		return 0;
	if (a->capitems < n) {
		a->capitems = n;
		a->items = tally_xrealloc(a->items, n * sizeof(*a->items));
	}
	for (i = 0; i < n; i++) {
		const tally_alerts_msg *m = &msgs[i];
		item *it = &a->items[a->nitems++];
		tally_codec_error ce = { 0 };
		int r;

		memset(it, 0, sizeof(*it));
		it->msg = m;
		add_part(a, m);
		if (strcmp(m->topic, a->totals_topic) == 0) {
			it->type = IT_TOTALS;
			r = tally_totals_from_json(&it->totals, m->payload,
						   m->len, &ce);
			ntotals += r == 0;
		} else if (strcmp(m->topic, a->signals_topic) == 0) {
			it->type = IT_SIGNAL;
			r = tally_signal_from_json(&it->signal, m->payload,
						   m->len, &ce);
			nsignals += r == 0;
		} else {
			r = tally_codec__fail(&ce, "unknown_topic", "",
					      "not a topic of tally-alerts");
		}
		if (r != 0) {
			it->type = IT_DEAD;
			it->reason = ce.reason;
			snprintf(it->detail, sizeof(it->detail), "%s%s%s",
				 ce.field, ce.field[0] ? ": " : "", ce.detail);
			rc = dlq_send(a, it, err);
			if (rc != 0)
				goto cleanup;
			ndead++;
		}
	}
	/* dead letters are durable before their offsets are committed */
	if (ndead > 0 && a->producer != NULL &&
	    rd_kafka_flush(a->producer, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "dead-letter flush timed out");
		goto cleanup;
	}
	rc = tally_pg_txn(a->pg, batch_txn, a, 0, err);
	if (rc != 0)
		goto cleanup;
	/* committed: this instance now expects the positions it wrote */
	tally_positions_committed(a->pos, a->parts, a->nparts);
	cadd(a->c_totals, ntotals);
	cadd(a->c_signals, nsignals);
	cadd(a->c_stale, a->stale);
	{
		size_t k;
		for (k = 0; k < a->nout; k++) {
			json_t *o = json_loads(a->out[k].json, 0, NULL);
			const char *kind = json_string_value(
				json_object_get(o, "kind"));
			char labels[64];

			snprintf(labels, sizeof(labels), "kind=\"%s\"",
				 kind ? kind : "");
			count(a, "tally_alerts_raised_total", labels,
			      "alerts raised (inserted), by kind");
			tally_log(TALLY_INFO, "alerts.raised",
				  TALLY_KV_STR("alert_id", a->out[k].id),
				  TALLY_KV_STR("tenant_id", a->out[k].tenant),
				  TALLY_KV_STR("kind", kind ? kind : ""));
			json_decref(o);
		}
	}
	/* a failed produce is not a failed batch: the sweep redoes it */
	if (produce_rows(a, &produced, err) != 0) {
		tally_log(TALLY_WARN, "alerts.mark_produced_failed",
			  TALLY_KV_STR("error", err->msg));
		tally_error_clear(err);
	}
	if (stats != NULL) {
		stats->totals += ntotals;
		stats->stale += a->stale;
		stats->signals += nsignals;
		stats->raised += a->nout;
		stats->existing += a->existing;
		stats->dead_lettered += ndead;
		stats->produced += produced;
	}
cleanup:
	if (a->h_batch != NULL)
		tally_histogram_observe(a->h_batch,
					(uint64_t)(tally_mono_ns() - t0) / 1000);
	clear_batch(a);
	return rc;
}

int tally_alerts_sweep(tally_alerts *a, int64_t min_age_ms, int *n,
		       tally_error *err)
{
	PGresult *res = NULL;
	char age[24];
	const char *params[1];
	size_t produced = 0;
	int rc, r;

	if (n != NULL)
		*n = 0;
	if (a->producer == NULL || a->alerts_topic == NULL)
		return 0;
	clear_batch(a);
	snprintf(age, sizeof(age), "%" PRId64, min_age_ms);
	params[0] = age;
	rc = tally_pg_exec(a->pg, &res,
		"SELECT tenant_id::text, id::text, " ALERT_JSON
		" FROM alerts WHERE produced_at IS NULL AND raised_at <="
		" now() - $1::bigint * interval '1 ms'"
		" ORDER BY raised_at LIMIT 1000", 1, params, err);
	if (rc != 0)
		goto cleanup;
	for (r = 0; r < PQntuples(res); r++) {
		outrow *o;

		if (a->nout == a->capout) {
			a->capout = a->capout ? a->capout * 2 : 16;
			a->out = tally_xrealloc(a->out,
						a->capout * sizeof(*a->out));
		}
		o = &a->out[a->nout++];
		snprintf(o->tenant, sizeof(o->tenant), "%s",
			 PQgetvalue(res, r, 0));
		snprintf(o->id, sizeof(o->id), "%s", PQgetvalue(res, r, 1));
		o->json = tally_xstrdup(PQgetvalue(res, r, 2));
		o->status = 0;
	}
	rc = produce_rows(a, &produced, err);
	if (produced > 0)
		tally_log(TALLY_INFO, "alerts.swept",
			  TALLY_KV_INT("produced", (int64_t)produced));
	if (n != NULL)
		*n = (int)produced;
cleanup:
	PQclear(res);
	clear_batch(a);
	return rc;
}

/* webhook delivery --------------------------------------------------- */

static size_t discard_cb(char *p, size_t size, size_t nmemb, void *u)
{
	(void)p;
	(void)u;
	return size * nmemb;
}

/* POST one body; returns the HTTP status, or 0 with errbuf on a failure */
static long post_json(CURL *c, const char *url, const char *alert_id,
		      const char *body, int timeout_ms, char *errbuf)
{
	struct curl_slist *h = NULL;
	char idh[80];
	long status = 0;
	CURLcode cc;

	snprintf(idh, sizeof(idh), "X-Tally-Alert-Id: %s", alert_id);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, idh);
	h = curl_slist_append(h, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tally-alerts/1");
	errbuf[0] = '\0';
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	else if (errbuf[0] == '\0')
		snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(cc));
	curl_slist_free_all(h);
	return status;
}

int tally_alerts_deliver(tally_pg *pg, const char *url, int timeout_ms,
			 int limit, tally_metrics *metrics, int *delivered,
			 int *failed, tally_error *err)
{
	PGresult *res = NULL;
	CURL *c = NULL;
	char lim[16], lease[16];
	const char *params[2];
	int rc, r, nd = 0, nf = 0;

	if (delivered != NULL)
		*delivered = 0;
	if (failed != NULL)
		*failed = 0;
	if (url == NULL || url[0] == '\0')
		return 0;
	snprintf(lim, sizeof(lim), "%d", limit);
	/* the claimed rows are ours until the lease ends: no double POST */
	snprintf(lease, sizeof(lease), "%d",
		 (int)((int64_t)limit * timeout_ms / 1000 + 60));
	params[0] = lim;
	params[1] = lease;
	rc = tally_pg_exec(pg, &res,
		"UPDATE alerts a SET next_delivery_at = now() +"
		" $2::int * interval '1 s' FROM (SELECT tenant_id, id FROM"
		" alerts WHERE delivered_at IS NULL AND next_delivery_at <="
		" now() ORDER BY next_delivery_at LIMIT $1::int FOR UPDATE"
		" SKIP LOCKED) c WHERE a.tenant_id = c.tenant_id AND"
		" a.id = c.id RETURNING a.tenant_id::text, a.id::text, "
		"json_build_object('id', a.id, 'tenant_id', a.tenant_id,"
		" 'kind', a.kind, 'period_start', to_char(a.period_start AT"
		" TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
		" 'threshold', a.threshold, 'payload', a.payload,"
		" 'raised_at', to_char(a.raised_at AT TIME ZONE 'UTC',"
		" 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text,"
		" a.delivery_attempts", 2, params, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) > 0) {
		c = curl_easy_init();
		if (c == NULL) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "curl_easy_init failed");
			goto cleanup;
		}
	}
	for (r = 0; r < PQntuples(res) && rc == 0; r++) {
		const char *tid = PQgetvalue(res, r, 0);
		const char *id = PQgetvalue(res, r, 1);
		char errbuf[CURL_ERROR_SIZE], why[CURL_ERROR_SIZE + 32];
		long status = post_json(c, url, id, PQgetvalue(res, r, 2),
					timeout_ms, errbuf);
		const char *up[3];
		bool ok = status >= 200 && status < 300;

		up[0] = tid;
		up[1] = id;
		if (status > 0)
			snprintf(why, sizeof(why), "HTTP %ld", status);
		else
			snprintf(why, sizeof(why), "%s", errbuf);
		up[2] = why;
		if (ok) {
			rc = tally_pg_exec(pg, NULL,
				"UPDATE alerts SET delivered_at = now(),"
				" delivery_attempts = delivery_attempts + 1,"
				" last_delivery_error = NULL WHERE"
				" tenant_id = $1::uuid AND id = $2::uuid",
				2, up, err);
			nd++;
		} else {
			/* backoff 1, 2, 4 ... 300 s after the n-th failure */
			rc = tally_pg_exec(pg, NULL,
				"UPDATE alerts SET delivery_attempts ="
				" delivery_attempts + 1, last_delivery_error"
				" = $3, next_delivery_at = now() +"
				" least(power(2, least(delivery_attempts, 9)),"
				" 300) * interval '1 s' WHERE"
				" tenant_id = $1::uuid AND id = $2::uuid",
				3, up, err);
			nf++;
			tally_log(TALLY_WARN, "alerts.webhook_failed",
				  TALLY_KV_STR("alert_id", id),
				  TALLY_KV_STR("error", why));
		}
		if (metrics != NULL)
			tally_counter_add(tally_metrics_counter(metrics,
				"tally_alerts_webhook_total",
				ok ? "result=\"delivered\"" :
				     "result=\"failed\"",
				"webhook POSTs, by result"), 1);
	}
cleanup:
	if (c != NULL)
		curl_easy_cleanup(c);
	PQclear(res);
	if (delivered != NULL)
		*delivered = nd;
	if (failed != NULL)
		*failed = nf;
	return rc;
}
