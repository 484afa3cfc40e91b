/*
 * test_aggregate_periods.c - periods in tally-aggregate's batch logic
 * against a real PostgreSQL: late events land in their own open period,
 * closed periods get adjustments, out-of-window events are dead letters
 * with a reason; closing a period waits for a batch writing into it.
 */
#include "aggregate_batch_support.h"

#include <pthread.h>
#include <stdatomic.h>

START_TEST(test_aggregate_periods_late_closed_dlq)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	agg_gen g;
	batch b = { 0 };
	char sql[1024];
	int64_t ps, pe, pps, ppe;
	uint8_t t0[16], t1[16];
	char s0[37], s1[37];

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t0, 0);
	agg_tenant(t1, 1);
	tally_uuid_fmt(s0, t0);
	tally_uuid_fmt(s1, t1);
	/* tenant 0: current period = the last 20 days + 10 days ahead */
	ps = now - 20 * DAY_MS;
	pe = now + 10 * DAY_MS;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " current_period_start, current_period_end, monthly_budget)"
		 " VALUES ('%s', 't0', 't0', 't0.example',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms', 100)",
		 s0, ps, pe);
	tally_test_exec(dsn, sql);
	agg = new_agg();

	/* late event into the previous, still open, period (t0, 25 days ago) */
	agg_gen_event(&g, 3, 0, now - 25 * DAY_MS);
	memcpy(g.re.ev.tenant_id, t0, 16);
	batch_add(&b, &g.re, 0);
	/* current period */
	agg_gen_event(&g, 3, 10, now - DAY_MS);
	memcpy(g.re.ev.tenant_id, t0, 16);
	batch_add(&b, &g.re, 0);
	/* too late, and in the future */
	agg_gen_event(&g, 3, 20, now - 36 * DAY_MS);
	batch_add(&b, &g.re, 1);
	agg_gen_event(&g, 3, 30, now + 600000);
	batch_add(&b, &g.re, 1);
	/* garbage */
	b.m[b.n] = b.m[b.n - 1];
	msgpack_sbuffer_init(&b.sb[b.n]);
	msgpack_sbuffer_write(&b.sb[b.n], "\x81\xa1x\x01", 4);
	b.m[b.n].payload = b.sb[b.n].data;
	b.m[b.n].len = 4;
	b.m[b.n].offset = next_off[1]++;
	b.n++;
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 2);
	ck_assert_int_eq(st.dead_lettered, 3);
	batch_free(&b);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dead_letters"
				       " WHERE reason = 'too_late'"), 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dead_letters"
				       " WHERE reason = 'future_timestamp'"), 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dead_letters"
				       " WHERE reason NOT IN ('too_late',"
				       " 'future_timestamp')"), 1);
	/* two periods for t0: the current one and the one before it */
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s0);
	ck_assert_int_eq(agg_query_i64(chk, sql), 2);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s0, ps);
	ck_assert_int_eq(agg_query_i64(chk, sql), 1);

	/* close t1's calendar month of 3 days ago... use a recorded period */
	pps = now - 30 * DAY_MS;
	ppe = now - 2 * DAY_MS;
	invoiced_period(s1, pps, ppe, "in_1");
	agg_gen_event(&g, 3, 40, now - 5 * DAY_MS);
	memcpy(g.re.ev.tenant_id, t1, 16);
	g.re.ev.meter = TALLY_METER_API_CALL;
	g.re.ev.count = 7;
	g.re.cost = 700000000;
	batch_add(&b, &g.re, 2);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.adjusted, 1);
	batch_free(&b);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT quantity || ' ' || cost || ' ' ||"
		 " kind || ' ' || meter FROM usage_adjustments WHERE tenant_id"
		 " = '%s'", s1);
	ck_assert_str_eq(agg_query1(chk, sql), "7 0.0007 late_usage api.call");
	tally_agg_free(agg);
}
END_TEST

/* A batch on its own thread (it may wait for a lock). */
typedef struct bg_batch {
	tally_agg *agg;
	batch *b;
	int64_t now;
	tally_agg_stats st;
	int rc;
	atomic_int done;
} bg_batch;

static void *bg_run(void *arg)
{
	bg_batch *x = arg;

	x->rc = run(x->agg, x->b, x->now, &x->st);
	atomic_store(&x->done, 1);
	return NULL;
}

/*
 * Closing a period races with a batch writing into it: the closer locks
 * the tenant row FOR UPDATE and records the period closed; a batch that
 * starts meanwhile must wait for that commit and then book its event as
 * an adjustment. Without the batch's FOR KEY SHARE on the tenant row it
 * read the period as open (the closer had not committed), wrote into it,
 * and the usage was in neither the invoice nor an adjustment.
 */
START_TEST(test_aggregate_period_close_waits_for_batch)
{
	int64_t now = tally_now_ms(), ps = now - 20 * DAY_MS;
	int64_t pe = now + 10 * DAY_MS;
	tally_agg *agg;
	agg_gen g;
	batch b = { 0 };
	bg_batch x = { 0 };
	pthread_t th;
	PGconn *closer;
	PGresult *r;
	char sql[1024], s0[37];
	uint8_t t0[16];

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t0, 0);
	tally_uuid_fmt(s0, t0);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " current_period_start, current_period_end)"
		 " VALUES ('%s', 't0', 't0', 't0.example',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms')",
		 s0, ps, pe);
	tally_test_exec(dsn, sql);
	agg = new_agg();
	closer = PQconnectdb(dsn);
	ck_assert(PQstatus(closer) == CONNECTION_OK);
	snprintf(sql, sizeof(sql),
		 "BEGIN; SELECT 1 FROM tenants WHERE id = '%s' FOR UPDATE;"
		 " INSERT INTO billing_periods VALUES ('%s', timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms', timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms', 'invoiced', now(), 'in_close')",
		 s0, s0, ps, pe);
	r = PQexec(closer, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(closer));
	PQclear(r);

	agg_gen_event(&g, 3, 10, now - DAY_MS);
	memcpy(g.re.ev.tenant_id, t0, 16);
	g.re.ev.meter = TALLY_METER_API_CALL;
	g.re.ev.count = 3;
	g.re.cost = 300000000;
	batch_add(&b, &g.re, 0);
	x.agg = agg;
	x.b = &b;
	x.now = now;
	ck_assert_int_eq(pthread_create(&th, NULL, bg_run, &x), 0);
	/* the batch must come to wait for the closer's lock (and not end) */
	for (int i = 0; i < 200 && !atomic_load(&x.done); i++) {
		if (agg_query_i64(chk, "SELECT count(*) FROM pg_stat_activity"
				  " WHERE datname = current_database() AND"
				  " wait_event_type = 'Lock'") > 0)
			break;
		tally_sleep_ms(50);
	}
	ck_assert_msg(!atomic_load(&x.done),
		      "the batch did not wait for the period being closed");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " pg_stat_activity WHERE datname ="
				       " current_database() AND wait_event_type"
				       " = 'Lock'"), 1);
	r = PQexec(closer, "COMMIT");
	ck_assert(PQresultStatus(r) == PGRES_COMMAND_OK);
	PQclear(r);
	pthread_join(th, NULL);
	ck_assert_int_eq(x.rc, 0);
	ck_assert_int_eq(x.st.accepted, 1);
	ck_assert_int_eq(x.st.adjusted, 1);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND (api_calls > 0 OR cost > 0)", s0);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT quantity || ' ' || cost || ' ' ||"
		 " kind FROM usage_adjustments WHERE tenant_id = '%s'", s0);
	ck_assert_str_eq(agg_query1(chk, sql), "3 0.0003 late_usage");
	batch_free(&b);
	PQfinish(closer);
	tally_agg_free(agg);
}
END_TEST

static Suite *aggregate_periods_suite(void)
{
	Suite *s = suite_create("aggregate_periods");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_periods_late_closed_dlq);
	tcase_add_test(tc, test_aggregate_period_close_waits_for_batch);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_periods_suite)
