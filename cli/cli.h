#ifndef TALLY_CLI_H
#define TALLY_CLI_H

/* cli.h - shared state of the `tally` command line (private to cli/). */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/producer.h"

typedef struct tally_cli {
	const char *config_path; /* --config, may be NULL */
	tally_config *cfg;       /* loaded on first use; freed by main */
} tally_cli;

/** Load (once) the config named by --config; prints the error; 0 or 1. */
int tally_cli_config(tally_cli *cli, tally_config **out);

/** Connect to database.url; prints the error; 0 or 1. Caller frees. */
int tally_cli_pg(tally_cli *cli, tally_pg **out);

/*
 * Shared by the commands that produce to Kafka (cli/cli.c); <cmd> names the
 * command in the error printed, e.g. "produce" -> "tally produce: ...".
 */

/** --create-topic N: true when s is a partition count from 1 to 1000. */
bool tally_cli_parse_partitions(int64_t *out, const char *s);

/** Create topic with that many partitions through p's client (nothing when
 *  partitions is 0); prints the error; 0 or 1. */
int tally_cli_create_topic(tally_producer *p, const char *topic,
			   int64_t partitions, const char *cmd);

/** Wait for every delivery report of p, not just an empty queue; prints
 *  the error; 0 or 1. */
int tally_cli_drain(tally_producer *p, const char *cmd);

/* Prototypes of every command (the list is generated from cli/cmd_*.c). */
#define TALLY_CMD(n)                                                    \
	int tally_cmd_##n(tally_cli *cli, int argc, char **argv);      \
	extern const char tally_cmd_##n##_help[];
#include "cli_commands.h"
#undef TALLY_CMD

#endif /* TALLY_CLI_H */
