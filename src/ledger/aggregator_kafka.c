/*
 * aggregator_kafka.c - tally-aggregate's consumer: librdkafka tuned for
 * bounded memory, and the rebalance callbacks that hand each lane its
 * partitions' positions from consumer_offsets.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregator_int.h"
#include "tally/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each lane reads and fences its own partitions of parts. */
static int lanes_assign(void *ctx, rd_kafka_topic_partition_list_t *parts,
			tally_error *err)
{
	tally_aggregator *a = ctx;
	int l, i, rc = 0;

	for (l = 0; l < a->nlanes && rc == 0; l++) {
		rd_kafka_topic_partition_list_t *sub =
			rd_kafka_topic_partition_list_new(parts->cnt);

		for (i = 0; i < parts->cnt; i++)
			if (aggr_lane_of(a, parts->elems[i].partition) == l)
				rd_kafka_topic_partition_list_add(
					sub, parts->elems[i].topic,
					parts->elems[i].partition);
		if (sub->cnt > 0)
			rc = tally_agg_assign(a->lanes[l].agg, sub, err);
		for (i = 0; rc == 0 && i < sub->cnt; i++)
			rd_kafka_topic_partition_list_find(
				parts, sub->elems[i].topic,
				sub->elems[i].partition)->offset =
				sub->elems[i].offset;
		rd_kafka_topic_partition_list_destroy(sub);
	}
	return rc;
}

static void lanes_revoke(void *ctx, const rd_kafka_topic_partition_list_t *parts)
{
	tally_aggregator *a = ctx;

	for (int l = 0; l < a->nlanes; l++)
		tally_agg_revoke(a->lanes[l].agg, parts);
}

/*
 * Before an assignment nothing may be in flight while positions are read;
 * before a revocation the in-flight batch (if any) finishes: each lane's
 * part committed (its offsets are stored now) or, if it is retrying a
 * PostgreSQL failure, abandoned (the next owner redoes it from
 * consumer_offsets). The batch being gathered is dropped by the poll.
 */
static void lanes_drain(void *ctx, bool revoking)
{
	tally_aggregator *a = ctx;

	if (revoking)
		atomic_store(&a->abandon, 1);
	(void)aggr_finish_batch(a, true);
	if (revoking)
		atomic_store(&a->abandon, 0);
}

/* TALLY_AGG_KAFKA_CONF="name=value,...": overrides (for measurements). */
static void conf_overrides(rd_kafka_conf_t *conf)
{
	const char *env = getenv("TALLY_AGG_KAFKA_CONF");
	char *dup, *save = NULL, *kv;
	tally_error err;

	if (env == NULL)
		return;
	dup = tally_xstrdup(env);
	for (kv = strtok_r(dup, ",", &save); kv != NULL;
	     kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		if (tally_kafka_conf_set(conf, kv, eq + 1, &err) != 0)
			tally_log(TALLY_WARN, "kafka.conf",
				  TALLY_KV_STR("error", err.msg));
	}
	free(dup);
}

/*
 * A bounded prefetch (RSS vs throughput: measured in docs/aggregate.md,
 * "Performance"). librdkafka stops fetching a partition whose queue
 * reached queued.max.messages.kbytes and, before 2.1, looks at it again
 * only after a fixed 1 s (issue #2879; 2.1 added fetch.queue.backoff.ms).
 * So the queue must hold about a second of consumption per partition or
 * the consumer starves: 12 MiB per partition. With fetch.queue.backoff.ms
 * (librdkafka >= 2.2; ops/install-deps builds 2.12.1) 256 KiB is enough:
 * 1 MiB is as fast as 4 MiB and 10 MiB smaller; 256 KiB with fetches of
 * at most 1 MiB (256 KiB per partition) is as fast again and 2.3-4.5 MiB
 * smaller in peak RSS (docs/aggregate.md, "Performance"). A fetch buffer
 * lives until its last message is destroyed: small fetches, not 50 MiB.
 *
 * At a steady input rate a fetch would return as soon as one byte is
 * there: hundreds of small read_committed fetches a second, which cost
 * the broker more than the messages. The broker holds a fetch until
 * 128 KiB (half of one partition's largest answer, so a fetch of a
 * single partition can still reach it) or 100 ms; batches gather for
 * aggregate.batch_ms anyway. Properties named in the configuration win.
 */
static rd_kafka_conf_t *consumer_conf(tally_config *cfg)
{
	static const char *const tuned[][2] = {
		{ "fetch.max.bytes", "1048576" },
		{ "max.partition.fetch.bytes", "262144" },
		{ "fetch.wait.max.ms", "100" },
		{ "fetch.min.bytes", "131072" },
	};
	rd_kafka_conf_t *conf = tally_loop_consumer_conf(cfg);
	tally_error err, qerr;
	bool qbackoff;

	qbackoff = tally_kafka_conf_default(conf, cfg, "fetch.queue.backoff.ms",
					    "10", &qerr) == 0;
	if (tally_kafka_conf_default(conf, cfg, "queued.max.messages.kbytes",
				     qbackoff ? "256" : "12288", &err) != 0)
		tally_log(TALLY_WARN, "kafka.conf",
			  TALLY_KV_STR("error", err.msg));
	if (tally_kafka_conf_defaults(conf, cfg, tuned,
				      sizeof(tuned) / sizeof(tuned[0]),
				      &err) != 0)
		tally_log(TALLY_WARN, "kafka.conf",
			  TALLY_KV_STR("error", err.msg));
	conf_overrides(conf);
	return conf;
}

/* Subscribe to topics.rated as aggregate.group (read_committed). */
int aggr_consumer_open(tally_aggregator *a, tally_error *err)
{
	const char *topics[2] = { NULL, NULL };
	int l;

	topics[0] = tally_config_str(a->cfg, "topics.rated");
	a->rb.name = "aggregate";
	a->rb.assign = lanes_assign;
	a->rb.revoke = lanes_revoke;
	a->rb.drain = lanes_drain;
	a->rb.ctx = a;
	a->rb.rejoin_timeout_ms = tally_config_int(a->cfg,
						   "kafka.rejoin_timeout_ms");
	if (tally_loop_consumer_new(&a->consumer, consumer_conf(a->cfg),
				    tally_config_str(a->cfg, "aggregate.group"),
				    topics, &a->rb, a->m, err) != 0)
		return -1;
	for (l = 0; l < a->nlanes; l++)
		tally_agg_set_consumer(a->lanes[l].agg,
				       tally_consumer_rk(a->consumer));
	return 0;
}
