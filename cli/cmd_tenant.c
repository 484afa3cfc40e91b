/*
 * cmd_tenant.c - `tally tenant <subcommand>`: dispatches to the file of
 * each group of subcommands (tenant_data.c: export, erase).
 */
#include "cli.h"
#include "tenant_data.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_tenant_help[] =
	"tenants: export <tenant> --out DIR | erase <tenant> | erase --pending";

int tally_cmd_tenant(tally_cli *cli, int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "";

	if (strcmp(sub, "export") == 0)
		return tally_cli_tenant_export(cli, argc - 1, argv + 1);
	if (strcmp(sub, "erase") == 0)
		return tally_cli_tenant_erase(cli, argc - 1, argv + 1);
	fprintf(stderr, "usage: tally tenant export <tenant> --out DIR\n"
			"       tally tenant erase <tenant> | --pending\n");
	return 2;
}
