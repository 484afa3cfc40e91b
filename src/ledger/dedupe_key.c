/*
 * dedupe_key.c - the dedupe key of an event from its source and id (no
 * I/O): time-led for UUIDv7 and ULID ids, md5 with the top bit set for any
 * other (tally/dedupe_key.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/dedupe_key.h"
#include "tally/common.h"
#include "tally/digest.h"
#include "tally/event.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/* Crockford base32 value of c (either case; I, L, O, U are not ULID
 * characters), or -1. */
static int b32val(char c)
{
	static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	const char *p;

	if (c >= 'a' && c <= 'z')
		c = (char)(c - 'a' + 'A');
	if (c == '\0')
		return -1;
	p = strchr(alphabet, c);
	return p != NULL ? (int)(p - alphabet) : -1;
}

static int64_t uuid7_time(const char *id)
{
	int64_t t = 0;
	int i;

	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (id[i] != '-')
				return -1;
		} else if (tally_hex_digit(id[i]) < 0) {
			return -1;
		}
	}
	if (id[14] != '7' || strchr("89abAB", id[19]) == NULL)
		return -1;
	for (i = 0; i < 13; i++)
		if (i != 8)
			t = t * 16 + tally_hex_digit(id[i]);
	return t;
}

static int64_t ulid_time(const char *id)
{
	int64_t t = 0;
	int i;

	if (id[0] < '0' || id[0] > '7')
		return -1;
	for (i = 0; i < 26; i++)
		if (b32val(id[i]) < 0)
			return -1;
	for (i = 0; i < 10; i++)
		t = t * 32 + b32val(id[i]);
	return t;
}

int64_t tally_id_time_ms(const char *id, size_t len)
{
	if (len == 36)
		return uuid7_time(id);
	if (len == 26)
		return ulid_time(id);
	return -1;
}

/* "<len>:" in decimal (what printf's "%zu:" writes, without printf: this
 * runs for every event); returns its length */
static int len_prefix(char *buf, size_t len)
{
	char d[20];
	int k = 0, n = 0;

	do {
		d[k++] = (char)('0' + len % 10);
		len /= 10;
	} while (len > 0);
	while (k > 0)
		buf[n++] = d[--k];
	buf[n++] = ':';
	return n;
}

int64_t tally_dedupe_key(uint8_t out[16], const char *source, size_t slen,
			 const char *id, size_t idlen,
			 int64_t timeled_from_ms)
{
	char buf[24 + TALLY_SOURCE_MAX + TALLY_ID_MAX];
	uint8_t md[16];
	unsigned int olen = 16;
	int64_t t, lo;
	int n, i;

	if (slen > TALLY_SOURCE_MAX)
		slen = TALLY_SOURCE_MAX; /* codec guarantees; be safe */
	if (idlen > TALLY_ID_MAX)
		idlen = TALLY_ID_MAX;
	n = len_prefix(buf, slen);
	memcpy(buf + n, source, slen);
	memcpy(buf + n + slen, id, idlen);
	if (EVP_Digest(buf, (size_t)n + slen + idlen, md, &olen, tally_md5(),
		       NULL) != 1)
		abort(); /* MD5 of memory fails only without memory */
	t = tally_id_time_ms(id, idlen);
	lo = timeled_from_ms > TALLY_DEDUPE_TIMELED_MIN_MS
		     ? timeled_from_ms
		     : TALLY_DEDUPE_TIMELED_MIN_MS;
	if (t >= lo && t < TALLY_DEDUPE_TIMELED_MAX_MS) {
		for (i = 0; i < 6; i++)
			out[i] = (uint8_t)(t >> (8 * (5 - i)));
		memcpy(out + 6, md, 10);
		return t;
	}
	memcpy(out, md, 16);
	out[0] |= 0x80;
	return -1;
}
