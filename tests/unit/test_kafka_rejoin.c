/*
 * test_kafka_rejoin.c - a consumer gets back to an assignment after a
 * rebalance that a coordinator does not serve, on librdkafka's in-process
 * mock cluster (src/io/kafka.c, src/io/kafka_stall.c):
 *
 *  - a lost assignment (the coordinator no longer knows the member) is
 *    revoked without committing its stored offsets: the consumer rejoins as
 *    soon as the group lets it, not after the held OffsetCommit answer
 *    (9 s);
 *  - the liveness check (kafka.rejoin_timeout_ms): a rebalance whose
 *    unassign waits for an offset commit the coordinator does not answer
 *    (held 9 s) leaves the consumer in join state wait-unassign-to-complete
 *    with no assignment; past the limit, while the broker answers
 *    metadata, the consumer counts as stalled, counts it, and asks the loop
 *    to stop;
 *  - a consumer that holds its assignment, and one whose broker is down
 *    longer than the limit (an outage, not a stall), never does.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "kafka_mock_client.h"
#include "io/kafka_stall.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/signals.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>

#define TOPIC "stall.t"
#define GROUP "stall.g"
#define APIKEY_OFFSET_COMMIT 8
#define APIKEY_HEARTBEAT 12
#define HELD_MS 9000
#define LOST_HELD_MS 9000
#define LIMIT_MS 1500
#define OUTAGE_LIMIT_MS 4000
#define MS INT64_C(1000000)

typedef struct fixture {
	rd_kafka_t *mrk;
	rd_kafka_mock_cluster_t *mc;
	const char *bs;
	tally_metrics *m;
	tally_consumer *c;
} fixture;

static void produce(const char *bs, int n)
{
	rd_kafka_t *p = mock_client(RD_KAFKA_PRODUCER, bs, NULL);
	int i;

	for (i = 0; i < n; i++)
		ck_assert(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(TOPIC),
				RD_KAFKA_V_PARTITION(i % 2),
				RD_KAFKA_V_VALUE("x", 1),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert(rd_kafka_flush(p, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_destroy(p);
}

static int from_start(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	int i;

	(void)payload;
	for (i = 0; i < parts->cnt; i++)
		parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
	return 0;
}

static void start(fixture *f, int session_ms, int64_t limit_ms)
{
	static const char *topics[] = { TOPIC, NULL };
	tally_consumer_opts co;
	rd_kafka_conf_t *conf;
	tally_error err;
	char v[16];

	tally_log_init("test_kafka_rejoin", TALLY_ERR);
	tally_signals_install();
	f->mrk = mock_client(RD_KAFKA_PRODUCER, NULL, NULL);
	f->mc = rd_kafka_mock_cluster_new(f->mrk, 1);
	ck_assert(f->mc != NULL);
	rd_kafka_mock_group_initial_rebalance_delay_ms(f->mc, 0);
	f->bs = rd_kafka_mock_cluster_bootstraps(f->mc);
	ck_assert(rd_kafka_mock_topic_create(f->mc, TOPIC, 2, 1) == 0);
	produce(f->bs, 20);
	f->m = tally_metrics_new();

	conf = rd_kafka_conf_new();
	snprintf(v, sizeof(v), "%d", session_ms);
	ck_assert(tally_kafka_conf_set(conf, "bootstrap.servers", f->bs,
				       &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "session.timeout.ms", v,
				       &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "heartbeat.interval.ms", "500",
				       &err) == 0);
	ck_assert(tally_kafka_conf_set(conf, "reconnect.backoff.max.ms", "1000",
				       &err) == 0);
	memset(&co, 0, sizeof(co));
	co.group = GROUP;
	co.topics = topics;
	co.on_assign = from_start;
	co.metrics = f->m;
	co.rejoin_timeout_ms = limit_ms;
	ck_assert_msg(tally_consumer_new(&f->c, conf, &co, &err) == 0, "%s",
		      err.msg);
}

static void stop(fixture *f)
{
	tally_consumer_free(f->c);
	tally_metrics_free(f->m);
	rd_kafka_mock_cluster_destroy(f->mc);
	rd_kafka_destroy(f->mrk);
}

/* Poll until n messages arrived (stored as processed); the count. */
static size_t consume(fixture *f, size_t n, int64_t within_ms)
{
	rd_kafka_message_t *msgs[64];
	int64_t end = tally_mono_ns() + within_ms * MS;
	size_t got = 0, k, i;
	tally_error err;

	while (got < n && tally_mono_ns() < end) {
		k = tally_consumer_poll_batch(f->c, msgs, 64, 100);
		ck_assert(tally_consumer_store(f->c, msgs, k, &err) == 0);
		for (i = 0; i < k; i++)
			rd_kafka_message_destroy(msgs[i]);
		got += k;
	}
	return got;
}

/* Poll for ms, every message dropped. */
static void idle(fixture *f, int64_t ms)
{
	(void)consume(f, (size_t)-1, ms);
}

/*
 * The coordinator holds its next OffsetCommit answer for held_ms and
 * answers the next Heartbeat with hb: a rebalance. Returns the generation
 * before it.
 */
static unsigned rebalance(fixture *f, int held_ms, rd_kafka_resp_err_t hb)
{
	ck_assert(rd_kafka_mock_broker_push_request_error_rtts(f->mc, 1,
			APIKEY_OFFSET_COMMIT, 1, RD_KAFKA_RESP_ERR_NO_ERROR,
			held_ms) == RD_KAFKA_RESP_ERR_NO_ERROR);
	rd_kafka_mock_push_request_errors(f->mc, APIKEY_HEARTBEAT, 1, hb);
	return tally_consumer_generation(f->c);
}

static uint64_t stalls(fixture *f)
{
	return tally_counter_get(tally_metrics_counter(f->m,
		"tally_kafka_consumer_stalls_total", "group=\"" GROUP "\"",
		NULL));
}

START_TEST(test_lost_assignment_rejoins_without_commit)
{
	fixture f;
	unsigned gen;
	int64_t revoked = 0, assigned = 0, t;

	/* 3 s sessions: the old member id the mock still holds expires
	 * 3 s after the lost one, which the next assignment waits for */
	start(&f, 3000, 0);
	ck_assert_uint_eq(consume(&f, 20, 15000), 20);

	/* the coordinator would hold the next OffsetCommit answer, and it
	 * no longer knows the member: the assignment is lost */
	gen = rebalance(&f, LOST_HELD_MS, RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID);
	t = tally_mono_ns();
	while (tally_mono_ns() - t < 20000 * MS && assigned == 0) {
		idle(&f, 50);
		if (revoked == 0 && tally_consumer_generation(f.c) != gen)
			revoked = tally_mono_ns();
		if (tally_consumer_generation(f.c) - gen >= 2)
			assigned = tally_mono_ns();
	}
	ck_assert_msg(revoked != 0, "the lost partitions were revoked");
	ck_assert_msg(assigned != 0, "assigned again");
	ck_assert_msg(assigned - revoked < 7000 * MS, "the rejoin waited "
		      "%lld ms (for the commit of a lost assignment?)",
		      (long long)((assigned - revoked) / MS));
	ck_assert(!tally_consumer_stalled(f.c));
	stop(&f);
}
END_TEST

START_TEST(test_stuck_unassign_is_a_stall)
{
	fixture f;
	unsigned gen;
	int64_t revoked = 0, fired = 0, t;

	start(&f, 6000, LIMIT_MS);
	ck_assert_uint_eq(consume(&f, 20, 15000), 20);
	ck_assert(!tally_consumer_stalled(f.c));

	/* the coordinator holds the next OffsetCommit answer (the commit of
	 * the revoked partitions' stored offsets) and asks for a rebalance */
	gen = rebalance(&f, HELD_MS, RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS);
	t = tally_mono_ns();
	while (tally_mono_ns() - t < 20000 * MS && fired == 0) {
		idle(&f, 100);
		if (revoked == 0 && tally_consumer_generation(f.c) != gen)
			revoked = tally_mono_ns();
		if (tally_consumer_stalled(f.c))
			fired = tally_mono_ns();
	}
	ck_assert_msg(revoked != 0, "the rebalance revoked the partitions");
	ck_assert_msg(fired != 0, "a consumer without an assignment past "
		      "the limit while the broker answers is stalled");
	/* revoked is seen only after the poll that ran the revoke */
	ck_assert_msg(fired - revoked >= LIMIT_MS / 2 * MS, "not before the "
		      "limit (%lld ms)", (long long)((fired - revoked) / MS));
	ck_assert_msg(fired - revoked < HELD_MS * MS, "while the unassign was "
		      "still stuck (%lld ms)", (long long)((fired - revoked) /
							 MS));
	ck_assert(tally_signals_stop_requested());
	ck_assert(tally_kafka_stalled());
	ck_assert_uint_eq(stalls(&f), 1);

	idle(&f, 1000);
	ck_assert_uint_eq(stalls(&f), 1); /* once */
	stop(&f);
}
END_TEST

START_TEST(test_assigned_or_outage_is_no_stall)
{
	fixture f;

	/* a limit above the rejoin after an outage: reconnect (up to 1 s
	 * here), find the coordinator, join, sync */
	start(&f, 3000, OUTAGE_LIMIT_MS);
	ck_assert_uint_eq(consume(&f, 20, 15000), 20);
	idle(&f, 2 * LIMIT_MS); /* holding the assignment */
	ck_assert(!tally_consumer_stalled(f.c));

	/* the broker goes away: the session ends, the partitions are
	 * revoked, nothing answers for longer than the limit */
	ck_assert(rd_kafka_mock_broker_set_down(f.mc, 1) ==
		  RD_KAFKA_RESP_ERR_NO_ERROR);
	idle(&f, 3000 + OUTAGE_LIMIT_MS + 2000);
	ck_assert_msg(!tally_consumer_stalled(f.c), "an outage is no stall");
	ck_assert(rd_kafka_mock_broker_set_up(f.mc, 1) ==
		  RD_KAFKA_RESP_ERR_NO_ERROR);
	idle(&f, OUTAGE_LIMIT_MS + 2000);
	ck_assert(!tally_consumer_stalled(f.c));
	ck_assert(!tally_signals_stop_requested());
	ck_assert_uint_eq(stalls(&f), 0);
	stop(&f);
}
END_TEST

/* No probe in the first quarter of the limit after a wait starts (a
 * start, a revoke): a probe there would find the dead broker below and
 * restart the count. */
START_TEST(test_first_probe_after_a_quarter)
{
	rd_kafka_conf_t *probe = rd_kafka_conf_new();
	tally_kafka_stall s;
	char errstr[128];
	int64_t t0;

	ck_assert(rd_kafka_conf_set(probe, "bootstrap.servers", "127.0.0.1:1",
				    errstr, sizeof(errstr)) ==
		  RD_KAFKA_CONF_OK);
	t0 = tally_mono_ns();
	tally_kafka_stall_init(&s, 4000, probe, t0);
	ck_assert(!tally_kafka_stall_check(&s, GROUP, NULL));
	ck_assert_msg(s.counted_from == t0, "probed at the start of the wait");
	tally_kafka_stall_assigned(&s);
	t0 = tally_mono_ns();
	tally_kafka_stall_revoked(&s, t0);
	ck_assert(!tally_kafka_stall_check(&s, GROUP, NULL));
	ck_assert_msg(s.counted_from == t0, "probed right after a revoke");
	/* a quarter later it probes: nothing answers, the count restarts */
	tally_sleep_ms(1100);
	ck_assert(!tally_kafka_stall_check(&s, GROUP, NULL));
	ck_assert(s.counted_from > t0);
	tally_kafka_stall_free(&s);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("kafka_rejoin");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_first_probe_after_a_quarter);
	tcase_add_test(tc, test_lost_assignment_rejoins_without_commit);
	tcase_add_test(tc, test_stuck_unassign_is_a_stall);
	tcase_add_test(tc, test_assigned_or_outage_is_no_stall);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
