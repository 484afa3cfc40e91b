#ifndef TALLY_BACKFILL_H
#define TALLY_BACKFILL_H

/**
 * @file tally/backfill.h
 * @brief JSON lines in, validated msgpack out, in parallel (`tally
 *        produce`): the calling thread reads the input in chunks cut at
 *        line boundaries, parser threads validate and send their chunks'
 *        lines through one producer. Order is not kept (except for
 *        commands: one parser thread, file order); every line is sent
 *        exactly once or rejected with its line number.
 */

#include <stdint.h>
#include <stdio.h>

#include "tally/codec_json.h"
#include "tally/common.h"
#include "tally/producer.h"

typedef struct tally_backfill_opts {
	int fd;                   /* the input, read to its end */
	tally_json_schema schema; /* what every line holds */
	tally_producer *producer; /* borrowed; its opaque per message is the
				   * line number (uintptr_t) */
	int threads;              /* parser threads; 0: one fewer than
				   * the CPUs, at least one (librdkafka's
				   * broker thread needs a core); commands
				   * always use one */
	FILE *report;             /* rejections and progress (stderr) */
	uint64_t max_reported;    /* rejections printed; the rest counted */
} tally_backfill_opts;

typedef struct tally_backfill_stats {
	uint64_t lines;    /* lines read (empty ones included) */
	uint64_t produced; /* queued on the producer */
	uint64_t rejected; /* invalid lines */
	uint64_t reported; /* rejections printed */
} tally_backfill_stats;

/**
 * Run until the input ends. A bad line is counted, printed to report as
 * "line N: rejected: <reason> <field>: <detail>" (at most max_reported
 * times) and never stops the run; progress goes to report at most once a
 * second ("produce: N lines, P produced, R rejected, L lines/s").
 * @return 0; TALLY_ERROR when the input cannot be read; or the producer's
 *         error (queue full for 10 s, fatal) that stopped the run, err
 *         naming the line. The stats count what was done either way.
 */
int tally_backfill_run(const tally_backfill_opts *opts,
		       tally_backfill_stats *stats, tally_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_BACKFILL_H */
