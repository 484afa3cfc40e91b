/*
 * test_aggregate_kafka_hostile.c - tally-aggregate end to end (broker,
 * PostgreSQL, the built binary): a partition holding an event whose
 * addition would overflow its period's sum, and events naming one
 * provider in many spellings, keeps moving. The overflowing event is a
 * dead letter out_of_range (on the DLQ topic before the commit, and in
 * dead_letters), every other event counts exactly, and the instance
 * never stops.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_kafka_support.h"
#include "check_main.h"

#define HOSTILE_TENANT 100

/* One rated AI event of tenant HOSTILE_TENANT with the given names. */
static void produce_ai(rd_kafka_t *rk, int64_t i, int64_t t,
		       const char *provider, int64_t in, int64_t *sent)
{
	tally_rated_event re;
	tally_usage_event *ev = &re.ev;
	msgpack_sbuffer sb;
	char id[32], key[37];

	memset(&re, 0, sizeof(re));
	snprintf(id, sizeof(id), "hostile-%" PRId64, i);
	ev->id.ptr = id;
	ev->id.len = (uint32_t)strlen(id);
	ev->source.ptr = "hostile";
	ev->source.len = 7;
	agg_tenant(ev->tenant_id, HOSTILE_TENANT);
	ev->time_ms = t;
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider.ptr = provider;
	ev->provider.len = (uint32_t)strlen(provider);
	ev->model.ptr = "GPT-4o";
	ev->model.len = 6;
	ev->input_tokens = in;
	ev->output_tokens = 1;
	re.cost = 1000;
	memcpy(re.currency, "USD", 4);
	re.rated_at_ms = t;
	agg_encode(&sb, &re);
	tally_uuid_fmt(key, ev->tenant_id);
	ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
					   RD_KAFKA_V_KEY(key, 36),
					   RD_KAFKA_V_VALUE(sb.data, sb.size),
					   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					   RD_KAFKA_V_END), 0);
	msgpack_sbuffer_destroy(&sb);
	(*sent)++;
}

START_TEST(test_aggregate_kafka_hostile_partition_moves)
{
	rd_kafka_t *rk = producer();
	int64_t sent = 0, base = tally_now_ms() - 2 * 3600000, i;
	static const char *const spell[] = { "OpenAI", " openai", "OPENAI ",
					     "oPeNaI", "  OpenAi  " };
	char sql[512], tenant[37];
	uint8_t tid[16];

	agg_tenant(tid, HOSTILE_TENANT);
	tally_uuid_fmt(tenant, tid);
	/* the hostile tenant's period already near the top of a bigint */
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenant_period_usage (tenant_id, period_start,"
		 " period_end, input_tokens) SELECT '%s', m, m + interval"
		 " '1 month', 9223372036854775000 FROM (SELECT date_trunc("
		 "'month', to_timestamp(%" PRId64 " / 1000.0) AT TIME ZONE"
		 " 'UTC') AT TIME ZONE 'UTC' AS m) s", tenant, base);
	tally_test_exec(dsn, sql);
	produce_range(rk, 0, 300, base, &sent);
	for (i = 0; i < 5; i++) /* 5 x 100 tokens fit (807 left) */
		produce_ai(rk, i, base, spell[i], 100, &sent);
	produce_ai(rk, 5, base, "openai", 1000, &sent); /* overflows */
	produce_range(rk, 300, 600, base, &sent);
	rd_kafka_flush(rk, 30000);
	write_config(2000);
	start(0);
	wait_done(sent, 120);
	stop(0, SIGTERM);
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(reason, ',')"
				    " FROM dead_letters"), "out_of_range");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ',')"
				    " FROM providers"), "openai");
	snprintf(sql, sizeof(sql), "SELECT input_tokens::text FROM"
		 " tenant_period_usage WHERE tenant_id = '%s'", tenant);
	ck_assert_str_eq(agg_query1(chk, sql), "9223372036854775500");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM usage_ledger"
		 " WHERE tenant_id = '%s'", tenant);
	ck_assert_int_eq(agg_query_i64(chk, sql), 5);
	/* everything else exactly: without the hostile tenant's rows */
	snprintf(sql, sizeof(sql), "DELETE FROM tenant_period_usage WHERE"
		 " tenant_id = '%s'; DELETE FROM usage_hourly WHERE tenant_id"
		 " = '%s'; DELETE FROM usage_ledger WHERE tenant_id = '%s'",
		 tenant, tenant, tenant);
	tally_test_exec(dsn, sql);
	expect_all(600, base);
	rd_kafka_destroy(rk);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("aggregate_kafka_hostile");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_aggregate_kafka_hostile_partition_moves);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
