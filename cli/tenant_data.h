#ifndef TALLY_CLI_TENANT_DATA_H
#define TALLY_CLI_TENANT_DATA_H

/* tenant_data.h - `tally tenant export|erase` (cli/tenant_data.c); argv[0]
 * is the subcommand. */

#include "cli.h"

int tally_cli_tenant_export(tally_cli *cli, int argc, char **argv);
int tally_cli_tenant_erase(tally_cli *cli, int argc, char **argv);

#endif /* TALLY_CLI_TENANT_DATA_H */
