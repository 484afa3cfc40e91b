/*
 * cli.c - steps shared by the commands that produce to Kafka (`tally
 * produce`, `tally gen`): the --create-topic option and the wait for every
 * delivery report.
 */
#include "cli.h"
#include "tally/kafka.h"

#include <stdio.h>

bool tally_cli_parse_partitions(int64_t *out, const char *s)
{
	return tally_parse_i64(out, s) == 0 && *out >= 1 && *out <= 1000;
}

int tally_cli_create_topic(tally_producer *p, const char *topic,
			   int64_t partitions, const char *cmd)
{
	const char *topics[2] = { topic, NULL };
	tally_error err;

	if (partitions <= 0)
		return 0;
	tally_error_clear(&err);
	if (tally_kafka_create_topics(tally_producer_rk(p), topics,
				      (int)partitions, &err) != 0) {
		fprintf(stderr, "tally %s: %s\n", cmd, err.msg);
		return 1;
	}
	return 0;
}

int tally_cli_drain(tally_producer *p, const char *cmd)
{
	tally_error err;

	tally_error_clear(&err);
	while (tally_producer_outstanding(p) > 0) {
		if (tally_producer_flush(p, 60000, &err) != 0) {
			fprintf(stderr, "tally %s: %s\n", cmd, err.msg);
			return 1;
		}
	}
	return 0;
}
