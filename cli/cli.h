#ifndef TALLY_CLI_H
#define TALLY_CLI_H

/* cli.h - shared state of the `tally` command line (private to cli/). */

#include "tally/common.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/pg.h"

typedef struct tally_cli {
	const char *config_path; /* --config, may be NULL */
	tally_config *cfg;       /* loaded on first use; freed by main */
} tally_cli;

/** Load (once) the config named by --config; prints the error; 0 or 1. */
int tally_cli_config(tally_cli *cli, tally_config **out);

/** Connect to database.url; prints the error; 0 or 1. Caller frees. */
int tally_cli_pg(tally_cli *cli, tally_pg **out);

/* Prototypes of every command (the list is generated from cli/cmd_*.c). */
#define TALLY_CMD(n)                                                    \
	int tally_cmd_##n(tally_cli *cli, int argc, char **argv);      \
	extern const char tally_cmd_##n##_help[];
#include "cli_commands.h"
#undef TALLY_CMD

#endif /* TALLY_CLI_H */
