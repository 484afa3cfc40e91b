/*
 * rerate_support.h - for the test_rerate*.c programs (`tally rerate`
 * against a real PostgreSQL, ledger rows written by the aggregate's batch
 * logic, no broker): the fixture, batches, under-priced calls, tenants
 * with a budget, one rerate run and the budget_state it leaves.
 */
#ifndef TALLY_TEST_RERATE_SUPPORT_H
#define TALLY_TEST_RERATE_SUPPORT_H

#include "aggregate_pg_support.h"
#include "tally/money.h"

static inline void setup(void)
{
	aggpg_setup("rer");
}

static inline void teardown(void)
{
	aggpg_teardown();
}

static inline tally_agg *new_agg(void)
{
	return aggpg_new(NULL, 0);
}

/* Process the batch (must succeed), then empty it. */
static inline void run(tally_agg *agg, batch *b, int64_t now)
{
	tally_agg_stats st;
	tally_error err;

	ck_assert_msg(tally_agg_process(agg, b->m, b->n, now, &st, &err) == 0,
		      "process: %s", err.msg);
	ck_assert_int_eq(st.accepted, (int64_t)b->n);
	batch_free(b);
}

/* An api.call event of tenant k priced at half the book's price (the
 * book's is 0.0001 a call): what rerate corrects. */
static inline void half_priced_call(agg_gen *g, int64_t i, int k, int64_t at,
			     int64_t count)
{
	agg_gen_event(g, 9, 8 + 10 * i, at);
	ck_assert_int_eq(g->re.ev.meter, TALLY_METER_API_CALL);
	agg_tenant(g->re.ev.tenant_id, k);
	g->re.ev.time_ms = at;
	g->re.ev.count = count;
	g->re.cost = count * INT64_C(50000000);
	g->re.price_id = 1;
}

static inline void add_tenant(int k, const char *budget)
{
	char sql[512], s[37];
	uint8_t t[16];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql), "INSERT INTO tenants (id, name, slug, domain,"
		 " monthly_budget) VALUES ('%s', 't%d', 't%d', 't%d.example',"
		 " %s)", s, k, k, k, budget);
	tally_test_exec(dsn, sql);
}

static size_t stage_bytes; /* tally_rerate_opts.stage_bytes of rerate() */

static inline void rerate(int64_t from, int64_t to, tally_rerate_stats *rs)
{
	tally_rerate_opts ro = { 0 };
	tally_pricebook *pb = NULL;
	tally_error err;

	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = from;
	ro.to_ms = to;
	ro.stage_bytes = stage_bytes;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, rs, &err) == 0, "%s",
		      err.msg);
	tally_pricebook_free(pb);
}

/* The budget_state of tenant k's period rows (one expected). */
static inline const char *budget_state(int k)
{
	char sql[256], s[37];
	uint8_t t[16];

	agg_tenant(t, k);
	tally_uuid_fmt(s, t);
	snprintf(sql, sizeof(sql), "SELECT budget_state FROM"
		 " tenant_period_usage WHERE tenant_id = '%s'", s);
	return agg_query1(chk, sql);
}

#endif
