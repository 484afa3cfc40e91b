/*
 * codec_json.c - JSON form of usage events, rated events and commands.
 * The JSON object is walked and each value handed, as a borrowed view, to
 * the validation core of codec_fields.c, so JSON lines and msgpack
 * messages are accepted or rejected by exactly the same rules.
 */
#include "tally/codec_json.h"

#include <string.h>

#include "codec_int.h"
#include "tally/money.h"

static void classify(const json_t *j, tally_codec__val *v)
{
	memset(v, 0, sizeof(*v));
	switch (json_typeof(j)) {
	case JSON_OBJECT:
		v->kind = TALLY_CV_MAP;
		v->len = (uint32_t)json_object_size(j);
		break;
	case JSON_ARRAY:
		v->kind = TALLY_CV_ARRAY;
		v->len = (uint32_t)json_array_size(j);
		break;
	case JSON_STRING:
		v->kind = TALLY_CV_STR;
		v->s = json_string_value(j);
		/* jansson strings may hold NULs: the length is authoritative,
		 * and the core rejects control characters */
		v->len = json_string_length(j) > UINT32_MAX ?
				 UINT32_MAX : (uint32_t)json_string_length(j);
		break;
	case JSON_INTEGER:
		v->kind = TALLY_CV_INT;
		v->i = (int64_t)json_integer_value(j);
		break;
	case JSON_REAL:
		v->kind = TALLY_CV_FLOAT;
		break;
	case JSON_TRUE:
	case JSON_FALSE:
		v->kind = TALLY_CV_BOOL;
		v->b = json_is_true(j);
		break;
	default:
		v->kind = TALLY_CV_NIL;
		break;
	}
}

static int walk(tally_codec__st *st, const json_t *obj, tally_codec__scope sc)
{
	const char *key;
	json_t *val;
	tally_codec__val v;
	int rc;

	/* jansson's iteration API is not const-correct */
	json_object_foreach((json_t *)obj, key, val) {
		classify(val, &v);
		rc = tally_codec__field(st, sc, key, (uint32_t)strlen(key), &v);
		if (rc == TALLY_CODEC__DESCEND)
			rc = walk(st, val, strcmp(key, "data") == 0 ?
						   TALLY_CODEC__DATA :
						   TALLY_CODEC__COMPONENTS);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int from_json(tally_codec__st *st, const json_t *obj)
{
	int rc;

	if (!json_is_object(obj))
		return tally_codec__fail(st->err, "not_a_map", "",
					 "line is not a JSON object");
	rc = walk(st, obj, TALLY_CODEC__TOP);
	if (rc < 0)
		return rc;
	return tally_codec__finish(st);
}

int tally_codec_usage_from_json(tally_usage_event *out, const json_t *obj,
				tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__USAGE, out, err);
	return from_json(&st, obj);
}

int tally_codec_rated_from_json(tally_rated_event *out, const json_t *obj,
				tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__RATED, out, err);
	return from_json(&st, obj);
}

int tally_codec_command_from_json(tally_command *out, const json_t *obj,
				  tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__COMMAND, out, err);
	return from_json(&st, obj);
}

int tally_codec_json_line(tally_codec_msg *out, char schema, const char *line,
			  size_t len, json_t **obj, tally_codec_error *err)
{
	json_error_t jerr;
	int rc;

	*obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (*obj == NULL)
		return tally_codec__fail(err, "bad_json", "", "%s", jerr.text);
	if (schema == 'c')
		rc = tally_codec_command_from_json(&out->command, *obj, err);
	else if (schema == 'r')
		rc = tally_codec_rated_from_json(&out->rated, *obj, err);
	else
		rc = tally_codec_usage_from_json(&out->usage, *obj, err);
	if (rc != 0) {
		json_decref(*obj);
		*obj = NULL;
	}
	return rc;
}

/* ------------------------------------------------------------------ */

static void set_str(json_t *o, const char *key, tally_str s)
{
	json_object_set_new(o, key, json_stringn(s.ptr, s.len));
}

static void set_int(json_t *o, const char *key, int64_t v)
{
	json_object_set_new(o, key, json_integer((json_int_t)v));
}

static void set_uuid(json_t *o, const char *key, const uint8_t u[16])
{
	char t[37];

	tally_uuid_fmt(t, u);
	json_object_set_new(o, key, json_string(t));
}

static void set_money(json_t *o, const char *key, int64_t pico)
{
	char buf[48];

	tally_money_fmt(buf, sizeof(buf), pico);
	json_object_set_new(o, key, json_string(buf));
}

json_t *tally_codec_usage_to_json(const tally_usage_event *ev)
{
	json_t *o = json_object(), *d = json_object();
	const char *meter = tally_meter_name(ev->meter);

	set_str(o, "id", ev->id);
	set_str(o, "source", ev->source);
	json_object_set_new(o, "type", json_string(meter ? meter : ""));
	set_uuid(o, "tenant_id", ev->tenant_id);
	set_int(o, "time", ev->time_ms);
	if (ev->subject.len > 0)
		set_str(o, "subject", ev->subject);
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		set_str(d, "provider", ev->provider);
		set_str(d, "model", ev->model);
		set_int(d, "input_tokens", ev->input_tokens);
		set_int(d, "output_tokens", ev->output_tokens);
		set_int(d, "cache_read_tokens", ev->cache_read_tokens);
		set_int(d, "cache_write_tokens", ev->cache_write_tokens);
		if (ev->has_reasoning)
			set_int(d, "reasoning_tokens", ev->reasoning_tokens);
		if (ev->workflow_id.len > 0)
			set_str(d, "workflow_id", ev->workflow_id);
		break;
	case TALLY_METER_WORKFLOW:
		set_str(d, "workflow_id", ev->workflow_id);
		set_int(d, "steps", ev->steps);
		set_int(d, "complexity", ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		set_int(d, "bytes", ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		set_int(d, "count", ev->count);
		break;
	default:
		break;
	}
	json_object_set_new(o, "data", d);
	return o;
}

json_t *tally_codec_rated_to_json(const tally_rated_event *re)
{
	static const char *const comp[TALLY_COMP_N] = {
		"input", "cache_read", "cache_write", "output", "reasoning",
		"requests", "units",
	};
	json_t *o = tally_codec_usage_to_json(&re->ev), *c = json_object();
	int i;

	set_money(o, "cost", re->cost);
	for (i = 0; i < TALLY_COMP_N; i++)
		if (re->components[i] != 0)
			set_money(c, comp[i], re->components[i]);
	json_object_set_new(o, "components", c);
	json_object_set_new(o, "currency", json_string(re->currency));
	set_int(o, "price_id", re->price_id);
	json_object_set_new(o, "unpriced", json_boolean(re->unpriced));
	set_int(o, "rated_at", re->rated_at_ms);
	return o;
}

json_t *tally_codec_command_to_json(const tally_command *cmd)
{
	json_t *o = json_object();
	const char *t = tally_command_type_name(cmd->type);

	set_str(o, "id", cmd->id);
	json_object_set_new(o, "type", json_string(t ? t : ""));
	set_uuid(o, "tenant_id", cmd->tenant_id);
	set_int(o, "time", cmd->time_ms);
	if (cmd->plan.len > 0)
		set_str(o, "plan", cmd->plan);
	if (cmd->trial_days >= 0)
		set_int(o, "trial_days", cmd->trial_days);
	if (cmd->payment_method_id.len > 0)
		set_str(o, "payment_method_id", cmd->payment_method_id);
	if (cmd->proration != TALLY_PRORATION_DEFAULT)
		json_object_set_new(o, "proration", json_string(
			tally_proration_name(cmd->proration)));
	if (cmd->has_at_period_end)
		json_object_set_new(o, "at_period_end",
				    json_boolean(cmd->at_period_end));
	if (cmd->email.len > 0)
		set_str(o, "email", cmd->email);
	if (cmd->name.len > 0)
		set_str(o, "name", cmd->name);
	return o;
}
