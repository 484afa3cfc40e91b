/*
 * alerts_engine_support.h - for the test_alerts*.c programs that drive the
 * tally-alerts engine on a real PostgreSQL: the per-test database with one
 * tenant, a one-number query, totals messages, the engine's config, and
 * messages handed to the engine directly (no broker in the loop).
 */
#ifndef TALLY_TEST_ALERTS_ENGINE_SUPPORT_H
#define TALLY_TEST_ALERTS_ENGINE_SUPPORT_H

#include "test_support.h"
#include "check_main.h"

#include "tally/alerts.h"
#include "tally/config.h"
#include "tally/event.h"
#include "tally/kafka.h"
#include "tally/log.h"

#define TENANT "4d7f3a52-2b1c-4c8e-9f0a-1b2c3d4e5f60"

static char db[64], dsn[512];
static tally_pg *pg;

static inline void db_setup(void)
{
	tally_error err;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test_alerts", TALLY_WARN);
	tally_test_unique(db, sizeof(db), "t_alerts");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	ck_assert_msg(tally_pg_connect(&pg, dsn, 10000, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(tally_pg_exec(pg, NULL,
		"INSERT INTO tenants (id, name, slug, domain,"
		" subscription_plan, monthly_budget) VALUES ('" TENANT "',"
		" 'Acme', 'acme', 'acme.example', 'enterprise', 100.00)",
		0, NULL, &err), 0);
}

static inline void db_teardown(void)
{
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

static inline int64_t q_int(const char *sql)
{
	PGresult *res = NULL;
	tally_error err;
	int64_t v = -1;

	ck_assert_msg(tally_pg_exec(pg, &res, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
	ck_assert_int_eq(tally_parse_i64(&v, PQgetvalue(res, 0, 0)), 0);
	PQclear(res);
	return v;
}

static char *totals_json(int version, const char *cost)
{
	char *b = tally_xmalloc(512);

	snprintf(b, 512,
		 "{\"schema\":\"tally.totals/1\",\"tenant_id\":\"" TENANT "\","
		 "\"period_start\":\"2026-11-01T00:00:00.000Z\","
		 "\"period_end\":\"2026-12-01T00:00:00.000Z\",\"version\":%d,"
		 "\"ai_requests\":10,\"max_ai_requests_per_month\":10000,"
		 "\"workflow_executions\":1,\"max_workflows\":100,"
		 "\"cost\":\"%s\",\"monthly_budget\":\"100.00\","
		 "\"currency\":\"USD\",\"budget_state\":\"ok\"}",
		 version, cost);
	return b;
}

static inline tally_config *test_cfg(void)
{
	tally_config *cfg = NULL;
	tally_error err;

	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "kafka.brokers", getenv("TALLY_TEST_BROKERS"));
	return cfg;
}

/* engine + consumer glue ------------------------------------------- */

static inline void view(tally_alerts_msg *v, const char *topic, int64_t off,
		 const char *json)
{
	memset(v, 0, sizeof(*v));
	v->topic = topic;
	v->partition = 0;
	v->offset = off;
	v->payload = json;
	v->len = strlen(json);
}

static inline void assign0(tally_alerts *a, const char *t1, const char *t2)
{
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(2);
	tally_error err;

	rd_kafka_topic_partition_list_add(l, t1, 0);
	rd_kafka_topic_partition_list_add(l, t2, 0);
	ck_assert_int_eq(tally_alerts_assign(a, l, &err), 0);
	rd_kafka_topic_partition_list_destroy(l);
}

/* Three budget alerts and a dispute through the engine, PG only. */
static inline void raise_four(tally_alerts *a, const char *totals,
		       const char *signals)
{
	tally_alerts_msg v[2];
	tally_alerts_stats st = { 0 };
	tally_error err;
	char *m = totals_json(1, "100");
	const char *sig =
		"{\"id\":\"a6d5b0c4-3b1f-5e2a-9c8d-7e6f5a4b3c2d\","
		"\"kind\":\"dispute\",\"tenant_id\":\"" TENANT "\","
		"\"time\":1794736800000,\"dispute_id\":\"dp_1\","
		"\"amount\":\"29900\",\"closed\":false,\"version\":1}";

	view(&v[0], totals, 0, m);
	view(&v[1], signals, 0, sig);
	ck_assert_msg(tally_alerts_process(a, v, 2, &st, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(st.raised, 4);
	free(m);
}

#endif
