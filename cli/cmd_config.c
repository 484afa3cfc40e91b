/* cmd_config.c - `tally config show|check`: the effective configuration. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_config_help[] =
	"show the effective config (show) or validate it (check)";

int tally_cmd_config(tally_cli *cli, int argc, char **argv)
{
	tally_config *cfg;

	if (argc != 2 || (strcmp(argv[1], "show") != 0 &&
			  strcmp(argv[1], "check") != 0)) {
		fprintf(stderr, "usage: tally config show|check\n");
		return 2;
	}
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	if (strcmp(argv[1], "show") == 0)
		tally_config_show(cfg, stdout);
	else
		printf("config ok\n");
	return 0;
}
