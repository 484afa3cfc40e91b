/*
 * test_aggregate_storage.c - storage snapshots in tally-aggregate's batch
 * logic against a real PostgreSQL become exact GB-months, for one tenant
 * and many, priced per segment with the book and adjusted when late.
 */
#include "aggregate_batch_support.h"

START_TEST(test_aggregate_storage_gb_months)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	agg_gen g;
	batch b = { 0 };
	char sql[1024];
	int64_t ps, pe;
	uint8_t t0[16];
	char s0[37];

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t0, 5);
	tally_uuid_fmt(s0, t0);
	ps = now - 10 * DAY_MS;
	pe = ps + 30 * DAY_MS;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " current_period_start, current_period_end)"
		 " VALUES ('%s', 't5', 't5', 't5.example',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms')",
		 s0, ps, pe);
	tally_test_exec(dsn, sql);
	agg = new_agg();
	/* 2 GB from day 1, 4 GB from day 4 (arriving first), 30-day period */
	agg_gen_event(&g, 4, 1, ps + 4 * DAY_MS);
	memcpy(g.re.ev.tenant_id, t0, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(4000000000);
	g.re.ev.time_ms = ps + 4 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 3);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	agg_gen_event(&g, 4, 2, ps + 1 * DAY_MS);
	memcpy(g.re.ev.tenant_id, t0, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(2000000000);
	g.re.ev.time_ms = ps + 1 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 3);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	/* (2 GB * 3 d + 4 GB * 26 d) / 30 d = 110/30 GB-months */
	snprintf(sql, sizeof(sql), "SELECT storage_gb_months::text || ' ' ||"
		 " storage_snapshots FROM tenant_period_usage WHERE tenant_id ="
		 " '%s'", s0);
	ck_assert_str_eq(agg_query1(chk, sql), "3.666666666667 2");
	tally_agg_free(agg);
}
END_TEST

/*
 * Many tenants' snapshots in one batch (the GB-month targets and the
 * segments of every tenant are matched by (tenant, period) in a hash
 * index): each tenant's integral is its own, exactly.
 */
START_TEST(test_aggregate_storage_many_tenants)
{
	enum { NT = 40 };
	int64_t now = tally_now_ms(), ps = now - 10 * DAY_MS;
	tally_agg *agg;
	tally_agg_stats st;
	agg_gen g;
	batch b = { 0 };
	char sql[512], *vals = tally_xcalloc(NT, 64);
	size_t vl = 0;
	int i, pass;

	memset(next_off, 0, sizeof(next_off));
	for (i = 0; i < NT; i++) {
		uint8_t t[16];
		char s0[37];

		agg_tenant(t, 100 + i);
		tally_uuid_fmt(s0, t);
		snprintf(sql, sizeof(sql),
			 "INSERT INTO tenants (id, name, slug, domain,"
			 " current_period_start, current_period_end)"
			 " VALUES ('%s', 's%d', 's%d', 's%d.example',"
			 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
			 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms')",
			 s0, i, i, i, ps, ps + 30 * DAY_MS);
		tally_test_exec(dsn, sql);
		vl += (size_t)snprintf(vals + vl, NT * 64 - vl, "%s('%s', %d)",
				       i ? "," : "", s0, i + 1);
	}
	agg = new_agg();
	/* tenant k: 2k GB from day 4 (first batch), k GB from day 1 */
	for (pass = 0; pass < 2; pass++) {
		for (i = 0; i < NT; i++) {
			int64_t k = i + 1, at = ps + (pass ? 1 : 4) * DAY_MS;

			agg_gen_event(&g, 4, 1000 * pass + i, at);
			agg_tenant(g.re.ev.tenant_id, 100 + i);
			g.re.ev.meter = TALLY_METER_STORAGE;
			g.re.ev.bytes = (pass ? 1 : 2) * k * INT64_C(1000000000);
			g.re.ev.time_ms = at;
			g.re.cost = 0;
			batch_add(&b, &g.re, i % 4);
		}
		ck_assert_int_eq(run(agg, &b, now, &st), 0);
		ck_assert_int_eq(st.accepted, NT);
		batch_free(&b);
	}
	/* k GB * 3 d + 2k GB * 26 d = 55k GB-days, in byte-milliseconds */
	{
		char *q = tally_xcalloc(1, NT * 64 + 512);

		snprintf(q, NT * 64 + 512,
			 "SELECT count(*) FROM tenant_period_usage u JOIN"
			 " (VALUES %s) v(t, k) ON u.tenant_id = v.t::uuid"
			 " WHERE u.storage_byte_ms = v.k * 1000000000::numeric"
			 " * 55 * 86400000 AND u.storage_snapshots = 2", vals);
		ck_assert_str_eq(agg_query1(chk, q), "40");
		free(q);
	}
	free(vals);
	tally_agg_free(agg);
}
END_TEST

/* Storage GB-months priced per segment with the book (0.10/GB-month). */
START_TEST(test_aggregate_storage_priced_and_late_adjusted)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_pricebook *pb = NULL;
	tally_error err;
	agg_gen g;
	batch b = { 0 };
	char sql[1024];
	int64_t ps, pe;
	uint8_t t0[16], t6[16];
	char s0[37], s6[37];

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t0, 5);
	tally_uuid_fmt(s0, t0);
	agg_tenant(t6, 6);
	tally_uuid_fmt(s6, t6);
	ps = now - 10 * DAY_MS;
	pe = ps + 30 * DAY_MS;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " current_period_start, current_period_end)"
		 " VALUES ('%s', 't5', 't5', 't5.example',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms')",
		 s0, ps, pe);
	tally_test_exec(dsn, sql);
	/* tenant 6: a closed period 20..10 days ago, nothing recorded in it */
	invoiced_period(s6, now - 20 * DAY_MS, now - 10 * DAY_MS, "in_6");
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);

	/* 2 GB from day 1, 4 GB from day 4, 30-day period */
	agg_gen_event(&g, 6, 1, ps);
	memcpy(g.re.ev.tenant_id, t0, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(4000000000);
	g.re.ev.time_ms = ps + 4 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 3);
	agg_gen_event(&g, 6, 2, ps);
	memcpy(g.re.ev.tenant_id, t0, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(2000000000);
	g.re.ev.time_ms = ps + 1 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 3);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	/*
	 * 2 GB * 3 d = 0.2 GB-month -> 0.02; 4 GB * 26 d = 3.4666... GB-month
	 * -> 0.346666666667 (half-even at the pico); total 0.366666666667,
	 * all of it the period's cost (snapshots themselves cost 0)
	 */
	snprintf(sql, sizeof(sql), "SELECT storage_gb_months::text || ' ' ||"
		 " storage_cost::text || ' ' || cost::text FROM"
		 " tenant_period_usage WHERE tenant_id = '%s'", s0);
	ck_assert_str_eq(agg_query1(chk, sql),
			 "3.666666666667 0.366666666667 0.366666666667");
	/* the totals carry it: version bumped, storage in cost */
	snprintf(sql, sizeof(sql), "SELECT version FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s0);
	ck_assert_int_eq(agg_query_i64(chk, sql), 1);

	/* a late 3 GB snapshot 15 days ago lands in tenant 6's closed period:
	 * 3 GB * 5 d = 0.5 GB-month = 0.05, as a 'storage' adjustment */
	agg_gen_event(&g, 6, 3, ps);
	memcpy(g.re.ev.tenant_id, t6, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(3000000000);
	g.re.ev.time_ms = now - 15 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 2);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.adjusted, 1);
	batch_free(&b);
	snprintf(sql, sizeof(sql), "SELECT storage_gb_months::text || ' ' ||"
		 " cost::text FROM usage_adjustments WHERE tenant_id = '%s'"
		 " AND kind = 'storage'", s6);
	ck_assert_str_eq(agg_query1(chk, sql), "0.500000000000 0.05");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s6, now - 20 * DAY_MS);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0); /* never rewritten */
	/* the same snapshot again: nothing moves */
	agg_gen_event(&g, 6, 3, ps);
	memcpy(g.re.ev.tenant_id, t6, 16);
	g.re.ev.meter = TALLY_METER_STORAGE;
	g.re.ev.bytes = INT64_C(3000000000);
	g.re.ev.time_ms = now - 15 * DAY_MS;
	g.re.cost = 0;
	batch_add(&b, &g.re, 2);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	batch_free(&b);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'storage'"),
			 1);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

static Suite *aggregate_storage_suite(void)
{
	Suite *s = suite_create("aggregate_storage");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_storage_gb_months);
	tcase_add_test(tc, test_aggregate_storage_many_tenants);
	tcase_add_test(tc, test_aggregate_storage_priced_and_late_adjusted);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_storage_suite)
