#ifndef TALLY_TEST_AGGREGATE_PG_SUPPORT_H
#define TALLY_TEST_AGGREGATE_PG_SUPPORT_H

/*
 * aggregate_pg_support.h - tally-aggregate's batch logic against a real
 * PostgreSQL, no broker (test_aggregate.c, test_rerate.c,
 * test_retention.c): a fresh migrated database per test (db, dsn; pg for
 * the code under test, chk for the test's own queries), an aggregator
 * assigned partitions 0-3 of AGG_TOPIC, and batches of encoded events
 * whose offsets continue per partition (next_off). Include once per test
 * program: the state below is the program's.
 */

#include "aggregate_support.h"
#include "check_main.h"
#include "tally/aggregate.h"
#include "tally/pricebook_pg.h"

#define AGG_TOPIC "billing.usage.rated"
#define DAY_MS INT64_C(86400000)

static char db[64], dsn[512];
static tally_pg *pg;
static PGconn *chk;
static int64_t next_off[4];

/* Check fixture bodies: prefix names the databases (prefix_<pid>_<n>). */
static inline void aggpg_setup(const char *prefix)
{
	tally_error err;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_unique(db, sizeof(db), prefix);
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	ck_assert_msg(tally_pg_connect(&pg, dsn, 10000, &err) == 0, "%s",
		      err.msg);
	chk = PQconnectdb(dsn);
	ck_assert(PQstatus(chk) == CONNECTION_OK);
	memset(next_off, 0, sizeof(next_off));
}

static inline void aggpg_teardown(void)
{
	PQfinish(chk);
	tally_pg_free(pg);
	tally_test_db_drop(db);
}

/*
 * An aggregator on pg with the default windows (lateness 35 days, 5
 * minutes ahead), optionally a price book (storage), a recent-keys ring
 * size and a cap of names per tenant (0 = the defaults), assigned
 * partitions 0-3 of AGG_TOPIC.
 */
static inline tally_agg *aggpg_new_cap(const tally_pricebook *pb,
				       size_t recent_keys, size_t max_models)
{
	tally_agg_opts o = { 0 };
	tally_agg *agg = NULL;
	tally_error err;
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
	int p;

	o.group = "tally.aggregate";
	o.lateness_ms = 35 * DAY_MS;
	o.future_ms = 300000;
	o.pricebook = pb;
	o.recent_keys = recent_keys;
	o.known_keys = 4096; /* as tally-aggregate: known workflows and users */
	o.max_models_per_tenant = max_models;
	ck_assert(tally_agg_new(&agg, pg, &o, &err) == 0);
	for (p = 0; p < 4; p++)
		rd_kafka_topic_partition_list_add(l, AGG_TOPIC, p);
	ck_assert_msg(tally_agg_assign(agg, l, &err) == 0, "%s", err.msg);
	rd_kafka_topic_partition_list_destroy(l);
	return agg;
}

static inline tally_agg *aggpg_new(const tally_pricebook *pb,
				   size_t recent_keys)
{
	return aggpg_new_cap(pb, recent_keys, 0);
}

/* Record tenant s's period [from_ms, to_ms) as invoiced (closed). */
static inline void invoiced_period(const char *s, int64_t from_ms,
				   int64_t to_ms, const char *invoice)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO billing_periods VALUES ('%s', timestamptz 'epoch'"
		 " + %" PRId64 " * interval '1 ms', timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms', 'invoiced', now(), '%s')",
		 s, from_ms, to_ms, invoice);
	tally_test_exec(dsn, sql);
}

/* A batch of encoded events; offsets continue per partition. */
typedef struct batch {
	tally_agg_msg m[64];
	msgpack_sbuffer sb[64];
	size_t n;
} batch;

static inline void batch_add(batch *b, const tally_rated_event *re, int part)
{
	agg_encode(&b->sb[b->n], re);
	b->m[b->n].topic = AGG_TOPIC;
	b->m[b->n].partition = part;
	b->m[b->n].offset = next_off[part]++;
	b->m[b->n].payload = b->sb[b->n].data;
	b->m[b->n].len = b->sb[b->n].size;
	b->n++;
}

static inline void batch_free(batch *b)
{
	size_t i;

	for (i = 0; i < b->n; i++)
		msgpack_sbuffer_destroy(&b->sb[i]);
	b->n = 0;
}

#endif /* TALLY_TEST_AGGREGATE_PG_SUPPORT_H */
