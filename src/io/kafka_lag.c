/*
 * kafka_lag.c - librdkafka statistics -> consumer lag gauges (see
 * kafka_lag.h). Parsed with jansson; only the per-partition fields are
 * read, so the many other statistics cost nothing but the parse.
 */
#include "io/kafka_lag.h"
#include "tally/kafka.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int tally_kafka_lag_enable(rd_kafka_conf_t *conf,
			   int (*stats_cb)(rd_kafka_t *, char *, size_t,
					   void *),
			   tally_error *err)
{
	int rc = tally_kafka_conf_set(conf, "statistics.interval.ms",
				      TALLY_KAFKA_LAG_INTERVAL_MS, err);

	if (rc == 0)
		rd_kafka_conf_set_stats_cb(conf, stats_cb);
	return rc;
}

static int64_t field_i64(json_t *p, const char *key)
{
	json_t *v = json_object_get(p, key);

	return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

/*
 * The committed offset and lag of one partition. librdkafka's own (from the
 * offsets this consumer committed) when it knows them; otherwise, as for
 * offsets committed inside a Kafka transaction by a producer (tally-rate:
 * the consumer never sees those), the read position: batches commit in
 * order and an aborted one rewinds, so it is at most one batch ahead.
 */
static void partition_lag(json_t *p, int64_t *committed, int64_t *lag)
{
	int64_t pos = field_i64(p, "app_offset");
	int64_t end = field_i64(p, "ls_offset"); /* = hi_offset without txns */

	*committed = field_i64(p, "committed_offset");
	*lag = field_i64(p, "consumer_lag");
	if (*committed >= 0)
		return;
	if (end < 0)
		end = field_i64(p, "hi_offset");
	*committed = pos;
	*lag = pos >= 0 && end >= pos ? end - pos : -1;
}

static void set_partition(tally_metrics *m, const char *group,
			  const char *topic, const char *part, json_t *p)
{
	char g[128], t[256], labels[512];
	int64_t lag, committed;
	/* "desired": the partition is assigned to this instance */
	bool mine = json_is_true(json_object_get(p, "desired"));

	partition_lag(p, &committed, &lag);
	tally_metrics_escape_label(g, sizeof(g), group);
	tally_metrics_escape_label(t, sizeof(t), topic);
	snprintf(labels, sizeof(labels),
		 "group=\"%s\",topic=\"%s\",partition=\"%s\"", g, t, part);
	tally_gauge_set(tally_metrics_gauge(m, "tally_kafka_consumer_lag",
		labels, "Messages between the committed offset and the high "
		"watermark, per partition this instance owns (0 otherwise)"),
		mine && lag > 0 ? lag : 0);
	tally_gauge_set(tally_metrics_gauge(m,
		"tally_kafka_consumer_committed_offset", labels,
		"Committed offset per partition this instance owns (0 "
		"otherwise)"), mine && committed > 0 ? committed : 0);
}

int tally_kafka_lag_update(tally_metrics *m, const char *group,
			   const char *json, size_t len, tally_error *err)
{
	json_error_t jerr;
	json_t *doc = json_loadb(json, len, 0, &jerr), *topic, *parts, *p;
	const char *tname, *pname;

	if (!json_is_object(doc)) {
		json_decref(doc);
		return tally_error_set(err, TALLY_EINVALID,
				       "kafka statistics: %s", jerr.text);
	}
	json_object_foreach(json_object_get(doc, "topics"), tname, topic) {
		parts = json_object_get(topic, "partitions");
		json_object_foreach(parts, pname, p) {
			if (strcmp(pname, "-1") == 0) /* internal UA partition */
				continue;
			set_partition(m, group, tname, pname, p);
		}
	}
	json_decref(doc);
	return 0;
}
