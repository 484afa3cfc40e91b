/*
 * pricebook.c - building the immutable price book from a genai-prices data
 * file or from PostgreSQL, and matching provider/model names.
 *
 * Key decision: no price ever passes through a double. jansson parses JSON
 * numbers as doubles, so the JSON text is first rewritten by a small scanner
 * that quotes every number outside a string ("0.075" stays the exact text
 * the file carries); prices are then parsed with tally_money_parse() into
 * pico-units per MTok. Regexes of the data (JavaScript syntax) are
 * translated to POSIX ERE for regcomp(); the only look-ahead the data uses,
 * a leading ^(?!X), becomes a separate negated expression.
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "base/calendar.h"
#include "tally/log.h"
#include "tally/money.h"
#include "tally/pricebook.h"

#include <ctype.h>
#include <inttypes.h>
#include <errno.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const tally_pb__key_names[PB_K_N] = {
	"input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok",
	"output_reasoning_mtok", "requests_kcount",
};

static atomic_uint_fast64_t pb_serial = 1;

#define GENAI_UNIT_ID_BASE INT64_C(900000000)

/* ------------------------------------------------------------------ */
/* JSON numbers -> strings                                             */

/*
 * Copy text, wrapping every number token outside strings in quotes, so that
 * jansson keeps its exact text. Tracks string and escape state only; the
 * result is parsed (and validated) by jansson afterwards.
 */
char *tally_pb__quote_numbers(const char *text, size_t len, size_t *outlen);
char *tally_pb__quote_numbers(const char *text, size_t len, size_t *outlen)
{
	char *out = tally_xmalloc(len * 3 + 1);
	size_t i = 0, n = 0;
	bool in_str = false, esc = false;

	while (i < len) {
		char c = text[i];

		if (in_str) {
			out[n++] = c;
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				in_str = false;
			i++;
		} else if (c == '"') {
			in_str = true;
			out[n++] = c;
			i++;
		} else if (c == '-' || (c >= '0' && c <= '9')) {
			out[n++] = '"';
			while (i < len &&
			       (isdigit((unsigned char)text[i]) ||
				text[i] == '-' || text[i] == '+' ||
				text[i] == '.' || text[i] == 'e' ||
				text[i] == 'E'))
				out[n++] = text[i++];
			out[n++] = '"';
		} else {
			out[n++] = c;
			i++;
		}
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

/* ------------------------------------------------------------------ */
/* match rules                                                         */

static char *lower_dup(const char *s)
{
	char *d = tally_xstrdup(s);
	char *p;

	for (p = d; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return d;
}

/* Translate a JavaScript regex (subset) to POSIX ERE. */
static int js_to_ere(char *out, size_t outlen, const char *js, size_t jl)
{
	size_t i = 0, n = 0;
	bool in_br = false;

#define PUT(str)                                                        \
	do {                                                            \
		size_t l_ = strlen(str);                                \
		if (n + l_ + 1 > outlen)                                \
			return -1;                                      \
		memcpy(out + n, str, l_);                               \
		n += l_;                                                \
	} while (0)
	while (i < jl) {
		char c = js[i];

		if (c == '\\' && i + 1 < jl) {
			char d = js[i + 1];
			char tmp[3] = { '\\', d, 0 };

			i += 2;
			if (d == 'd')
				PUT(in_br ? "0-9" : "[0-9]");
			else if (d == 'w')
				PUT(in_br ? "A-Za-z0-9_" : "[A-Za-z0-9_]");
			else if (d == 's')
				PUT(in_br ? "[:space:]" : "[[:space:]]");
			else if (d == 'D' || d == 'W' || d == 'S' || d == 'b' ||
				 d == 'B' || isdigit((unsigned char)d))
				return -1;
			else if (in_br) {
				tmp[0] = d;
				tmp[1] = 0;
				PUT(tmp);
			} else if (strchr(".[]()*+?{}|^$\\", d))
				PUT(tmp);
			else {
				tmp[0] = d;
				tmp[1] = 0;
				PUT(tmp);
			}
			continue;
		}
		if (in_br) {
			char tmp[2] = { c, 0 };
			if (c == ']')
				in_br = false;
			PUT(tmp);
			i++;
			continue;
		}
		if (c == '[') {
			in_br = true;
			PUT("[");
			i++;
			if (i < jl && js[i] == '^') {
				PUT("^");
				i++;
			}
			if (i < jl && js[i] == ']') {
				PUT("]");
				i++;
			}
			continue;
		}
		if (c == '(' && i + 1 < jl && js[i + 1] == '?') {
			if (i + 2 < jl && js[i + 2] == ':') {
				PUT("(");
				i += 3;
				continue;
			}
			return -1; /* other groups: unsupported */
		}
		{
			char tmp[2] = { c, 0 };
			PUT(tmp);
		}
		i++;
	}
	out[n] = '\0';
	return 0;
#undef PUT
}

static size_t group_end(const char *s, size_t len, size_t open)
{
	size_t i;
	int depth = 0;
	bool in_br = false;

	for (i = open; i < len; i++) {
		if (s[i] == '\\') {
			i++;
			continue;
		}
		if (in_br) {
			if (s[i] == ']')
				in_br = false;
			continue;
		}
		if (s[i] == '[')
			in_br = true;
		else if (s[i] == '(')
			depth++;
		else if (s[i] == ')' && --depth == 0)
			return i;
	}
	return 0;
}

static int compile_regex(pb_rule *r, const char *js, tally_error *err)
{
	char ere[1024], neg[1024];
	size_t len = strlen(js), rest = 0;
	const char *body = js;
	size_t blen = len;
	int rc;

	r->kind = PB_R_REGEX;
	if (len > 4 && strncmp(js, "^(?!", 4) == 0) {
		size_t end = group_end(js, len, 1);
		char tmp[1024];

		if (end == 0 || end - 4 + 2 > sizeof(tmp))
			return tally_error_set(err, TALLY_EINVALID,
					       "regex '%s': bad look-ahead", js);
		tmp[0] = '^';
		memcpy(tmp + 1, js + 4, end - 4);
		tmp[end - 3] = '\0';
		if (js_to_ere(neg, sizeof(neg), tmp, strlen(tmp)) != 0)
			goto unsupported;
		rc = regcomp(&r->re_not, neg, REG_EXTENDED | REG_NOSUB);
		if (rc != 0)
			goto unsupported;
		r->has_not = true;
		rest = end + 1;
		body = js + rest;
		blen = len - rest;
		if (blen == 0)
			return 0; /* "^(?!X)" alone: only the negation */
		/* the rest is anchored at the start, like the look-ahead */
		ere[0] = '^';
		if (js_to_ere(ere + 1, sizeof(ere) - 1, body, blen) != 0)
			goto unsupported;
	} else if (js_to_ere(ere, sizeof(ere), body, blen) != 0) {
		goto unsupported;
	}
	rc = regcomp(&r->re, ere, REG_EXTENDED | REG_NOSUB);
	if (rc != 0)
		goto unsupported;
	r->has_re = true;
	return 0;
unsupported:
	return tally_error_set(err, TALLY_EINVALID,
			       "regex '%s': not supported by POSIX ERE", js);
}

static void rule_dispose(pb_rule *r)
{
	uint32_t i;

	free(r->s);
	if (r->has_re)
		regfree(&r->re);
	if (r->has_not)
		regfree(&r->re_not);
	for (i = 0; i < r->nkids; i++)
		rule_dispose(&r->kids[i]);
	free(r->kids);
	memset(r, 0, sizeof(*r));
}

static int rule_parse(pb_rule *r, json_t *j, tally_error *err)
{
	const char *key;
	json_t *v;

	memset(r, 0, sizeof(*r));
	if (!json_is_object(j) || json_object_size(j) != 1)
		return tally_error_set(err, TALLY_EINVALID,
				       "match rule: one key expected");
	json_object_foreach(j, key, v) {
		if (strcmp(key, "and") == 0 || strcmp(key, "or") == 0) {
			size_t i;
			int rc;

			if (!json_is_array(v))
				return tally_error_set(err, TALLY_EINVALID,
						       "match %s: list", key);
			r->kind = key[0] == 'a' ? PB_R_AND : PB_R_OR;
			r->nkids = (uint32_t)json_array_size(v);
			r->kids = tally_xcalloc(r->nkids ? r->nkids : 1,
						sizeof(pb_rule));
			for (i = 0; i < r->nkids; i++) {
				rc = rule_parse(&r->kids[i],
						json_array_get(v, i), err);
				if (rc != 0)
					return rc;
			}
			return 0;
		}
		if (!json_is_string(v))
			return tally_error_set(err, TALLY_EINVALID,
					       "match %s: string expected", key);
		if (strcmp(key, "regex") == 0)
			return compile_regex(r, json_string_value(v), err);
		if (strcmp(key, "equals") == 0)
			r->kind = PB_R_EQ;
		else if (strcmp(key, "starts_with") == 0)
			r->kind = PB_R_SW;
		else if (strcmp(key, "ends_with") == 0)
			r->kind = PB_R_EW;
		else if (strcmp(key, "contains") == 0)
			r->kind = PB_R_CONTAINS;
		else
			return tally_error_set(err, TALLY_EINVALID,
					       "match: unknown rule '%s'", key);
		r->s = lower_dup(json_string_value(v));
		r->len = strlen(r->s);
	}
	return 0;
}

bool tally_pb__match(const pb_rule *r, const char *name, size_t len)
{
	uint32_t i;

	switch (r->kind) {
	case PB_R_EQ:
		return len == r->len && memcmp(name, r->s, len) == 0;
	case PB_R_SW:
		return len >= r->len && memcmp(name, r->s, r->len) == 0;
	case PB_R_EW:
		return len >= r->len &&
		       memcmp(name + len - r->len, r->s, r->len) == 0;
	case PB_R_CONTAINS:
		if (r->len == 0)
			return true;
		if (len < r->len)
			return false;
		for (i = 0; i + r->len <= len; i++)
			if (memcmp(name + i, r->s, r->len) == 0)
				return true;
		return false;
	case PB_R_REGEX:
		if (r->has_not && regexec(&r->re_not, name, 0, NULL, 0) == 0)
			return false;
		return !r->has_re || regexec(&r->re, name, 0, NULL, 0) == 0;
	case PB_R_AND:
		for (i = 0; i < r->nkids; i++)
			if (!tally_pb__match(&r->kids[i], name, len))
				return false;
		return true;
	case PB_R_OR:
		for (i = 0; i < r->nkids; i++)
			if (tally_pb__match(&r->kids[i], name, len))
				return true;
		return false;
	case PB_R_NEVER:
	default:
		return false;
	}
}

/* ------------------------------------------------------------------ */
/* prices and constraints                                              */

/*
 * A price with more than 12 fractional digits (upstream float artefacts such
 * as "0.18000000000000002") is rounded half-even to 12 digits: the price is
 * per MTok, so this is a 1e-18 change per token, far below genai-prices'
 * own float error. Everything else must parse exactly.
 */
static int parse_price_round(int64_t *out, const char *s)
{
	const char *dot = strchr(s, '.');
	size_t len = strlen(s), frac;
	char buf[64];
	bool up = false;
	int rc;

	if (dot == NULL || strpbrk(s, "eE") != NULL ||
	    (frac = len - (size_t)(dot + 1 - s)) <= 12 ||
	    (size_t)(dot - s) + 14 > sizeof(buf))
		return tally_money_parse(out, s, len);
	memcpy(buf, s, (size_t)(dot - s) + 13);
	buf[(dot - s) + 13] = '\0';
	{
		const char *rest = dot + 13;
		size_t i, rl = strlen(rest);
		bool nonzero_tail = false;

		for (i = 0; i < rl; i++)
			if (rest[i] < '0' || rest[i] > '9')
				return TALLY_EINVALID;
		for (i = 1; i < rl; i++)
			if (rest[i] != '0')
				nonzero_tail = true;
		if (rest[0] > '5' || (rest[0] == '5' && nonzero_tail))
			up = true;
		else if (rest[0] == '5')
			up = ((dot[12] - '0') & 1) != 0;
	}
	rc = tally_money_parse(out, buf, strlen(buf));
	if (rc == 0 && up)
		rc = tally_money_add(out, *out, s[0] == '-' ? -1 : 1);
	return rc;
}

static int parse_price_text(int64_t *out, const char *s, const char *what,
			    tally_error *err)
{
	int rc = parse_price_round(out, s);

	if (rc != 0 || *out < 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "price %s: '%s' is not an exact "
				       "non-negative decimal", what, s);
	return 0;
}

static int cmp_tier(const void *a, const void *b)
{
	const pb_tier *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* v: a string price or {"base": p, "tiers": [{"start": n, "price": p}]} */
static int price_parse(pb_price *p, json_t *v, const char *key,
		       tally_error *err)
{
	json_t *base, *tiers, *t;
	size_t i;
	int rc;

	memset(p, 0, sizeof(*p));
	if (json_is_string(v)) {
		p->set = true;
		return parse_price_text(&p->base, json_string_value(v), key,
					err);
	}
	base = json_object_get(v, "base");
	tiers = json_object_get(v, "tiers");
	if (!json_is_string(base) || !json_is_array(tiers))
		return tally_error_set(err, TALLY_EINVALID,
				       "price %s: number or tiers expected",
				       key);
	p->set = true;
	rc = parse_price_text(&p->base, json_string_value(base), key, err);
	if (rc != 0)
		return rc;
	p->ntiers = (uint32_t)json_array_size(tiers);
	p->tiers = tally_xcalloc(p->ntiers ? p->ntiers : 1, sizeof(pb_tier));
	json_array_foreach(tiers, i, t) {
		json_t *st = json_object_get(t, "start");
		json_t *pr = json_object_get(t, "price");

		if (!json_is_string(st) || !json_is_string(pr) ||
		    tally_parse_i64(&p->tiers[i].start,
				    json_string_value(st)) != 0 ||
		    p->tiers[i].start < 0)
			return tally_error_set(err, TALLY_EINVALID,
					       "price %s: bad tier", key);
		rc = parse_price_text(&p->tiers[i].price,
				      json_string_value(pr), key, err);
		if (rc != 0)
			return rc;
	}
	qsort(p->tiers, p->ntiers, sizeof(pb_tier), cmp_tier);
	return 0;
}

static void cond_dispose(pb_cond *c)
{
	int k;

	for (k = 0; k < PB_K_N; k++)
		free(c->p[k].tiers);
}

static int digits(const char *s, int n, int64_t *out)
{
	int i;
	int64_t v = 0;

	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return 0;
}

/* "YYYY-MM-DD" -> unix ms at 00:00 UTC */
int tally_pb__parse_date(int64_t *out, const char *s);
int tally_pb__parse_date(int64_t *out, const char *s)
{
	int64_t y, m, d;

	if (strlen(s) != 10 || s[4] != '-' || s[7] != '-' ||
	    digits(s, 4, &y) || digits(s + 5, 2, &m) || digits(s + 8, 2, &d) ||
	    m < 1 || m > 12 || d < 1 || d > 31)
		return -1;
	*out = tally_days_from_civil(y, (int)m, (int)d) * TALLY_MS_PER_DAY;
	return 0;
}

/* "HH:MM:SS[.fff](Z|+HH:MM|-HH:MM)" -> ms of the UTC day, as genai-prices */
int tally_pb__parse_tod(int32_t *out, const char *s);
int tally_pb__parse_tod(int32_t *out, const char *s)
{
	int64_t h, mi, se, oh = 0, om = 0, ms = 0, off;
	size_t i = 8, len = strlen(s);
	int64_t v;

	if (len < 9 || s[2] != ':' || s[5] != ':' || digits(s, 2, &h) ||
	    digits(s + 3, 2, &mi) || digits(s + 6, 2, &se) || h > 23 ||
	    mi > 59 || se > 59)
		return -1;
	if (s[i] == '.') {
		int nd = 0;
		i++;
		while (i < len && isdigit((unsigned char)s[i])) {
			if (nd < 3)
				ms = ms * 10 + (s[i] - '0');
			nd++;
			i++;
		}
		if (nd == 0)
			return -1;
		while (nd < 3) {
			ms *= 10;
			nd++;
		}
	}
	if (i < len && s[i] == 'Z' && i + 1 == len) {
		off = 0;
	} else if (i + 6 == len && (s[i] == '+' || s[i] == '-') &&
		   s[i + 3] == ':' && digits(s + i + 1, 2, &oh) == 0 &&
		   digits(s + i + 4, 2, &om) == 0 && oh <= 23 && om <= 59) {
		off = (oh * 60 + om) * 60000;
		if (s[i] == '-')
			off = -off;
	} else {
		return -1;
	}
	v = ((h * 3600 + mi * 60 + se) * 1000 + ms - off + 86400000) %
	    86400000;
	*out = (int32_t)v;
	return 0;
}

/* prices object of the data -> cond (constraint set by the caller) */
static int cond_prices_parse(pb_cond *c, json_t *prices, tally_error *err)
{
	int k, rc;

	if (!json_is_object(prices))
		return tally_error_set(err, TALLY_EINVALID,
				       "prices: object expected");
	for (k = 0; k < PB_K_N; k++) {
		json_t *v = json_object_get(prices, tally_pb__key_names[k]);

		if (v == NULL || json_is_null(v))
			continue;
		rc = price_parse(&c->p[k], v, tally_pb__key_names[k], err);
		if (rc != 0)
			return rc;
		if (c->p[k].ntiers > 0)
			c->any_tier = true;
	}
	return 0;
}

static int cond_parse(pb_cond *c, json_t *entry, tally_error *err)
{
	json_t *con = json_object_get(entry, "constraint");
	json_t *type, *sd, *st, *et;

	memset(c, 0, sizeof(*c));
	if (con != NULL && !json_is_null(con)) {
		type = json_object_get(con, "type");
		sd = json_object_get(con, "start_date");
		st = json_object_get(con, "start_time");
		et = json_object_get(con, "end_time");
		if (json_is_string(sd) &&
		    (type == NULL ||
		     strcmp(json_string_value(type), "start_date") == 0)) {
			c->kind = PB_C_START;
			if (tally_pb__parse_date(&c->start_ms,
						 json_string_value(sd)) != 0)
				return tally_error_set(err, TALLY_EINVALID,
						       "bad start_date");
		} else if (json_is_string(st) && json_is_string(et)) {
			c->kind = PB_C_TOD;
			if (tally_pb__parse_tod(&c->tod_start,
						json_string_value(st)) != 0 ||
			    tally_pb__parse_tod(&c->tod_end,
						json_string_value(et)) != 0)
				return tally_error_set(err, TALLY_EINVALID,
						       "bad time_of_date");
		} else {
			return tally_error_set(err, TALLY_EINVALID,
					       "unknown price constraint");
		}
	}
	return cond_prices_parse(c, json_object_get(entry, "prices"), err);
}

/* ------------------------------------------------------------------ */
/* book                                                                */

static void model_dispose(pb_model *m)
{
	uint32_t v, c;

	free(m->id);
	rule_dispose(&m->rule);
	for (v = 0; v < m->nversions; v++) {
		for (c = 0; c < m->versions[v].nconds; c++)
			cond_dispose(&m->versions[v].conds[c]);
		free(m->versions[v].conds);
	}
	free(m->versions);
}

void tally_pricebook_free(tally_pricebook *pb)
{
	uint32_t i, j;

	if (pb == NULL)
		return;
	for (i = 0; i < pb->nproviders; i++) {
		pb_provider *p = &pb->providers[i];

		free(p->id);
		rule_dispose(&p->provider_match);
		rule_dispose(&p->model_match);
		for (j = 0; j < p->nfallbacks; j++)
			free(p->fallbacks[j]);
		free(p->fallbacks);
		free(p->fallback_idx);
		for (j = 0; j < p->nmodels; j++)
			model_dispose(&p->models[j]);
		free(p->models);
	}
	free(pb->providers);
	free(pb->units);
	for (i = 0; i < pb->noverrides; i++) {
		free(pb->overrides[i].provider);
		free(pb->overrides[i].model);
		cond_dispose(&pb->overrides[i].cond);
	}
	free(pb->overrides);
	free(pb);
}

static tally_pricebook *book_new(void)
{
	tally_pricebook *pb = tally_xcalloc(1, sizeof(*pb));

	pb->serial = atomic_fetch_add(&pb_serial, 1);
	memcpy(pb->currency, "USD", 4);
	return pb;
}

int tally_pb__provider_index(const tally_pricebook *pb, const char *id)
{
	uint32_t i;

	for (i = 0; i < pb->nproviders; i++)
		if (strcmp(pb->providers[i].id, id) == 0)
			return (int)i;
	return -1;
}

static void resolve_fallbacks(tally_pricebook *pb)
{
	uint32_t i, j;

	pb->nmodels = 0;
	for (i = 0; i < pb->nproviders; i++) {
		pb_provider *p = &pb->providers[i];

		pb->nmodels += p->nmodels;
		p->fallback_idx = tally_xcalloc(p->nfallbacks + 1, sizeof(int));
		for (j = 0; j < p->nfallbacks; j++)
			p->fallback_idx[j] =
				tally_pb__provider_index(pb, p->fallbacks[j]);
	}
}

static void add_unit(tally_pricebook *pb, tally_meter m, const char *price,
		     int64_t id)
{
	pb_unit_price *u;
	int64_t v = 0;
	int rc;

	pb->units = tally_xrealloc(pb->units,
				   (pb->nunits + 1) * sizeof(pb_unit_price));
	u = &pb->units[pb->nunits++];
	rc = tally_money_parse(&v, price, strlen(price));
	(void)rc; /* compile-time constants: always valid */
	u->meter = m;
	u->from_ms = INT64_MIN;
	u->to_ms = INT64_MAX;
	u->price = v;
	u->price_id = id;
}

static int provider_parse(pb_provider *p, json_t *jp, int64_t *next_id,
			  tally_error *err)
{
	json_t *v, *models, *jm;
	size_t i;
	int rc;

	v = json_object_get(jp, "id");
	if (!json_is_string(v))
		return tally_error_set(err, TALLY_EINVALID, "provider: no id");
	p->id = lower_dup(json_string_value(v));
	v = json_object_get(jp, "provider_match");
	if (v != NULL && !json_is_null(v)) {
		rc = rule_parse(&p->provider_match, v, err);
		if (rc != 0)
			return rc;
		p->has_pmatch = true;
	}
	v = json_object_get(jp, "model_match");
	if (v != NULL && !json_is_null(v)) {
		rc = rule_parse(&p->model_match, v, err);
		if (rc != 0)
			return rc;
		p->has_mmatch = true;
	}
	v = json_object_get(jp, "fallback_model_providers");
	if (json_is_array(v)) {
		p->nfallbacks = (uint32_t)json_array_size(v);
		p->fallbacks = tally_xcalloc(p->nfallbacks + 1, sizeof(char *));
		for (i = 0; i < p->nfallbacks; i++) {
			json_t *s = json_array_get(v, i);
			p->fallbacks[i] = tally_xstrdup(
				json_is_string(s) ? json_string_value(s) : "");
		}
	}
	models = json_object_get(jp, "models");
	if (!json_is_array(models))
		return tally_error_set(err, TALLY_EINVALID,
				       "provider %s: no models", p->id);
	p->models = tally_xcalloc(json_array_size(models) + 1,
				  sizeof(pb_model));
	json_array_foreach(models, i, jm) {
		pb_model *m = &p->models[p->nmodels++];
		json_t *mid = json_object_get(jm, "id");
		json_t *prices = json_object_get(jm, "prices");
		pb_version *ver;

		if (!json_is_string(mid))
			return tally_error_set(err, TALLY_EINVALID,
					       "provider %s: model without id",
					       p->id);
		m->id = tally_xstrdup(json_string_value(mid));
		rc = rule_parse(&m->rule, json_object_get(jm, "match"), err);
		if (rc != 0)
			goto model_err;
		m->nversions = 1;
		m->versions = tally_xcalloc(1, sizeof(pb_version));
		ver = &m->versions[0];
		ver->from_ms = INT64_MIN;
		ver->to_ms = INT64_MAX;
		if (json_is_array(prices)) {
			size_t c;
			json_t *jc;

			ver->conds = tally_xcalloc(json_array_size(prices) + 1,
						   sizeof(pb_cond));
			json_array_foreach(prices, c, jc) {
				rc = cond_parse(&ver->conds[ver->nconds++], jc,
						err);
				if (rc != 0)
					goto model_err;
				ver->conds[ver->nconds - 1].price_id =
					(*next_id)++;
			}
			if (ver->nconds == 0) {
				rc = tally_error_set(err, TALLY_EINVALID,
						     "empty price list");
				goto model_err;
			}
		} else {
			ver->conds = tally_xcalloc(1, sizeof(pb_cond));
			ver->nconds = 1;
			rc = cond_prices_parse(&ver->conds[0], prices, err);
			if (rc != 0)
				goto model_err;
			ver->conds[0].price_id = (*next_id)++;
		}
		continue;
model_err:
		if (err != NULL) {
			char tmp[sizeof(err->msg) + 600];
			snprintf(tmp, sizeof(tmp), "%.200s/%.200s: %s", p->id,
				 m->id, err->msg);
			memcpy(err->msg, tmp, sizeof(err->msg) - 1);
			err->msg[sizeof(err->msg) - 1] = '\0';
		}
		return rc;
	}
	return 0;
}

int tally_pricebook_load_genai_buf(tally_pricebook **out, const char *text,
				   size_t len, tally_error *err)
{
	tally_pricebook *pb = NULL;
	json_t *root = NULL, *jp;
	json_error_t jerr;
	char *quoted;
	size_t qlen, i;
	int64_t next_id = 1;
	int rc = 0;

	quoted = tally_pb__quote_numbers(text, len, &qlen);
	root = json_loadb(quoted, qlen, 0, &jerr);
	free(quoted);
	if (root == NULL) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "genai-prices data: line %d: %s",
				     jerr.line, jerr.text);
		goto cleanup;
	}
	if (!json_is_array(root)) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "genai-prices data: list of providers "
				     "expected");
		goto cleanup;
	}
	pb = book_new();
	pb->providers = tally_xcalloc(json_array_size(root) + 1,
				      sizeof(pb_provider));
	json_array_foreach(root, i, jp) {
		rc = provider_parse(&pb->providers[pb->nproviders++], jp,
				    &next_id, err);
		if (rc != 0)
			goto cleanup;
	}
	resolve_fallbacks(pb);
	add_unit(pb, TALLY_METER_WORKFLOW, TALLY_PRICE_WORKFLOW_UNIT,
		 GENAI_UNIT_ID_BASE + 1);
	add_unit(pb, TALLY_METER_STORAGE, TALLY_PRICE_STORAGE_GBMONTH,
		 GENAI_UNIT_ID_BASE + 2);
	add_unit(pb, TALLY_METER_API_CALL, TALLY_PRICE_API_CALL,
		 GENAI_UNIT_ID_BASE + 3);
	*out = pb;
	pb = NULL; /* now owned by the caller */
cleanup:
	json_decref(root);
	tally_pricebook_free(pb);
	return rc;
}

int tally_pricebook_load_genai_file(tally_pricebook **out, const char *path,
				    tally_error *err)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, len = 0, n;
	int rc;

	if (fp == NULL)
		return tally_error_set(err, TALLY_ERROR, "%s: cannot open",
				       path);
	for (;;) {
		if (len + 65536 > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			buf = tally_xrealloc(buf, cap);
		}
		n = fread(buf + len, 1, cap - len, fp);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(fp)) {
		fclose(fp);
		free(buf);
		return tally_error_set(err, TALLY_ERROR, "%s: read error",
				       path);
	}
	fclose(fp);
	rc = tally_pricebook_load_genai_buf(out, buf, len, err);
	free(buf);
	return rc;
}

int64_t tally_pricebook_version(const tally_pricebook *pb)
{
	return pb->version;
}

size_t tally_pricebook_models(const tally_pricebook *pb)
{
	return pb->nmodels;
}

/* ------------------------------------------------------------------ */
/* overrides                                                           */

static int cmp_override(const void *a, const void *b)
{
	const pb_override *x = a, *y = b;

	return memcmp(x->tenant_id, y->tenant_id, 16);
}

static int opt_price(pb_price *p, const char *s, const char *what,
		     tally_error *err)
{
	if (s == NULL || *s == '\0')
		return 0;
	p->set = true;
	return parse_price_text(&p->base, s, what, err);
}

int tally_pricebook_add_override(tally_pricebook *pb,
				 const tally_override_spec *spec,
				 tally_error *err)
{
	pb_override o;
	int rc = 0;

	memset(&o, 0, sizeof(o));
	o.id = spec->id;
	memcpy(o.tenant_id, spec->tenant_id, 16);
	o.meter = spec->meter;
	o.provider = spec->provider && *spec->provider
			     ? lower_dup(spec->provider) : NULL;
	o.model = spec->model && *spec->model ? tally_xstrdup(spec->model)
					       : NULL;
	o.from_ms = spec->effective_from_ms;
	o.to_ms = spec->effective_to_ms;
	o.specificity = spec->specificity;
	if (spec->multiplier != NULL && *spec->multiplier) {
		o.is_multiplier = true;
		rc = parse_price_text(&o.multiplier, spec->multiplier,
				      "multiplier", err);
	} else {
		rc = opt_price(&o.cond.p[PB_K_INPUT], spec->input_mtok,
			       "input_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_CACHE_READ],
				       spec->cache_read_mtok,
				       "cache_read_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_CACHE_WRITE],
				       spec->cache_write_mtok,
				       "cache_write_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_OUTPUT], spec->output_mtok,
				       "output_mtok", err);
		if (rc == 0 && spec->unit_price && *spec->unit_price) {
			o.has_unit = true;
			rc = parse_price_text(&o.unit_price, spec->unit_price,
					      "unit_price", err);
		}
		o.cond.price_id = spec->id;
	}
	if (rc != 0) {
		free(o.provider);
		free(o.model);
		return rc;
	}
	pb->overrides = tally_xrealloc(pb->overrides, (pb->noverrides + 1) *
							      sizeof(pb_override));
	pb->overrides[pb->noverrides++] = o;
	qsort(pb->overrides, pb->noverrides, sizeof(pb_override),
	      cmp_override);
	return 0;
}

/* ------------------------------------------------------------------ */
/* PostgreSQL                                                          */

int tally_pricebook_pg_version(int64_t *out, tally_pg *pg, tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(pg, &res,
			   "SELECT version FROM price_book_version", 0, NULL,
			   err);
	if (rc != 0)
		return rc;
	if (PQntuples(res) != 1 ||
	    tally_parse_i64(out, PQgetvalue(res, 0, 0)) != 0)
		rc = tally_error_set(err, TALLY_ERROR,
				     "price_book_version: no row");
	PQclear(res);
	return rc;
}

static int64_t col_ms(PGresult *res, int row, int col, int64_t dflt)
{
	int64_t v;

	if (PQgetisnull(res, row, col) ||
	    tally_parse_i64(&v, PQgetvalue(res, row, col)) != 0)
		return dflt;
	return v;
}

static const char *col_str(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static int json_rule(pb_rule *r, const char *text, tally_error *err)
{
	size_t qlen;
	char *q = tally_pb__quote_numbers(text, strlen(text), &qlen);
	json_t *j = json_loadb(q, qlen, 0, NULL);
	int rc;

	free(q);
	if (j == NULL)
		return tally_error_set(err, TALLY_EINVALID, "bad match json");
	rc = rule_parse(r, j, err);
	json_decref(j);
	return rc;
}

#define MS_SQL(c)                                                         \
	"CASE WHEN " c " = '-infinity' OR " c " = 'infinity' THEN NULL "  \
	"ELSE (floor(extract(epoch FROM " c ") * 1000))::bigint END"

static const char providers_sql[] =
	"SELECT provider, provider_match::text, model_match::text, "
	"array_to_string(fallback_providers, ',') FROM price_providers "
	"ORDER BY position, provider";

static const char models_sql[] =
	"SELECT m.id, m.provider, m.model, m.match::text, m.constraint_type, "
	MS_SQL("m.start_at") ", m.time_start, m.time_end, m.currency, "
	"m.input_mtok::text, m.cache_read_mtok::text, "
	"m.cache_write_mtok::text, m.output_mtok::text, "
	"m.output_reasoning_mtok::text, m.requests_kcount::text, "
	"m.tiers::text, " MS_SQL("m.effective_from") ", "
	MS_SQL("m.effective_to") ", "
	"m.effective_from = '-infinity', m.effective_to = 'infinity' "
	"FROM model_prices m JOIN price_providers p USING (provider) "
	"ORDER BY p.position, m.provider, "
	"  max(m.model_position) OVER (PARTITION BY m.provider, m.model), "
	"  m.model, m.effective_from, m.cond_position";

static const char units_sql[] =
	"SELECT id, meter, price::text, " MS_SQL("effective_from") ", "
	MS_SQL("effective_to") ", effective_from = '-infinity', "
	"effective_to = 'infinity' FROM unit_prices ORDER BY meter, "
	"effective_from";

static const char overrides_sql[] =
	"SELECT o.id, t.id::text, coalesce(o.meter, ''), o.provider, o.model, "
	"o.multiplier::text, o.input_mtok::text, o.cache_read_mtok::text, "
	"o.cache_write_mtok::text, o.output_mtok::text, o.unit_price::text, "
	MS_SQL("o.effective_from") ", " MS_SQL("o.effective_to") ", "
	"o.effective_from = '-infinity', o.effective_to = 'infinity', "
	"CASE WHEN o.tenant_id IS NOT NULL THEN 2 ELSE 1 END "
	"FROM price_overrides o JOIN tenants t ON "
	"(o.tenant_id = t.id OR (o.tenant_id IS NULL AND "
	"  o.plan = t.subscription_plan)) "
	"UNION ALL SELECT 0, id::text, '', NULL, NULL, price_multiplier::text,"
	" NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, true, 0 "
	"FROM tenants WHERE price_multiplier <> 1";

static int load_tiers(pb_cond *c, const char *text, tally_error *err)
{
	size_t qlen;
	char *q;
	json_t *j, *v;
	const char *key;
	int k, rc = 0;

	if (text == NULL)
		return 0;
	q = tally_pb__quote_numbers(text, strlen(text), &qlen);
	j = json_loadb(q, qlen, 0, NULL);
	free(q);
	if (!json_is_object(j)) {
		json_decref(j);
		return tally_error_set(err, TALLY_EINVALID, "bad tiers json");
	}
	json_object_foreach(j, key, v) {
		for (k = 0; k < PB_K_N; k++) {
			if (strcmp(key, tally_pb__key_names[k]) != 0)
				continue;
			free(c->p[k].tiers);
			rc = price_parse(&c->p[k], v, key, err);
			if (rc != 0)
				goto done;
			if (c->p[k].ntiers > 0)
				c->any_tier = true;
		}
	}
done:
	json_decref(j);
	return rc;
}

static int load_model_row(tally_pricebook *pb, PGresult *res, int r,
			  pb_provider *prov, tally_error *err)
{
	const char *model = PQgetvalue(res, r, 2);
	pb_model *m = prov->nmodels ? &prov->models[prov->nmodels - 1] : NULL;
	pb_version *ver;
	pb_cond *c;
	int64_t from = PQgetvalue(res, r, 18)[0] == 't'
			       ? INT64_MIN : col_ms(res, r, 16, INT64_MIN);
	int64_t to = PQgetvalue(res, r, 19)[0] == 't'
			     ? INT64_MAX : col_ms(res, r, 17, INT64_MAX);
	const char *ctype = PQgetvalue(res, r, 4);
	int k, rc;

	if (m == NULL || strcmp(m->id, model) != 0) {
		prov->models = tally_xrealloc(prov->models,
					      (prov->nmodels + 1) *
						      sizeof(pb_model));
		m = &prov->models[prov->nmodels++];
		memset(m, 0, sizeof(*m));
		m->id = tally_xstrdup(model);
	}
	/* the newest version's rule is the one used for matching */
	rule_dispose(&m->rule);
	rc = json_rule(&m->rule, PQgetvalue(res, r, 3), err);
	if (rc != 0)
		return rc;
	ver = m->nversions ? &m->versions[m->nversions - 1] : NULL;
	if (ver == NULL || ver->from_ms != from) {
		m->versions = tally_xrealloc(m->versions,
					     (m->nversions + 1) *
						     sizeof(pb_version));
		ver = &m->versions[m->nversions++];
		memset(ver, 0, sizeof(*ver));
		ver->from_ms = from;
		ver->to_ms = to;
	}
	ver->conds = tally_xrealloc(ver->conds,
				    (ver->nconds + 1) * sizeof(pb_cond));
	c = &ver->conds[ver->nconds++];
	memset(c, 0, sizeof(*c));
	if (tally_parse_i64(&c->price_id, PQgetvalue(res, r, 0)) != 0)
		return tally_error_set(err, TALLY_EINVALID, "bad id");
	if (strcmp(ctype, "start_date") == 0) {
		c->kind = PB_C_START;
		c->start_ms = col_ms(res, r, 5, INT64_MIN);
	} else if (strcmp(ctype, "time_of_date") == 0) {
		c->kind = PB_C_TOD;
		if (tally_pb__parse_tod(&c->tod_start,
					PQgetvalue(res, r, 6)) != 0 ||
		    tally_pb__parse_tod(&c->tod_end, PQgetvalue(res, r, 7)) != 0)
			return tally_error_set(err, TALLY_EINVALID,
					       "price %" PRId64
					       ": bad time window",
					       c->price_id);
	}
	memcpy(pb->currency, PQgetvalue(res, r, 8), 3);
	for (k = 0; k < PB_K_N; k++) {
		const char *s = col_str(res, r, 9 + k);
		if (s == NULL)
			continue;
		c->p[k].set = true;
		rc = parse_price_text(&c->p[k].base, s, tally_pb__key_names[k],
				      err);
		if (rc != 0)
			return rc;
	}
	return load_tiers(c, col_str(res, r, 15), err);
}

static int load_pg_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_pricebook **outp = payload;
	tally_pricebook *pb = book_new();
	PGresult *res = NULL;
	int rc, n, r;

	rc = tally_pg_exec(pg, NULL,
			   "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, "
			   "READ ONLY", 0, NULL, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_pricebook_pg_version(&pb->version, pg, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_pg_exec(pg, &res, providers_sql, 0, NULL, err);
	if (rc != 0)
		goto cleanup;
	n = PQntuples(res);
	pb->providers = tally_xcalloc((size_t)n + 1, sizeof(pb_provider));
	for (r = 0; r < n; r++) {
		pb_provider *p = &pb->providers[pb->nproviders++];
		const char *fb = PQgetvalue(res, r, 3);

		p->id = tally_xstrdup(PQgetvalue(res, r, 0));
		if (!PQgetisnull(res, r, 1)) {
			rc = json_rule(&p->provider_match,
				       PQgetvalue(res, r, 1), err);
			if (rc != 0)
				goto cleanup;
			p->has_pmatch = true;
		}
		if (!PQgetisnull(res, r, 2)) {
			rc = json_rule(&p->model_match, PQgetvalue(res, r, 2),
				       err);
			if (rc != 0)
				goto cleanup;
			p->has_mmatch = true;
		}
		while (fb != NULL && *fb) {
			const char *comma = strchr(fb, ',');
			size_t l = comma ? (size_t)(comma - fb) : strlen(fb);

			p->fallbacks = tally_xrealloc(
				p->fallbacks,
				(p->nfallbacks + 1) * sizeof(char *));
			p->fallbacks[p->nfallbacks++] =
				tally_xstrndup(fb, l);
			fb = comma ? comma + 1 : NULL;
		}
	}
	PQclear(res);
	res = NULL;

	rc = tally_pg_exec(pg, &res, models_sql, 0, NULL, err);
	if (rc != 0)
		goto cleanup;
	n = PQntuples(res);
	for (r = 0; r < n; r++) {
		int pi = tally_pb__provider_index(pb, PQgetvalue(res, r, 1));

		if (pi < 0)
			continue;
		rc = load_model_row(pb, res, r, &pb->providers[pi], err);
		if (rc != 0)
			goto cleanup;
	}
	PQclear(res);
	res = NULL;

	rc = tally_pg_exec(pg, &res, units_sql, 0, NULL, err);
	if (rc != 0)
		goto cleanup;
	n = PQntuples(res);
	for (r = 0; r < n; r++) {
		const char *meter = PQgetvalue(res, r, 1);
		pb_unit_price *u;

		pb->units = tally_xrealloc(pb->units, (pb->nunits + 1) *
							      sizeof(*u));
		u = &pb->units[pb->nunits++];
		memset(u, 0, sizeof(*u));
		u->meter = tally_meter_parse(meter, (uint32_t)strlen(meter));
		if (tally_parse_i64(&u->price_id, PQgetvalue(res, r, 0)) != 0) {
			rc = tally_error_set(err, TALLY_EINVALID, "bad id");
			goto cleanup;
		}
		rc = parse_price_text(&u->price, PQgetvalue(res, r, 2), meter,
				      err);
		if (rc != 0)
			goto cleanup;
		u->from_ms = PQgetvalue(res, r, 5)[0] == 't'
				     ? INT64_MIN : col_ms(res, r, 3, INT64_MIN);
		u->to_ms = PQgetvalue(res, r, 6)[0] == 't'
				   ? INT64_MAX : col_ms(res, r, 4, INT64_MAX);
	}
	PQclear(res);
	res = NULL;

	rc = tally_pg_exec(pg, &res, overrides_sql, 0, NULL, err);
	if (rc != 0)
		goto cleanup;
	n = PQntuples(res);
	for (r = 0; r < n; r++) {
		tally_override_spec s;
		const char *tid = PQgetvalue(res, r, 1);
		const char *meter = PQgetvalue(res, r, 2);

		memset(&s, 0, sizeof(s));
		if (tally_parse_i64(&s.id, PQgetvalue(res, r, 0)) != 0 ||
		    tally_uuid_parse(s.tenant_id, tid,
				     (uint32_t)strlen(tid)) != 0) {
			rc = tally_error_set(err, TALLY_EINVALID,
					     "bad override row");
			goto cleanup;
		}
		s.meter = tally_meter_parse(meter, (uint32_t)strlen(meter));
		s.provider = col_str(res, r, 3);
		s.model = col_str(res, r, 4);
		s.multiplier = col_str(res, r, 5);
		s.input_mtok = col_str(res, r, 6);
		s.cache_read_mtok = col_str(res, r, 7);
		s.cache_write_mtok = col_str(res, r, 8);
		s.output_mtok = col_str(res, r, 9);
		s.unit_price = col_str(res, r, 10);
		s.effective_from_ms = PQgetvalue(res, r, 13)[0] == 't'
					      ? INT64_MIN
					      : col_ms(res, r, 11, INT64_MIN);
		s.effective_to_ms = PQgetvalue(res, r, 14)[0] == 't'
					    ? INT64_MAX
					    : col_ms(res, r, 12, INT64_MAX);
		s.specificity = (int)(PQgetvalue(res, r, 15)[0] - '0');
		rc = tally_pricebook_add_override(pb, &s, err);
		if (rc != 0)
			goto cleanup;
	}
	resolve_fallbacks(pb);
	tally_pricebook_free(*outp);
	*outp = pb;
	pb = NULL;
cleanup:
	PQclear(res);
	tally_pricebook_free(pb);
	return rc;
}

int tally_pricebook_load_pg(tally_pricebook **out, tally_pg *pg,
			    tally_error *err)
{
	tally_pricebook *pb = NULL;
	int rc = tally_pg_txn(pg, load_pg_txn, &pb, 0, err);

	if (rc != 0) {
		tally_pricebook_free(pb);
		return rc;
	}
	*out = pb;
	return 0;
}
