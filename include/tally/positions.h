#ifndef TALLY_POSITIONS_H
#define TALLY_POSITIONS_H

/**
 * @file tally/positions.h
 * @brief Consumer positions kept in PostgreSQL (consumer_offsets), fenced.
 *
 * A consumer whose effects live in PostgreSQL keeps its Kafka positions
 * there too, in the same transaction as the data. On assignment it reads
 * each partition's next_offset, starts there, and remembers it as the
 * partition's fence value. In each batch transaction it advances the rows
 * with a compare-and-set: a row must still hold the fence value (-1: no row
 * yet), so an instance that lost the partition (a zombie after a rebalance
 * it did not see) writes nothing and gets TALLY_EFENCED; the row locks also
 * serialise two instances racing for the same partition. After COMMIT the
 * written values become the new fence values.
 *
 * Thread-safe (one mutex): the rebalance callback and a PostgreSQL thread
 * may use the same object.
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/pg.h"

typedef struct tally_positions tally_positions;

/** One partition of a batch and the offset after its last message. */
typedef struct tally_position {
	const char *topic;
	int32_t partition;
	int64_t next;
} tally_position;

/** New, empty positions for consumer group `group` (copied). */
tally_positions *tally_positions_new(const char *group);

void tally_positions_free(tally_positions *ps);

/**
 * On assignment: read next_offset of every partition in parts, remember it
 * as its fence value and set each element's .offset to it
 * (RD_KAFKA_OFFSET_BEGINNING when there is no row yet).
 */
int tally_positions_assign(tally_positions *ps, tally_pg *pg,
			   rd_kafka_topic_partition_list_t *parts,
			   tally_error *err) TALLY_MUSTCHECK;

/** On revocation: forget the partitions (a later batch for them fences). */
void tally_positions_revoke(tally_positions *ps,
			    const rd_kafka_topic_partition_list_t *parts);

/** True when (topic, partition) is assigned here. */
bool tally_positions_held(tally_positions *ps, const char *topic,
			  int32_t partition);

/**
 * The fence value of (topic, partition): false when not assigned here;
 * *expected is -1 when consumer_offsets had no row.
 */
bool tally_positions_get(tally_positions *ps, const char *topic,
			 int32_t partition, int64_t *expected);

/**
 * Inside the batch transaction: advance every partition of the batch to its
 * .next, in one statement, fenced as described above.
 * @return 0, TALLY_EFENCED (roll back, then tally_positions_reseek()) or a
 *         pg error
 */
int tally_positions_fence(tally_positions *ps, tally_pg *pg,
			  const tally_position *batch, size_t n,
			  tally_error *err) TALLY_MUSTCHECK;

/** After COMMIT: what the batch wrote is what this instance now expects. */
void tally_positions_committed(tally_positions *ps,
			       const tally_position *batch, size_t n);

struct tally_kafka_msg; /* tally/consumer_loop.h */

/**
 * After TALLY_EFENCED: read the positions of the partitions of the batch
 * msgs[0, n) again, take them as fence values where still held, and seek
 * rk there (rk may be NULL).
 * Fails if a position cannot be read or a partition cannot be sought: the
 * caller must then not go on consuming those partitions (it would skip
 * what it dropped); the consumer exits and is restarted.
 */
int tally_positions_reseek(tally_positions *ps, tally_pg *pg, rd_kafka_t *rk,
			   const struct tally_kafka_msg *msgs, size_t n,
			   tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_POSITIONS_H */
