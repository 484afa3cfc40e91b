/*
 * stripe_form.c - Stripe's request encoding: a JSON object as
 * application/x-www-form-urlencoded with bracketed keys
 * (items[0][price]=..., metadata[plan]=..., expand[]=...).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/stripe.h"

#include "base/strbuf.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add_escaped(tally_strbuf *b, const char *s, size_t n)
{
	char *e = curl_easy_escape(NULL, s, (int)n);

	if (e == NULL)
		abort(); /* allocation failure, as tally_xmalloc */
	tally_strbuf_puts(b, e);
	curl_free(e);
}

static void add_pair(tally_strbuf *out, const char *key, const char *val)
{
	if (out->len > 0)
		tally_strbuf_add(out, "&", 1);
	add_escaped(out, key, strlen(key));
	tally_strbuf_add(out, "=", 1);
	add_escaped(out, val, strlen(val));
}

static int encode_value(tally_strbuf *out, tally_strbuf *key, const json_t *v,
			tally_error *err);

static int encode_child(tally_strbuf *out, tally_strbuf *key, const char *seg,
			const json_t *v, tally_error *err)
{
	size_t keep = key->len;
	int rc;

	if (keep > 0) {
		tally_strbuf_add(key, "[", 1);
		tally_strbuf_puts(key, seg);
		tally_strbuf_add(key, "]", 1);
	} else {
		tally_strbuf_puts(key, seg);
	}
	rc = encode_value(out, key, v, err);
	tally_strbuf_truncate(key, keep);
	return rc;
}

static int encode_value(tally_strbuf *out, tally_strbuf *key, const json_t *v,
			tally_error *err)
{
	char num[32];
	const char *k;
	json_t *item;
	size_t i;
	int rc;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		json_object_foreach((json_t *)v, k, item) {
			rc = encode_child(out, key, k, item, err);
			if (rc != 0)
				return rc;
		}
		return 0;
	case JSON_ARRAY:
		json_array_foreach(v, i, item) {
			if (json_is_object(item) || json_is_array(item)) {
				snprintf(num, sizeof(num), "%zu", i);
				rc = encode_child(out, key, num, item, err);
			} else {
				rc = encode_child(out, key, "", item, err);
			}
			if (rc != 0)
				return rc;
		}
		return 0;
	case JSON_STRING:
		add_pair(out, tally_strbuf_cstr(key), json_string_value(v));
		return 0;
	case JSON_INTEGER:
		snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
			 json_integer_value(v));
		add_pair(out, tally_strbuf_cstr(key), num);
		return 0;
	case JSON_TRUE:
		add_pair(out, tally_strbuf_cstr(key), "true");
		return 0;
	case JSON_FALSE:
		add_pair(out, tally_strbuf_cstr(key), "false");
		return 0;
	case JSON_NULL:
		add_pair(out, tally_strbuf_cstr(key), "");
		return 0;
	case JSON_REAL:
	default:
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe form: %s: non-integer number",
				       tally_strbuf_cstr(key));
	}
}

int tally_stripe_form_encode(char **out, const json_t *params,
			     tally_error *err)
{
	tally_strbuf body = TALLY_STRBUF_INIT, key = TALLY_STRBUF_INIT;
	int rc = 0;

	*out = NULL;
	tally_strbuf_add(&body, "", 0);
	if (params != NULL) {
		if (!json_is_object(params)) {
			rc = tally_error_set(err, TALLY_EINVALID,
					     "stripe form: params not an object");
			goto cleanup;
		}
		tally_strbuf_add(&key, "", 0);
		rc = encode_value(&body, &key, params, err);
		if (rc != 0)
			goto cleanup;
	}
	*out = tally_strbuf_detach(&body);
cleanup:
	tally_strbuf_free(&body);
	tally_strbuf_free(&key);
	return rc;
}
