/*
 * pricebook_genai.c - building a price book from a genai-prices data file
 * (the JSON list of providers that @pydantic/genai-prices bundles).
 *
 * jansson parses JSON numbers as doubles, so the JSON text is first
 * rewritten by a small scanner that quotes every number outside a string
 * ("0.075" stays the exact text the file carries); prices are then parsed
 * exactly (pricebook_prices.c).
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "tally/money.h"
#include "tally/pricebook.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GENAI_UNIT_ID_BASE INT64_C(900000000)

/*
 * Copy text, wrapping every number token outside strings in quotes, so that
 * jansson keeps its exact text. Tracks string and escape state only; the
 * result is parsed (and validated) by jansson afterwards.
 */
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

/* the default unit prices of a book without a database */
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

/* a model's price list: one condition, or a list of conditional prices */
static int version_parse(pb_version *ver, json_t *prices, int64_t *next_id,
			 tally_error *err)
{
	size_t c;
	json_t *jc;
	int rc;

	ver->from_ms = INT64_MIN;
	ver->to_ms = INT64_MAX;
	if (!json_is_array(prices)) {
		ver->conds = tally_xcalloc(1, sizeof(pb_cond));
		ver->nconds = 1;
		rc = tally_pb__cond_prices_parse(&ver->conds[0], prices, err);
		if (rc != 0)
			return rc;
		ver->conds[0].price_id = (*next_id)++;
		return 0;
	}
	ver->conds =
	    tally_xcalloc(json_array_size(prices) + 1, sizeof(pb_cond));
	json_array_foreach(prices, c, jc) {
		rc = tally_pb__cond_parse(&ver->conds[ver->nconds++], jc, err);
		if (rc != 0)
			return rc;
		ver->conds[ver->nconds - 1].price_id = (*next_id)++;
	}
	if (ver->nconds == 0)
		return tally_error_set(err, TALLY_EINVALID, "empty price list");
	return 0;
}

static int model_parse(pb_model *m, json_t *jm, const char *provider,
		       int64_t *next_id, tally_error *err)
{
	json_t *mid = json_object_get(jm, "id");
	int rc;

	if (!json_is_string(mid))
		return tally_error_set(err, TALLY_EINVALID,
				       "provider %s: model without id",
				       provider);
	m->id = tally_xstrdup(json_string_value(mid));
	rc = tally_pb__rule_parse(&m->rule, json_object_get(jm, "match"), err);
	if (rc == 0) {
		m->nversions = 1;
		m->versions = tally_xcalloc(1, sizeof(pb_version));
		rc = version_parse(&m->versions[0],
				   json_object_get(jm, "prices"), next_id, err);
	}
	if (rc != 0 && err != NULL) {
		char tmp[sizeof(err->msg) + 600];
		snprintf(tmp, sizeof(tmp), "%.200s/%.200s: %s", provider,
			 m->id, err->msg);
		memcpy(err->msg, tmp, sizeof(err->msg) - 1);
		err->msg[sizeof(err->msg) - 1] = '\0';
	}
	return rc;
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
	p->id = tally_pb__lower_dup(json_string_value(v));
	v = json_object_get(jp, "provider_match");
	if (v != NULL && !json_is_null(v)) {
		rc = tally_pb__rule_parse(&p->provider_match, v, err);
		if (rc != 0)
			return rc;
		p->has_pmatch = true;
	}
	v = json_object_get(jp, "model_match");
	if (v != NULL && !json_is_null(v)) {
		rc = tally_pb__rule_parse(&p->model_match, v, err);
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
		rc = model_parse(&p->models[p->nmodels++], jm, p->id, next_id,
				 err);
		if (rc != 0)
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
	pb = tally_pb__book_new();
	pb->providers = tally_xcalloc(json_array_size(root) + 1,
				      sizeof(pb_provider));
	json_array_foreach(root, i, jp) {
		rc = provider_parse(&pb->providers[pb->nproviders++], jp,
				    &next_id, err);
		if (rc != 0)
			goto cleanup;
	}
	tally_pb__resolve_fallbacks(pb);
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

