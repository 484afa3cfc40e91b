/*
 * usage_lines.c - a period's charges grouped into invoice lines and rounded
 * once to the currency's minor unit. Pure (no libpq, no curl) so the rules
 * are unit-tested on their own (tests/unit/test_usage_lines.c).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/usage_lines.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int tally_usage_grouping_parse(const char *s, tally_usage_grouping *out)
{
	if (s == NULL || *s == '\0' || strcmp(s, "per_model") == 0)
		*out = TALLY_GROUP_PER_MODEL;
	else if (strcmp(s, "per_meter") == 0)
		*out = TALLY_GROUP_PER_METER;
	else if (strcmp(s, "single") == 0)
		*out = TALLY_GROUP_SINGLE;
	else
		return TALLY_EINVALID;
	return 0;
}

const char *tally_usage_grouping_name(tally_usage_grouping g)
{
	return g == TALLY_GROUP_PER_METER ? "per_meter"
	       : g == TALLY_GROUP_SINGLE ? "single" : "per_model";
}

/* Stripe's zero-decimal and three-decimal currencies; every other code
 * Stripe accepts has 2 (the same table as migrations/0005's currencies). */
static const char *const zero_decimal[] = {
	"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "MGA",
	"PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF",
};
static const char *const three_decimal[] = {
	"BHD", "JOD", "KWD", "OMR", "TND",
};

int tally_currency_minor_digits(const char *code)
{
	size_t i;

	if (code == NULL || strlen(code) != 3)
		return -1;
	for (i = 0; i < 3; i++)
		if (!((code[i] >= 'A' && code[i] <= 'Z') ||
		      (code[i] >= 'a' && code[i] <= 'z')))
			return -1;
	for (i = 0; i < sizeof(zero_decimal) / sizeof(*zero_decimal); i++)
		if (strcasecmp(code, zero_decimal[i]) == 0)
			return 0;
	for (i = 0; i < sizeof(three_decimal) / sizeof(*three_decimal); i++)
		if (strcasecmp(code, three_decimal[i]) == 0)
			return 3;
	return 2;
}

static const char *kind_label(const char *kind)
{
	if (strcmp(kind, "late_usage") == 0)
		return "Late usage";
	if (strcmp(kind, "rerate") == 0)
		return "Re-pricing";
	if (strcmp(kind, "storage") == 0)
		return "Storage correction";
	return "Usage";
}

/* Key and description of a charge under grouping g; -1 when too long. */
static int line_id(const tally_usage_charge *c, tally_usage_grouping g,
		   char *key, char *desc)
{
	bool usage = strcmp(c->kind, "usage") == 0;
	const char *pfx = usage ? "usage" : c->kind;
	const char *label = kind_label(c->kind);
	int k, d;

	if (g == TALLY_GROUP_SINGLE) {
		k = snprintf(key, TALLY_USAGE_KEY_MAX, "usage");
		d = snprintf(desc, TALLY_USAGE_KEY_MAX, "Usage");
	} else if (g == TALLY_GROUP_PER_METER || c->model[0] == '\0') {
		k = snprintf(key, TALLY_USAGE_KEY_MAX, "%s:%s", pfx, c->meter);
		d = snprintf(desc, TALLY_USAGE_KEY_MAX, "%s: %s", label,
			     c->meter);
	} else {
		k = snprintf(key, TALLY_USAGE_KEY_MAX, "%s:%s:%s:%s", pfx,
			     c->meter, c->provider, c->model);
		d = snprintf(desc, TALLY_USAGE_KEY_MAX, "%s: %s %s%s%s", label,
			     c->meter, c->provider, c->provider[0] ? "/" : "",
			     c->model);
	}
	return k < 0 || k >= TALLY_USAGE_KEY_MAX || d < 0 ||
	       d >= TALLY_USAGE_KEY_MAX ? -1 : 0;
}

static int by_key(const void *a, const void *b)
{
	return strcmp(((const tally_usage_line *)a)->key,
		      ((const tally_usage_line *)b)->key);
}

/* The line with key (appended when new). */
static tally_usage_line *line_for(tally_usage_line **v, size_t *n,
				  size_t *cap, const char *key,
				  const char *desc)
{
	size_t i;

	for (i = 0; i < *n; i++)
		if (strcmp((*v)[i].key, key) == 0)
			return &(*v)[i];
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		*v = tally_xrealloc(*v, *cap * sizeof(**v));
	}
	memset(&(*v)[*n], 0, sizeof(**v));
	memcpy((*v)[*n].key, key, strlen(key) + 1);
	memcpy((*v)[*n].description, desc, strlen(desc) + 1);
	return &(*v)[(*n)++];
}

/* Drop zero lines, sort, round each once. */
static int finish(tally_usage_line *v, size_t *n, int digits,
		  tally_error *err)
{
	size_t i, k = 0;

	for (i = 0; i < *n; i++) {
		tally_money128 m;

		if (v[i].exact_pico == 0)
			continue;
		m = tally_money_round_minor(v[i].exact_pico, digits);
		if (m > INT64_MAX || m < INT64_MIN)
			return tally_error_set(err, TALLY_EOVERFLOW,
					       "usage line %s: amount overflows",
					       v[i].key);
		v[i].minor = (int64_t)m;
		v[k++] = v[i];
	}
	*n = k;
	if (k > 1)
		qsort(v, k, sizeof(*v), by_key);
	return 0;
}

int tally_usage_lines_build(const tally_usage_charge *charges, size_t n,
			    tally_usage_grouping g, tally_money128 included_pico,
			    int digits, tally_usage_line **out, size_t *nout,
			    tally_error *err)
{
	tally_usage_line *v = NULL, *l;
	tally_money128 usage = 0, credit;
	size_t nv = 0, cap = 0, i;
	char key[TALLY_USAGE_KEY_MAX], desc[TALLY_USAGE_KEY_MAX];
	int rc;

	*out = NULL;
	*nout = 0;
	if (digits < 0 || digits > 4 || included_pico < 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "usage lines: bad digits or included");
	for (i = 0; i < n; i++) {
		if (line_id(&charges[i], g, key, desc) != 0) {
			free(v);
			return tally_error_set(err, TALLY_EINVALID,
					       "usage line key too long: %.64s",
					       charges[i].model);
		}
		l = line_for(&v, &nv, &cap, key, desc);
		l->exact_pico += charges[i].pico;
		if (strcmp(charges[i].kind, "usage") == 0)
			usage += charges[i].pico;
	}
	/* included usage: never more than the period's own usage */
	credit = included_pico < usage ? included_pico : usage;
	if (credit > 0) {
		l = g == TALLY_GROUP_SINGLE
			? line_for(&v, &nv, &cap, "usage", "Usage")
			: line_for(&v, &nv, &cap, "included",
				   "Included usage");
		l->exact_pico -= credit;
	}
	rc = finish(v, &nv, digits, err);
	if (rc != 0 || nv == 0) {
		free(v);
		return rc;
	}
	*out = v;
	*nout = nv;
	return 0;
}
