/*
 * aggregate_storage_support.h - storage carried from one period into the
 * next, for test_aggregate_storage_carry.c and
 * test_aggregate_storage_rollover.c: tenants with 25-day periods, storage
 * snapshots and API calls, and the exact expected GB-months and cost.
 */
#ifndef TALLY_TEST_AGGREGATE_STORAGE_SUPPORT_H
#define TALLY_TEST_AGGREGATE_STORAGE_SUPPORT_H

#include "aggregate_batch_support.h"

/*
 * Storage carried into a period without a snapshot of its own (a gauge
 * that reports only on change): the period opens with the last snapshot
 * before it and holds it to its end. The tenant's periods are 25 days
 * long (never a whole month, so fixed-length): P = [now - 30 d, now - 5 d),
 * P+1 = [now - 5 d, now + 20 d), the current one. Prices: the book's
 * 0.10 per GB-month (10^9 bytes for 30 days).
 */
#define CARRY_BYTES INT64_C(10000000000) /* 10 GB */
#define CARRY_DAYS 25

static inline void carry_tenant(char s[37], uint8_t t[16], int k, int64_t cps,
				int64_t cpe)
{
	char sql[512];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " current_period_start, current_period_end)"
		 " VALUES ('%s', 'c%d', 'c%d', 'c%d.example',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms')",
		 s, k, k, k, cps, cpe);
	tally_test_exec(dsn, sql);
}

static inline void add_snapshot(batch *b, const uint8_t t[16], int64_t i,
				int64_t at, int64_t bytes)
{
	agg_gen g;

	agg_gen_event(&g, 31, i, at);
	memcpy(g.re.ev.tenant_id, t, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = bytes;
	g.re.ev.time_ms = at;
	g.re.cost = 0;
	batch_add(b, &g.re, 1);
}

/* 4 API calls at 0.0001 (event 10 * i + 8 of the generator) */
static inline void add_calls(batch *b, const uint8_t t[16], int64_t i,
			     int64_t at)
{
	agg_gen g;

	agg_gen_event(&g, 32, 10 * i + 8, at);
	ck_assert_int_eq(g.re.ev.meter, TALLY_METER_API_CALL);
	ck_assert_int_eq(g.re.ev.count, 4);
	memcpy(g.re.ev.tenant_id, t, 16);
	g.re.ev.time_ms = at;
	ck_assert_int_eq(g.re.cost, INT64_C(400000000));
	batch_add(b, &g.re, 2);
}

/* q = round_half_even(n / d), n >= 0, d > 0 */
static inline unsigned __int128 div_half_even(unsigned __int128 n,
					      unsigned __int128 d)
{
	unsigned __int128 q = n / d, r = n % d;

	if (2 * r > d || (2 * r == d && q % 2 == 1))
		q++;
	return q;
}

static inline void fmt_u128(char *out, size_t len, unsigned __int128 v)
{
	char tmp[48];
	size_t n = 0, i = 0;

	do {
		tmp[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v != 0);
	while (n > 0 && i + 1 < len)
		out[i++] = tmp[--n];
	out[i] = '\0';
}

/*
 * "byte_ms gb_months storage_cost" of bytes held for days: GB-months to
 * 12 places; cost = bytes * ms * 0.10 / (10^9 * 30 d), half-even at the
 * pico (10^-12).
 */
static inline void carry_expect(char *out, size_t len, int64_t bytes,
				int64_t days)
{
	const unsigned __int128 gbm = (unsigned __int128)1000000000 *
				      (30 * (unsigned __int128)DAY_MS);
	unsigned __int128 bms = (unsigned __int128)bytes * (days * DAY_MS);
	unsigned __int128 g12, c12;
	char b[48], g[48], c[48];

	g12 = div_half_even(bms * 1000000000000u, gbm);
	c12 = div_half_even(bms * 100000000000u, gbm); /* 0.10 in pico */
	fmt_u128(b, sizeof(b), bms);
	snprintf(g, sizeof(g), "%" PRIu64 ".%012" PRIu64,
		 (uint64_t)(g12 / 1000000000000u),
		 (uint64_t)(g12 % 1000000000000u));
	tally_money_fmt(c, sizeof(c), (int64_t)c12);
	snprintf(out, len, "%s %s %s", b, g, c);
}

static inline const char *carry_row(const char *s, int64_t ps)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT storage_byte_ms::text || ' ' || storage_gb_months::text"
		 " || ' ' || storage_cost::text FROM tenant_period_usage WHERE"
		 " tenant_id = '%s' AND period_start = timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms'", s, ps);
	return agg_query1(chk, sql);
}

static inline int64_t carry_i64(const char *col, const char *s, int64_t ps)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT %s FROM tenant_period_usage WHERE tenant_id = '%s'"
		 " AND period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", col, s, ps);
	return agg_query_i64(chk, sql);
}

#endif
