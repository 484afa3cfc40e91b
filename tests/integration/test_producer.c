/*
 * test_producer.c - the producer API and `tally produce` against the real
 * broker: each test creates its own topic, produces, and reads the topic
 * back with a plain consumer to check key, CloudEvents headers and the
 * msgpack value; `tally produce` runs as a child process on a file with
 * good and bad lines.
 */
#include "test_support.h"
#include "check_main.h"
#include "topic_support.h"

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "tally/codec.h"
#include "tally/command.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/producer.h"

#define TENANT "3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b"

static tally_config *test_cfg(void)
{
	tally_config *cfg = NULL;
	tally_error err;

	ck_assert_msg(tally_config_load(&cfg, NULL, &err) == 0, "%s", err.msg);
	tally_config_set(cfg, "kafka.brokers",
			 tally_test_need_env("TALLY_TEST_BROKERS"));
	return cfg;
}

static void make_topic_n(const tally_config *cfg, char *topic, size_t n,
			 const char *prefix, int partitions)
{
	tally_producer *p = NULL;
	tally_error err;
	const char *topics[2];

	tally_test_unique(topic, n, prefix);
	topics[0] = topic;
	topics[1] = NULL;
	ck_assert_int_eq(tally_producer_new(&p, cfg, NULL, &err), 0);
	ck_assert_msg(tally_kafka_create_topics(tally_producer_rk(p), topics,
						partitions, &err) == 0, "%s",
		      err.msg);
	tally_producer_free(p);
}

static void make_topic(const tally_config *cfg, char *topic, size_t n,
		       const char *prefix)
{
	make_topic_n(cfg, topic, n, prefix, 3);
}

typedef struct counts {
	int ok;
	int failed;
	uint64_t opaque_sum;
} counts;

static void on_dr(const tally_delivery *dr, void *payload)
{
	counts *c = payload;

	if (dr->code == 0 && dr->offset >= 0)
		c->ok++;
	else
		c->failed++;
	c->opaque_sum += (uintptr_t)dr->opaque;
}

static void fill(tally_usage_event *ev, char *idbuf, int i)
{
	memset(ev, 0, sizeof(*ev));
	snprintf(idbuf, 32, "evt-%d", i);
	ev->id.ptr = idbuf;
	ev->id.len = (uint32_t)strlen(idbuf);
	ev->source.ptr = "workflow-engine/test";
	ev->source.len = 20;
	ck_assert_int_eq(tally_uuid_parse(ev->tenant_id, TENANT, 36), 0);
	ev->time_ms = INT64_C(1764151200000) + i;
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider.ptr = "openai";
	ev->provider.len = 6;
	ev->model.ptr = "gpt-4o";
	ev->model.len = 6;
	ev->input_tokens = 1000 + i;
	ev->output_tokens = 10;
	ev->cache_read_tokens = 100;
}

START_TEST(test_producer_round_trip)
{
	tally_config *cfg = test_cfg();
	char topic[96], idbuf[32], hb[128];
	tally_producer *p = NULL;
	tally_producer_opts opts = { 0 };
	counts c = { 0 };
	tally_error err;
	tally_usage_event ev;
	rd_kafka_message_t *msgs[10];
	rd_kafka_t *rk = NULL;
	int i, n, seen = 0;

	make_topic(cfg, topic, sizeof(topic), "test_producer");
	opts.topic = topic;
	opts.on_delivery = on_dr;
	opts.payload = &c;
	ck_assert_int_eq(tally_producer_new(&p, cfg, &opts, &err), 0);
	for (i = 1; i <= 10; i++) {
		fill(&ev, idbuf, i);
		ck_assert_msg(tally_producer_send_usage(p, &ev,
							(void *)(uintptr_t)i,
							&err) == 0,
			      "send %d: %s", i, err.msg);
	}
	/* an invalid event is refused at the caller, nothing queued */
	fill(&ev, idbuf, 99);
	ev.cache_write_tokens = ev.input_tokens;
	ck_assert_int_eq(tally_producer_send_usage(p, &ev, NULL, &err),
			 TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "cache_exceeds_input") != NULL, "%s",
		      err.msg);
	ck_assert_int_eq(tally_producer_flush(p, 30000, &err), 0);
	ck_assert_int_eq(c.ok, 10);
	ck_assert_int_eq(c.failed, 0);
	ck_assert_int_eq(c.opaque_sum, 55);
	tally_producer_free(p);

	n = (int)topic_consume(&rk, msgs, 10, getenv("TALLY_TEST_BROKERS"),
				topic, 3, 30000);
	ck_assert_int_eq(n, 10);
	for (i = 0; i < n; i++) {
		tally_usage_event got;
		tally_codec_error ce;
		char want[32];

		ck_assert_int_eq((int)msgs[i]->key_len, 36);
		ck_assert(memcmp(msgs[i]->key, TENANT, 36) == 0);
		ck_assert_int_eq(tally_codec_decode_usage(
					 &got, msgs[i]->payload, msgs[i]->len,
					 &ce), 0);
		snprintf(want, sizeof(want), "%.*s", (int)got.id.len,
			 got.id.ptr);
		ck_assert_str_eq(topic_header(msgs[i], "ce_id", hb,
					      sizeof(hb)), want);
		ck_assert_str_eq(topic_header(msgs[i], "ce_source", hb,
					      sizeof(hb)),
				 "workflow-engine/test");
		ck_assert_str_eq(topic_header(msgs[i], "ce_type", hb,
					      sizeof(hb)), "ai.tokens");
		ck_assert_str_eq(topic_header(msgs[i], "ce_specversion", hb,
					      sizeof(hb)), "1.0");
		ck_assert_str_eq(topic_header(msgs[i], "content-type", hb,
					      sizeof(hb)),
				 "application/msgpack");
		ck_assert_ptr_nonnull(topic_header(msgs[i], "ce_time", hb,
						   sizeof(hb)));
		ck_assert_int_eq(strncmp(hb, "2025-11-26T10:00:00.", 20), 0);
		ck_assert_int_eq(got.input_tokens - 1000,
				 got.time_ms - INT64_C(1764151200000));
		ck_assert_int_eq(got.cache_read_tokens, 100);
		seen |= 1 << (got.input_tokens - 1000);
		rd_kafka_message_destroy(msgs[i]);
	}
	topic_done(rk, NULL, 0); /* the messages are destroyed */
	ck_assert_int_eq(seen, 0x7fe); /* evt-1 .. evt-10, each once */
	tally_config_free(cfg);
}
END_TEST

static int run(const char *cmd, char *out, size_t n)
{
	FILE *fp = popen(cmd, "r");
	size_t got;
	int st;

	ck_assert_ptr_nonnull(fp);
	got = fread(out, 1, n - 1, fp);
	out[got] = '\0';
	st = pclose(fp);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_producer_cli_good_and_bad_lines)
{
	tally_config *cfg = test_cfg();
	char topic[96], path[128], cmd[1024], out[8192];
	rd_kafka_message_t *msgs[8];
	rd_kafka_t *rk = NULL;
	FILE *fp;
	int rc, n, i;

	make_topic(cfg, topic, sizeof(topic), "test_produce_cli");
	snprintf(path, sizeof(path), "/tmp/%s.jsonl", topic);
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	fprintf(fp,
		"{\"id\":\"a1\",\"source\":\"s\",\"type\":\"ai.tokens\","
		"\"tenant_id\":\"" TENANT "\",\"time\":\"2025-11-26T10:00:00Z\","
		"\"data\":{\"provider\":\"openai\",\"model\":\"gpt-4o\","
		"\"input_tokens\":10,\"output_tokens\":2}}\n"
		"{\"id\":\"a2\",\"source\":\"s\",\"type\":\"ai.tokens\","
		"\"tenant_id\":\"" TENANT "\",\"time\":\"2025-11-26T10:00:00\","
		"\"data\":{\"provider\":\"openai\",\"model\":\"gpt-4o\","
		"\"input_tokens\":10,\"output_tokens\":2}}\n"
		"this is not json\n"
		"\n"
		"{\"id\":\"a3\",\"source\":\"s\",\"type\":\"api.call\","
		"\"tenant_id\":\"" TENANT "\",\"time\":1764151200000,"
		"\"data\":{\"count\":3}}\n"
		"{\"id\":\"a4\",\"source\":\"s\",\"type\":\"api.call\","
		"\"tenant_id\":\"" TENANT "\",\"time\":1764151200000,"
		"\"data\":{\"count\":1000000000001}}\n");
	fclose(fp);

	snprintf(cmd, sizeof(cmd),
		 "KAFKA_BROKERS='%s' %s/tally produce --topic %s %s 2>&1",
		 getenv("TALLY_TEST_BROKERS"), TALLY_BINARY_DIR, topic, path);
	rc = run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 1, "rejections must fail the run: %d\n%s", rc,
		      out);
	ck_assert_msg(strstr(out, "line 2: rejected: bad_time time") != NULL,
		      "%s", out);
	ck_assert_msg(strstr(out, "line 3: rejected: bad_json") != NULL, "%s",
		      out);
	ck_assert_msg(strstr(out, "line 6: rejected: out_of_range data.count")
			      != NULL, "%s", out);
	ck_assert_msg(strstr(out, "2 produced, 2 delivered, 0 failed, "
				  "3 rejected") != NULL, "%s", out);

	/* --skip-invalid: same file, exit 0 */
	snprintf(cmd, sizeof(cmd),
		 "KAFKA_BROKERS='%s' %s/tally produce --skip-invalid "
		 "--topic %s < %s 2>&1",
		 getenv("TALLY_TEST_BROKERS"), TALLY_BINARY_DIR, topic, path);
	rc = run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 0, "--skip-invalid must succeed: %d\n%s", rc, out);

	n = (int)topic_consume(&rk, msgs, 4, getenv("TALLY_TEST_BROKERS"),
				topic, 3, 30000);
	ck_assert_int_eq(n, 4);
	for (i = 0; i < n; i++) {
		tally_usage_event ev;
		tally_codec_error ce;
		msgpack_sbuffer sb;
		char hb[128], want[64];

		ck_assert_int_eq(tally_codec_decode_usage(&ev, msgs[i]->payload,
							  msgs[i]->len, &ce),
				 0);
		ck_assert_int_eq(ev.time_ms, INT64_C(1764151200000));
		/* the documented key and headers, and the canonical body */
		ck_assert_int_eq((int)msgs[i]->key_len, 36);
		ck_assert(memcmp(msgs[i]->key, TENANT, 36) == 0);
		snprintf(want, sizeof(want), "%.*s", (int)ev.id.len, ev.id.ptr);
		ck_assert_str_eq(topic_header(msgs[i], "ce_id", hb, sizeof(hb)),
				 want);
		ck_assert_str_eq(topic_header(msgs[i], "ce_source", hb,
					      sizeof(hb)), "s");
		ck_assert_str_eq(topic_header(msgs[i], "ce_type", hb,
					      sizeof(hb)),
				 tally_meter_name(ev.meter));
		ck_assert_str_eq(topic_header(msgs[i], "ce_time", hb,
					      sizeof(hb)),
				 "2025-11-26T10:00:00.000Z");
		ck_assert_str_eq(topic_header(msgs[i], "ce_specversion", hb,
					      sizeof(hb)), "1.0");
		ck_assert_str_eq(topic_header(msgs[i], "content-type", hb,
					      sizeof(hb)),
				 "application/msgpack");
		msgpack_sbuffer_init(&sb);
		tally_codec_encode_usage(&sb, &ev);
		ck_assert(sb.size == msgs[i]->len &&
			  memcmp(sb.data, msgs[i]->payload, sb.size) == 0);
		msgpack_sbuffer_destroy(&sb);
		rd_kafka_message_destroy(msgs[i]);
	}
	topic_done(rk, NULL, 0); /* the messages are destroyed */
	unlink(path);
	tally_config_free(cfg);
}
END_TEST

/* Every message of the topic's 3 partitions within 20 s; ids into seen[]. */
static int consume_ids(const char *topic, unsigned char *seen, int max_id,
		       int *dups)
{
	/* room for more than max_id: an extra message must show up */
	size_t cap = (size_t)max_id + 1000, n, k;
	rd_kafka_message_t **m = calloc(cap, sizeof(*m));
	rd_kafka_t *rk = NULL;

	ck_assert_ptr_nonnull(m);
	*dups = 0;
	n = topic_consume(&rk, m, cap, getenv("TALLY_TEST_BROKERS"), topic, 3,
			  20000);
	for (k = 0; k < n; k++) {
		tally_usage_event ev;
		tally_codec_error ce;
		int i;

		ck_assert_int_eq(tally_codec_decode_usage(&ev, m[k]->payload,
							  m[k]->len, &ce), 0);
		ck_assert_msg(ev.id.len > 2 && ev.id.ptr[0] == 'p',
			      "unexpected id %.*s", (int)ev.id.len, ev.id.ptr);
		i = atoi(ev.id.ptr + 2);
		ck_assert(i > 0 && i <= max_id);
		*dups += seen[i] != 0;
		seen[i] = 1;
	}
	topic_done(rk, m, n);
	free(m);
	return (int)n;
}

/*
 * Parallel parsing: 24 000 lines (several chunks, 4 parser threads) with
 * bad JSON, invalid values, empty lines, CRLF endings and escaped strings
 * (the jansson path) mixed in: exactly the good lines are on the topic,
 * each once, and the bad ones are reported with their line numbers.
 */
START_TEST(test_producer_cli_parallel_exactly_once)
{
	enum { N = 24000 };
	tally_config *cfg = test_cfg();
	char topic[96], path[128], cmd[1024], want[128];
	static char out[262144];
	static unsigned char seen[N + 1];
	int i, good = 0, bad = 0, dups = 0, rc, got;
	FILE *fp, *pp;
	size_t n;

	make_topic(cfg, topic, sizeof(topic), "test_produce_par");
	snprintf(path, sizeof(path), "/tmp/%s.jsonl", topic);
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	for (i = 1; i <= N; i++) {
		if (i % 17 == 0) {
			fputs("\n", fp); /* empty: neither good nor bad */
		} else if (i % 11 == 0) {
			fputs("{\"id\":\"p-1\",\"source\":\n", fp);
			bad++;
		} else if (i % 13 == 0) {
			fprintf(fp, "{\"id\":\"p-%d\",\"source\":\"s\","
				"\"type\":\"ai.tokens\",\"tenant_id\":\"" TENANT
				"\",\"time\":1764151200000,\"data\":{"
				"\"provider\":\"openai\",\"model\":\"gpt-4o\","
				"\"input_tokens\":-5,\"output_tokens\":2}}\n", i);
			bad++;
		} else {
			fprintf(fp, "{\"id\":\"p-%d\",\"source\":\"%s\","
				"\"type\":\"api.call\",\"tenant_id\":\"" TENANT
				"\",\"time\":%d,\"subject\":\"user-%d\","
				"\"data\":{\"count\":%d}}%s\n", i,
				i % 5 == 0 ? "s\\u00e9" : "s",
				1764151200 + i, i % 7, 1 + i % 3,
				i % 3 == 0 ? "\r" : "");
			good++;
		}
	}
	fclose(fp);
	snprintf(cmd, sizeof(cmd),
		 "KAFKA_BROKERS='%s' %s/tally produce --skip-invalid "
		 "--threads 4 --topic %s %s 2>&1",
		 getenv("TALLY_TEST_BROKERS"), TALLY_BINARY_DIR, topic, path);
	pp = popen(cmd, "r");
	ck_assert_ptr_nonnull(pp);
	n = fread(out, 1, sizeof(out) - 1, pp);
	out[n] = '\0';
	while (fgetc(pp) != EOF)
		;
	rc = pclose(pp);
	ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "exit %d\n%.2000s",
		      rc, out);
	snprintf(want, sizeof(want), "%d lines, %d produced, %d delivered, "
		 "0 failed, %d rejected", N, good, good, bad);
	ck_assert_msg(strstr(out, want) != NULL, "want \"%s\" in\n%.2000s",
		      want, out + (n > 2000 ? n - 2000 : 0));
	ck_assert_msg(strstr(out, "line 11: rejected: bad_json") != NULL &&
		      strstr(out, "line 13: rejected: out_of_range "
			     "data.input_tokens") != NULL,
		      "rejections by line number: %.1000s", out);
	snprintf(want, sizeof(want), "produce: %d more rejections not shown",
		 bad - 1000);
	ck_assert_msg(strstr(out, want) != NULL, "1000 shown, then counted");
	ck_assert_msg(strstr(out, "lines/s") != NULL, "progress: %.500s", out);
	got = consume_ids(topic, seen, N, &dups);
	ck_assert_int_eq(dups, 0);
	ck_assert_int_eq(got, good);
	for (i = 1; i <= N; i++)
		ck_assert_int_eq(seen[i], i % 17 && i % 11 && i % 13);
	unlink(path);
	tally_config_free(cfg);
}
END_TEST

/*
 * Commands keep the file's order: a create_tenant must reach the topic
 * before a later command of the tenant. 30 000 commands (several 1 MiB
 * chunks) with --threads 4 on a 1-partition topic arrive in file order.
 */
START_TEST(test_producer_cli_commands_in_file_order)
{
	enum { N = 30000 };
	tally_config *cfg = test_cfg();
	char topic[96], path[128], cmd[1024], out[8192];
	rd_kafka_message_t **m = calloc(N + 100, sizeof(*m));
	rd_kafka_t *rk = NULL;
	int i, rc, prev = 0, out_of_order = 0;
	size_t n, k;
	FILE *fp;

	ck_assert_ptr_nonnull(m);
	make_topic_n(cfg, topic, sizeof(topic), "test_produce_cmd", 1);
	snprintf(path, sizeof(path), "/tmp/%s.jsonl", topic);
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	for (i = 1; i <= N; i++)
		fprintf(fp, "{\"id\":\"c-%d\",\"type\":\"sync_tenant\","
			"\"tenant_id\":\"" TENANT "\",\"time\":%d}\n", i,
			1764151200 + i);
	fclose(fp);
	snprintf(cmd, sizeof(cmd),
		 "KAFKA_BROKERS='%s' %s/tally produce --schema command "
		 "--threads 4 --topic %s %s 2>&1",
		 getenv("TALLY_TEST_BROKERS"), TALLY_BINARY_DIR, topic, path);
	rc = run(cmd, out, sizeof(out));
	ck_assert_msg(rc == 0, "exit %d\n%s", rc, out);

	n = topic_consume(&rk, m, N, getenv("TALLY_TEST_BROKERS"), topic,
			  1, 30000);
	ck_assert_int_eq((int)n, N);
	for (k = 0; k < n; k++) {
		tally_command c;
		tally_codec_error ce;

		ck_assert_int_eq(tally_codec_decode_command(&c, m[k]->payload,
							    m[k]->len, &ce), 0);
		i = atoi(c.id.ptr + 2);
		out_of_order += i != prev + 1;
		prev = i;
	}
	ck_assert_msg(out_of_order == 0, "%d commands out of file order",
		      out_of_order);
	topic_done(rk, m, n);
	free(m);
	unlink(path);
	tally_config_free(cfg);
}
END_TEST

static Suite *tally_producer_suite(void)
{
	Suite *s = suite_create("producer");
	TCase *tc = tcase_create("Broker");

	tcase_add_test(tc, test_producer_round_trip);
	tcase_add_test(tc, test_producer_cli_good_and_bad_lines);
	tcase_add_test(tc, test_producer_cli_parallel_exactly_once);
	tcase_add_test(tc, test_producer_cli_commands_in_file_order);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_producer_suite)
