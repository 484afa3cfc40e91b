/*
 * test_aggregate.c - the batch logic of tally-aggregate against a real
 * PostgreSQL (no broker: messages are views built here): duplicates in one
 * batch, across batches and across a restart count once; the recent-keys
 * ring and its fallback; the ledger rows are exact; the fence stops a
 * zombie; distinct workflows are counted per period.
 */
#include "aggregate_batch_support.h"

START_TEST(test_aggregate_duplicates_count_once)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_agg_stats st;
	agg_expect x = { 0 };
	agg_gen g;
	batch b = { 0 };
	int i;

	memset(next_off, 0, sizeof(next_off));
	/* one batch: events 0..9, event 3 twice */
	for (i = 0; i < 10; i++) {
		agg_gen_event(&g, 1, i, now - 3600000);
		batch_add(&b, &g.re, i % 4);
		agg_expect_add(&x, &g.re);
	}
	agg_gen_event(&g, 1, 3, now - 3600000);
	batch_add(&b, &g.re, 0);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 10);
	ck_assert_int_eq(st.duplicates, 1);
	batch_free(&b);
	agg_check_totals(chk, &x, 10);

	/* a second batch repeating 5 of them plus 2 new */
	for (i = 5; i < 12; i++) {
		agg_gen_event(&g, 1, i, now - 3600000);
		batch_add(&b, &g.re, i % 4);
		if (i >= 10)
			agg_expect_add(&x, &g.re);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 2);
	ck_assert_int_eq(st.duplicates, 5);
	batch_free(&b);
	agg_check_totals(chk, &x, 12);

	/* "restart": a new instance reads its positions from PostgreSQL */
	tally_agg_free(agg);
	agg = new_agg();
	for (i = 0; i < 12; i++) {
		agg_gen_event(&g, 1, i, now - 3600000);
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 0);
	ck_assert_int_eq(st.duplicates, 12);
	batch_free(&b);
	agg_check_totals(chk, &x, 12);
	/* positions are in PostgreSQL, next to the data */
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"),
			 next_off[0] + next_off[1] + next_off[2] + next_off[3]);
	/* the same event with another timestamp is still the same event */
	agg_gen_event(&g, 1, 0, now - 7200000);
	batch_add(&b, &g.re, 1);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 0);
	batch_free(&b);
	tally_agg_free(agg);
}
END_TEST

/*
 * The keys of recently committed events are kept in memory (a ring of
 * recent_keys), so a re-sent event is a duplicate without PostgreSQL and
 * the dedupe insert can be a plain INSERT; a key older than the ring makes
 * that insert fail, and the batch is deduplicated with ON CONFLICT
 * instead (dedupe_fallbacks). Proved by removing keys from usage_dedupe:
 * only the ring can then still know them.
 */
START_TEST(test_aggregate_recent_keys_and_fallback)
{
	int64_t now = tally_now_ms(), base = now - 3 * 3600000;
	tally_agg *agg = new_agg_keys(4);
	tally_agg_stats st;
	agg_expect x = { 0 };
	agg_gen g;
	batch b = { 0 };
	int i, k;

	memset(next_off, 0, sizeof(next_off));
	for (i = 0; i < 10; i++) {
		agg_gen_event(&g, 2, i, base);
		batch_add(&b, &g.re, i % 4);
		agg_expect_add(&x, &g.re);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 10);
	ck_assert_int_eq(st.dedupe_fallbacks, 0);
	batch_free(&b);
	/* 8 and 9 are among the last 4 keys: no fallback; 10 is new */
	for (i = 8; i <= 10; i++) {
		agg_gen_event(&g, 2, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	agg_expect_add(&x, &g.re);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.duplicates, 2);
	ck_assert_int_eq(st.dedupe_fallbacks, 0);
	batch_free(&b);
	/* 0 and 1 left the ring: PostgreSQL finds them (one fallback) */
	for (i = 0; i <= 1; i++) {
		agg_gen_event(&g, 2, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	agg_gen_event(&g, 2, 11, base);
	batch_add(&b, &g.re, 3);
	agg_expect_add(&x, &g.re);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.duplicates, 2);
	ck_assert_int_eq(st.dedupe_fallbacks, 1);
	batch_free(&b);
	agg_check_totals(chk, &x, 12);

	/* many evictions: 2 000 more keys through the ring of 4 */
	tally_agg_free(agg);
	agg = new_agg_keys(64);
	for (k = 0; k < 2000; k += 50) {
		for (i = 100 + k; i < 150 + k; i++) {
			agg_gen_event(&g, 2, i, base);
			batch_add(&b, &g.re, i % 4);
			agg_expect_add(&x, &g.re);
		}
		ck_assert_int_eq(run(agg, &b, now, &st), 0);
		ck_assert_int_eq(st.accepted, 50);
		batch_free(&b);
	}
	agg_check_totals(chk, &x, 2012);
	/* forget every key in PostgreSQL: the ring alone knows the last 64 */
	tally_test_exec(dsn, "DELETE FROM usage_dedupe");
	for (i = 2100 - 64; i < 2100; i++) {
		agg_gen_event(&g, 2, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 0);
	ck_assert_int_eq(st.duplicates, 64);
	batch_free(&b);
	/* ... and nothing older: these count again (as PostgreSQL forgot) */
	for (i = 2100 - 64 - 10; i < 2100 - 64; i++) {
		agg_gen_event(&g, 2, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 10);
	batch_free(&b);
	tally_agg_free(agg);
}
END_TEST

/*
 * The ledger row of each accepted event holds exactly that event's
 * columns, whichever way the batch was written: the fast path (keys and
 * ledger rows by COPY straight into their tables) and the ON CONFLICT
 * path through the stage (taken here because event 0, re-sent, is older
 * than the ring of 4 keys). Each event has its own second, so the rows
 * compare in time order.
 */
static void ledger_line(char *out, size_t cap, const tally_rated_event *re)
{
	const tally_usage_event *ev = &re->ev;
	bool ai = ev->meter == TALLY_METER_AI_TOKENS;
	char id[40];
	int64_t qty = ev->meter == TALLY_METER_AI_TOKENS ? 1 :
		      ev->meter == TALLY_METER_WORKFLOW ? ev->complexity :
		      ev->count;
	int j, k = 0;

	for (j = 0; j < 16; j++) {
		if (j == 4 || j == 6 || j == 8 || j == 10)
			id[k++] = '-';
		k += snprintf(id + k, sizeof(id) - (size_t)k, "%02x",
			      ev->tenant_id[j]);
	}
	snprintf(out, cap,
		 "%s|%" PRId64 "|%d|%.*s|%.*s|%" PRId64 "|%" PRId64 "|%" PRId64
		 "|%" PRId64 "|%" PRId64 "|%" PRId64 "|%" PRId64 "|%" PRId64
		 "|%" PRId64 "|t",
		 id, ev->time_ms, (int)ev->meter,
		 ai ? (int)ev->provider.len : 1, ai ? ev->provider.ptr : "-",
		 ai ? (int)ev->model.len : 1, ai ? ev->model.ptr : "-",
		 re->price_id, qty,
		 ai ? ev->input_tokens : -1, ai ? ev->output_tokens : -1,
		 ai ? ev->cache_read_tokens : -1,
		 ai ? ev->cache_write_tokens : -1,
		 ai ? ev->reasoning_tokens : -1,
		 ev->meter == TALLY_METER_WORKFLOW ? (int64_t)ev->steps : -1,
		 (int64_t)re->cost);
}

static void check_ledger_rows(int n, int64_t base)
{
	PGresult *r = PQexec(chk,
		"SELECT concat_ws('|', l.tenant_id,"
		" (extract(epoch FROM l.occurred_at) * 1000)::bigint,"
		" l.meter_id, coalesce(p.name, '-'), coalesce(m.name, '-'),"
		" coalesce(l.price_id, -1), l.quantity,"
		" coalesce(l.input_tokens, -1), coalesce(l.output_tokens, -1),"
		" coalesce(l.cache_read_tokens, -1),"
		" coalesce(l.cache_write_tokens, -1),"
		" coalesce(l.reasoning_tokens, -1), coalesce(l.steps, -1),"
		" (l.cost * 1000000000000)::bigint, l.prev_price_id IS NULL)"
		" FROM usage_ledger l LEFT JOIN providers p ON p.id = l.provider_id"
		" LEFT JOIN models m ON m.id = l.model_id ORDER BY l.occurred_at");
	agg_gen g;
	char want[512];
	int i;

	ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	ck_assert_int_eq(PQntuples(r), n);
	for (i = 0; i < n; i++) {
		agg_gen_event(&g, 7, i, base);
		ledger_line(want, sizeof(want), &g.re);
		ck_assert_str_eq(PQgetvalue(r, i, 0), want);
	}
	PQclear(r);
	/* every ledger row's key is the dedupe key of that event */
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " JOIN usage_dedupe USING (tenant_id, digest,"
				       " occurred_at)"), n);
}

START_TEST(test_aggregate_ledger_rows_exact)
{
	int64_t now = tally_now_ms(), base = now - 2 * 3600000;
	tally_agg *agg = new_agg_keys(4);
	tally_agg_stats st;
	agg_gen g;
	batch b = { 0 };
	int i;

	memset(next_off, 0, sizeof(next_off));
	for (i = 0; i < 40; i++) {
		agg_gen_event(&g, 7, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 40);
	ck_assert_int_eq(st.dedupe_fallbacks, 0);
	batch_free(&b);
	check_ledger_rows(40, base);
	/* event 0 again (left the ring): the ON CONFLICT path */
	agg_gen_event(&g, 7, 0, base);
	batch_add(&b, &g.re, 0);
	for (i = 40; i < 80; i++) {
		agg_gen_event(&g, 7, i, base);
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 40);
	ck_assert_int_eq(st.duplicates, 1);
	ck_assert_int_eq(st.dedupe_fallbacks, 1);
	batch_free(&b);
	check_ledger_rows(80, base);
	tally_agg_free(agg);
}
END_TEST

START_TEST(test_aggregate_fence_stops_zombie)
{
	int64_t now = tally_now_ms();
	tally_agg *a = new_agg(), *z = new_agg();
	tally_agg_stats st;
	agg_expect x = { 0 };
	agg_gen g;
	batch b = { 0 };
	tally_error err;
	int i;

	memset(next_off, 0, sizeof(next_off));
	/* a takes partition 0 (z still believes it owns it) and commits */
	for (i = 0; i < 5; i++) {
		agg_gen_event(&g, 2, i, now - 60000);
		batch_add(&b, &g.re, 0);
		agg_expect_add(&x, &g.re);
	}
	ck_assert_int_eq(run(a, &b, now, &st), 0);
	/* z replays the same offsets, and new events too: all refused */
	for (i = 0; i < (int)b.n; i++)
		b.m[i].payload = b.sb[i].data;
	agg_gen_event(&g, 2, 99, now - 60000);
	msgpack_sbuffer_destroy(&b.sb[4]);
	agg_encode(&b.sb[4], &g.re);
	b.m[4].payload = b.sb[4].data;
	b.m[4].len = b.sb[4].size;
	ck_assert_int_eq(run(z, &b, now, &st), TALLY_AGG_FENCED);
	agg_check_totals(chk, &x, 5);
	/* after re-seeking, z's view matches PostgreSQL again */
	ck_assert(tally_agg_reseek(z, NULL, b.m, b.n, &err) == 0);
	batch_free(&b);
	agg_gen_event(&g, 2, 100, now - 60000);
	batch_add(&b, &g.re, 0);
	agg_expect_add(&x, &g.re);
	ck_assert_int_eq(run(z, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	batch_free(&b);
	agg_check_totals(chk, &x, 6);
	/* and now a is the zombie */
	agg_gen_event(&g, 2, 101, now - 60000);
	batch_add(&b, &g.re, 0);
	ck_assert_int_eq(run(a, &b, now, &st), TALLY_AGG_FENCED);
	batch_free(&b);
	agg_check_totals(chk, &x, 6);
	tally_agg_free(a);
	tally_agg_free(z);
}
END_TEST

/*
 * Distinct workflows per period: executions of wf-a, wf-a, wf-b in one
 * batch, then wf-b, wf-c and a re-sent duplicate in another, count 3
 * workflows (5 executions); the count travels in the totals' `workflows`.
 * wf-b, known committed, is not sent again; a new instance sends it once
 * (PostgreSQL has it: 3 workflows, 7 executions), then knows it.
 */
START_TEST(test_aggregate_distinct_workflows)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_agg_stats st;
	agg_gen g;
	batch b = { 0 };
	static const char *const wf[] = { "wf-a", "wf-a", "wf-b", "wf-b",
					  "wf-c" };
	char tid[37], sql[256];
	uint8_t t0[16];
	int i;

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t0, 0);
	tally_uuid_fmt(tid, t0);
	for (i = 0; i < 5; i++) {
		/* i*10+6 is a workflow.execution of tenant (i*10+6) % 8 */
		agg_gen_event(&g, 7, i * 10 + 6, now - 3600000);
		agg_tenant(g.re.ev.tenant_id, 0);
		g.re.ev.workflow_id.ptr = wf[i];
		g.re.ev.workflow_id.len = 4;
		batch_add(&b, &g.re, i % 4);
		if (i == 2) {
			ck_assert_int_eq(run(agg, &b, now, &st), 0);
			batch_free(&b);
		}
	}
	/* a re-sent duplicate of the first execution */
	agg_gen_event(&g, 7, 6, now - 3600000);
	agg_tenant(g.re.ev.tenant_id, 0);
	g.re.ev.workflow_id.ptr = "wf-a";
	g.re.ev.workflow_id.len = 4;
	batch_add(&b, &g.re, 0);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	/* wf-b was committed by the first batch: known, not sent again */
	ck_assert_int_eq(st.known_skipped, 1);
	batch_free(&b);
	/* a new instance knows nothing yet: wf-b goes to PostgreSQL, which
	 * has it; its next batch knows it */
	tally_agg_free(agg);
	agg = new_agg();
	for (i = 0; i < 2; i++) {
		agg_gen_event(&g, 7, 106 + i * 10, now - 3600000);
		agg_tenant(g.re.ev.tenant_id, 0);
		g.re.ev.workflow_id.ptr = "wf-b";
		g.re.ev.workflow_id.len = 4;
		batch_add(&b, &g.re, 1);
		ck_assert_int_eq(run(agg, &b, now, &st), 0);
		ck_assert_int_eq(st.accepted, 1);
		ck_assert_int_eq(st.known_skipped, (size_t)i);
		batch_free(&b);
	}
	snprintf(sql, sizeof(sql), "SELECT sum(workflows) * 1000 + "
		 "sum(workflow_executions) FROM tenant_period_usage WHERE "
		 "tenant_id = '%s'", tid);
	ck_assert_int_eq(agg_query_i64(chk, sql), 3 * 1000 + 7);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM "
		 "tenant_period_workflows WHERE tenant_id = '%s'", tid);
	ck_assert_int_eq(agg_query_i64(chk, sql), 3);
	tally_agg_free(agg);
}
END_TEST

static Suite *aggregate_suite(void)
{
	Suite *s = suite_create("aggregate");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_aggregate_duplicates_count_once);
	tcase_add_test(tc, test_aggregate_recent_keys_and_fallback);
	tcase_add_test(tc, test_aggregate_ledger_rows_exact);
	tcase_add_test(tc, test_aggregate_fence_stops_zombie);
	tcase_add_test(tc, test_aggregate_distinct_workflows);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_suite)
