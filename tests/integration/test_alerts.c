/*
 * test_alerts.c - tally-alerts against the real broker and PostgreSQL:
 * totals crossing 50/80/100 % raise three alerts once (table, billing.alerts,
 * ids as the rules say), duplicated/stale totals and a full replay under a
 * new group raise nothing new, bad input goes to the DLQ with reason
 * headers; the sweep produces committed but unproduced alerts once.
 * Each test has its own database, topics and group.
 */
#include "alerts_engine_support.h"

#include <time.h>

typedef struct rig {
	tally_config *cfg;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_alerts *alerts;
	char totals[64], signals[64], out[64], group[64];
	tally_alerts_stats st;
} rig;

static int rig_assign(rd_kafka_topic_partition_list_t *parts, void *p)
{
	rig *r = p;
	tally_error err;

	return tally_alerts_assign(r->alerts, parts, &err);
}

static void rig_revoke(rd_kafka_topic_partition_list_t *parts, void *p)
{
	rig *r = p;

	tally_alerts_revoke(r->alerts, parts);
}

static void rig_topics(rig *r)
{
	char dlq1[80], dlq2[80];
	const char *topics[6];
	tally_error err;

	tally_test_unique(r->totals, sizeof(r->totals), "t_totals");
	tally_test_unique(r->signals, sizeof(r->signals), "t_signals");
	tally_test_unique(r->out, sizeof(r->out), "t_alerts_out");
	snprintf(dlq1, sizeof(dlq1), "%s.dlq", r->totals);
	snprintf(dlq2, sizeof(dlq2), "%s.dlq", r->signals);
	topics[0] = r->totals;
	topics[1] = r->signals;
	topics[2] = r->out;
	topics[3] = dlq1;
	topics[4] = dlq2;
	topics[5] = NULL;
	ck_assert_msg(tally_kafka_create_topics(r->producer, topics, 2,
						&err) == 0, "%s", err.msg);
}

static void rig_open(rig *r, bool with_producer)
{
	tally_alerts_opts ao = { 0 };
	rd_kafka_conf_t *conf;
	tally_error err;

	if (r->cfg == NULL) {
		r->cfg = test_cfg();
		conf = tally_kafka_conf(r->cfg);
		tally_alerts_producer_conf(conf);
		ck_assert_int_eq(tally_kafka_producer_new(&r->producer, conf,
							  &err), 0);
		rig_topics(r);
	}
	tally_test_unique(r->group, sizeof(r->group), "g_alerts");
	ao.group = r->group;
	ao.totals_topic = r->totals;
	ao.signals_topic = r->signals;
	ao.alerts_topic = r->out;
	ao.dlq_suffix = ".dlq";
	ao.thresholds = "50,80,100";
	ao.producer = with_producer ? r->producer : NULL;
	ck_assert_int_eq(tally_alerts_new(&r->alerts, pg, &ao, &err), 0);
	memset(&r->st, 0, sizeof(r->st));
}

static void rig_consumer(rig *r)
{
	tally_consumer_opts co = { 0 };
	const char *topics[3] = { r->totals, r->signals, NULL };
	tally_error err;

	co.group = r->group;
	co.topics = topics;
	co.read_committed = true;
	co.on_assign = rig_assign;
	co.on_revoke = rig_revoke;
	co.payload = r;
	ck_assert_int_eq(tally_consumer_new(&r->consumer,
					    tally_kafka_conf(r->cfg), &co,
					    &err), 0);
}

static void rig_close_engine(rig *r)
{
	tally_consumer_free(r->consumer);
	r->consumer = NULL;
	tally_alerts_free(r->alerts);
	r->alerts = NULL;
}

static void rig_free(rig *r)
{
	rig_close_engine(r);
	if (r->producer != NULL) {
		rd_kafka_flush(r->producer, 5000);
		rd_kafka_destroy(r->producer);
	}
	tally_config_free(r->cfg);
}

static void produce(rig *r, const char *topic, const char *value)
{
	ck_assert_int_eq(rd_kafka_producev(r->producer,
		RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(TENANT, 36),
		RD_KAFKA_V_VALUE((void *)value, strlen(value)),
		RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END), 0);
}

/* Consume and process until want messages went through (or 60 s). */
static size_t run_until(rig *r, size_t want)
{
	rd_kafka_message_t *msgs[64];
	tally_alerts_msg views[64];
	size_t done = 0, n, i;
	int64_t deadline = tally_mono_ns() + INT64_C(60000000000);
	tally_error err;

	while (done < want && tally_mono_ns() < deadline) {
		int rc;

		n = tally_consumer_poll_batch(r->consumer, msgs, 64, 300);
		for (i = 0; i < n; i++) {
			views[i].topic = rd_kafka_topic_name(msgs[i]->rkt);
			views[i].partition = msgs[i]->partition;
			views[i].offset = msgs[i]->offset;
			views[i].payload = msgs[i]->payload;
			views[i].len = msgs[i]->len;
			views[i].rkm = msgs[i];
		}
		rc = n ? tally_alerts_process(r->alerts, views, n, &r->st,
					      &err) : 0;
		ck_assert_msg(rc == 0, "process: %s", err.msg);
		for (i = 0; i < n; i++)
			rd_kafka_message_destroy(msgs[i]);
		done += n;
	}
	return done;
}

/* Read a whole topic (from the beginning) for a few seconds. */
static size_t read_topic(rig *r, const char *topic, char ids[][40],
			 size_t max, char *reason, size_t reasonlen)
{
	tally_consumer_opts co = { 0 };
	const char *topics[2] = { topic, NULL };
	tally_consumer *c = NULL;
	rd_kafka_message_t *msgs[16];
	char group[64];
	tally_error err;
	size_t got = 0, n, i;
	int rounds;

	tally_test_unique(group, sizeof(group), "g_reader");
	co.group = group;
	co.topics = topics;
	ck_assert_int_eq(tally_consumer_new(&c, tally_kafka_conf(r->cfg), &co,
					    &err), 0);
	for (rounds = 0; rounds < 16; rounds++) {
		n = tally_consumer_poll_batch(c, msgs, 16, 500);
		for (i = 0; i < n; i++) {
			if (got < max) {
				char val[2048];
				const char *p;

				snprintf(val, sizeof(val), "%.*s",
					 (int)msgs[i]->len,
					 (const char *)msgs[i]->payload);
				/* json_build_object writes {"id" : "…" */
				p = strstr(val, "\"id\"");
				if (p != NULL)
					p = strchr(p + 4, '"');
				ids[got][0] = '\0';
				if (p != NULL)
					snprintf(ids[got], 40, "%.36s", p + 1);
			}
			if (reason != NULL) {
				rd_kafka_headers_t *h = NULL;
				const void *v;
				size_t vl;

				if (rd_kafka_message_headers(msgs[i], &h) == 0 &&
				    rd_kafka_header_get_last(h,
					"x-tally-reason", &v, &vl) == 0)
					snprintf(reason, reasonlen, "%.*s",
						 (int)vl, (const char *)v);
			}
			got++;
			rd_kafka_message_destroy(msgs[i]);
		}
		if (got > 0 && n == 0 && rounds > 6)
			break;
	}
	tally_consumer_free(c);
	return got;
}

START_TEST(test_alerts_thresholds_once_end_to_end)
{
	rig r = { 0 };
	char ids[8][40], reason[64] = "", *m;
	char expect[3][37];
	uint8_t tid[16], id[16];
	size_t n, i, k;
	static const char *costs[] = { "40", "55", "85", "120" };
	static const int pct[] = { 50, 80, 100 };

	rig_open(&r, true);
	rig_consumer(&r);
	/* versions 1..4: 40 % (nothing), 55, 85, 120 % of the budget */
	for (i = 0; i < 4; i++) {
		m = totals_json((int)i + 1, costs[i]);
		produce(&r, r.totals, m);
		free(m);
	}
	/* duplicate of v4 and a stale v2: ignored */
	m = totals_json(4, "120");
	produce(&r, r.totals, m);
	free(m);
	m = totals_json(2, "55");
	produce(&r, r.totals, m);
	free(m);
	produce(&r, r.totals, "{\"tenant_id\":\"" TENANT "\"}"); /* bad */
	ck_assert_int_eq(rd_kafka_flush(r.producer, 10000), 0);

	ck_assert_int_eq(run_until(&r, 7), 7);
	ck_assert_int_eq(r.st.totals, 6);
	ck_assert_int_eq(r.st.stale, 2);
	ck_assert_int_eq(r.st.dead_lettered, 1);
	ck_assert_msg(r.st.raised == 3, "three alerts, raised %zu",
		      r.st.raised);
	ck_assert_int_eq(r.st.produced, 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE kind ="
			       " 'budget' AND threshold IN (50, 80, 100)"), 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " produced_at IS NULL"), 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM dead_letters WHERE"
			       " reason = 'missing_field'"), 1);
	ck_assert_int_eq(q_int("SELECT max(version) FROM"
			       " alert_totals_versions"), 4);
	ck_assert_msg(q_int("SELECT count(*) FROM alerts WHERE payload->>"
			    "'used' = '120' AND threshold = 100") == 1,
		      "the 100 %% alert names the exact cost of v4");

	/* billing.alerts: exactly the three, with the ids the rules give */
	n = read_topic(&r, r.out, ids, 8, NULL, 0);
	ck_assert_msg(n == 3, "billing.alerts holds %zu alerts, want 3", n);
	ck_assert_int_eq(tally_uuid_parse(tid, TENANT, 36), 0);
	for (k = 0; k < 3; k++) {
		bool found = false;

		tally_alert_id(id, tid, TALLY_ALERT_BUDGET,
			       INT64_C(1793491200000), pct[k]);
		tally_uuid_fmt(expect[k], id);
		for (i = 0; i < n; i++)
			found |= strcmp(ids[i], expect[k]) == 0;
		ck_assert_msg(found, "alert %s (%d %%) on billing.alerts",
			      expect[k], pct[k]);
	}
	/* the dead letter, with its reason header */
	{
		char dlq[80];

		snprintf(dlq, sizeof(dlq), "%s.dlq", r.totals);
		n = read_topic(&r, dlq, ids, 8, reason, sizeof(reason));
		ck_assert_int_eq(n, 1);
		ck_assert_str_eq(reason, "missing_field");
	}

	/* replay everything under a new group: nothing new */
	rig_close_engine(&r);
	rig_open(&r, true);
	rig_consumer(&r);
	ck_assert_int_eq(run_until(&r, 7), 7);
	ck_assert_int_eq(r.st.raised, 0);
	ck_assert_int_eq(r.st.produced, 0);
	ck_assert_int_eq(r.st.stale, 6);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 3);
	n = read_topic(&r, r.out, ids, 8, NULL, 0);
	ck_assert_msg(n == 3, "a replay produces nothing: %zu on topic", n);
	rig_free(&r);
}
END_TEST

START_TEST(test_alerts_sweep_produces_once)
{
	rig r = { 0 };
	tally_alerts *pgonly = NULL;
	tally_alerts_opts ao = { 0 };
	tally_error err;
	char ids[8][40];
	int n = -1;

	rig_open(&r, true);
	/* commit without producing: as if killed between commit and produce */
	ao.group = "g_sweep";
	ao.totals_topic = r.totals;
	ao.signals_topic = r.signals;
	ck_assert_int_eq(tally_alerts_new(&pgonly, pg, &ao, &err), 0);
	assign0(pgonly, r.totals, r.signals);
	raise_four(pgonly, r.totals, r.signals);
	tally_alerts_free(pgonly);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " produced_at IS NULL"), 4);
	ck_assert_msg(tally_alerts_sweep(r.alerts, 0, &n, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(n, 4);
	ck_assert_int_eq(tally_alerts_sweep(r.alerts, 0, &n, &err), 0);
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " produced_at IS NULL"), 0);
	ck_assert_int_eq(read_topic(&r, r.out, ids, 8, NULL, 0), 4);
	rig_free(&r);
}
END_TEST

static Suite *tally_alerts_it_suite(void)
{
	Suite *s = suite_create("alerts_integration");
	TCase *tc = tcase_create("Broker");

	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, test_alerts_thresholds_once_end_to_end);
	tcase_add_test(tc, test_alerts_sweep_produces_once);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_it_suite)
