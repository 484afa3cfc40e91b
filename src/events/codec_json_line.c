/*
 * codec_json_line.c - one JSON text (a line of `tally produce`) straight
 * into the validation core, without building a jansson tree: the keys and
 * values are handed to the core as views into the line, nothing is
 * allocated. It reads the plain shape events have: one object, "data" and
 * "components" objects in it, ASCII strings without escapes, integers,
 * true/false/null. Anything else (an escape, a non-ASCII byte, a float, an
 * array, another nesting, a number jansson might refuse, a key repeated, a
 * syntax error) or any rejection by the core sends the whole line to the
 * jansson path (codec_json.c, JSON_REJECT_DUPLICATES), so every verdict,
 * reason and message is exactly the one jansson and the core give.
 */
#include "tally/codec_json.h"

#include <string.h>

#include "codec_int.h"

#define MAX_KEYS 32 /* per object; more: the jansson path */

typedef struct reader {
	const char *p, *end;
	tally_codec__st *st;
} reader;

static void ws(reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' ||
				 *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* A string without escapes or non-ASCII bytes; 0, or -1 (jansson path). */
static int str(reader *r, const char **s, uint32_t *len)
{
	const char *q;

	if (r->p >= r->end || *r->p != '"')
		return -1;
	q = ++r->p;
	while (q < r->end && *q != '"') {
		unsigned char c = (unsigned char)*q;

		if (c < 0x20 || c >= 0x80 || c == '\\')
			return -1;
		q++;
	}
	if (q >= r->end || q - r->p > UINT32_MAX)
		return -1;
	*s = r->p;
	*len = (uint32_t)(q - r->p);
	r->p = q + 1;
	return 0;
}

/* An integer as JSON and jansson read it (fits int64; no leading 0). */
static int integer(reader *r, int64_t *out)
{
	bool neg = false;
	uint64_t v = 0;
	int digits = 0;

	if (*r->p == '-') {
		neg = true;
		r->p++;
	}
	if (r->p < r->end && *r->p == '0' && r->p + 1 < r->end &&
	    r->p[1] >= '0' && r->p[1] <= '9')
		return -1;
	while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
		if (++digits > 18)
			return -1; /* may not fit: let jansson say */
		v = v * 10 + (uint64_t)(*r->p++ - '0');
	}
	if (digits == 0 || (r->p < r->end && (*r->p == '.' || *r->p == 'e' ||
					      *r->p == 'E')))
		return -1;
	*out = neg ? -(int64_t)v : (int64_t)v;
	return 0;
}

static int literal(reader *r, const char *lit, size_t n)
{
	if ((size_t)(r->end - r->p) < n || memcmp(r->p, lit, n) != 0)
		return -1;
	r->p += n;
	return 0;
}

/* A scalar value into v; a '{' is left for the caller (kind MAP). */
static int value(reader *r, tally_codec__val *v)
{
	memset(v, 0, sizeof(*v));
	if (r->p >= r->end)
		return -1;
	switch (*r->p) {
	case '"':
		v->kind = TALLY_CV_STR;
		return str(r, &v->s, &v->len);
	case '{':
		v->kind = TALLY_CV_MAP;
		return 0;
	case 't':
		v->kind = TALLY_CV_BOOL;
		v->b = true;
		return literal(r, "true", 4);
	case 'f':
		v->kind = TALLY_CV_BOOL;
		return literal(r, "false", 5);
	case 'n':
		v->kind = TALLY_CV_NIL;
		return literal(r, "null", 4);
	default:
		if (*r->p == '-' || (*r->p >= '0' && *r->p <= '9')) {
			v->kind = TALLY_CV_INT;
			return integer(r, &v->i);
		}
		return -1;
	}
}

static bool repeated(const char *const *keys, const uint32_t *lens, int n,
		     const char *k, uint32_t kl)
{
	int i;

	for (i = 0; i < n; i++)
		if (lens[i] == kl && memcmp(keys[i], k, kl) == 0)
			return true;
	return false;
}

/* An object at r->p ('{') in scope sc; depth 0 = the line's object. */
static int object(reader *r, tally_codec__scope sc, int depth)
{
	const char *keys[MAX_KEYS];
	uint32_t lens[MAX_KEYS];
	int n = 0, rc;

	r->p++; /* '{' */
	ws(r);
	if (r->p < r->end && *r->p == '}') {
		r->p++;
		return 0;
	}
	for (;;) {
		tally_codec__val v;
		const char *k;
		uint32_t kl;

		if (n == MAX_KEYS || str(r, &k, &kl) != 0 ||
		    repeated(keys, lens, n, k, kl))
			return -1;
		/* the core takes NUL-free keys by length; none has a NUL */
		keys[n] = k;
		lens[n++] = kl;
		ws(r);
		if (r->p >= r->end || *r->p++ != ':')
			return -1;
		ws(r);
		if (value(r, &v) != 0)
			return -1;
		rc = tally_codec__field(r->st, sc, k, kl, &v);
		if (rc == TALLY_CODEC__DESCEND && depth == 0) {
			if (object(r, tally_codec__str_is(k, kl, "data") ?
					      TALLY_CODEC__DATA :
					      TALLY_CODEC__COMPONENTS,
				   1) != 0)
				return -1;
		} else if (rc != 0 || v.kind == TALLY_CV_MAP) {
			return -1; /* rejected, or a map to skip: jansson */
		}
		ws(r);
		if (r->p < r->end && *r->p == ',') {
			r->p++;
			ws(r);
			continue;
		}
		if (r->p < r->end && *r->p == '}') {
			r->p++;
			return 0;
		}
		return -1;
	}
}

/* The fast path; 0 when it accepted the line, -1: ask jansson. */
static int fast(tally_codec__st *st, const char *s, size_t n)
{
	reader r;

	r.p = s;
	r.end = s + n;
	r.st = st;
	ws(&r);
	if (r.p >= r.end || *r.p != '{' || object(&r, TALLY_CODEC__TOP, 0) != 0)
		return -1;
	ws(&r);
	if (r.p != r.end)
		return -1;
	return tally_codec__finish(st) == 0 ? 0 : -1;
}

void tally_json_line_init(tally_json_line *l)
{
	l->held = NULL;
}

void tally_json_line_release(tally_json_line *l)
{
	json_decref(l->held);
	l->held = NULL;
}

int tally_codec_from_json_line(tally_json_schema what, void *out,
			       const char *s, size_t n, tally_json_line *l,
			       tally_codec_error *err)
{
	static const tally_codec__what core[] = {
		[TALLY_JSON_USAGE] = TALLY_CODEC__USAGE,
		[TALLY_JSON_RATED] = TALLY_CODEC__RATED,
		[TALLY_JSON_COMMAND] = TALLY_CODEC__COMMAND,
	};
	tally_codec__st st;
	json_error_t jerr;

	tally_json_line_release(l);
	tally_codec__begin(&st, core[what], out, err);
	if (fast(&st, s, n) == 0)
		return 0;
	l->held = json_loadb(s, n, JSON_REJECT_DUPLICATES, &jerr);
	if (l->held == NULL)
		return tally_codec__fail(err, "bad_json", "", "%s", jerr.text);
	if (what == TALLY_JSON_COMMAND)
		return tally_codec_command_from_json(out, l->held, err);
	if (what == TALLY_JSON_RATED)
		return tally_codec_rated_from_json(out, l->held, err);
	return tally_codec_usage_from_json(out, l->held, err);
}
