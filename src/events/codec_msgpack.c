/*
 * codec_msgpack.c - decoding msgpack usage events, rated usage events and
 * commands (the schemas/ directory).
 *
 * Key design decision: decoding does not go through msgpack-c's object
 * tree. A small cursor reads the buffer in place, so a decode allocates
 * nothing, every string in the result is a view into the caller's buffer,
 * nesting is bounded while skipping unknown values and truncation/trailing
 * bytes are detected exactly. Validation itself lives in one core
 * (codec_fields.c) shared with the JSON reader (codec_json.c).
 */
#include "codec_int.h"

#include <string.h>

#define FAIL TALLY_CODEC__FAIL

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
 * elements are not (len = count). One switch over msgpack's format byte,
 * longer than ~80 lines: split, the format table would be scattered. */
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
				    tally_codec__str_is(k.s, k.len, "data") ?
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
