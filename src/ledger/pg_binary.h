/*
 * pg_binary.h - PostgreSQL's binary wire format (COPY rows, array_send
 * arrays), big-endian, appended to a tally_strbuf (private to the
 * aggregator: copy.c and apply.c).
 */
#ifndef TALLY_LEDGER_PG_BINARY_H
#define TALLY_LEDGER_PG_BINARY_H

#include "base/strbuf.h"
#include "tally/money.h"

#include <stdint.h>

static inline void be16(tally_strbuf *b, int v)
{
	char x[2] = { (char)((v >> 8) & 0xff), (char)(v & 0xff) };

	tally_strbuf_add(b, x, 2);
}

static inline void be32(tally_strbuf *b, int64_t v)
{
	char x[4];
	int i;

	for (i = 3; i >= 0; i--, v >>= 8)
		x[i] = (char)(v & 0xff);
	tally_strbuf_add(b, x, 4);
}

static inline void be64(tally_strbuf *b, int64_t v)
{
	char x[8];
	uint64_t u = (uint64_t)v;
	int i;

	for (i = 7; i >= 0; i--, u >>= 8)
		x[i] = (char)(u & 0xff);
	tally_strbuf_add(b, x, 8);
}

static inline void f_null(tally_strbuf *b) { be32(b, -1); }
static inline void f_i16(tally_strbuf *b, int64_t v) { be32(b, 2); be16(b, (int)v); }
static inline void f_i32(tally_strbuf *b, int64_t v) { be32(b, 4); be32(b, v); }
static inline void f_i64(tally_strbuf *b, int64_t v) { be32(b, 8); be64(b, v); }

static inline void f_uuid(tally_strbuf *b, const uint8_t *u)
{
	be32(b, 16);
	tally_strbuf_add(b, (const char *)u, 16);
}

/* microseconds since 2000-01-01 UTC, PostgreSQL's timestamptz */
static inline void f_ts(tally_strbuf *b, int64_t ms)
{
	f_i64(b, (ms - INT64_C(946684800000)) * 1000);
}

/* an amount as binary numeric, exact (tally_money_pgnumeric) */
static inline void f_money(tally_strbuf *b, tally_money128 pico)
{
	uint8_t n[TALLY_PGNUMERIC_LEN];

	be32(b, (int64_t)tally_money_pgnumeric(n, pico));
	tally_strbuf_add(b, (const char *)n, sizeof(n));
}

static inline void put32_at(tally_strbuf *b, size_t at, int64_t v)
{
	int i;

	for (i = 3; i >= 0; i--, v >>= 8)
		b->p[at + (size_t)i] = (char)(v & 0xff);
}

#endif
