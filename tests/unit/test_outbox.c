/*
 * test_outbox.c - the outbox's tracking of messages through their
 * delivery reports, without a broker: messages wait in the producer's
 * queue (its bootstrap address answers nothing) until a purge reports
 * them as failed.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "io/outbox.h"

#include <librdkafka/rdkafka.h>
#include <string.h>

static size_t reported;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
		  void *opaque)
{
	(void)rk;
	(void)opaque;
	if (tally_outbox_report(rkm))
		reported++;
}

/* A producer whose messages stay queued: nothing listens on port 1. */
static rd_kafka_t *offline_producer(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	ck_assert(rd_kafka_conf_set(conf, "bootstrap.servers", "127.0.0.1:1",
				    errstr, sizeof(errstr)) ==
		  RD_KAFKA_CONF_OK);
	ck_assert(rd_kafka_conf_set(conf, "log_level", "0", errstr,
				    sizeof(errstr)) == RD_KAFKA_CONF_OK);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

static void produce(tally_outbox *o, const char *ident)
{
	tally_outbox_msg m = { 0 };
	tally_error err;

	m.key = "k";
	m.key_len = 1;
	m.value = "v";
	m.len = 1;
	m.ident = ident;
	ck_assert_int_eq(tally_outbox_produce(o, &m, &err), 0);
}

static void collect(const void *ident, void *ctx)
{
	char *seen = ctx;

	strncat(seen, ident, 4);
}

static char failed_idents[64];

static void on_failed(const void *ident, rd_kafka_resp_err_t err,
		      void *ctx)
{
	ck_assert_ptr_eq(ctx, failed_idents);
	ck_assert_int_ne(err, RD_KAFKA_RESP_ERR_NO_ERROR);
	strncat(failed_idents, ident, 4);
}

START_TEST(test_outbox_failed_reports)
{
	rd_kafka_t *rk = offline_producer();
	tally_outbox *o = tally_outbox_new(rk, "t.outbox", 5);
	char seen[64] = "";
	size_t n = 9;

	tally_outbox_on_failure(o, on_failed, failed_idents);
	produce(o, "aaaa");
	produce(o, "bbbb");
	ck_assert_int_eq(tally_outbox_inflight(o), 2);
	tally_outbox_each_inflight(o, collect, seen);
	ck_assert_int_eq(strlen(seen), 8);
	ck_assert(strstr(seen, "aaaa") != NULL && strstr(seen, "bbbb") != NULL);
	/* untracked: not the outbox's report */
	ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t.outbox"),
					   RD_KAFKA_V_VALUE("x", 1),
					   RD_KAFKA_V_MSGFLAGS(
						   RD_KAFKA_MSG_F_COPY),
					   RD_KAFKA_V_END),
			 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE),
			 RD_KAFKA_RESP_ERR_NO_ERROR);
	ck_assert_int_eq(tally_outbox_wait(o, 5000), 0);
	rd_kafka_poll(rk, 100);
	ck_assert_int_eq(reported, 2);
	ck_assert_int_eq(tally_outbox_failed(o), 2);
	ck_assert_int_eq(strlen(failed_idents), 8);
	(void)tally_outbox_acked(o, &n);
	ck_assert_int_eq(n, 0);
	tally_outbox_free(o);
	rd_kafka_destroy(rk);
}
END_TEST

/* Freed with messages in flight (producer destroyed first): what it
 * tracked is freed with it (LeakSanitizer checks). */
START_TEST(test_outbox_free_in_flight)
{
	rd_kafka_t *rk = offline_producer();
	tally_outbox *o = tally_outbox_new(rk, "t.outbox", 5);

	produce(o, "cccc");
	ck_assert_int_eq(tally_outbox_inflight(o), 1);
	rd_kafka_destroy(rk);
	tally_outbox_free(o);
}
END_TEST

static Suite *tally_outbox_suite(void)
{
	Suite *s = suite_create("outbox");
	TCase *tc = tcase_create("Core");

	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, test_outbox_failed_reports);
	tcase_add_test(tc, test_outbox_free_in_flight);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_outbox_suite)
