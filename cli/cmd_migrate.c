/* cmd_migrate.c - `tally migrate [--dir DIR]`: apply pending migrations. */
#include "cli.h"
#include "tally/migrate.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_migrate_help[] =
	"apply pending migrations (migrations/NNNN_*.sql) [--dir DIR]";

int tally_cmd_migrate(tally_cli *cli, int argc, char **argv)
{
	const char *dir = tally_migrate_default_dir();
	tally_pg *pg = NULL;
	tally_error err;
	int applied = 0, rc, i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
			dir = argv[++i];
		} else {
			fprintf(stderr, "usage: tally migrate [--dir DIR]\n");
			return 2;
		}
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_migrate(pg, dir, &applied, &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally migrate: %s\n", err.msg);
		return 1;
	}
	printf("migrate: %d applied\n", applied);
	return 0;
}
