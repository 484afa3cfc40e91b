/*
 * codec.c - strict msgpack codec for usage events, rated usage events and
 * commands (the schemas/ directory).
 *
 * Key design decision: decoding does not go through msgpack-c's object
 * tree. A small cursor reads the buffer in place, so a decode allocates
 * nothing, every string in the result is a view into the caller's buffer,
 * nesting is bounded while skipping unknown values and truncation/trailing
 * bytes are detected exactly. Validation itself lives in one core
 * (tally_codec__field/finish) shared with the JSON reader (codec_json.c).
 * Encoding uses msgpack-c's packer into the caller's sbuffer.
 */
#include "codec_int.h"
#include "base/calendar.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "tally/money.h"

/* ------------------------------------------------------------------ */
/* errors                                                              */

int tally_codec__fail(tally_codec_error *err, const char *reason,
		      const char *field, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL) {
		err->reason = reason;
		snprintf(err->field, sizeof(err->field), "%s", field);
		va_start(ap, fmt);
		vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
		va_end(ap);
	}
	return TALLY_EINVALID;
}

#define FAIL(st, reason, field, ...) \
	tally_codec__fail((st)->err, (reason), (field), __VA_ARGS__)

/* ------------------------------------------------------------------ */
/* names                                                               */

static const char *const cmd_names[] = {
	NULL, "create_customer", "create_subscription", "change_plan",
	"cancel_subscription", "sync_tenant",
};

static const char *const proration_names[] = {
	NULL, "create_prorations", "none", "always_invoice",
};

static const char *const plan_names[] = {
	"starter", "professional", "enterprise", "white_label_starter",
	"white_label_enterprise",
};

static const char *const comp_names[TALLY_COMP_N] = {
	"input", "cache_read", "cache_write", "output", "reasoning",
	"requests", "units",
};

const char *tally_command_type_name(tally_command_type t)
{
	if ((int)t < 1 || (int)t > 5)
		return NULL;
	return cmd_names[t];
}

const char *tally_proration_name(tally_proration p)
{
	if ((int)p < 1 || (int)p > 3)
		return NULL;
	return proration_names[p];
}

static bool str_is(const char *s, uint32_t len, const char *lit)
{
	size_t n;

	/* first byte first: most key lookups end here without a strlen */
	if (len == 0 || s[0] != lit[0])
		return len == 0 && lit[0] == '\0';
	n = strlen(lit);

	return n == len && memcmp(s, lit, n) == 0;
}

/* ------------------------------------------------------------------ */
/* value checks                                                        */

/* UTF-8 without overlongs/surrogates, and no control characters: these
 * strings end up in PostgreSQL text columns and log lines. */
static bool utf8_ok(const unsigned char *s, uint32_t len)
{
	uint32_t i = 0;

	while (i < len) {
		unsigned c = s[i];
		uint32_t cp, n, k;

		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

static int get_str(tally_codec__st *st, const char *field,
		   const tally_codec__val *v, uint32_t max, tally_str *out)
{
	if (v->kind != TALLY_CV_STR)
		return FAIL(st, "wrong_type", field, "%s must be a string",
			    field);
	if (v->len == 0)
		return FAIL(st, "empty", field, "%s must not be empty", field);
	if (v->len > max)
		return FAIL(st, "too_long", field,
			    "%s is %u bytes, at most %u allowed", field,
			    v->len, max);
	if (!utf8_ok((const unsigned char *)v->s, v->len))
		return FAIL(st, "bad_utf8", field,
			    "%s is not valid UTF-8 text", field);
	out->ptr = v->s;
	out->len = v->len;
	return 0;
}

static int get_int(tally_codec__st *st, const char *field,
		   const tally_codec__val *v, int64_t min, int64_t max,
		   int64_t *out)
{
	if (v->kind == TALLY_CV_BIGUINT)
		return FAIL(st, "out_of_range", field,
			    "%s exceeds %lld", field, (long long)max);
	if (v->kind != TALLY_CV_INT)
		return FAIL(st, "wrong_type", field, "%s must be an integer",
			    field);
	if (v->i < min || v->i > max)
		return FAIL(st, "out_of_range", field,
			    "%s = %lld outside [%lld, %lld]", field,
			    (long long)v->i, (long long)min, (long long)max);
	*out = v->i;
	return 0;
}

static int get_qty(tally_codec__st *st, const char *field,
		   const tally_codec__val *v, int64_t *out)
{
	return get_int(st, field, v, 0, TALLY_MAX_QUANTITY, out);
}

static int get_time(tally_codec__st *st, const char *field,
		    const tally_codec__val *v, int64_t *out)
{
	if (v->kind == TALLY_CV_STR) {
		if (tally_codec__parse_rfc3339(out, v->s, v->len) != 0)
			return FAIL(st, "bad_time", field,
				    "%s is not RFC 3339 with an offset "
				    "(1970..9999)", field);
		return 0;
	}
	if (v->kind == TALLY_CV_INT || v->kind == TALLY_CV_BIGUINT)
		return get_int(st, field, v, 0, TALLY_CODEC_TIME_MAX, out);
	return FAIL(st, "wrong_type", field,
		    "%s must be unix ms or an RFC 3339 string", field);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* 8-4-4-4-12 hex digits, either case (libuuid's uuid_parse is the same
 * grammar but several times slower on the hot path). */
static int uuid_hex(uint8_t out[16], const char *s, uint32_t len)
{
	uint32_t i, k = 0;

	if (len != 36)
		return -1;
	for (i = 0; i < 36;) {
		int hi, lo;

		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return -1;
			i++;
			continue;
		}
		hi = hexval(s[i]);
		lo = hexval(s[i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[k++] = (uint8_t)(hi << 4 | lo);
		i += 2;
	}
	return 0;
}

static int get_uuid(tally_codec__st *st, const char *field,
		    const tally_codec__val *v, uint8_t out[16])
{
	if (v->kind != TALLY_CV_STR)
		return FAIL(st, "wrong_type", field,
			    "%s must be a UUID string", field);
	if (uuid_hex(out, v->s, v->len) != 0)
		return FAIL(st, "bad_uuid", field,
			    "%s is not a 36-character UUID", field);
	return 0;
}

static int get_bool(tally_codec__st *st, const char *field,
		    const tally_codec__val *v, bool *out)
{
	if (v->kind != TALLY_CV_BOOL)
		return FAIL(st, "wrong_type", field, "%s must be a boolean",
			    field);
	*out = v->b;
	return 0;
}

/* ------------------------------------------------------------------ */
/* RFC 3339                                                            */

static int digits(const char *s, int n)
{
	int x = 0, i;

	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		x = x * 10 + (s[i] - '0');
	}
	return x;
}

int tally_codec__parse_rfc3339(int64_t *out, const char *s, uint32_t len)
{
	int y, mo, d, h, mi, sec, ms = 0, dim, oh, om, sign;
	uint32_t i;
	int64_t t;

	/* YYYY-MM-DDTHH:MM:SS is 19 bytes, plus at least "Z" */
	if (len < 20 || s[4] != '-' || s[7] != '-' || s[13] != ':' ||
	    s[16] != ':' || (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
		return -1;
	y = digits(s, 4);
	mo = digits(s + 5, 2);
	d = digits(s + 8, 2);
	h = digits(s + 11, 2);
	mi = digits(s + 14, 2);
	sec = digits(s + 17, 2);
	if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 ||
	    mi < 0 || mi > 59 || sec < 0 || sec > 59)
		return -1;
	dim = tally_days_in_month(y, mo);
	if (d > dim)
		return -1;
	i = 19;
	if (s[i] == '.') {
		int nd = 0;

		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9') {
			/* fraction truncated (not rounded) to ms */
			if (nd < 3)
				ms = ms * 10 + (s[i] - '0');
			nd++;
			i++;
		}
		if (nd == 0 || nd > 9)
			return -1;
		while (nd < 3) {
			ms *= 10;
			nd++;
		}
	}
	if (i >= len)
		return -1; /* no offset: local time is ambiguous */
	if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
		oh = om = 0;
		sign = 1;
	} else if ((s[i] == '+' || s[i] == '-') && i + 6 == len &&
		   s[i + 3] == ':') {
		sign = s[i] == '-' ? -1 : 1;
		oh = digits(s + i + 1, 2);
		om = digits(s + i + 4, 2);
		if (oh < 0 || oh > 23 || om < 0 || om > 59)
			return -1;
	} else {
		return -1;
	}
	t = tally_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	t -= sign * (oh * 3600 + om * 60);
	t = t * 1000 + ms;
	if (t < 0 || t > TALLY_CODEC_TIME_MAX)
		return -1;
	*out = t;
	return 0;
}

/* ------------------------------------------------------------------ */
/* validation core                                                     */

/* top-level keys: bit numbers in st->seen */
enum {
	K_ID, K_SOURCE, K_TYPE, K_TENANT, K_TIME, K_SUBJECT, K_DATA,
	K_COST, K_COMPONENTS, K_CURRENCY, K_PRICE_ID, K_UNPRICED, K_RATED_AT,
	K_PLAN, K_TRIAL_DAYS, K_PM, K_PRORATION, K_AT_PERIOD_END, K_EMAIL,
	K_NAME, K_N
};

static const char *const key_names[K_N] = {
	"id", "source", "type", "tenant_id", "time", "subject", "data",
	"cost", "components", "currency", "price_id", "unpriced", "rated_at",
	"plan", "trial_days", "payment_method_id", "proration",
	"at_period_end", "email", "name",
};

static const char *const data_names[DF_N] = {
	"provider", "model", "workflow_id", "input_tokens", "output_tokens",
	"cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
	"steps", "complexity", "bytes", "count",
};

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

static int lookup(const char *const *names, int n, const char *key,
		  uint32_t klen)
{
	int i;

	for (i = 0; i < n; i++)
		if (str_is(key, klen, names[i]))
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
		return get_str(st, "id", v, TALLY_ID_MAX, &ev->id);
	case K_SOURCE:
		return get_str(st, "source", v, TALLY_SOURCE_MAX, &ev->source);
	case K_SUBJECT:
		return get_str(st, "subject", v, TALLY_SOURCE_MAX,
			       &ev->subject);
	case K_TENANT:
		return get_uuid(st, "tenant_id", v, ev->tenant_id);
	case K_TIME:
		return get_time(st, "time", v, &ev->time_ms);
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
		return get_int(st, "price_id", v, 0, INT64_MAX, &re->price_id);
	case K_UNPRICED:
		return get_bool(st, "unpriced", v, &re->unpriced);
	case K_RATED_AT:
		rc = get_time(st, "rated_at", v, &x);
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
		if (str_is(s, len, plan_names[i]))
			return 1;
	return 0;
}

static int top_command(tally_codec__st *st, int k, const tally_codec__val *v)
{
	tally_command *cmd = st->cmd;
	int rc, i;

	switch (k) {
	case K_ID:
		return get_str(st, "id", v, TALLY_ID_MAX, &cmd->id);
	case K_TENANT:
		return get_uuid(st, "tenant_id", v, cmd->tenant_id);
	case K_TIME:
		return get_time(st, "time", v, &cmd->time_ms);
	case K_TYPE:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "type",
				    "type must be a string");
		for (i = 1; i <= 5; i++)
			if (str_is(v->s, v->len, cmd_names[i]))
				cmd->type = (tally_command_type)i;
		if (cmd->type == TALLY_CMD_NONE)
			return FAIL(st, "unknown_type", "type",
				    "type is not a known command");
		return 0;
	case K_PLAN:
		rc = get_str(st, "plan", v, TALLY_PLAN_MAX, &cmd->plan);
		if (rc == 0 && !plan_ok(v->s, v->len))
			return FAIL(st, "unknown_plan", "plan",
				    "plan is not in the plan matrix");
		return rc;
	case K_TRIAL_DAYS:
		return get_int(st, "trial_days", v, 0, 730, &cmd->trial_days);
	case K_PM:
		return get_str(st, "payment_method_id", v, TALLY_SOURCE_MAX,
			       &cmd->payment_method_id);
	case K_PRORATION:
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", "proration",
				    "proration must be a string");
		for (i = 1; i <= 3; i++)
			if (str_is(v->s, v->len, proration_names[i]))
				cmd->proration = (tally_proration)i;
		if (cmd->proration == TALLY_PRORATION_DEFAULT)
			return FAIL(st, "bad_value", "proration",
				    "proration must be create_prorations, "
				    "none or always_invoice");
		return 0;
	case K_AT_PERIOD_END:
		cmd->has_at_period_end = true;
		return get_bool(st, "at_period_end", v, &cmd->at_period_end);
	case K_EMAIL:
		return get_str(st, "email", v, TALLY_SOURCE_MAX, &cmd->email);
	case K_NAME:
		return get_str(st, "name", v, TALLY_SOURCE_MAX, &cmd->name);
	default:
		return 0;
	}
}

int tally_codec__field(tally_codec__st *st, tally_codec__scope sc,
		       const char *key, uint32_t klen,
		       const tally_codec__val *v)
{
	int k;

	if (sc == TALLY_CODEC__DATA) {
		k = lookup(data_names, DF_N, key, klen);
		if (k < 0 || v->kind == TALLY_CV_NIL)
			return 0;
		if (st->dseen & (1u << k))
			return FAIL(st, "duplicate_key", data_fields[k],
				    "%s appears twice", data_fields[k]);
		st->dseen |= 1u << k;
		st->data[k] = *v; /* validated in finish, once the meter is known */
		return 0;
	}
	if (sc == TALLY_CODEC__COMPONENTS) {
		char field[48];

		k = lookup(comp_names, TALLY_COMP_N, key, klen);
		if (k < 0)
			return 0;
		snprintf(field, sizeof(field), "components.%s", comp_names[k]);
		if (st->cseen & (1u << k))
			return FAIL(st, "duplicate_key", field,
				    "%s appears twice", field);
		st->cseen |= 1u << k;
		if (v->kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", field,
				    "%s must be a decimal string", field);
		if (tally_money_parse(&st->re->components[k], v->s, v->len))
			return FAIL(st, "bad_decimal", field,
				    "%s is not an exact decimal", field);
		return 0;
	}
	k = lookup(key_names, K_N, key, klen);
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
		rc = get_str(st, data_fields[f], &st->data[f], max, out);
	return rc;
}

static int data_qty(tally_codec__st *st, int f, bool req, int64_t *out)
{
	int rc = 0;

	if (req)
		rc = need_data(st, f);
	if (rc == 0 && (st->dseen & (1u << f)))
		rc = get_qty(st, data_fields[f], &st->data[f], out);
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
			cmd->type == TALLY_CMD_CHANGE_PLAN))
		rc = need(st, K_PLAN);
	return rc;
}

int tally_codec__finish(tally_codec__st *st)
{
	if (st->what == TALLY_CODEC__COMMAND)
		return finish_command(st);
	return finish_usage(st);
}

/* ------------------------------------------------------------------ */
/* msgpack reader                                                      */

typedef struct cur {
	const uint8_t *p;
	const uint8_t *end;
} cur;

static uint64_t be(const uint8_t *p, int n)
{
	uint64_t x = 0;
	int i;

	for (i = 0; i < n; i++)
		x = (x << 8) | p[i];
	return x;
}

#define NEED(c, n)                                                     \
	do {                                                           \
		if ((size_t)((c)->end - (c)->p) < (size_t)(n))         \
			return tally_codec__fail(err, "truncated", "", \
						 "message is truncated"); \
	} while (0)

/* Read one value header; STR/BIN/EXT payloads are consumed, ARRAY/MAP
 * elements are not (len = count). */
static int mp_read(cur *c, tally_codec__val *v, tally_codec_error *err)
{
	uint8_t b;
	uint64_t n;
	int w;

	NEED(c, 1);
	b = *c->p++;
	memset(v, 0, sizeof(*v));
	if (b <= 0x7f) {
		v->kind = TALLY_CV_INT;
		v->i = b;
		return 0;
	}
	if (b >= 0xe0) {
		v->kind = TALLY_CV_INT;
		v->i = (int8_t)b;
		return 0;
	}
	if (b >= 0x80 && b <= 0x8f) {
		v->kind = TALLY_CV_MAP;
		n = b & 0x0f;
		goto container;
	}
	if (b >= 0x90 && b <= 0x9f) {
		v->kind = TALLY_CV_ARRAY;
		n = b & 0x0f;
		goto container;
	}
	if (b >= 0xa0 && b <= 0xbf) {
		v->kind = TALLY_CV_STR;
		n = b & 0x1f;
		goto payload;
	}
	switch (b) {
	case 0xc0:
		v->kind = TALLY_CV_NIL;
		return 0;
	case 0xc2:
	case 0xc3:
		v->kind = TALLY_CV_BOOL;
		v->b = b == 0xc3;
		return 0;
	case 0xc4: case 0xc5: case 0xc6:
		w = 1 << (b - 0xc4);
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		v->kind = TALLY_CV_BIN;
		goto payload;
	case 0xc7: case 0xc8: case 0xc9:
		w = 1 << (b - 0xc7);
		NEED(c, w + 1);
		n = be(c->p, w) + 1; /* + type byte */
		c->p += w;
		v->kind = TALLY_CV_EXT;
		goto payload;
	case 0xca:
	case 0xcb:
		w = b == 0xca ? 4 : 8;
		NEED(c, w);
		c->p += w;
		v->kind = TALLY_CV_FLOAT;
		return 0;
	case 0xcc: case 0xcd: case 0xce: case 0xcf:
		w = 1 << (b - 0xcc);
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		if (n > (uint64_t)INT64_MAX) {
			v->kind = TALLY_CV_BIGUINT;
			v->i = INT64_MAX;
		} else {
			v->kind = TALLY_CV_INT;
			v->i = (int64_t)n;
		}
		return 0;
	case 0xd0: case 0xd1: case 0xd2: case 0xd3:
		w = 1 << (b - 0xd0);
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		v->kind = TALLY_CV_INT;
		/* sign-extend the w-byte two's complement value */
		if (w < 8 && (n >> (8 * w - 1)))
			n |= ~UINT64_C(0) << (8 * w);
		memcpy(&v->i, &n, sizeof(n));
		return 0;
	case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
		n = (1u << (b - 0xd4)) + 1;
		v->kind = TALLY_CV_EXT;
		goto payload;
	case 0xd9: case 0xda: case 0xdb:
		w = 1 << (b - 0xd9);
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		v->kind = TALLY_CV_STR;
		goto payload;
	case 0xdc: case 0xdd:
		w = b == 0xdc ? 2 : 4;
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		v->kind = TALLY_CV_ARRAY;
		goto container;
	case 0xde: case 0xdf:
		w = b == 0xde ? 2 : 4;
		NEED(c, w);
		n = be(c->p, w);
		c->p += w;
		v->kind = TALLY_CV_MAP;
		goto container;
	default: /* 0xc1 */
		return tally_codec__fail(err, "bad_msgpack", "",
					 "invalid msgpack byte 0x%02x", b);
	}
payload:
	NEED(c, n);
	v->s = (const char *)c->p;
	v->len = (uint32_t)n;
	c->p += n;
	return 0;
container:
	/* every element takes at least one byte: cheap truncation check
	 * that also stops huge counts from spinning */
	NEED(c, v->kind == TALLY_CV_MAP ? 2 * n : n);
	v->len = (uint32_t)n;
	return 0;
}

static int mp_skip(cur *c, const tally_codec__val *v, int depth,
		   tally_codec_error *err)
{
	uint64_t n, i;
	tally_codec__val e;
	int rc;

	if (v->kind != TALLY_CV_ARRAY && v->kind != TALLY_CV_MAP)
		return 0;
	if (depth > TALLY_CODEC_MAX_DEPTH)
		return tally_codec__fail(err, "too_deep", "",
					 "nesting deeper than %d",
					 TALLY_CODEC_MAX_DEPTH);
	n = v->kind == TALLY_CV_MAP ? 2 * (uint64_t)v->len : v->len;
	for (i = 0; i < n; i++) {
		rc = mp_read(c, &e, err);
		if (rc == 0)
			rc = mp_skip(c, &e, depth + 1, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Walk a map (header already read into m) at the given depth. */
static int mp_map(tally_codec__st *st, cur *c, const tally_codec__val *m,
		  tally_codec__scope sc, int depth)
{
	tally_codec__val k, v;
	uint32_t i;
	int rc;

	if (depth > TALLY_CODEC_MAX_DEPTH)
		return FAIL(st, "too_deep", "", "nesting deeper than %d",
			    TALLY_CODEC_MAX_DEPTH);
	for (i = 0; i < m->len; i++) {
		rc = mp_read(c, &k, st->err);
		if (rc < 0)
			return rc;
		if (k.kind != TALLY_CV_STR)
			return FAIL(st, "wrong_type", sc == TALLY_CODEC__TOP ?
				    "" : sc == TALLY_CODEC__DATA ? "data" :
				    "components", "map keys must be strings");
		rc = mp_read(c, &v, st->err);
		if (rc < 0)
			return rc;
		rc = tally_codec__field(st, sc, k.s, k.len, &v);
		if (rc == TALLY_CODEC__DESCEND)
			rc = mp_map(st, c, &v,
				    str_is(k.s, k.len, "data") ?
					    TALLY_CODEC__DATA :
					    TALLY_CODEC__COMPONENTS,
				    depth + 1);
		else if (rc == 0)
			rc = mp_skip(c, &v, depth + 1, st->err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int mp_decode(tally_codec__st *st, const char *buf, size_t len)
{
	cur c;
	tally_codec__val m;
	int rc;

	if (len > TALLY_CODEC_MAX_BYTES)
		return FAIL(st, "too_large", "", "message is %zu bytes, at "
			    "most %d allowed", len, TALLY_CODEC_MAX_BYTES);
	c.p = (const uint8_t *)buf;
	c.end = c.p + len;
	rc = mp_read(&c, &m, st->err);
	if (rc < 0)
		return rc;
	if (m.kind != TALLY_CV_MAP)
		return FAIL(st, "not_a_map", "", "message is not a map");
	rc = mp_map(st, &c, &m, TALLY_CODEC__TOP, 1);
	if (rc < 0)
		return rc;
	if (c.p != c.end)
		return FAIL(st, "trailing_bytes", "",
			    "%zu bytes after the message",
			    (size_t)(c.end - c.p));
	return tally_codec__finish(st);
}

int tally_codec_decode_usage(tally_usage_event *out, const char *buf,
			     size_t len, tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__USAGE, out, err);
	return mp_decode(&st, buf, len);
}

int tally_codec_decode_rated(tally_rated_event *out, const char *buf,
			     size_t len, tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__RATED, out, err);
	return mp_decode(&st, buf, len);
}

int tally_codec_decode_command(tally_command *out, const char *buf,
			       size_t len, tally_codec_error *err)
{
	tally_codec__st st;

	tally_codec__begin(&st, TALLY_CODEC__COMMAND, out, err);
	return mp_decode(&st, buf, len);
}

/* ------------------------------------------------------------------ */
/* encoders                                                            */

static void pk_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pk_str(msgpack_packer *pk, const char *key, tally_str v)
{
	pk_cstr(pk, key);
	msgpack_pack_str(pk, v.len);
	msgpack_pack_str_body(pk, v.ptr, v.len);
}

static void pk_int(msgpack_packer *pk, const char *key, int64_t v)
{
	pk_cstr(pk, key);
	msgpack_pack_int64(pk, v);
}

static void pk_uuid(msgpack_packer *pk, const char *key, const uint8_t u[16])
{
	char t[37];

	tally_uuid_fmt(t, u);
	pk_cstr(pk, key);
	msgpack_pack_str(pk, 36);
	msgpack_pack_str_body(pk, t, 36);
}

static size_t usage_keys(const tally_usage_event *ev)
{
	return 6 + (ev->subject.len > 0);
}

static void pack_usage_body(msgpack_packer *pk, const tally_usage_event *ev)
{
	size_t nd = 0;

	pk_str(pk, "id", ev->id);
	pk_str(pk, "source", ev->source);
	pk_cstr(pk, "type");
	pk_cstr(pk, tally_meter_name(ev->meter) != NULL ?
			    tally_meter_name(ev->meter) : "");
	pk_uuid(pk, "tenant_id", ev->tenant_id);
	pk_int(pk, "time", ev->time_ms);
	if (ev->subject.len > 0)
		pk_str(pk, "subject", ev->subject);
	pk_cstr(pk, "data");
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		nd = 6 + ev->has_reasoning + (ev->workflow_id.len > 0);
		msgpack_pack_map(pk, nd);
		pk_str(pk, "provider", ev->provider);
		pk_str(pk, "model", ev->model);
		pk_int(pk, "input_tokens", ev->input_tokens);
		pk_int(pk, "output_tokens", ev->output_tokens);
		pk_int(pk, "cache_read_tokens", ev->cache_read_tokens);
		pk_int(pk, "cache_write_tokens", ev->cache_write_tokens);
		if (ev->has_reasoning)
			pk_int(pk, "reasoning_tokens", ev->reasoning_tokens);
		if (ev->workflow_id.len > 0)
			pk_str(pk, "workflow_id", ev->workflow_id);
		break;
	case TALLY_METER_WORKFLOW:
		msgpack_pack_map(pk, 3);
		pk_str(pk, "workflow_id", ev->workflow_id);
		pk_int(pk, "steps", ev->steps);
		pk_int(pk, "complexity", ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		msgpack_pack_map(pk, 1);
		pk_int(pk, "bytes", ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		msgpack_pack_map(pk, 1);
		pk_int(pk, "count", ev->count);
		break;
	default:
		msgpack_pack_map(pk, 0);
		break;
	}
}

void tally_codec_encode_usage(msgpack_sbuffer *sb, const tally_usage_event *ev)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, usage_keys(ev));
	pack_usage_body(&pk, ev);
}

static void pk_money(msgpack_packer *pk, int64_t pico)
{
	char buf[48];
	size_t n = tally_money_fmt(buf, sizeof(buf), pico);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, buf, n);
}

void tally_codec_encode_rated(msgpack_sbuffer *sb, const tally_rated_event *re)
{
	msgpack_packer pk;
	size_t nc = 0;
	int i;

	for (i = 0; i < TALLY_COMP_N; i++)
		nc += re->components[i] != 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, usage_keys(&re->ev) + 6);
	pack_usage_body(&pk, &re->ev);
	pk_cstr(&pk, "cost");
	pk_money(&pk, re->cost);
	pk_cstr(&pk, "components");
	msgpack_pack_map(&pk, nc);
	for (i = 0; i < TALLY_COMP_N; i++) {
		if (re->components[i] == 0)
			continue;
		pk_cstr(&pk, comp_names[i]);
		pk_money(&pk, re->components[i]);
	}
	pk_cstr(&pk, "currency");
	pk_cstr(&pk, re->currency);
	pk_int(&pk, "price_id", re->price_id);
	pk_cstr(&pk, "unpriced");
	if (re->unpriced)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	pk_int(&pk, "rated_at", re->rated_at_ms);
}

void tally_codec_encode_command(msgpack_sbuffer *sb, const tally_command *cmd)
{
	msgpack_packer pk;
	size_t n = 4;

	n += cmd->plan.len > 0;
	n += cmd->trial_days >= 0;
	n += cmd->payment_method_id.len > 0;
	n += cmd->proration != TALLY_PRORATION_DEFAULT;
	n += cmd->has_at_period_end;
	n += cmd->email.len > 0;
	n += cmd->name.len > 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, n);
	pk_str(&pk, "id", cmd->id);
	pk_cstr(&pk, "type");
	pk_cstr(&pk, tally_command_type_name(cmd->type) != NULL ?
			     tally_command_type_name(cmd->type) : "");
	pk_uuid(&pk, "tenant_id", cmd->tenant_id);
	pk_int(&pk, "time", cmd->time_ms);
	if (cmd->plan.len > 0)
		pk_str(&pk, "plan", cmd->plan);
	if (cmd->trial_days >= 0)
		pk_int(&pk, "trial_days", cmd->trial_days);
	if (cmd->payment_method_id.len > 0)
		pk_str(&pk, "payment_method_id", cmd->payment_method_id);
	if (cmd->proration != TALLY_PRORATION_DEFAULT) {
		pk_cstr(&pk, "proration");
		pk_cstr(&pk, tally_proration_name(cmd->proration));
	}
	if (cmd->has_at_period_end) {
		pk_cstr(&pk, "at_period_end");
		if (cmd->at_period_end)
			msgpack_pack_true(&pk);
		else
			msgpack_pack_false(&pk);
	}
	if (cmd->email.len > 0)
		pk_str(&pk, "email", cmd->email);
	if (cmd->name.len > 0)
		pk_str(&pk, "name", cmd->name);
}
