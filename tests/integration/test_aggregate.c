/*
 * test_aggregate.c - the batch logic of tally-aggregate against a real
 * PostgreSQL (no broker: messages are views built here): duplicates in one
 * batch, across batches and across a restart count once; the fence stops a
 * zombie; late events land in their own open period, closed periods get
 * adjustments, out-of-window events are dead letters with a reason;
 * storage snapshots become exact GB-months, and the storage rollover gives
 * a period with storage and no events its row.
 */
#include "aggregate_pg_support.h"
#include "check_main.h"
#include "tally/money.h"

#include <pthread.h>
#include <stdatomic.h>

static void setup(void)
{
	aggpg_setup("agg");
}

static void teardown(void)
{
	aggpg_teardown();
}

static tally_agg *new_agg_keys(size_t recent_keys)
{
	return aggpg_new(NULL, recent_keys);
}

static tally_agg *new_agg(void)
{
	return aggpg_new(NULL, 0);
}

static int run(tally_agg *agg, batch *b, int64_t now, tally_agg_stats *st)
{
	tally_error err;
	int rc = tally_agg_process(agg, b->m, b->n, now, st, &err);

	if (rc != 0 && rc != TALLY_AGG_FENCED)
		ck_abort_msg("process: %s", err.msg);
	return rc;
}

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

static tally_agg *new_agg_priced(const tally_pricebook *pb)
{
	return aggpg_new(pb, 0);
}

static void carry_tenant(char s[37], uint8_t t[16], int k, int64_t cps,
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

static void add_snapshot(batch *b, const uint8_t t[16], int64_t i,
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
static void add_calls(batch *b, const uint8_t t[16], int64_t i, int64_t at)
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
static unsigned __int128 div_half_even(unsigned __int128 n,
				       unsigned __int128 d)
{
	unsigned __int128 q = n / d, r = n % d;

	if (2 * r > d || (2 * r == d && q % 2 == 1))
		q++;
	return q;
}

static void fmt_u128(char *out, size_t len, unsigned __int128 v)
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
static void carry_expect(char *out, size_t len, int64_t bytes, int64_t days)
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

static const char *carry_row(const char *s, int64_t ps)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT storage_byte_ms::text || ' ' || storage_gb_months::text"
		 " || ' ' || storage_cost::text FROM tenant_period_usage WHERE"
		 " tenant_id = '%s' AND period_start = timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms'", s, ps);
	return agg_query1(chk, sql);
}

static int64_t carry_i64(const char *col, const char *s, int64_t ps)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT %s FROM tenant_period_usage WHERE tenant_id = '%s'"
		 " AND period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", col, s, ps);
	return agg_query_i64(chk, sql);
}

/*
 * (a) A row created by a batch with no snapshot in its period takes the
 * carried-over one: a 10 GB snapshot in P, processed while P is current
 * (P+1 has not begun: no row is made for it ahead of time); then only API
 * calls in P+1. P+1 holds 10 GB for all its 25 days.
 */
START_TEST(test_aggregate_storage_carried_into_new_period)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], want[160], sql[512];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 20, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* while P is current: 10 GB from day 10 of P (15 days to its end) */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, now - 10 * DAY_MS, &st), 0);
	ck_assert_int_eq(st.accepted, 1);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s, ps1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);

	/* P+1 is current: API calls only; the batch creates P+1's row */
	add_calls(&b, t, 1, now - 3600000);
	add_calls(&b, t, 2, now - 7200000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 2);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(want, "21600000000000000000 8.333333333333"
			 " 0.833333333333"); /* 10 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(carry_row(s, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT cost::text || ' ' || api_calls ||"
		 " ' ' || storage_snapshots || ' ' || (published_version <"
		 " version) FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", s, ps1);
	/* 8 calls * 0.0001 + the storage; the totals outbox has it */
	ck_assert_str_eq(agg_query1(chk, sql), "0.834133333333 8 0 true");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);

	/* more calls: the storage stays, the version moves */
	add_calls(&b, t, 3, now - 60000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 2);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

/*
 * (b) The period after a snapshot's, begun but without a row yet, gets
 * one with the carried storage (and a version, for billing.totals); a
 * later snapshot before it changes it again; its own usage adds to it.
 */
START_TEST(test_aggregate_storage_following_period_created)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], want[160], sql[512];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 21, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* a late 10 GB snapshot from day 10 of P (still open) */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " storage_snapshots = 0 AND api_calls = 0 AND published_version"
		 " < version FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", pe1, s, ps1);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);

	/* P+1's own usage adds to it */
	add_calls(&b, t, 1, now - 3600000);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 2);

	/* 4 GB from day 20 of P: P+1 opens with 4 GB now */
	add_snapshot(&b, t, 2, ps0 + 20 * DAY_MS, INT64_C(4000000000));
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	carry_expect(want, sizeof(want), INT64_C(4000000000), CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_int_eq(carry_i64("version", s, ps1), 3);
	snprintf(sql, sizeof(sql), "SELECT cost::text FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", s, ps1);
	/* 4 calls * 0.0001 + 4 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(agg_query1(chk, sql), "0.333733333333");
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

/* tally_agg_storage_rollover at now; returns the rows it wrote */
static size_t rollover_at(tally_agg *agg, int64_t now)
{
	tally_error err;
	size_t rows = 99;

	ck_assert_msg(tally_agg_storage_rollover(agg, now, &rows, &err) == 0,
		      "rollover: %s", err.msg);
	return rows;
}

static int64_t rollover_rows(const char *s)
{
	char sql[256];

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s);
	return agg_query_i64(chk, sql);
}

/* The storage rollover on its own thread (it may wait for a row lock). */
typedef struct bg_roll {
	tally_agg *agg;
	int64_t now;
	size_t rows;
	int rc;
	tally_error err;
	atomic_int done;
} bg_roll;

static void *bg_rollover(void *arg)
{
	bg_roll *x = arg;

	x->rc = tally_agg_storage_rollover(x->agg, x->now, &x->rows, &x->err);
	atomic_store(&x->done, 1);
	return NULL;
}

/*
 * The rollover only creates rows: a batch of another instance writing the
 * same new period row at the same time (here: an uncommitted insert with
 * other storage figures, as a batch carrying a snapshot the rollover did
 * not see would write) wins. Before, the rollover's upsert waited for it
 * and then overwrote it with its own, stale, integral.
 */
START_TEST(test_aggregate_storage_rollover_never_overwrites)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	bg_roll x = { 0 };
	pthread_t th;
	PGconn *writer;
	PGresult *r;
	char s[37], sql[768];
	uint8_t t[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 25, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	writer = PQconnectdb(dsn);
	ck_assert(PQstatus(writer) == CONNECTION_OK);
	snprintf(sql, sizeof(sql),
		 "BEGIN; INSERT INTO tenant_period_usage (tenant_id,"
		 " period_start, period_end, storage_snapshots, storage_byte_ms,"
		 " storage_gb_months, storage_cost, cost, version) VALUES ('%s',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms', 1, 123,"
		 " 0, 0.5, 0.5, 1)", s, ps1, pe1);
	r = PQexec(writer, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(writer));
	PQclear(r);
	x.agg = agg;
	x.now = ps1 + 2 * DAY_MS;
	ck_assert_int_eq(pthread_create(&th, NULL, bg_rollover, &x), 0);
	for (int i = 0; i < 200 && !atomic_load(&x.done); i++) {
		if (agg_query_i64(chk, "SELECT count(*) FROM pg_stat_activity"
				  " WHERE datname = current_database() AND"
				  " wait_event_type = 'Lock'") > 0)
			break;
		tally_sleep_ms(50);
	}
	ck_assert_msg(!atomic_load(&x.done),
		      "the rollover did not meet the uncommitted row");
	r = PQexec(writer, "COMMIT");
	ck_assert(PQresultStatus(r) == PGRES_COMMAND_OK);
	PQclear(r);
	pthread_join(th, NULL);
	ck_assert_msg(x.rc == 0, "rollover: %s", x.err.msg);
	ck_assert_int_eq(x.rows, 0);
	ck_assert_int_eq(carry_i64("storage_byte_ms", s, ps1), 123);
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	PQfinish(writer);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

/*
 * (c) Storage rollover: a tenant with storage and no events at all in a
 * later period gets that period's row from tally_agg_storage_rollover. A
 * 10 GB snapshot in P (25-day periods), processed while P is current;
 * nothing in P+1 or P+2. The rollover inside P+1, then inside P+2, creates
 * each one's row with 10 GB for 25 days, its cost, a version to publish
 * and the budget state; run again, it changes nothing. A tenant whose last
 * snapshot is 0 bytes gets no row; one whose P+2 is invoiced gets none
 * for P+2.
 */
START_TEST(test_aggregate_storage_rollover)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	int64_t ps2 = pe1, pe2 = ps2 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], sz[37], sc[37], want[160], sql[768];
	uint8_t t[16], tz[16], tc[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 22, ps1, pe1);
	carry_tenant(sz, tz, 23, ps1, pe1);
	carry_tenant(sc, tc, 24, ps1, pe1);
	/* 0.83 of a 1.00 budget: 'warning' (the default state is 'ok') */
	snprintf(sql, sizeof(sql), "UPDATE tenants SET monthly_budget = 1.00"
		 " WHERE id = '%s'", s);
	tally_test_exec(dsn, sql);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	/* while P is current: 10 GB from day 10 of P; the second tenant
	 * drops to 0 bytes on day 11, the third keeps 10 GB */
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	add_snapshot(&b, tz, 2, ps0 + 10 * DAY_MS, CARRY_BYTES);
	add_snapshot(&b, tz, 3, ps0 + 11 * DAY_MS, 0);
	add_snapshot(&b, tc, 4, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	ck_assert_int_eq(st.accepted, 4);
	batch_free(&b);
	carry_expect(want, sizeof(want), CARRY_BYTES, 15);
	ck_assert_str_eq(carry_row(s, ps0), want);
	ck_assert_int_eq(rollover_rows(s), 1);
	ck_assert_int_eq(rollover_rows(sz), 1);
	ck_assert_int_eq(rollover_rows(sc), 1);

	/* inside P+1: rows for the first and the third tenant */
	ck_assert_int_eq(rollover_at(agg, ps1 + 2 * DAY_MS), 2);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(want, "21600000000000000000 8.333333333333"
			 " 0.833333333333"); /* 10 GB * 25/30 months * 0.10 */
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_str_eq(carry_row(sc, ps1), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " storage_snapshots = 0 AND api_calls = 0 AND version >= 1 AND"
		 " published_version < version AND budget_state = 'warning'"
		 " FROM tenant_period_usage WHERE tenant_id = '%s' AND"
		 " period_start = timestamptz 'epoch' + %" PRId64
		 " * interval '1 ms'", pe1, s, ps1);
	ck_assert_msg(strcmp(agg_query1(chk, sql), "t") == 0,
		      "P+1's row: period_end, cost = storage_cost, a version"
		      " to publish, budget 'warning'");
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	ck_assert_int_eq(rollover_rows(sz), 1);
	/* again: nothing */
	ck_assert_int_eq(rollover_at(agg, ps1 + 3 * DAY_MS), 0);
	ck_assert_int_eq(carry_i64("version", s, ps1), 1);
	ck_assert_int_eq(carry_i64("version", sc, ps1), 1);

	/* inside P+2, whose period the third tenant's invoice closed */
	snprintf(sql, sizeof(sql), "INSERT INTO billing_periods (tenant_id,"
		 " period_start, period_end, status, closed_at, invoice_id)"
		 " VALUES ('%s', timestamptz 'epoch' + %" PRId64 " * interval"
		 " '1 ms', timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " 'invoiced', now(), 'in_1')", sc, ps2, pe2);
	tally_test_exec(dsn, sql);
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS), 1);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps2), want);
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM period_end)"
		 " * 1000)::bigint = %" PRId64 " AND cost = storage_cost AND"
		 " version >= 1 AND published_version < version AND"
		 " budget_state = 'warning' FROM tenant_period_usage WHERE"
		 " tenant_id = '%s' AND period_start = timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms'", pe2, s, ps2);
	ck_assert_msg(strcmp(agg_query1(chk, sql), "t") == 0,
		      "P+2's row: period_end, cost = storage_cost, a version"
		      " to publish, budget 'warning'");
	ck_assert_int_eq(carry_i64("version", s, ps2), 1);
	ck_assert_msg(rollover_rows(sc) == 2, "no row in an invoiced period");
	ck_assert_msg(rollover_rows(sz) == 1, "no row for 0 bytes");
	/* again: nothing */
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS + 3600000), 0);
	ck_assert_int_eq(carry_i64("version", s, ps2), 1);
	ck_assert_int_eq(rollover_rows(s), 3);
	ck_assert_int_eq(rollover_rows(sc), 2);
	ck_assert_int_eq(rollover_rows(sz), 1);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST


/*
 * A period that began and ended while tally-aggregate was down (no batch,
 * no rollover in it) still gets its storage row from the next rollover, as
 * long as it ends inside the lateness window (35 days). Tenant s: 10 GB
 * from day 10 of P; the first rollover runs in P+2: P+1 and P+2 are both
 * created, each holding 10 GB for its 25 days. Tenant u (its snapshot
 * counted later): the next rollover runs on day 15 of P+3, when P+1 ended
 * 40 days ago: P+2 and P+3 are created, P+1 is not.
 */
START_TEST(test_aggregate_storage_rollover_missed_period)
{
	int64_t now = tally_now_ms(), ps1 = now - 5 * DAY_MS;
	int64_t ps0 = ps1 - CARRY_DAYS * DAY_MS, pe1 = ps1 + CARRY_DAYS * DAY_MS;
	int64_t ps2 = pe1, ps3 = ps2 + CARRY_DAYS * DAY_MS;
	tally_pricebook *pb = NULL;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	batch b = { 0 };
	char s[37], u[37], want[160], sql[256];
	uint8_t t[16], tu[16];

	memset(next_off, 0, sizeof(next_off));
	carry_tenant(s, t, 25, ps1, pe1);
	carry_tenant(u, tu, 26, ps1, pe1);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	agg = new_agg_priced(pb);
	add_snapshot(&b, t, 1, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	ck_assert_int_eq(rollover_rows(s), 1);
	/* first rollover in P+2: P+1 and P+2 */
	ck_assert_int_eq(rollover_at(agg, ps2 + DAY_MS), 2);
	carry_expect(want, sizeof(want), CARRY_BYTES, CARRY_DAYS);
	ck_assert_str_eq(carry_row(s, ps1), want);
	ck_assert_str_eq(carry_row(s, ps2), want);
	ck_assert_int_eq(rollover_rows(s), 3);

	add_snapshot(&b, tu, 2, ps0 + 10 * DAY_MS, CARRY_BYTES);
	ck_assert_int_eq(run(agg, &b, ps0 + 12 * DAY_MS, &st), 0);
	batch_free(&b);
	/* day 15 of P+3: u's P+2 and P+3, s's P+3; u's P+1 is too old */
	ck_assert_int_eq(rollover_at(agg, ps3 + 15 * DAY_MS), 3);
	ck_assert_str_eq(carry_row(u, ps2), want);
	ck_assert_str_eq(carry_row(u, ps3), want);
	ck_assert_str_eq(carry_row(s, ps3), want);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_usage"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms'", u, ps1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	ck_assert_int_eq(rollover_rows(u), 3);
	tally_agg_free(agg);
	tally_pricebook_free(pb);
}
END_TEST

START_TEST(test_aggregate_rerate_moves_totals)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_pricebook *pb = NULL;
	tally_error err;
	agg_gen g;
	batch b = { 0 };
	char sql[1024];
	uint8_t t1[16];
	char s1[37];
	int i;
	int64_t calls = 0;

	memset(next_off, 0, sizeof(next_off));
	agg_tenant(t1, 1);
	tally_uuid_fmt(s1, t1);
	/* tenant 1's period of 10..3 days ago is closed (invoiced) */
	invoiced_period(s1, now - 10 * DAY_MS, now - 3 * DAY_MS, "in_1");
	agg = new_agg();
	/* api calls priced at half the book's price (a bug, fixed later) */
	for (i = 0; i < 40; i++) {
		agg_gen_event(&g, 5, 8 + 10 * i, now - 3600000);
		ck_assert_int_eq(g.re.ev.meter, TALLY_METER_API_CALL);
		if (i == 0) {
			memcpy(g.re.ev.tenant_id, t1, 16);
			g.re.ev.time_ms = now - 5 * DAY_MS;
		}
		g.re.cost = g.re.ev.count * INT64_C(50000000);
		g.re.price_id = 1;
		calls += g.re.ev.count;
		batch_add(&b, &g.re, i % 4);
	}
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	ck_assert_int_eq(st.accepted, 40);
	ck_assert_int_eq(st.adjusted, 1);
	batch_free(&b);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = now - 30 * DAY_MS;
	ro.to_ms = now + DAY_MS;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_seen, 40);
	ck_assert_int_eq(rs.rows_changed, 40);
	ck_assert_int_eq(rs.adjusted, 1);
	/* every call now at 0.0001: ledger = hourly = periods + adjustment */
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM usage_ledger)"
		 " = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM usage_hourly)"
		 " = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) + (SELECT sum(cost) FROM"
		 " usage_adjustments) = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " WHERE prev_price_id = 1 AND price_id <> 1"),
			 40);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_adjustments WHERE kind = 'rerate'"),
			 1);
	/* a second run changes nothing */
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 0);
	ck_assert_str_eq(rs.cost_delta, "0");
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) + (SELECT sum(cost) FROM"
		 " usage_adjustments) = %" PRId64 " * 0.0001", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	tally_pricebook_free(pb);
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

/* A re-rated row whose period has no tenant_period_usage row keeps its
 * difference: the period row is created. */
START_TEST(test_aggregate_rerate_creates_missing_period)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_pricebook *pb = NULL;
	tally_error err;
	agg_gen g;
	batch b = { 0 };
	char sql[512];
	int64_t calls;

	memset(next_off, 0, sizeof(next_off));
	agg = new_agg();
	agg_gen_event(&g, 7, 8, now - 3600000);
	ck_assert_int_eq(g.re.ev.meter, TALLY_METER_API_CALL);
	g.re.cost = g.re.ev.count * INT64_C(50000000);
	g.re.price_id = 1;
	calls = g.re.ev.count;
	batch_add(&b, &g.re, 0);
	ck_assert_int_eq(run(agg, &b, now, &st), 0);
	batch_free(&b);
	/* the period row is gone (e.g. written by an older version) */
	tally_test_exec(dsn, "DELETE FROM tenant_period_usage");
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = now - DAY_MS;
	ro.to_ms = now + DAY_MS;
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 1);
	/* the difference (new - old = calls * 0.00005) is in a period row */
	snprintf(sql, sizeof(sql), "SELECT (SELECT sum(cost) FROM"
		 " tenant_period_usage) = %" PRId64 " * 0.00005", calls);
	ck_assert_str_eq(agg_query1(chk, sql), "t");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " tenant_period_usage WHERE version >= 1"
				       " AND period_end > period_start"), 1);
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_changed, 0);
	tally_pricebook_free(pb);
	tally_agg_free(agg);
}
END_TEST

/*
 * Distinct workflows per period: executions of wf-a, wf-a, wf-b in one
 * batch, then wf-b, wf-c and a re-sent duplicate in another, count 3
 * workflows (5 executions); the count travels in the totals' `workflows`.
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
	batch_free(&b);
	snprintf(sql, sizeof(sql), "SELECT sum(workflows) * 1000 + "
		 "sum(workflow_executions) FROM tenant_period_usage WHERE "
		 "tenant_id = '%s'", tid);
	ck_assert_int_eq(agg_query_i64(chk, sql), 3 * 1000 + 5);
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
	tcase_add_test(tc, test_aggregate_periods_late_closed_dlq);
	tcase_add_test(tc, test_aggregate_period_close_waits_for_batch);
	tcase_add_test(tc, test_aggregate_storage_gb_months);
	tcase_add_test(tc, test_aggregate_storage_many_tenants);
	tcase_add_test(tc, test_aggregate_storage_carried_into_new_period);
	tcase_add_test(tc, test_aggregate_storage_following_period_created);
	tcase_add_test(tc, test_aggregate_storage_rollover);
	tcase_add_test(tc, test_aggregate_storage_rollover_never_overwrites);
	tcase_add_test(tc, test_aggregate_storage_rollover_missed_period);
	tcase_add_test(tc, test_aggregate_rerate_moves_totals);
	tcase_add_test(tc, test_aggregate_storage_priced_and_late_adjusted);
	tcase_add_test(tc, test_aggregate_rerate_creates_missing_period);
	tcase_add_test(tc, test_aggregate_distinct_workflows);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(aggregate_suite)
