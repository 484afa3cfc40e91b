#ifndef TALLY_TENANT_DATA_H
#define TALLY_TENANT_DATA_H

/**
 * @file tally/tenant_data.h
 * @brief A tenant's data as a whole: GDPR export
 *        (docs/security.md, "Data protection").
 *
 * The tables a tenant owns are found in the catalogue, not listed here:
 * every table of the current schema with a tenant_id column, the tenants
 * row itself, and tables without tenant_id tied by a foreign key to
 * tenants or to a table with tenant_id. A table added later is exported
 * without a change here.
 */

#include <stdint.h>
#include <stdio.h>

#include "tally/common.h"
#include "tally/pg.h"

/** One table a tenant owns and the condition selecting its rows. */
typedef struct tally_tenant_table {
	char *name;   /* table name (unquoted) */
	char *where;  /* SQL condition on alias t, $1 = the tenant id (text) */
	char *tenant_type; /* type of tenant_id ("uuid", "text"), "" if none */
} tally_tenant_table;

typedef struct tally_tenant_tables {
	tally_tenant_table *v;
	size_t n;
} tally_tenant_tables;

/**
 * The tables a tenant owns, tenants first, then by name.
 * @return 0 or an error of tally_pg_exec
 */
int tally_tenant_tables_list(tally_pg *pg, tally_tenant_tables *out,
			     tally_error *err) TALLY_MUSTCHECK;
void tally_tenant_tables_free(tally_tenant_tables *t);

/**
 * The tenant named by ref: its id (a UUID) or its slug.
 * @param[out] id the tenant id, canonical text
 * @return 0, TALLY_ENOTFOUND or an error of tally_pg_exec
 */
int tally_tenant_resolve(tally_pg *pg, const char *ref, char id[37],
			 tally_error *err) TALLY_MUSTCHECK;

typedef struct tally_tenant_export_stats {
	int tables;         /* files written (tables with or without rows) */
	int64_t rows;       /* rows written in all */
	int64_t bytes;      /* bytes written in all (manifest excluded) */
	char snapshot_at[40]; /* the snapshot's time, RFC 3339 UTC */
} tally_tenant_export_stats;

/**
 * Write every row of the tenant ref to dir (created if missing, mode 0700)
 * as <table>.jsonl (one JSON object per line, mode 0600) and
 * manifest.json (tenant, snapshot time, per file: table, rows, bytes,
 * SHA-256), from one REPEATABLE READ READ ONLY snapshot, streamed through
 * a cursor (memory does not grow with the rows). Progress goes to
 * progress (may be NULL) as lines.
 * @return 0, TALLY_ENOTFOUND (no such tenant), TALLY_EINVALID (dir not
 *         usable), or an error of PostgreSQL or the file system
 */
int tally_tenant_export(tally_pg *pg, const char *ref, const char *dir,
			FILE *progress, tally_tenant_export_stats *st,
			tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_TENANT_DATA_H */
