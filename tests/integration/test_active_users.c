/*
 * test_active_users.c - active users (distinct subjects) per tenant and
 * billing period: exact under duplicates within a batch, re-sent events,
 * a replay by a new instance (the PostgreSQL dedupe path) and events
 * without a subject, counted in each period on either side of a period
 * boundary, closed periods left alone, a user known committed not sent
 * again; and end to end through
 * billing.totals into tally-alerts: max_users crossed raises its
 * plan_limit alert once, also when every totals message is replayed.
 */
#include "aggregate_pg_support.h"
#include "check_main.h"
#include "tally/alerts.h"
#include "tally/config.h"
#include "tally/kafka.h"

static void setup(void)
{
	aggpg_setup("users");
}

static void teardown(void)
{
	aggpg_teardown();
}

static void run(tally_agg *agg, batch *b, int64_t now, tally_agg_stats *st)
{
	tally_error err;

	ck_assert_msg(tally_agg_process(agg, b->m, b->n, now, st, &err) == 0,
		      "process: %s", err.msg);
}

/* event i of tenant t at time ms with subject s (NULL: none) */
static void user_event(agg_gen *g, int64_t i, const uint8_t t[16],
		       int64_t ms, const char *s)
{
	agg_gen_event(g, 20, i, ms);
	memcpy(g->re.ev.tenant_id, t, 16);
	g->re.ev.time_ms = ms;
	g->re.ev.subject.ptr = s;
	g->re.ev.subject.len = s != NULL ? (uint32_t)strlen(s) : 0;
}

static void add_tenant(const char *id, int64_t ps, int64_t pe, int max_users)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain, max_users,"
		 " current_period_start, current_period_end, monthly_budget)"
		 " VALUES ('%s', '%s', '%s', '%s.example', %d,"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " timestamptz 'epoch' + %" PRId64 " * interval '1 ms',"
		 " 1000000)", id, id, id, id, max_users, ps, pe);
	tally_test_exec(dsn, sql);
}

/* users of tenant s's period starting at ps, and the rows behind them */
static int64_t users_of(const char *s, int64_t ps)
{
	char sql[512];
	int64_t rows;

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_users"
		 " WHERE tenant_id = '%s' AND period_start = timestamptz"
		 " 'epoch' + %" PRId64 " * interval '1 ms'", s, ps);
	rows = agg_query_i64(chk, sql);
	snprintf(sql, sizeof(sql), "SELECT coalesce(sum(users), -1) FROM"
		 " tenant_period_usage WHERE tenant_id = '%s' AND period_start"
		 " = timestamptz 'epoch' + %" PRId64 " * interval '1 ms'", s,
		 ps);
	ck_assert_int_eq(agg_query_i64(chk, sql), rows);
	return rows;
}

/* The events of the exactness test, in two batches (b: 0 or 1). */
static void users_batch(batch *b, int which, const uint8_t t0[16],
			const uint8_t t1[16], int64_t now)
{
	agg_gen g;

	if (which == 0) {
		/* current period: u1 twice (two events), u2; one event
		 * twice (re-sent in the batch); one without a subject */
		user_event(&g, 0, t0, now - DAY_MS, "u1");
		batch_add(b, &g.re, 0);
		user_event(&g, 1, t0, now - DAY_MS, "u1");
		batch_add(b, &g.re, 1);
		user_event(&g, 2, t0, now - DAY_MS, "u2");
		batch_add(b, &g.re, 2);
		batch_add(b, &g.re, 3);
		user_event(&g, 3, t0, now - DAY_MS, NULL);
		batch_add(b, &g.re, 0);
		return;
	}
	/* u2 again, u3 new twice, and a user of "u\"{1}" */
	user_event(&g, 10, t0, now - 2 * DAY_MS, "u2");
	batch_add(b, &g.re, 0);
	user_event(&g, 11, t0, now - 2 * DAY_MS, "u3");
	batch_add(b, &g.re, 1);
	user_event(&g, 12, t0, now - 2 * DAY_MS, "u3");
	batch_add(b, &g.re, 2);
	user_event(&g, 13, t0, now - 3 * DAY_MS, "u\"{1},\\");
	batch_add(b, &g.re, 3);
	/* across the boundary: u1 and u4 in the previous, open period */
	user_event(&g, 14, t0, now - 25 * DAY_MS, "u1");
	batch_add(b, &g.re, 0);
	user_event(&g, 15, t0, now - 25 * DAY_MS, "u4");
	batch_add(b, &g.re, 1);
	/* a closed period's late event: adjusted, its user not counted */
	user_event(&g, 16, t1, now - 5 * DAY_MS, "late");
	batch_add(b, &g.re, 2);
}

START_TEST(test_active_users_exact)
{
	int64_t now = tally_now_ms(), ps = now - 20 * DAY_MS, prev;
	tally_agg *agg;
	tally_agg_stats st;
	batch b = { 0 };
	uint8_t t0[16], t1[16];
	char s0[37], s1[37], sql[256];
	int k;

	agg_tenant(t0, 0);
	agg_tenant(t1, 1);
	tally_uuid_fmt(s0, t0);
	tally_uuid_fmt(s1, t1);
	add_tenant(s0, ps, now + 10 * DAY_MS, 5);
	invoiced_period(s1, now - 30 * DAY_MS, now - 2 * DAY_MS, "in_u1");
	agg = aggpg_new(NULL, 0);
	users_batch(&b, 0, t0, t1, now);
	run(agg, &b, now, &st);
	ck_assert_int_eq(st.accepted, 4);
	ck_assert_int_eq(st.duplicates, 1);
	batch_free(&b);
	ck_assert_int_eq(users_of(s0, ps), 2);

	users_batch(&b, 1, t0, t1, now);
	run(agg, &b, now, &st);
	ck_assert_int_eq(st.accepted, 7);
	ck_assert_int_eq(st.adjusted, 1);
	/* u2 of this period was committed by the first batch: not sent */
	ck_assert_int_eq(st.known_skipped, 1);
	batch_free(&b);
	/* the period before, as the tenant's cycle puts it */
	snprintf(sql, sizeof(sql), "SELECT (extract(epoch FROM"
		 " min(period_start)) * 1000)::bigint FROM tenant_period_usage"
		 " WHERE tenant_id = '%s'", s0);
	prev = agg_query_i64(chk, sql);
	ck_assert(prev < ps && prev > ps - 32 * DAY_MS);
	ck_assert_int_eq(users_of(s0, ps), 4);
	ck_assert_int_eq(users_of(s0, prev), 2);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_users"
		 " WHERE tenant_id = '%s'", s1);
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_period_users"
		 " WHERE subject = 'u\"{1},\\'");
	ck_assert_int_eq(agg_query_i64(chk, sql), 1);

	/* the same batches again, to this instance (ring) and to a new one
	 * (PostgreSQL's dedupe): nothing counts twice */
	for (k = 0; k < 2; k++) {
		users_batch(&b, 0, t0, t1, now);
		run(agg, &b, now, &st);
		ck_assert_int_eq(st.accepted, 0);
		batch_free(&b);
		users_batch(&b, 1, t0, t1, now);
		run(agg, &b, now, &st);
		ck_assert_int_eq(st.accepted, 0);
		batch_free(&b);
		tally_agg_free(agg);
		agg = aggpg_new(NULL, 0);
	}
	ck_assert_int_eq(users_of(s0, ps), 4);
	ck_assert_int_eq(users_of(s0, prev), 2);
	tally_agg_free(agg);
}
END_TEST

/* the broker: a producer, and topic names made unique per test */
static rd_kafka_t *producer_new(tally_config **cfg)
{
	rd_kafka_t *rk = NULL;
	tally_error err;

	ck_assert_int_eq(tally_config_load(cfg, NULL, &err), 0);
	tally_config_set(*cfg, "kafka.brokers", getenv("TALLY_TEST_BROKERS"));
	ck_assert_msg(tally_kafka_producer_new(&rk, tally_kafka_conf(*cfg),
					       &err) == 0, "%s", err.msg);
	return rk;
}

/* Every message of topic (partition 0) into the alerts engine a. */
static size_t totals_into_alerts(tally_config *cfg, const char *topic,
				 tally_alerts *a, tally_alerts_stats *st,
				 int64_t *max_users_seen)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	rd_kafka_topic_partition_list_t *l;
	rd_kafka_t *rk;
	char errstr[256];
	size_t n = 0;
	int idle = 0;
	int64_t deadline = tally_now_ms() + 60000;
	tally_error err;

	ck_assert_int_eq(tally_kafka_conf_set(conf, "group.id", "users-reader",
					      &err), 0);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	l = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(l, topic, 0)->offset =
		RD_KAFKA_OFFSET_BEGINNING;
	ck_assert_int_eq(rd_kafka_assign(rk, l), 0);
	rd_kafka_topic_partition_list_destroy(l);
	/* until 4 s without a message once one came (60 s at most) */
	while (idle < 8 && tally_now_ms() < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
		tally_alerts_msg v;
		char txt[2048];
		const char *p;

		if (m == NULL || m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			idle += m == NULL && n > 0;
			if (m != NULL)
				rd_kafka_message_destroy(m);
			continue;
		}
		idle = 0;
		snprintf(txt, sizeof(txt), "%.*s", (int)m->len,
			 (const char *)m->payload);
		p = strstr(txt, "\"max_users\":");
		ck_assert_msg(p != NULL && strstr(txt, "\"users\":") != NULL,
			      "totals carry users and max_users: %s", txt);
		*max_users_seen = strtoll(p + 12, NULL, 10);
		memset(&v, 0, sizeof(v));
		v.topic = topic;
		v.offset = m->offset;
		v.payload = m->payload;
		v.len = m->len;
		ck_assert_msg(tally_alerts_process(a, &v, 1, st, &err) == 0,
			      "%s", err.msg);
		rd_kafka_message_destroy(m);
		n++;
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return n;
}

static tally_alerts *alerts_new(const char *group, const char *totals)
{
	tally_alerts_opts ao = { 0 };
	tally_alerts *a = NULL;
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(2);
	tally_error err;

	ao.group = group;
	ao.totals_topic = totals;
	ao.signals_topic = "users.signals";
	ao.thresholds = "50,80,100";
	ck_assert_int_eq(tally_alerts_new(&a, pg, &ao, &err), 0);
	rd_kafka_topic_partition_list_add(l, totals, 0);
	rd_kafka_topic_partition_list_add(l, "users.signals", 0);
	ck_assert_int_eq(tally_alerts_assign(a, l, &err), 0);
	rd_kafka_topic_partition_list_destroy(l);
	return a;
}

START_TEST(test_active_users_max_users_alert_once)
{
	int64_t now = tally_now_ms(), ps = now - 5 * DAY_MS;
	tally_config *cfg = NULL;
	rd_kafka_t *rk;
	tally_agg_opts o = { 0 };
	tally_agg *agg = NULL;
	tally_alerts *a;
	tally_alerts_stats st = { 0 };
	tally_agg_stats ast;
	rd_kafka_topic_partition_list_t *l;
	char totals[64], dlq[80], s0[37], sql[256];
	const char *topics[3];
	static const char *const subj[] = { "a", "b", "a", "c", "d" };
	uint8_t t0[16];
	batch b = { 0 };
	agg_gen g;
	int64_t max_seen = -2;
	tally_error err;
	int i, k, p;

	tally_test_need_env("TALLY_TEST_BROKERS");
	rk = producer_new(&cfg);
	tally_test_unique(totals, sizeof(totals), "t_users_totals");
	snprintf(dlq, sizeof(dlq), "%s.dlq", totals);
	topics[0] = totals;
	topics[1] = dlq;
	topics[2] = NULL;
	ck_assert_int_eq(tally_kafka_create_topics(rk, topics, 1, &err), 0);
	agg_tenant(t0, 0);
	tally_uuid_fmt(s0, t0);
	add_tenant(s0, ps, now + 25 * DAY_MS, 3);

	o.group = "tally.aggregate";
	o.lateness_ms = 35 * DAY_MS;
	o.future_ms = 300000;
	o.producer = rk;
	o.dlq_topic = dlq;
	o.totals_topic = totals;
	o.known_keys = 4096;
	/* a first run, then a replay of the same events by a new instance */
	for (k = 0; k < 2; k++) {
		ck_assert(tally_agg_new(&agg, pg, &o, &err) == 0);
		l = rd_kafka_topic_partition_list_new(4);
		for (p = 0; p < 4; p++)
			rd_kafka_topic_partition_list_add(l, AGG_TOPIC, p);
		ck_assert_int_eq(tally_agg_assign(agg, l, &err), 0);
		rd_kafka_topic_partition_list_destroy(l);
		/* users a, b (2/3: 50 %), then a, c (3/3: 80 and 100 %),
		 * then d (4/3: nothing new) */
		for (i = 0; i < 5; i++) {
			user_event(&g, 100 + i, t0, now - DAY_MS, subj[i]);
			batch_add(&b, &g.re, i % 4);
			if (i == 1 || i == 3 || i == 4) {
				run(agg, &b, now, &ast);
				batch_free(&b);
			}
		}
		ck_assert_int_eq(rd_kafka_flush(rk, 10000), 0);
		tally_agg_free(agg);
	}
	ck_assert_int_eq(users_of(s0, ps), 4);

	/* every totals message, twice: to one engine and, as a replay, to
	 * another group's */
	for (k = 0; k < 2; k++) {
		a = alerts_new(k == 0 ? "g_users_1" : "g_users_2", totals);
		ck_assert_int_eq(totals_into_alerts(cfg, totals, a, &st,
						    &max_seen), 3);
		tally_alerts_free(a);
	}
	ck_assert_int_eq(max_seen, 3);
	snprintf(sql, sizeof(sql), "SELECT string_agg(threshold::text, ','"
		 " ORDER BY threshold) FROM alerts WHERE kind = 'plan_limit'"
		 " AND tenant_id = '%s'", s0);
	ck_assert_str_eq(agg_query1(chk, sql), "50,80,100");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM alerts, jsonb_array_"
		 "elements(payload->'metrics') m WHERE kind = 'plan_limit' AND"
		 " threshold = 100 AND m->>'metric' = 'users' AND m->>'used' ="
		 " '3' AND m->>'limit' = '3'");
	ck_assert_int_eq(agg_query_i64(chk, sql), 1);
	ck_assert_int_eq(st.raised, 3);
	rd_kafka_destroy(rk);
	tally_config_free(cfg);
}
END_TEST

static Suite *active_users_suite(void)
{
	Suite *s = suite_create("active_users");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_active_users_exact);
	tcase_add_test(tc, test_active_users_max_users_alert_once);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(active_users_suite)
