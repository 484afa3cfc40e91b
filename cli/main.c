/*
 * main.c - the `tally` command line: `tally [--config FILE] <command> ...`.
 * Each command lives in cli/cmd_<name>.c as
 *   int tally_cmd_<name>(tally_cli *cli, int argc, char **argv);
 *   extern const char tally_cmd_<name>_help[];
 * and is found by the build (cli_commands.h is generated from the file
 * names), so adding a command never edits this file.
 */
#include "cli.h"

#include <librdkafka/rdkafka.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct command {
	const char *name;
	int (*fn)(tally_cli *cli, int argc, char **argv);
	const char *help;
} command;

static const command commands[] = {
#define TALLY_CMD(n) { #n, tally_cmd_##n, tally_cmd_##n##_help },
#include "cli_commands.h"
#undef TALLY_CMD
};

static void usage(FILE *fp)
{
	size_t i;

	fprintf(fp, "usage: tally [--config FILE] [--log-level L] <command> "
		    "[args]\n       tally --version\n\ncommands:\n");
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(fp, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
	tally_cli cli;
	int i = 1, rc;
	size_t c;
	const char *level = NULL;

	memset(&cli, 0, sizeof(cli));
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			cli.config_path = argv[i + 1];
			i += 2;
		} else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
			level = argv[i + 1];
			i += 2;
		} else if (strcmp(argv[i], "-h") == 0 ||
			   strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--version") == 0) {
			/* the libraries actually loaded, not the headers */
			printf("tally %s\nlibrdkafka %s\nlibpq %d\n",
			       TALLY_VERSION, rd_kafka_version_str(),
			       PQlibVersion());
			return 0;
		} else {
			fprintf(stderr, "tally: unknown option %s\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	tally_log_init("tally", TALLY_WARN);
	if (level != NULL) {
		int lv = tally_log_level_parse(level);
		if (lv < 0) {
			fprintf(stderr, "tally: bad --log-level %s\n", level);
			return 2;
		}
		tally_log_set_level((tally_log_level)lv);
	}
	for (c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
		if (strcmp(commands[c].name, argv[i]) == 0) {
			rc = commands[c].fn(&cli, argc - i, argv + i);
			tally_config_free(cli.cfg);
			return rc;
		}
	}
	fprintf(stderr, "tally: unknown command '%s'\n", argv[i]);
	usage(stderr);
	return 2;
}

int tally_cli_config(tally_cli *cli, tally_config **out)
{
	tally_error err;

	if (cli->cfg == NULL) {
		tally_error_clear(&err);
		if (tally_config_load(&cli->cfg, cli->config_path, &err) != 0) {
			fprintf(stderr, "tally: %s\n", err.msg);
			return 1;
		}
	}
	*out = cli->cfg;
	return 0;
}

int tally_cli_pg(tally_cli *cli, tally_pg **out)
{
	tally_config *cfg;
	tally_error err;

	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	tally_error_clear(&err);
	if (tally_pg_connect_cfg(out, cfg, &err) != 0) {
		fprintf(stderr, "tally: %s\n", err.msg);
		return 1;
	}
	return 0;
}
