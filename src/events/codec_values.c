/*
 * codec_values.c - checks of single decoded values (tally_codec__val) for
 * the validation core: strings (length, UTF-8), integers and quantities
 * (ranges), times, UUIDs, booleans; and the error every rejection fills.
 */
#include "codec_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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


#define FAIL TALLY_CODEC__FAIL

bool tally_codec__str_is(const char *s, uint32_t len, const char *lit)
{
	size_t n;

	/* first byte first: most key lookups end here without a strlen */
	if (len == 0 || s[0] != lit[0])
		return len == 0 && lit[0] == '\0';
	n = strlen(lit);

	return n == len && memcmp(s, lit, n) == 0;
}


/* UTF-8 without overlongs/surrogates, and no control characters: these
 * strings end up in PostgreSQL text columns and log lines. */
static bool utf8_ok(const unsigned char *s, uint32_t len)
{
	const uint64_t ones = UINT64_C(0x0101010101010101);
	const uint64_t high = ones * 0x80;
	uint32_t i = 0;

	/* 8 bytes at a time while they are all printable ASCII (0x20-0x7e):
	 * no high bit, no byte below 0x20, none equal to 0x7f (the usual
	 * has-less / has-zero word tests); any other block goes byte by
	 * byte below */
	while (len - i >= 8) {
		uint64_t x, y;

		memcpy(&x, s + i, 8);
		y = x ^ (ones * 0x7f);
		if ((x & high) != 0 || ((x - ones * 0x20) & ~x & high) != 0 ||
		    ((y - ones) & ~y & high) != 0)
			break;
		i += 8;
	}
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

int tally_codec__get_str(tally_codec__st *st, const char *field,
			 const tally_codec__val *v, uint32_t max,
			 tally_str *out)
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

int tally_codec__get_int(tally_codec__st *st, const char *field,
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

int tally_codec__get_qty(tally_codec__st *st, const char *field,
			 const tally_codec__val *v, int64_t *out)
{
	return tally_codec__get_int(st, field, v, 0, TALLY_MAX_QUANTITY, out);
}

int tally_codec__get_time(tally_codec__st *st, const char *field,
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
		return tally_codec__get_int(st, field, v, 0,
					    TALLY_CODEC_TIME_MAX, out);
	return FAIL(st, "wrong_type", field,
		    "%s must be unix ms or an RFC 3339 string", field);
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
		hi = tally_hex_digit(s[i]);
		lo = tally_hex_digit(s[i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[k++] = (uint8_t)(hi << 4 | lo);
		i += 2;
	}
	return 0;
}

int tally_codec__get_uuid(tally_codec__st *st, const char *field,
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

int tally_codec__get_bool(tally_codec__st *st, const char *field,
			  const tally_codec__val *v, bool *out)
{
	if (v->kind != TALLY_CV_BOOL)
		return FAIL(st, "wrong_type", field, "%s must be a boolean",
			    field);
	*out = v->b;
	return 0;
}

