#ifndef TALLY_IO_KAFKA_START_H
#define TALLY_IO_KAFKA_START_H

/*
 * kafka_start.h - where a newly assigned partition starts when neither
 * PostgreSQL nor the group holds a position for it.
 *
 * librdkafka resolves an assignment at RD_KAFKA_OFFSET_INVALID by fetching
 * the group's committed offset; when there is none it applies
 * auto.offset.reset, but only after a fixed 100 ms (its offset reset with
 * RD_KAFKA_RESP_ERR__NO_OFFSET schedules the ListOffsets request with a
 * 100 ms backoff), so a new group would wait that long before its first
 * fetch. tally's consumers always reset to the earliest
 * offset, so a partition the group has never committed is assigned at
 * RD_KAFKA_OFFSET_BEGINNING, which librdkafka looks up at once.
 */

#include <librdkafka/rdkafka.h>

/*
 * For each element of parts still at RD_KAFKA_OFFSET_INVALID, asks the
 * group's coordinator for its committed offset (one OffsetFetch, at most
 * timeout_ms) and sets RD_KAFKA_OFFSET_BEGINNING where the group has none.
 * Elements with a committed offset stay INVALID (librdkafka resumes there
 * as before), and so does everything when the request fails. Returns the
 * number of elements set to BEGINNING.
 */
int tally_kafka_start_unpositioned(rd_kafka_t *rk,
				   rd_kafka_topic_partition_list_t *parts,
				   int timeout_ms);

#endif
