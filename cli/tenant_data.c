/*
 * tenant_data.c - `tally tenant export <tenant> --out DIR` (every row of
 * the tenant as JSON Lines plus a manifest; progress on stderr).
 * <tenant> is the tenant's id or slug. Exit status: 0 done, 1 error,
 * 2 usage.
 */
#include "tenant_data.h"
#include "tally/tenant_data.h"

#include <stdio.h>
#include <string.h>

int tally_cli_tenant_export(tally_cli *cli, int argc, char **argv)
{
	tally_tenant_export_stats st;
	tally_pg *pg = NULL;
	tally_error err;
	const char *ref = NULL, *dir = NULL;
	int i, rc;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
			dir = argv[++i];
		else if (ref == NULL && argv[i][0] != '-')
			ref = argv[i];
		else
			ref = dir = NULL, i = argc;
	}
	if (ref == NULL || dir == NULL) {
		fprintf(stderr,
			"usage: tally tenant export <tenant> --out DIR\n");
		return 2;
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_tenant_export(pg, ref, dir, stderr, &st, &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally tenant export: %s\n", err.msg);
		return 1;
	}
	fprintf(stderr, "export: %d table(s), %lld row(s), %lld byte(s),"
		" snapshot %s, manifest %s/manifest.json\n", st.tables,
		(long long)st.rows, (long long)st.bytes, st.snapshot_at, dir);
	return 0;
}
