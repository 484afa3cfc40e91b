#ifndef TALLY_DEAD_LETTERS_H
#define TALLY_DEAD_LETTERS_H

/**
 * @file tally/dead_letters.h
 * @brief The one writer of the dead_letters table (migrations/0001): the
 *        PostgreSQL mirror of what a consumer sent to a dead-letter topic.
 *
 * Rows are collected and written with one statement (arrays, unnested in
 * SQL), idempotent on (topic, partition, offset): a batch that is done
 * again, or a mirror that is run twice, adds nothing. Use it inside the
 * batch's transaction so the mirror commits with the positions.
 */

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/pg.h"

/** One dead letter (views: nothing is owned). */
typedef struct tally_dead_letter {
	const char *topic;      /* the message's topic */
	int32_t partition;
	int64_t offset;
	const char *reason;     /* e.g. "too_late"; not NULL */
	const char *detail;     /* NULL: "" */
	/* the message; its key becomes tenant_id (tally_dead_letter_tenant),
	 * its value the payload when keep_payload (else NULL); may be NULL */
	const rd_kafka_message_t *rkm;
	bool keep_payload;
} tally_dead_letter;

/** Rows being collected (reusable: write empties it). */
typedef struct tally_dead_letters tally_dead_letters;

tally_dead_letters *tally_dead_letters_new(void);

/** NULL is a no-op. */
void tally_dead_letters_free(tally_dead_letters *d);

/** Rows added and not written yet. */
size_t tally_dead_letters_count(const tally_dead_letters *d);

/**
 * The tenant_id recorded for a message key: the key's first 64 bytes if
 * they are all printable ASCII (producers key by tenant id), else none
 * (""): a hostile key never breaks the insert.
 */
void tally_dead_letter_tenant(char out[65], const rd_kafka_message_t *rkm);

/** Add one row. */
void tally_dead_letters_add(tally_dead_letters *d, const tally_dead_letter *dl);

struct tally_kafka_msg; /* tally/consumer_loop.h */

/** Add the row of a consumed message (as tally_dead_letters_add). */
void tally_dead_letters_add_msg(tally_dead_letters *d,
				const struct tally_kafka_msg *m,
				const char *reason, const char *detail,
				bool keep_payload);

/**
 * Insert the rows added (consumer_group = group) and empty d, whatever
 * the outcome (a retried transaction adds its rows again); nothing added:
 * no statement.
 * @return 0 or a pg error (TALLY_ETRANSIENT: retry)
 */
int tally_dead_letters_write(tally_dead_letters *d, tally_pg *pg,
			     const char *group, tally_error *err)
	TALLY_MUSTCHECK;

/** One row at once (its own statement). */
int tally_dead_letter_write(tally_pg *pg, const char *group,
			    const tally_dead_letter *dl, tally_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_DEAD_LETTERS_H */
