/*
 * pricebook_rules.c - genai-prices match rules: parsing the JSON rule
 * objects ({"equals": ...}, {"regex": ...}, {"and": [...]}...) and matching
 * a provider or model name against them.
 *
 * Regexes of the data (JavaScript syntax) are translated to POSIX ERE for
 * regcomp(); the only look-ahead the data uses, a leading ^(?!X), becomes a
 * separate negated expression.
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *tally_pb__lower_dup(const char *s)
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

/*
 * regcomp() copies a repeated expression once per repetition (X+ is X X*,
 * X{n,m} is m copies), and its closure over nested repetitions (X**,
 * ((X*)*)*) recurses once per path: stacked or nested repetitions grow
 * exponentially in time and memory. REGEX_MAX_NODES bounds the expanded
 * size and REGEX_MAX_NESTED how deep repetitions nest (JavaScript itself
 * refuses X** and allows one lazy '?' after a quantifier); the shipped
 * data needs under a hundred nodes and no nesting.
 */
#define REGEX_MAX_NODES 4096
#define REGEX_MAX_DEPTH 32
#define REGEX_MAX_NESTED 3

/* The decimal number at js[*j] (saturated past REGEX_MAX_NODES); *j
 * moves past its digits. */
static uint64_t bound(const char *js, size_t jl, size_t *j)
{
	uint64_t v = 0;

	for (; *j < jl && isdigit((unsigned char)js[*j]); (*j)++)
		if (v <= REGEX_MAX_NODES)
			v = v * 10 + (uint64_t)(js[*j] - '0');
	return v;
}

/* Copies a quantifier at js[*i] makes of what it follows (0: none there);
 * *i moves past it. */
static uint64_t repeat_factor(const char *js, size_t jl, size_t *i)
{
	uint64_t n, m;
	size_t j = *i + 1;

	if (js[*i] == '*' || js[*i] == '?') {
		*i = j;
		return 1;
	}
	if (js[*i] == '+') {
		*i = j;
		return 2;
	}
	if (js[*i] != '{' || j >= jl || !isdigit((unsigned char)js[j]))
		return 0;
	n = m = bound(js, jl, &j);
	if (j < jl && js[j] == ',') {
		j++;
		m = n + 1; /* {n,}: n copies and a star */
		if (j < jl && isdigit((unsigned char)js[j]))
			m = bound(js, jl, &j);
	}
	if (j >= jl || js[j] != '}')
		return 0; /* a literal '{' */
	*i = j + 1;
	return m > 0 ? m : 1;
}

/* Whether regcomp() would expand js beyond REGEX_MAX_NODES. */
static bool regex_too_complex(const char *js, size_t jl)
{
	uint64_t size[REGEX_MAX_DEPTH + 1] = { 0 }, last = 0, f;
	unsigned nest[REGEX_MAX_DEPTH + 1] = { 0 }, last_nest = 0;
	size_t i = 0, d = 0;

	while (i < jl) {
		if ((f = repeat_factor(js, jl, &i)) > 0) {
			size[d] += last * (f - 1);
			last *= f;
			if (++last_nest > REGEX_MAX_NESTED)
				return true;
			if (last_nest > nest[d])
				nest[d] = last_nest;
		} else if (js[i] == '(') {
			if (++d > REGEX_MAX_DEPTH)
				return true;
			size[d] = 0;
			nest[d] = 0;
			i += i + 2 < jl && js[i + 1] == '?' ? 3 : 1;
			last = 0;
			last_nest = 0;
		} else if (js[i] == ')' && d > 0) {
			last = size[d];
			last_nest = nest[d--];
			size[d] += last;
			if (last_nest > nest[d])
				nest[d] = last_nest;
			i++;
		} else {
			size_t e = i + 1;

			if (js[i] == '\\')
				e = i + 2;
			else if (js[i] == '[')
				while (e < jl && js[e] != ']')
					e += js[e] == '\\' ? 2 : 1;
			i = e < jl ? e + (js[i] == '[') : jl;
			last = 1;
			last_nest = 0;
			size[d]++;
		}
		if (size[d] > REGEX_MAX_NODES || last > REGEX_MAX_NODES)
			return true;
	}
	return false;
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
	if (regex_too_complex(js, len))
		return tally_error_set(err, TALLY_EINVALID,
				       "regex '%.64s': too complex", js);
	if (len > 4 && strncmp(js, "^(?!", 4) == 0) {
		size_t end = group_end(js, len, 1);
		char tmp[1024];

		if (end == 0 || end - 4 + 2 > sizeof(tmp))
			return tally_error_set(err, TALLY_EINVALID,
					       "regex '%s': bad look-ahead",
					       js);
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

void tally_pb__rule_dispose(pb_rule *r)
{
	uint32_t i;

	free(r->s);
	if (r->has_re)
		regfree(&r->re);
	if (r->has_not)
		regfree(&r->re_not);
	for (i = 0; i < r->nkids; i++)
		tally_pb__rule_dispose(&r->kids[i]);
	free(r->kids);
	memset(r, 0, sizeof(*r));
}

int tally_pb__rule_parse(pb_rule *r, json_t *j, tally_error *err)
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
				rc = tally_pb__rule_parse(&r->kids[i],
						json_array_get(v, i), err);
				if (rc != 0)
					return rc;
			}
			return 0;
		}
		if (!json_is_string(v))
			return tally_error_set(err, TALLY_EINVALID,
					       "match %s: string expected",
					       key);
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
		r->s = tally_pb__lower_dup(json_string_value(v));
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

int tally_pb__rule_parse_text(pb_rule *r, const char *text,
			      tally_error *err)
{
	size_t qlen;
	char *q = tally_pb__quote_numbers(text, strlen(text), &qlen);
	json_t *j = json_loadb(q, qlen, 0, NULL);
	int rc;

	free(q);
	if (j == NULL)
		return tally_error_set(err, TALLY_EINVALID, "bad match json");
	rc = tally_pb__rule_parse(r, j, err);
	json_decref(j);
	return rc;
}
