/*
 * alerts_decode.c - decoding of tally-alerts' two inputs: billing.totals
 * (schemas/totals.md) and billing.signals (schemas/signals.md) messages,
 * JSON, into tally_totals / tally_signal. Hostile input fails with a
 * reason code (the engine dead-letters it); unknown signal kinds decode.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_rules.h"
#include "tally/event.h"

#include "events/codec_int.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef tally_money128 i128;

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

/*
 * A plan limit; 1 when absent or null (*out untouched). A negative limit
 * is no limit (-1): tenants hold -1 for a plan without one (the plan's
 * NULL, as tally-stripe copies it), and the rules ignore limits <= 0.
 */
static int get_limit(int64_t *out, json_t *o, const char *key,
		     tally_codec_error *err)
{
	json_t *v = json_object_get(o, key);

	if (v == NULL || json_is_null(v))
		return 1;
	if (!json_is_integer(v))
		return tally_codec__fail(err, "wrong_type", key,
					 "%s must be an integer", key);
	*out = json_integer_value(v) < 0 ? -1 :
					   (int64_t)json_integer_value(v);
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

/* The optional fields of a totals message: budget, usage and limits. */
static int totals_optional(tally_totals *t, json_t *o, tally_codec_error *err)
{
	int w;

	if (get_money(&t->budget_pico, o, "monthly_budget", err) < 0)
		return TALLY_EINVALID;
	if (t->budget_pico <= 0)
		t->budget_pico = -1;
	if (get_count(&t->ai_requests, o, "ai_requests", err) < 0)
		return TALLY_EINVALID;
	if (get_limit(&t->max_ai_requests, o, "max_ai_requests_per_month",
		      err) < 0)
		return TALLY_EINVALID;
	/* distinct workflows when the totals carry them, else executions */
	w = get_count(&t->workflows, o, "workflows", err);
	if (w == 1)
		w = get_count(&t->workflows, o, "workflow_executions", err);
	if (w < 0)
		return TALLY_EINVALID;
	if (get_limit(&t->max_workflows, o, "max_workflows", err) < 0)
		return TALLY_EINVALID;
	return 0;
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
	if (rc == 0)
		rc = totals_optional(&t, o, err);
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

/* Id, status change and flags: top level (o) or its "data" object. */
static void signal_details(tally_signal *s, json_t *o, json_t *data)
{
	json_t *v;

	get_str(s->signal_id, sizeof(s->signal_id), o, "signal_id");
	if (s->signal_id[0] == '\0')
		get_str(s->signal_id, sizeof(s->signal_id), o, "id");
	get_str(s->to_status, sizeof(s->to_status), data, "status_to");
	if (s->to_status[0] == '\0')
		get_str(s->to_status, sizeof(s->to_status), data, "to_status");
	get_str(s->from_status, sizeof(s->from_status), data, "status_from");
	if (s->from_status[0] == '\0')
		get_str(s->from_status, sizeof(s->from_status), data,
			"from_status");
	s->closed = json_is_true(json_object_get(data, "closed"));
	v = json_object_get(data, "at_period_end");
	if (v == NULL)
		v = json_object_get(data, "cancel_at_period_end");
	s->at_period_end = json_is_true(v);
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
	signal_details(&s, o, data);
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
