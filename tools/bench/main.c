/*
 * tally-bench - the C helpers of ops/bench (docs/bench.md). Everything on
 * the hot path of a measurement is here, in C; ops/bench (bash) drives it.
 *
 *   tally-bench topics  -b B -p P TOPIC...       create fresh topics
 *   tally-bench copy    -b B --from T --to T2 [--rate R] [--label L]
 *                       preload T into memory, then produce it to T2 (same
 *                       partition, key, headers; CreateTime = now), paced
 *                       at R events/s (0 = as fast as possible)
 *   tally-bench probe   ... event-to-committed latency + throughput timeline
 *   tally-bench naive   -b B --topic RATED --dsn D [--seconds S]
 *                       the naive baseline consumer: one INSERT ... ON
 *                       CONFLICT DO NOTHING and one COMMIT per event
 *   tally-bench ledger-rows -b B --topic RATED --out FILE
 *                       the ledger rows of a rated topic (deduplicated), as
 *                       COPY text
 *   tally-bench pgcopy  --dsn D --table T --file FILE   timed COPY FROM STDIN
 *   tally-bench delete  -b B TOPIC...           delete topics
 *   tally-bench count   -b B --topic T              data messages in T
 *   tally-bench group-ready -b B --group G --topic T [--timeout-s S]
 *                       wait until group G is Stable and holds every
 *                       partition of T (exit 1 at the timeout, default 60 s)
 *   tally-bench gen     --config CFG --topic T [--events N --tenants T --dup F
 *                       --ooo F --late F --models FILE --expected FILE]
 *                       the workload (tally_gen) through the producer API
 *   tally-bench synth   -b B --topic T --kind usage|rated --events N
 *                       synthetic events (self-test of the benchmark only)
 *
 * Results are one JSON object on stdout; progress goes to stderr.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: tally-bench topics|copy|probe|naive|"
				"ledger-rows|pgcopy|count|group-ready|synth ...\n");
		return 2;
	}
	argc--;
	argv++;
	if (strcmp(argv[0], "topics") == 0)
		return cmd_topics(argc, argv);
	if (strcmp(argv[0], "copy") == 0)
		return cmd_copy(argc, argv);
	if (strcmp(argv[0], "probe") == 0)
		return cmd_probe(argc, argv);
	if (strcmp(argv[0], "naive") == 0)
		return cmd_naive(argc, argv);
	if (strcmp(argv[0], "ledger-rows") == 0)
		return cmd_ledger_rows(argc, argv);
	if (strcmp(argv[0], "pgcopy") == 0)
		return cmd_pgcopy(argc, argv);
	if (strcmp(argv[0], "delete") == 0)
		return cmd_delete(argc, argv);
	if (strcmp(argv[0], "count") == 0)
		return cmd_count(argc, argv);
	if (strcmp(argv[0], "group-ready") == 0)
		return cmd_group_ready(argc, argv);
	if (strcmp(argv[0], "gen") == 0)
		return cmd_gen(argc, argv);
	if (strcmp(argv[0], "synth") == 0)
		return cmd_synth(argc, argv);
	fprintf(stderr, "tally-bench: unknown command %s\n", argv[0]);
	return 2;
}
