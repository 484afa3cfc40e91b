/*
 * pg_binary.h - PostgreSQL's binary wire format (COPY rows, array_send
 * arrays), big-endian, appended to a tally_strbuf (private to the
 * aggregator: copy.c, apply.c, hourly.c).
 */
#ifndef TALLY_LEDGER_PG_BINARY_H
#define TALLY_LEDGER_PG_BINARY_H

#include "base/strbuf.h"
#include "tally/money.h"

#include <stdint.h>
#include <string.h>

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

/*
 * The deltas go to PostgreSQL as parameters: one array per column, in
 * PostgreSQL's binary array format (array_send), unnested in SQL. Nothing
 * is formatted as text in C or parsed in PostgreSQL, and the statement
 * text is short and the same for every batch of the same shape. (A VALUES
 * list of literals, one row per key, cost ~400 ms of parse, analysis and
 * planning per 10 000 keys; text arrays ~25 ms of formatting in C plus
 * their parsing: see docs/aggregate.md, "Performance".)
 *
 * An array: ndim, has-nulls flag, element type OID, then per dimension its
 * length and lower bound, then each element as length + bytes. The header
 * is written when the first element is (col_begin) and its length patched
 * at the end (col_end); an array with no element is sent with ndim 0.
 */
#define OID_INT8 20
#define OID_INT4 23
#define OID_UUID 2950
#define OID_NUMERIC 1700

static inline void col_begin(tally_strbuf *b, uint32_t oid)
{
	tally_strbuf_reset(b);
	be32(b, 1);         /* ndim */
	be32(b, 0);         /* no NULLs */
	be32(b, oid);
	be32(b, 0);         /* dimension length: patched by col_end */
	be32(b, 1);         /* lower bound */
}

static inline void col_end(tally_strbuf *b, size_t n)
{
	if (n == 0) {
		b->len = 0;
		be32(b, 0);
		be32(b, 0);
		be32(b, 0);
	} else {
		put32_at(b, 12, (int64_t)n);
	}
}

static inline void col_i64(tally_strbuf *b, int64_t v) { f_i64(b, v); }
static inline void col_i32(tally_strbuf *b, int64_t v) { f_i32(b, v); }
static inline void col_uuid(tally_strbuf *b, const uint8_t *id) { f_uuid(b, id); }

static inline void col_cost(tally_strbuf *b, tally_money128 c) { f_money(b, c); }

/* $first .. $(first + n - 1) cast to the given types, comma-separated */
static inline void unnest_args(tally_strbuf *q, int first, const char *const *types,
			int n)
{
	int i;

	tally_strbuf_puts(q, "unnest(");
	for (i = 0; i < n; i++)
		tally_strbuf_printf(q, "%s$%d::%s[]", i ? ", " : "", first + i, types[i]);
	tally_strbuf_puts(q, ")");
}

static inline uint32_t type_oid(const char *t)
{
	if (strcmp(t, "uuid") == 0)
		return OID_UUID;
	if (strcmp(t, "int") == 0)
		return OID_INT4;
	if (strcmp(t, "numeric") == 0)
		return OID_NUMERIC;
	return OID_INT8;
}

static inline void cols_begin(tally_strbuf *b, const char *const *types, int n)
{
	int j;

	for (j = 0; j < n; j++)
		col_begin(&b[j], type_oid(types[j]));
}

static inline void cols_end(tally_strbuf *b, int n, size_t rows)
{
	int j;

	for (j = 0; j < n; j++)
		col_end(&b[j], rows);
}

#endif
