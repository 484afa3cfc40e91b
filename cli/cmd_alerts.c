/*
 * cmd_alerts.c - `tally alerts redeliver --id ID | --failed`: put alerts
 * whose webhook delivery gave up (or one alert, delivered or not) back to
 * pending; tally-alerts delivers them on its next round (docs/alerts.md).
 */
#include "cli.h"
#include "tally/alerts.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

const char tally_cmd_alerts_help[] =
	"webhook deliveries: redeliver --id ALERT_ID | --failed";

int tally_cmd_alerts(tally_cli *cli, int argc, char **argv)
{
	const char *id = NULL;
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
	rc = tally_alerts_redeliver(pg, id, &n, &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally alerts: %s\n", err.msg);
		return rc == TALLY_EINVALID ? 2 : 1;
	}
	if (id != NULL && n == 0) {
		fprintf(stderr, "tally alerts: no alert with id %s\n", id);
		return 1;
	}
	printf("alerts: %" PRId64 " put back to pending\n", n);
	return 0;
usage:
	fprintf(stderr, "usage: tally alerts redeliver --id ALERT_ID | "
			"--failed\n");
	return 2;
}
