/*
 * test_dlq_cli.c - `tally dlq list|replay` on the real broker: dead letters
 * listed with their reasons (JSON), mirrored into dead_letters idempotently,
 * and replayed (one reason only) to their source topic with the original
 * key, value and headers and nothing of tally's own headers but
 * x-tally-replayed-from.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <jansson.h>

static const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

static char *run_capture(const char *cmd)
{
	FILE *fp = popen(cmd, "r");
	char *buf = tally_xcalloc(1, 1 << 16);
	size_t n;

	ck_assert_ptr_nonnull(fp);
	n = fread(buf, 1, (1 << 16) - 1, fp);
	buf[n] = '\0';
	ck_assert_msg(pclose(fp) == 0, "%s failed", cmd);
	return buf;
}

/* A dead letter as the consumers write it (see tally_dlq_send). */
static void put_dead(rd_kafka_t *rk, const char *dlq, const char *src,
		     const char *key, const char *val, const char *reason,
		     int src_offset)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	char off[16];

	snprintf(off, sizeof(off), "%d", src_offset);
	rd_kafka_header_add(h, "ce_id", -1, val, -1);
	rd_kafka_header_add(h, "x-tally-reason", -1, reason, -1);
	rd_kafka_header_add(h, "x-tally-detail", -1, "why", -1);
	rd_kafka_header_add(h, "x-tally-source-topic", -1, src, -1);
	rd_kafka_header_add(h, "x-tally-source-partition", -1, "0", -1);
	rd_kafka_header_add(h, "x-tally-source-offset", -1, off, -1);
	rd_kafka_header_add(h, "x-tally-consumer", -1, "tally.test", -1);
	ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(dlq),
			 RD_KAFKA_V_KEY(key, strlen(key)),
			 RD_KAFKA_V_VALUE((void *)val, strlen(val)),
			 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			 RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END), 0);
}

START_TEST(test_dlq_list_mirror_replay)
{
	char src[64], dlq[80], db[64], dsn[512], cmd[1024];
	const char *topics[3];
	const char *reasons[3] = { "bad_uuid", "missing_field", "bad_uuid" };
	tally_config *cfg = NULL;
	tally_error err;
	rd_kafka_t *rk = NULL;
	char *out;
	json_t *arr;
	json_error_t jerr;
	int i;

	tally_test_unique(src, sizeof(src), "t_dlqsrc");
	snprintf(dlq, sizeof(dlq), "%s.dlq", src);
	topics[0] = src;
	topics[1] = dlq;
	topics[2] = NULL;
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	ck_assert_int_eq(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg),
						  &err), 0);
	ck_assert_int_eq(tally_kafka_create_topics(rk, topics, 2, &err), 0);
	for (i = 0; i < 3; i++) {
		char val[16], key[16];
		snprintf(val, sizeof(val), "payload-%d", i);
		snprintf(key, sizeof(key), "tenant-%d", i);
		put_dead(rk, dlq, src, key, val, reasons[i], 100 + i);
	}
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), 0);

	/* list: all three, JSON, with reasons */
	snprintf(cmd, sizeof(cmd), "%s/tally dlq list --topic %s --json 2>/dev/null",
		 bin(), dlq);
	out = run_capture(cmd);
	arr = json_loads(out, 0, &jerr);
	ck_assert_msg(arr != NULL && json_array_size(arr) == 3, "list: %s", out);
	ck_assert_str_eq(json_string_value(json_object_get(
				 json_array_get(arr, 1), "reason")), "missing_field");
	json_decref(arr);
	free(out);
	rd_kafka_destroy(rk);
	tally_config_free(cfg);

	/* mirror twice: three rows */
	tally_test_unique(db, sizeof(db), "t_dlq");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	for (i = 0; i < 2; i++) {
		snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally dlq list"
			 " --topic %s --mirror >/dev/null 2>&1", dsn, bin(), dlq);
		ck_assert_int_eq(system(cmd), 0);
	}
	{
		PGconn *c = PQconnectdb(dsn);
		PGresult *r = PQexec(c, "SELECT count(*), count(DISTINCT reason),"
				     " min(tenant_id) FROM dead_letters");
		ck_assert_str_eq(PQgetvalue(r, 0, 0), "3");
		ck_assert_str_eq(PQgetvalue(r, 0, 1), "2");
		ck_assert_str_eq(PQgetvalue(r, 0, 2), "tenant-0");
		PQclear(r);
		PQfinish(c);
	}
	tally_test_db_drop(db);
	(void)src;
}
END_TEST

START_TEST(test_dlq_replay_one_reason)
{
	char src[64], dlq[80], group[64], cmd[1024];
	const char *topics[3];
	tally_config *cfg = NULL;
	tally_error err;
	rd_kafka_t *rk = NULL;
	rd_kafka_message_t *msgs[8];
	tally_consumer *c = NULL;
	tally_consumer_opts opts;
	size_t n = 0;
	int i;

	tally_test_unique(src, sizeof(src), "t_dlqr");
	tally_test_unique(group, sizeof(group), "g_dlqr");
	snprintf(dlq, sizeof(dlq), "%s.dlq", src);
	topics[0] = src;
	topics[1] = dlq;
	topics[2] = NULL;
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	ck_assert_int_eq(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg),
						  &err), 0);
	ck_assert_int_eq(tally_kafka_create_topics(rk, topics, 1, &err), 0);
	for (i = 0; i < 3; i++) {
		char val[16];
		snprintf(val, sizeof(val), "v%d", i);
		put_dead(rk, dlq, src, "k", val, i == 1 ? "bad_time" : "bad_uuid",
			 i);
	}
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), 0);
	snprintf(cmd, sizeof(cmd), "%s/tally dlq replay --topic %s --reason"
		 " bad_uuid >/dev/null 2>&1", bin(), dlq);
	ck_assert_int_eq(system(cmd), 0);

	memset(&opts, 0, sizeof(opts));
	topics[1] = NULL;
	opts.group = group;
	opts.topics = topics;
	ck_assert_int_eq(tally_consumer_new(&c, tally_kafka_conf(cfg), &opts,
					    &err), 0);
	for (i = 0; i < 20 && n < 3; i++)
		n += tally_consumer_poll_batch(c, msgs + n, 8 - n, 500);
	ck_assert_msg(n == 2, "only the two bad_uuid letters come back, got %zu",
		      n);
	for (i = 0; i < (int)n; i++) {
		rd_kafka_headers_t *h = NULL;
		const void *v;
		size_t l;
		ck_assert(msgs[i]->key_len == 1 &&
			  memcmp(msgs[i]->key, "k", 1) == 0);
		ck_assert(msgs[i]->len == 2);
		ck_assert_int_eq(rd_kafka_message_headers(msgs[i], &h), 0);
		ck_assert_int_eq(rd_kafka_header_get_last(h, "x-tally-replayed-from",
							  &v, &l), 0);
		ck_assert_msg(rd_kafka_header_get_last(h, "x-tally-reason", &v,
						       &l) != 0,
			      "replayed messages carry no reason header");
		ck_assert_int_eq(rd_kafka_header_get_last(h, "ce_id", &v, &l), 0);
		ck_assert_msg(l == 2 && memcmp(v, msgs[i]->payload, 2) == 0,
			      "original headers are kept");
		rd_kafka_message_destroy(msgs[i]);
	}
	tally_consumer_free(c);
	rd_kafka_destroy(rk);
	tally_config_free(cfg);
}
END_TEST

static Suite *dlq_suite(void)
{
	Suite *s = suite_create("dlq_cli");
	TCase *tc = tcase_create("Cli");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	setenv("KAFKA_BROKERS", getenv("TALLY_TEST_BROKERS"), 1);
	tally_log_init("test_dlq_cli", TALLY_WARN);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_dlq_list_mirror_replay);
	tcase_add_test(tc, test_dlq_replay_one_reason);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(dlq_suite)
