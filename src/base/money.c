/*
 * money.c - exact decimal <-> pico-unit conversion and checked arithmetic.
 * Everything is integer: a decimal string is read digit by digit into a
 * 128-bit accumulator, so "0.1" is exactly 100000000000 pico.
 */
#include "tally/money.h"

#include <string.h>

int tally_money_parse(int64_t *out, const char *s, size_t len)
{
	tally_money128 v;
	int rc = tally_money_parse128(&v, s, len);

	if (rc != 0)
		return rc;
	if (v > (tally_money128)INT64_MAX || v < -(tally_money128)INT64_MAX)
		return TALLY_EOVERFLOW;
	*out = (int64_t)v;
	return 0;
}

int tally_money_parse128(tally_money128 *out, const char *s, size_t len)
{
	size_t i = 0;
	bool neg = false, seen_digit = false, seen_dot = false;
	int frac = 0, exp = 0, exp_sign = 1, exp_digits = 0;
	tally_money128 acc = 0;
	const tally_money128 lim = (tally_money128)1 << 100;

	if (len > 0 && (s[0] == '-' || s[0] == '+')) {
		neg = s[0] == '-';
		i++;
	}
	for (; i < len; i++) {
		char c = s[i];

		if (c >= '0' && c <= '9') {
			seen_digit = true;
			if (acc > lim)
				return TALLY_EOVERFLOW;
			acc = acc * 10 + (c - '0');
			if (seen_dot)
				frac++;
		} else if (c == '.' && !seen_dot) {
			seen_dot = true;
		} else if ((c == 'e' || c == 'E') && seen_digit) {
			i++;
			if (i < len && (s[i] == '-' || s[i] == '+')) {
				exp_sign = s[i] == '-' ? -1 : 1;
				i++;
			}
			for (; i < len; i++) {
				if (s[i] < '0' || s[i] > '9' || exp > 100)
					return TALLY_EINVALID;
				exp = exp * 10 + (s[i] - '0');
				exp_digits++;
			}
			if (exp_digits == 0)
				return TALLY_EINVALID;
			break;
		} else {
			return TALLY_EINVALID;
		}
	}
	if (!seen_digit)
		return TALLY_EINVALID;
	/* value = acc * 10^(exp*sign - frac); want value * 10^12 */
	int shift = 12 + exp_sign * exp - frac;
	while (shift > 0) {
		if (acc > lim)
			return TALLY_EOVERFLOW;
		acc *= 10;
		shift--;
	}
	while (shift < 0) {
		if (acc % 10 != 0)
			return TALLY_EINVALID; /* finer than a pico-unit */
		acc /= 10;
		shift++;
	}
	*out = neg ? -acc : acc;
	return 0;
}

size_t tally_money_fmt128(char *out, size_t outlen, tally_money128 pico)
{
	char digits[64];
	size_t nd = 0, n = 0, i;
	unsigned __int128 v;
	bool neg = pico < 0;
	char buf[80];
	int frac_len = 12;

	v = neg ? (unsigned __int128)(-(pico + 1)) + 1 : (unsigned __int128)pico;
	/* 64-bit divisions while the value fits: a 128-bit division per
	 * digit (__udivti3) was the top symbol of tally-rate's profile */
	while (v > UINT64_MAX) {
		digits[nd++] = (char)('0' + (int)(v % 10));
		v /= 10;
	}
	{
		uint64_t v64 = (uint64_t)v;

		do {
			digits[nd++] = (char)('0' + (int)(v64 % 10));
			v64 /= 10;
		} while (v64 != 0);
	}
	while (nd <= 12)
		digits[nd++] = '0';
	/* digits[] is little-endian; trim trailing fractional zeros */
	size_t lo = 0;
	while (lo < 12 && digits[lo] == '0') {
		lo++;
		frac_len--;
	}
	if (neg)
		buf[n++] = '-';
	for (i = nd; i > 12; i--)
		buf[n++] = digits[i - 1];
	if (frac_len > 0) {
		buf[n++] = '.';
		for (i = 12; i > lo; i--)
			buf[n++] = digits[i - 1];
	}
	buf[n] = '\0';
	if (outlen > 0) {
		size_t c = n < outlen - 1 ? n : outlen - 1;
		memcpy(out, buf, c);
		out[c] = '\0';
	}
	return n;
}

/* The same text as tally_money_fmt128 with 64-bit arithmetic only and the
 * digits written once, right to left (tally-rate formats four amounts
 * per event). */
size_t tally_money_fmt(char *out, size_t outlen, int64_t pico)
{
	char buf[32];
	char *end = buf + sizeof(buf), *p = end;
	uint64_t v = pico < 0 ? -(uint64_t)pico : (uint64_t)pico;
	uint64_t ip = v / UINT64_C(1000000000000);
	uint64_t fp = v % UINT64_C(1000000000000);
	size_t n;
	int fl = 12;

	if (fp != 0) {
		while (fp % 10 == 0) {
			fp /= 10;
			fl--;
		}
		while (fl-- > 0) {
			*--p = (char)('0' + fp % 10);
			fp /= 10;
		}
		*--p = '.';
	}
	do {
		*--p = (char)('0' + ip % 10);
		ip /= 10;
	} while (ip != 0);
	if (pico < 0)
		*--p = '-';
	n = (size_t)(end - p);
	if (outlen > 0) {
		size_t c = n < outlen - 1 ? n : outlen - 1;

		memcpy(out, p, c);
		out[c] = '\0';
	}
	return n;
}

int tally_money_add(int64_t *out, int64_t a, int64_t b)
{
	if (__builtin_add_overflow(a, b, out))
		return TALLY_EOVERFLOW;
	return 0;
}

int tally_money_muldiv(int64_t *out, int64_t qty, int64_t price, int64_t div)
{
	tally_money128 p = (tally_money128)qty * price;
	tally_money128 q = p / div, r = p % div;
	tally_money128 r2 = r < 0 ? -r : r;

	/* round half to even */
	if (r2 * 2 > div || (r2 * 2 == div && (q % 2) != 0))
		q += p < 0 ? -1 : 1;
	if (q > INT64_MAX || q < INT64_MIN)
		return TALLY_EOVERFLOW;
	*out = (int64_t)q;
	return 0;
}

tally_money128 tally_money_round_minor(tally_money128 pico, int digits)
{
	tally_money128 div = 1;
	int i;

	for (i = 0; i < 12 - digits; i++)
		div *= 10;
	tally_money128 q = pico / div, r = pico % div;
	if (r < 0)
		r = -r;
	if (r * 2 >= div)
		q += pico < 0 ? -1 : 1;
	return q;
}

static void put16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)((v >> 8) & 0xff);
	p[1] = (uint8_t)(v & 0xff);
}

size_t tally_money_pgnumeric(uint8_t out[TALLY_PGNUMERIC_LEN],
			     tally_money128 pico)
{
	unsigned __int128 a = pico < 0 ? (unsigned __int128)0 -
					 (unsigned __int128)pico :
					 (unsigned __int128)pico;
	unsigned __int128 ip = a / UINT64_C(1000000000000);
	uint64_t fp = (uint64_t)(a % UINT64_C(1000000000000)), f = fp;
	unsigned g[7];
	int i, dscale = 12;

	if (f == 0)
		dscale = 0;
	else
		while (f % 10 == 0) {
			f /= 10;
			dscale--;
		}
	for (i = 6; i >= 0; i--) {    /* |pico| < 2^127 < 10^28 units */
		g[i] = (unsigned)(ip % 10000);
		ip /= 10000;
	}
	put16(out, 10);                       /* ndigits */
	put16(out + 2, 6);                    /* weight: 10000^6 */
	put16(out + 4, pico < 0 ? 0x4000 : 0);/* sign */
	put16(out + 6, (unsigned)dscale);
	for (i = 0; i < 7; i++)
		put16(out + 8 + 2 * i, g[i]);
	put16(out + 22, (unsigned)(fp / 100000000));
	put16(out + 24, (unsigned)(fp / 10000 % 10000));
	put16(out + 26, (unsigned)(fp % 10000));
	return TALLY_PGNUMERIC_LEN;
}
