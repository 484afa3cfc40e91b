/*
 * pricebook_prices.c - one price entry of the book from its text form:
 * decimal prices (tiered or not), start_date and time_of_date constraints,
 * and the prices object of genai-prices' data (also the tiers column of
 * PostgreSQL, which holds the same JSON).
 *
 * Key decision: no price ever passes through a double. JSON numbers reach
 * this file as strings (tally_pb__quote_numbers) and are parsed with
 * tally_money_parse() into pico-units per MTok.
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "base/calendar.h"
#include "tally/money.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>


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

int tally_pb__parse_price_text(int64_t *out, const char *s, const char *what,
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
		return tally_pb__parse_price_text(
		    &p->base, json_string_value(v), key, err);
	}
	base = json_object_get(v, "base");
	tiers = json_object_get(v, "tiers");
	if (!json_is_string(base) || !json_is_array(tiers))
		return tally_error_set(err, TALLY_EINVALID,
				       "price %s: number or tiers expected",
				       key);
	p->set = true;
	rc = tally_pb__parse_price_text(&p->base, json_string_value(base), key,
					err);
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
		rc = tally_pb__parse_price_text(&p->tiers[i].price,
				      json_string_value(pr), key, err);
		if (rc != 0)
			return rc;
	}
	qsort(p->tiers, p->ntiers, sizeof(pb_tier), cmp_tier);
	return 0;
}

void tally_pb__cond_dispose(pb_cond *c)
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
int tally_pb__cond_prices_parse(pb_cond *c, json_t *prices,
				tally_error *err)
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

int tally_pb__cond_parse(pb_cond *c, json_t *entry, tally_error *err)
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
	return tally_pb__cond_prices_parse(c, json_object_get(entry, "prices"),
					   err);
}

/* the tiers column of model_prices: {"<key>": {"base": p, "tiers": [...]}} */
int tally_pb__tiers_parse_text(pb_cond *c, const char *text,
				tally_error *err)
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
