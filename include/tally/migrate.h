#ifndef TALLY_MIGRATE_H
#define TALLY_MIGRATE_H

/**
 * @file tally/migrate.h
 * @brief Forward-only schema migrations: migrations/NNNN_<what>.sql applied
 *        in order, each in its own transaction, recorded with a SHA-256
 *        checksum in schema_migrations. A changed applied file is refused.
 *        Concurrent runs serialise on an advisory lock.
 */

#include "tally/common.h"
#include "tally/pg.h"

/**
 * Apply every pending migration found in dir.
 * @param[out] applied number applied by this call (may be NULL)
 * @return 0, TALLY_EINVALID (changed or malformed file) or a pg error
 */
int tally_migrate(tally_pg *pg, const char *dir, int *applied,
		  tally_error *err) TALLY_MUSTCHECK;

/** The migrations directory: $TALLY_MIGRATIONS_DIR or the built-in one. */
const char *tally_migrate_default_dir(void);

#endif /* TALLY_MIGRATE_H */
