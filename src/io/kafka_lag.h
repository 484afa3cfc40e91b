#ifndef TALLY_IO_KAFKA_LAG_H
#define TALLY_IO_KAFKA_LAG_H

/*
 * kafka_lag.h - consumer lag per topic and partition as Prometheus gauges,
 * from librdkafka's statistics (statistics.interval.ms; the JSON's
 * topics.<t>.partitions.<p>.consumer_lag = high watermark - committed
 * offset, and committed_offset):
 *   tally_kafka_consumer_lag{group,topic,partition}
 *   tally_kafka_consumer_committed_offset{group,topic,partition}
 * When librdkafka does not know the committed offset (offsets committed
 * in a Kafka transaction by a producer, as tally-rate does, or none yet),
 * the read position stands for it (app_offset; lag = last stable offset -
 * position). A partition this instance does not own reads 0, so sum() over
 * the instances of a group is the group's lag and a partition moved to
 * another instance does not stay stale here.
 */

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "tally/common.h"
#include "tally/metrics.h"

/* Statistics every this many ms when lag gauges are on. */
#define TALLY_KAFKA_LAG_INTERVAL_MS "10000"

/*
 * Turn statistics on in conf (interval above) with stats_cb as callback.
 * Returns 0 or TALLY_EINVALID.
 */
int tally_kafka_lag_enable(rd_kafka_conf_t *conf,
			   int (*stats_cb)(rd_kafka_t *, char *, size_t,
					   void *),
			   tally_error *err) TALLY_MUSTCHECK;

/*
 * Update the gauges of group in m from one statistics JSON document
 * (json need not be NUL-terminated). Returns 0, or TALLY_EINVALID when
 * the document does not parse (gauges untouched).
 */
int tally_kafka_lag_update(tally_metrics *m, const char *group,
			   const char *json, size_t len,
			   tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_IO_KAFKA_LAG_H */
