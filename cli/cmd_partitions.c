/*
 * cmd_partitions.c - `tally partitions maintain`: create the usage ledger's
 * day partitions ahead, drop the ones past aggregate.retention_days (never
 * inside the dedupe window) and forget expired dedupe keys. tally-aggregate
 * does the same at start and hourly; this is for cron and operators.
 */
#include "cli.h"
#include "tally/aggregate.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_partitions_help[] =
	"usage ledger partitions: maintain (create ahead, drop expired)";

int tally_cmd_partitions(tally_cli *cli, int argc, char **argv)
{
	tally_config *cfg;
	tally_pg *pg = NULL;
	tally_error err;
	int rc;

	if (argc != 2 || strcmp(argv[1], "maintain") != 0) {
		fprintf(stderr, "usage: tally partitions maintain\n");
		return 2;
	}
	if (tally_cli_config(cli, &cfg) != 0 || tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_agg_maintain(pg,
		(int)tally_config_int(cfg, "aggregate.lateness_days"),
		(int)tally_config_int(cfg, "aggregate.partitions_ahead_days"),
		(int)tally_config_int(cfg, "aggregate.retention_days"), &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally partitions: %s\n", err.msg);
		return 1;
	}
	printf("partitions: maintained\n");
	return 0;
}
