#ifndef TALLY_PRICEBOOK_PG_H
#define TALLY_PRICEBOOK_PG_H

/**
 * @file tally/pricebook_pg.h
 * @brief The price book in PostgreSQL: loading a book from the tables of
 *        migrations/0002_prices.sql, their version counter, and importing a
 *        genai-prices data file into them. The book itself (pure, no I/O)
 *        is tally/pricebook.h.
 */

#include <stdint.h>
#include <stddef.h>

#include "tally/common.h"
#include "tally/pg.h"
#include "tally/pricebook.h"

/**
 * Build a book from PostgreSQL (tables of migrations/0002_prices.sql): every
 * version of every price (so events are priced by their own time), unit
 * prices and overrides (plan overrides expanded to the plan's tenants,
 * tenants.price_multiplier as a tenant multiplier). Runs in one REPEATABLE
 * READ transaction, so the book is a consistent snapshot.
 * @return 0, TALLY_ETRANSIENT, TALLY_EINVALID (bad row) or TALLY_ERROR
 */
int tally_pricebook_load_pg(tally_pricebook **out, tally_pg *pg,
			    tally_error *err) TALLY_MUSTCHECK;

/**
 * The book's version in PostgreSQL: a counter bumped (by trigger) on every
 * change of the price tables. Cheap; used to decide when to reload.
 * @return 0 or a pg error
 */
int tally_pricebook_pg_version(int64_t *out, tally_pg *pg, tally_error *err)
	TALLY_MUSTCHECK;

/** What an import changed. */
typedef struct tally_price_import_stats {
	int providers_changed; /* inserted or updated */
	int models_new;        /* first seen: effective from -infinity */
	int models_changed;    /* old version closed, new one from now */
	int models_unchanged;
	int models_closed;     /* gone from the file: closed, not deleted */
} tally_price_import_stats;

/**
 * Import a genai-prices data file into PostgreSQL (one transaction,
 * serialised by an advisory lock). Idempotent: entries whose content hash is
 * unchanged are not written, so a second import of the same file changes
 * nothing (not even the book's version). A changed model's open rows get
 * effective_to = now_ms and new rows effective_from = now_ms; a model that
 * left the file is closed; nothing is deleted. The whole file is validated
 * (as tally_pricebook_load_genai_buf) before anything is written.
 * @param source  recorded in each row, e.g. "genai-prices"
 * @return 0, TALLY_EINVALID or a pg error
 */
int tally_pricebook_import_genai(tally_pg *pg, const char *text, size_t len,
				 const char *source, int64_t now_ms,
				 tally_price_import_stats *st,
				 tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_PRICEBOOK_PG_H */
