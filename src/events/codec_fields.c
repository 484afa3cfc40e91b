/*
 * codec_fields.c - the validation core shared by the msgpack decoder
 * (codec_msgpack.c) and the JSON reader (codec_json.c): which keys each
 * message kind knows, the value each must hold, required fields and
 * cross-field rules. Backends hand it one key/value at a time
 * (tally_codec__field) and then call tally_codec__finish.
 */
#include "codec_int.h"

#include <stdio.h>
#include <string.h>

#include "tally/money.h"

#define FAIL TALLY_CODEC__FAIL

/* ------------------------------------------------------------------ */
/* names                                                               */

static const char *const cmd_names[] = {
	NULL, "create_customer", "create_subscription", "change_plan",
	"cancel_subscription", "sync_tenant", "create_tenant",
	"update_tenant", "suspend_tenant", "resume_tenant",
};

static const char *const proration_names[] = {
	NULL, "create_prorations", "none", "always_invoice",
};

static const char *const plan_names[] = {
	"starter", "professional", "enterprise", "white_label_starter",
	"white_label_enterprise",
};

/* Each list of names also gives the names' lengths (NAME_LEN), so that a
 * key is compared only with the names of its length. */
#define NAME_STR(s) s,
#define NAME_LEN(s) sizeof(s) - 1,

#define COMP_NAMES(X) X("input") X("cache_read") X("cache_write") \
	X("output") X("reasoning") X("requests") X("units")

const char *const tally_codec__comp_names[TALLY_COMP_N] = {
	COMP_NAMES(NAME_STR)
};
static const uint8_t comp_lens[TALLY_COMP_N] = { COMP_NAMES(NAME_LEN) };
_Static_assert(sizeof((uint8_t[]){ COMP_NAMES(NAME_LEN) }) == TALLY_COMP_N,
	       "a name for every component");

const char *tally_command_type_name(tally_command_type t)
{
	if ((int)t < 1 || (int)t > TALLY_CMD_TYPE_MAX)
		return NULL;
	return cmd_names[t];
}

const char *tally_proration_name(tally_proration p)
{
	if ((int)p < 1 || (int)p > 3)
		return NULL;
	return proration_names[p];
}


/* top-level keys: bit numbers in st->seen */
enum {
	K_ID, K_SOURCE, K_TYPE, K_TENANT, K_TIME, K_SUBJECT, K_DATA,
	K_COST, K_COMPONENTS, K_CURRENCY, K_PRICE_ID, K_UNPRICED, K_RATED_AT,
	K_PLAN, K_TRIAL_DAYS, K_PM, K_PRORATION, K_AT_PERIOD_END, K_EMAIL,
	K_NAME, K_SLUG, K_DOMAIN, K_BUDGET, K_N
};

#define KEY_NAMES(X) X("id") X("source") X("type") X("tenant_id") \
	X("time") X("subject") X("data") X("cost") X("components") \
	X("currency") X("price_id") X("unpriced") X("rated_at") X("plan") \
	X("trial_days") X("payment_method_id") X("proration") \
	X("at_period_end") X("email") X("name") X("slug") X("domain") \
	X("budget")

static const char *const key_names[K_N] = { KEY_NAMES(NAME_STR) };
static const uint8_t key_lens[K_N] = { KEY_NAMES(NAME_LEN) };
_Static_assert(sizeof((uint8_t[]){ KEY_NAMES(NAME_LEN) }) == K_N,
	       "a name for every key");

#define DATA_NAMES(X) X("provider") X("model") X("workflow_id") \
	X("input_tokens") X("output_tokens") X("cache_read_tokens") \
	X("cache_write_tokens") X("reasoning_tokens") X("steps") \
	X("complexity") X("bytes") X("count")

static const char *const data_names[DF_N] = { DATA_NAMES(NAME_STR) };
static const uint8_t data_lens[DF_N] = { DATA_NAMES(NAME_LEN) };
_Static_assert(sizeof((uint8_t[]){ DATA_NAMES(NAME_LEN) }) == DF_N,
	       "a name for every data field");

static const char *const data_fields[DF_N] = {
	"data.provider", "data.model", "data.workflow_id",
	"data.input_tokens", "data.output_tokens", "data.cache_read_tokens",
	"data.cache_write_tokens", "data.reasoning_tokens", "data.steps",
	"data.complexity", "data.bytes", "data.count",
};

/* Which keys each message kind knows; others are ignored. */
static bool key_applies(tally_codec__what w, int k)
{
	switch (k) {
	case K_ID: case K_TYPE: case K_TENANT: case K_TIME:
		return true;
	case K_SOURCE: case K_SUBJECT: case K_DATA:
		return w != TALLY_CODEC__COMMAND;
	case K_COST: case K_COMPONENTS: case K_CURRENCY: case K_PRICE_ID:
	case K_UNPRICED: case K_RATED_AT:
		return w == TALLY_CODEC__RATED;
	default:
		return w == TALLY_CODEC__COMMAND;
	}
}

static int lookup(const char *const *names, const uint8_t *lens, int n,
		  const char *key, uint32_t klen)
{
	int i;

	if (klen == 0)
		return -1; /* no name is empty */
	/* length and first byte inline: most names are ruled out without a
	 * call */
	for (i = 0; i < n; i++)
		if (lens[i] == klen && names[i][0] == key[0] &&
		    memcmp(names[i], key, klen) == 0)
			return i;
	return -1;
}

void tally_codec__begin(tally_codec__st *st, tally_codec__what what,
			void *out, tally_codec_error *err)
{
	memset(st, 0, sizeof(*st));
	st->what = what;
	st->err = err;
	switch (what) {
	case TALLY_CODEC__USAGE:
		st->ev = out;
		memset(st->ev, 0, sizeof(*st->ev));
		break;
	case TALLY_CODEC__RATED:
		st->re = out;
		memset(st->re, 0, sizeof(*st->re));
		st->ev = &st->re->ev;
		break;
	case TALLY_CODEC__COMMAND:
		st->cmd = out;
		memset(st->cmd, 0, sizeof(*st->cmd));
		st->cmd->trial_days = -1;
		break;
	}
	if (err != NULL) {
		err->reason = NULL;
		err->field[0] = '\0';
		err->detail[0] = '\0';
	}
}

static int top_usage(tally_codec__st *st, int k, const tally_codec__val *v)
{
	tally_usage_event *ev = st->ev;
	tally_rated_event *re = st->re;
	int64_t x;
	int rc, c;

	switch (k) {
	case K_ID:
		return tally_codec__get_str(st, "id", v, TALLY_ID_MAX, &ev->id);
	case K_SOURCE:
		return tally_codec__get_str(st, "source", v, TALLY_SOURCE_MAX,
					    &ev->source);
	case K_SUBJECT:
		return tally_codec__get_str(st, "subject", v, TALLY_SOURCE_MAX,
			       &ev->subject);
	case K_TENANT:
		return tally_codec__get_uuid(st, "tenant_id", v, ev->tenant_id);
	case K_TIME:
		return tally_codec__get_time(st, "time", v, &ev->time_ms);
	case K_TYPE:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "type",
				    "type must be a string");
		ev->meter = tally_meter_parse(v->s, v->len);
		if (ev->meter == TALLY_METER_NONE)
			return FAIL(st, "unknown_meter", "type",
				    "type is not a known meter");
		return 0;
	case K_DATA:
		if (v->kind != TALLY_CV_MAP)
			return FAIL(st, "wrong_type", "data",
				    "data must be a map");
		return TALLY_CODEC__DESCEND;
	case K_COMPONENTS:
		if (v->kind != TALLY_CV_MAP)
			return FAIL(st, "wrong_type", "components",
				    "components must be a map");
		return TALLY_CODEC__DESCEND;
	case K_COST:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "cost",
				    "cost must be a decimal string");
		if (tally_money_parse(&re->cost, v->s, v->len) != 0)
			return FAIL(st, "bad_decimal", "cost",
				    "cost is not an exact decimal");
		return 0;
	case K_CURRENCY:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "currency",
				    "currency must be a string");
		if (v->len != 3)
			return FAIL(st, "bad_value", "currency",
				    "currency must be an ISO 4217 code");
		for (c = 0; c < 3; c++)
			if (v->s[c] < 'A' || v->s[c] > 'Z')
				return FAIL(st, "bad_value", "currency",
					    "currency must be an ISO 4217 "
					    "code");
		memcpy(re->currency, v->s, 3);
		re->currency[3] = '\0';
		return 0;
	case K_PRICE_ID:
		return tally_codec__get_int(st, "price_id", v, 0, INT64_MAX,
					    &re->price_id);
	case K_UNPRICED:
		return tally_codec__get_bool(st, "unpriced", v, &re->unpriced);
	case K_RATED_AT:
		rc = tally_codec__get_time(st, "rated_at", v, &x);
		if (rc == 0)
			re->rated_at_ms = x;
		return rc;
	default:
		return 0;
	}
}

static int plan_ok(const char *s, uint32_t len)
{
	size_t i;

	for (i = 0; i < sizeof(plan_names) / sizeof(plan_names[0]); i++)
		if (tally_codec__str_is(s, len, plan_names[i]))
			return 1;
	return 0;
}

static int top_command(tally_codec__st *st, int k, const tally_codec__val *v)
{
	tally_command *cmd = st->cmd;
	int rc, i;

	switch (k) {
	case K_ID:
		return tally_codec__get_str(st, "id", v, TALLY_ID_MAX,
					    &cmd->id);
	case K_TENANT:
		return tally_codec__get_uuid(st, "tenant_id", v,
					     cmd->tenant_id);
	case K_TIME:
		return tally_codec__get_time(st, "time", v, &cmd->time_ms);
	case K_TYPE:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "type",
				    "type must be a string");
		for (i = 1; i <= TALLY_CMD_TYPE_MAX; i++)
			if (tally_codec__str_is(v->s, v->len, cmd_names[i]))
				cmd->type = (tally_command_type)i;
		if (cmd->type == TALLY_CMD_NONE)
			return FAIL(st, "unknown_type", "type",
				    "type is not a known command");
		return 0;
	case K_PLAN:
		rc = tally_codec__get_str(st, "plan", v, TALLY_PLAN_MAX,
					  &cmd->plan);
		if (rc == 0 && !plan_ok(v->s, v->len))
			return FAIL(st, "unknown_plan", "plan",
				    "plan is not in the plan matrix");
		return rc;
	case K_TRIAL_DAYS:
		return tally_codec__get_int(st, "trial_days", v, 0, 730,
					    &cmd->trial_days);
	case K_PM:
		return tally_codec__get_str(st, "payment_method_id", v,
					    TALLY_SOURCE_MAX,
					    &cmd->payment_method_id);
	case K_PRORATION:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "proration",
				    "proration must be a string");
		for (i = 1; i <= 3; i++)
			if (tally_codec__str_is(v->s, v->len,
						proration_names[i]))
				cmd->proration = (tally_proration)i;
		if (cmd->proration == TALLY_PRORATION_DEFAULT)
			return FAIL(st, "bad_value", "proration",
				    "proration must be create_prorations, "
				    "none or always_invoice");
		return 0;
	case K_AT_PERIOD_END:
		cmd->has_at_period_end = true;
		return tally_codec__get_bool(st, "at_period_end", v,
					     &cmd->at_period_end);
	case K_EMAIL:
		return tally_codec__get_str(st, "email", v, TALLY_SOURCE_MAX,
					    &cmd->email);
	case K_NAME:
		return tally_codec__get_str(st, "name", v, TALLY_SOURCE_MAX,
					    &cmd->name);
	case K_SLUG:
		return tally_codec__get_str(st, "slug", v, TALLY_SOURCE_MAX,
					    &cmd->slug);
	case K_DOMAIN:
		return tally_codec__get_str(st, "domain", v, TALLY_SOURCE_MAX,
					    &cmd->domain);
	case K_BUDGET:
		/* a decimal string: exact, checked by the tenant rules */
		return tally_codec__get_str(st, "budget", v, 64,
					    &cmd->budget);
	default:
		return 0;
	}
}

/* a rejected components.<name>: the field's name is formatted only here,
 * not for every component of every event */
static int comp_fail(tally_codec__st *st, const char *reason, int k,
		     const char *what)
{
	char field[48];

	snprintf(field, sizeof(field), "components.%s",
		 tally_codec__comp_names[k]);
	return FAIL(st, reason, field, "%s %s", field, what);
}

int tally_codec__field(tally_codec__st *st, tally_codec__scope sc,
		       const char *key, uint32_t klen,
		       const tally_codec__val *v)
{
	int k;

	if (sc == TALLY_CODEC__DATA) {
		k = lookup(data_names, data_lens, DF_N, key, klen);
		if (k < 0 || v->kind == TALLY_CV_NIL)
			return 0;
		if (st->dseen & (1u << k))
			return FAIL(st, "duplicate_key", data_fields[k],
				    "%s appears twice", data_fields[k]);
		st->dseen |= 1u << k;
		st->data[k] =
		    *v; /* validated in finish, once the meter is known */
		return 0;
	}
	if (sc == TALLY_CODEC__COMPONENTS) {
		k = lookup(tally_codec__comp_names, comp_lens, TALLY_COMP_N, key,
			   klen);
		if (k < 0)
			return 0;
		if (st->cseen & (1u << k))
			return comp_fail(st, "duplicate_key", k, "appears twice");
		st->cseen |= 1u << k;
		if (v->kind != TALLY_CV_STR)
			return comp_fail(st, "wrong_type", k,
					 "must be a decimal string");
		if (tally_money_parse(&st->re->components[k], v->s, v->len))
			return comp_fail(st, "bad_decimal", k,
					 "is not an exact decimal");
		return 0;
	}
	k = lookup(key_names, key_lens, K_N, key, klen);
	if (k < 0 || !key_applies(st->what, k) || v->kind == TALLY_CV_NIL)
		return 0; /* unknown keys and nulls are ignored */
	if (st->seen & (UINT64_C(1) << k))
		return FAIL(st, "duplicate_key", key_names[k],
			    "%s appears twice", key_names[k]);
	st->seen |= UINT64_C(1) << k;
	if (st->what == TALLY_CODEC__COMMAND)
		return top_command(st, k, v);
	return top_usage(st, k, v);
}

static int need(tally_codec__st *st, int k)
{
	if (st->seen & (UINT64_C(1) << k))
		return 0;
	return FAIL(st, "missing_field", key_names[k], "%s is required",
		    key_names[k]);
}

static int need_data(tally_codec__st *st, int f)
{
	if (st->dseen & (1u << f))
		return 0;
	return FAIL(st, "missing_field", data_fields[f], "%s is required",
		    data_fields[f]);
}

static int data_str(tally_codec__st *st, int f, bool req, uint32_t max,
		    tally_str *out)
{
	int rc = 0;

	if (req)
		rc = need_data(st, f);
	if (rc == 0 && (st->dseen & (1u << f)))
		rc = tally_codec__get_str(st, data_fields[f], &st->data[f], max,
					  out);
	return rc;
}

static int data_qty(tally_codec__st *st, int f, bool req, int64_t *out)
{
	int rc = 0;

	if (req)
		rc = need_data(st, f);
	if (rc == 0 && (st->dseen & (1u << f)))
		rc =
		    tally_codec__get_qty(st, data_fields[f], &st->data[f], out);
	return rc;
}

static int finish_usage(tally_codec__st *st)
{
	tally_usage_event *ev = st->ev;
	int rc, k;
	static const int req[] = { K_ID, K_SOURCE, K_TYPE, K_TENANT, K_TIME,
				   K_DATA };

	for (k = 0; k < (int)(sizeof(req) / sizeof(req[0])); k++) {
		rc = need(st, req[k]);
		if (rc < 0)
			return rc;
	}
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		rc = data_str(st, DF_PROVIDER, true, 64, &ev->provider);
		if (rc == 0)
			rc = data_str(st, DF_MODEL, true, TALLY_ID_MAX,
				      &ev->model);
		if (rc == 0)
			rc = data_qty(st, DF_INPUT, true, &ev->input_tokens);
		if (rc == 0)
			rc = data_qty(st, DF_OUTPUT, true, &ev->output_tokens);
		if (rc == 0)
			rc = data_qty(st, DF_CACHE_READ, false,
				      &ev->cache_read_tokens);
		if (rc == 0)
			rc = data_qty(st, DF_CACHE_WRITE, false,
				      &ev->cache_write_tokens);
		if (rc == 0)
			rc = data_qty(st, DF_REASONING, false,
				      &ev->reasoning_tokens);
		ev->has_reasoning = (st->dseen & (1u << DF_REASONING)) != 0;
		if (rc == 0)
			rc = data_str(st, DF_WORKFLOW_ID, false, TALLY_ID_MAX,
				      &ev->workflow_id);
		if (rc == 0 && ev->cache_read_tokens + ev->cache_write_tokens >
				       ev->input_tokens)
			rc = FAIL(st, "cache_exceeds_input",
				  "data.cache_read_tokens",
				  "cache_read_tokens + cache_write_tokens "
				  "exceed input_tokens");
		break;
	case TALLY_METER_WORKFLOW:
		rc = data_str(st, DF_WORKFLOW_ID, true, TALLY_ID_MAX,
			      &ev->workflow_id);
		if (rc == 0)
			rc = data_qty(st, DF_COMPLEXITY, true,
				      &ev->complexity);
		if (rc == 0)
			rc = data_qty(st, DF_STEPS, false, &ev->steps);
		break;
	case TALLY_METER_STORAGE:
		rc = data_qty(st, DF_BYTES, true, &ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		rc = data_qty(st, DF_COUNT, true, &ev->count);
		break;
	default:
		rc = FAIL(st, "unknown_meter", "type", "unknown meter");
		break;
	}
	if (rc < 0 || st->what != TALLY_CODEC__RATED)
		return rc;
	rc = need(st, K_COST);
	if (rc == 0)
		rc = need(st, K_CURRENCY);
	if (rc == 0)
		rc = need(st, K_RATED_AT);
	return rc;
}

static int finish_command(tally_codec__st *st)
{
	tally_command *cmd = st->cmd;
	int rc;

	rc = need(st, K_ID);
	if (rc == 0)
		rc = need(st, K_TYPE);
	if (rc == 0)
		rc = need(st, K_TENANT);
	if (rc == 0)
		rc = need(st, K_TIME);
	if (rc == 0 && (cmd->type == TALLY_CMD_CREATE_SUBSCRIPTION ||
			cmd->type == TALLY_CMD_CHANGE_PLAN ||
			cmd->type == TALLY_CMD_CREATE_TENANT))
		rc = need(st, K_PLAN);
	return rc;
}

int tally_codec__finish(tally_codec__st *st)
{
	if (st->what == TALLY_CODEC__COMMAND)
		return finish_command(st);
	return finish_usage(st);
}

