#ifndef TALLY_TESTS_AGGREGATE_SUPPORT_H
#define TALLY_TESTS_AGGREGATE_SUPPORT_H

/*
 * aggregate_support.h - a tiny deterministic generator of rated usage
 * events for the aggregate tests, with the exact totals it implies, and a
 * few SQL helpers. Event i is fully determined by (seed, i): tenant, meter,
 * quantities and cost; nothing random, so expected totals are exact.
 */

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "tally/codec.h"
#include "tally/event.h"
#include "tally/money.h"
#include "test_support.h"

#define AGG_TENANTS 8

/* tenant k: 00000000-0000-4000-8000-0000000000kk */
static inline void agg_tenant(uint8_t out[16], int k)
{
	memset(out, 0, 16);
	out[6] = 0x40;
	out[8] = 0x80;
	out[15] = (uint8_t)(k + 1);
	out[14] = (uint8_t)0xa0;
}

typedef struct agg_gen {
	char id[48];
	char source[32];
	tally_rated_event re;
} agg_gen;

/*
 * Fill g with event i at time base_ms + i seconds (modulo an hour, so a
 * run stays within a couple of hours): meter by i % 10 (6 AI, 2 workflow,
 * 2 api), tenant by i % AGG_TENANTS.
 */
static inline void agg_gen_event(agg_gen *g, uint32_t seed, int64_t i,
				 int64_t base_ms)
{
	tally_rated_event *re = &g->re;
	tally_usage_event *ev = &re->ev;
	int kind = (int)(i % 10);

	memset(re, 0, sizeof(*re));
	snprintf(g->id, sizeof(g->id), "ev-%u-%" PRId64, seed, i);
	snprintf(g->source, sizeof(g->source), "gen/%u", seed);
	ev->id.ptr = g->id;
	ev->id.len = (uint32_t)strlen(g->id);
	ev->source.ptr = g->source;
	ev->source.len = (uint32_t)strlen(g->source);
	agg_tenant(ev->tenant_id, (int)(i % AGG_TENANTS));
	ev->time_ms = base_ms + (i % 3600) * 1000;
	if (kind < 6) {
		ev->meter = TALLY_METER_AI_TOKENS;
		ev->provider.ptr = "openai";
		ev->provider.len = 6;
		ev->model.ptr = (kind & 1) ? "gpt-4o" : "gpt-4o-mini";
		ev->model.len = (uint32_t)strlen(ev->model.ptr);
		ev->input_tokens = 100 + i % 1000;
		ev->cache_read_tokens = i % 50;
		ev->output_tokens = 10 + i % 300;
		re->cost = 1000000 * (1 + i % 97); /* pico */
		re->components[TALLY_COMP_INPUT] = re->cost;
		re->price_id = (kind & 1) ? 11 : 12;
	} else if (kind < 8) {
		ev->meter = TALLY_METER_WORKFLOW;
		ev->workflow_id.ptr = "wf-1";
		ev->workflow_id.len = 4;
		ev->steps = 1 + i % 7;
		ev->complexity = 1 + i % 13;
		re->cost = ev->complexity * INT64_C(2000000000);
		re->components[TALLY_COMP_UNITS] = re->cost;
		re->price_id = 900000001;
	} else {
		ev->meter = TALLY_METER_API_CALL;
		ev->count = 1 + i % 5;
		re->cost = ev->count * INT64_C(100000000);
		re->components[TALLY_COMP_UNITS] = re->cost;
		re->price_id = 900000003;
	}
	memcpy(re->currency, "USD", 4);
	re->rated_at_ms = base_ms;
}

typedef struct agg_expect {
	int64_t ai, in, out, cr, wf, wu, api;
	tally_money128 cost;
} agg_expect;

static inline void agg_expect_add(agg_expect *x, const tally_rated_event *re)
{
	const tally_usage_event *ev = &re->ev;

	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		x->ai++;
		x->in += ev->input_tokens;
		x->out += ev->output_tokens;
		x->cr += ev->cache_read_tokens;
		break;
	case TALLY_METER_WORKFLOW:
		x->wf++;
		x->wu += ev->complexity;
		break;
	case TALLY_METER_API_CALL:
		x->api += ev->count;
		break;
	default:
		break;
	}
	x->cost += re->cost;
}

/* Encode into a fresh sbuffer (caller destroys). */
static inline void agg_encode(msgpack_sbuffer *sb, const tally_rated_event *re)
{
	msgpack_sbuffer_init(sb);
	tally_codec_encode_rated(sb, re);
}

/* One text value from a query (static buffer; asserts exactly one row). */
static inline const char *agg_query1(PGconn *c, const char *sql)
{
	static char buf[256];
	PGresult *r = PQexec(c, sql);

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
		      PQerrorMessage(c));
	ck_assert_msg(PQntuples(r) == 1, "%s: %d rows", sql, PQntuples(r));
	snprintf(buf, sizeof(buf), "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return buf;
}

static inline int64_t agg_query_i64(PGconn *c, const char *sql)
{
	int64_t v = 0;
	const char *s = agg_query1(c, sql);

	ck_assert_msg(tally_parse_i64(&v, s) == 0, "%s: not an integer: %s",
		      sql, s);
	return v;
}

/*
 * Compare tenant_period_usage and usage_hourly sums with x (whole table)
 * and the ledger's row count with rows.
 */
static inline void agg_check_totals(PGconn *c, const agg_expect *x,
				    int64_t rows)
{
	char cost[64], sql[512];

	tally_money_fmt128(cost, sizeof(cost), x->cost);
	ck_assert_int_eq(agg_query_i64(c, "SELECT count(*) FROM usage_ledger"),
			 rows);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(ai_requests),0)"
				       " FROM tenant_period_usage"), x->ai);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(input_tokens),0)"
				       " FROM tenant_period_usage"), x->in);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(output_tokens),0)"
				       " FROM tenant_period_usage"), x->out);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(cache_read_tokens),"
				       "0) FROM tenant_period_usage"), x->cr);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum("
				       "workflow_executions),0) FROM "
				       "tenant_period_usage"), x->wf);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum("
				       "workflow_complexity_units),0) FROM "
				       "tenant_period_usage"), x->wu);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(api_calls),0)"
				       " FROM tenant_period_usage"), x->api);
	snprintf(sql, sizeof(sql), "SELECT (SELECT coalesce(sum(cost),0) FROM "
		 "tenant_period_usage) = %s::numeric", cost);
	ck_assert_msg(strcmp(agg_query1(c, sql), "t") == 0,
		      "period cost should be %s, is %s", cost,
		      agg_query1(c, "SELECT sum(cost) FROM tenant_period_usage"));
	snprintf(sql, sizeof(sql), "SELECT (SELECT coalesce(sum(cost),0) FROM "
		 "usage_hourly) = %s::numeric", cost);
	ck_assert_msg(strcmp(agg_query1(c, sql), "t") == 0,
		      "hourly cost should be %s", cost);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(events),0) FROM "
				       "usage_hourly WHERE meter = 'ai.tokens'"),
			 x->ai);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(input_tokens),0)"
				       " FROM usage_hourly"), x->in);
	ck_assert_int_eq(agg_query_i64(c, "SELECT coalesce(sum(quantity),0) FROM"
				       " usage_hourly WHERE meter = 'api.call'"),
			 x->api);
}

#endif /* TALLY_TESTS_AGGREGATE_SUPPORT_H */
