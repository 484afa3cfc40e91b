#ifndef TALLY_TENANT_DATA_H
#define TALLY_TENANT_DATA_H

/**
 * @file tally/tenant_data.h
 * @brief A tenant's data as a whole: GDPR export and erasure
 *        (docs/security.md, "Data protection").
 *
 * The tables a tenant owns are found in the catalogue, not listed here:
 * every table of the current schema with a tenant_id column, the tenants
 * row itself, and tables without tenant_id tied by a foreign key to
 * tenants or to a table with tenant_id. A table added later is exported
 * and erased without a change here.
 */

#include <stdint.h>
#include <stdio.h>

#include "tally/common.h"
#include "tally/pg.h"

struct tally_stripe;

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
 * SHA-256; the tables with tenant_id the session may not read), from
 * one REPEATABLE READ READ ONLY snapshot, streamed through a cursor
 * (memory does not grow with the rows). Progress goes to progress (may
 * be NULL) as lines.
 * @return 0, TALLY_ENOTFOUND (no such tenant), TALLY_EINVALID (dir not
 *         usable), or an error of PostgreSQL or the file system
 */
int tally_tenant_export(tally_pg *pg, const char *ref, const char *dir,
			FILE *progress, tally_tenant_export_stats *st,
			tally_error *err) TALLY_MUSTCHECK;

typedef enum tally_erasure_stripe {
	TALLY_ERASURE_STRIPE_NONE = 0,    /* the tenant had no customer */
	TALLY_ERASURE_STRIPE_DELETED = 1, /* deleted now or before */
	TALLY_ERASURE_STRIPE_PENDING = 2, /* Stripe failed: run again */
} tally_erasure_stripe;

typedef struct tally_tenant_erase_result {
	char tenant_id[37];
	int64_t rows_changed;          /* rows pseudonymised in this run */
	tally_erasure_stripe stripe;
	char stripe_error[96];         /* Stripe's error code when pending */
	int audited;                   /* 1: an audit_log row was written */
} tally_tenant_erase_result;

/**
 * Erase the personal data of the tenant ref (its id or slug) in one
 * transaction: the tenant's name, slug, domain and branding, personal
 * keys of every json/jsonb column of its rows, personal text columns
 * (e-mail, phone, address, contact, subject by name), free-text details
 * and dead letters' raw payloads; what tax law requires (invoices, lines,
 * payments: amounts, dates, numbers) stays. Then the Stripe customer is
 * deleted through stripe (NULL: left pending). Idempotent: running it
 * again changes nothing more and finishes a pending Stripe deletion.
 * Recorded in tenant_erasures and, when the table exists, audit_log.
 * @param why the invocation, recorded in the audit trail
 * Only a cancelled tenant is erased: one that can still send usage would
 * have its users counted again under their real subjects.
 * @return 0 (also when the Stripe part is pending: see res->stripe),
 *         TALLY_ENOTFOUND, TALLY_EINVALID (not cancelled: nothing
 *         changed), or an error of PostgreSQL
 */
int tally_tenant_erase(tally_pg *pg, struct tally_stripe *stripe,
		       const char *ref, const char *why,
		       tally_tenant_erase_result *res,
		       tally_error *err) TALLY_MUSTCHECK;

/**
 * Finish every pending Stripe deletion (tenant_erasures rows still
 * pending).
 * @param[out] done deletions finished; @param[out] pending still pending
 */
int tally_tenant_erase_pending(tally_pg *pg, struct tally_stripe *stripe,
			       int *done, int *pending,
			       tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_TENANT_DATA_H */
