/*
 * cmd_alerts.c - `tally alerts redeliver --id ID | --failed [--target
 * NAME]`: put deliveries that gave up (or one alert's, delivered or not),
 * of every target or one, back to pending; tally-alerts delivers them on
 * its next round (docs/alerts.md).
 */
#include "cli.h"
#include "tally/alerts.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

const char tally_cmd_alerts_help[] =
	"alert deliveries: redeliver --id ALERT_ID | --failed [--target NAME]";

int tally_cmd_alerts(tally_cli *cli, int argc, char **argv)
{
	const char *id = NULL, *target = NULL;
	bool failed = false;
	tally_pg *pg = NULL;
	tally_error err;
	int64_t n = 0;
	int i, rc;

	if (argc < 2 || strcmp(argv[1], "redeliver") != 0)
		goto usage;
	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--id") == 0 && i + 1 < argc)
			id = argv[++i];
		else if (strcmp(argv[i], "--target") == 0 && i + 1 < argc)
			target = argv[++i];
		else if (strcmp(argv[i], "--failed") == 0)
			failed = true;
		else
			goto usage;
	}
	if ((id != NULL) == failed)
		goto usage;
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_alerts_redeliver_target(pg, id, target, &n, &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally alerts: %s\n", err.msg);
		return rc == TALLY_EINVALID ? 2 : 1;
	}
	if (id != NULL && n == 0) {
		fprintf(stderr, "tally alerts: no delivery of alert %s%s%s\n",
			id, target ? " to " : "", target ? target : "");
		return 1;
	}
	printf("alerts: %" PRId64 " deliveries put back to pending\n", n);
	return 0;
usage:
	fprintf(stderr, "usage: tally alerts redeliver --id ALERT_ID | "
			"--failed [--target NAME]\n");
	return 2;
}
