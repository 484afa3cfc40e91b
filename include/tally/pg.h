#ifndef TALLY_PG_H
#define TALLY_PG_H

/**
 * @file tally/pg.h
 * @brief PostgreSQL helper: parameterised statements only, transactions that
 *        retry on serialization failure and deadlock, and reconnection with
 *        capped exponential backoff after the server restarts.
 *
 * Errors are classified for the caller: a lost connection, 40001
 * (serialization_failure), 40P01 (deadlock), 57P01/57P02/57P03 (shutdown)
 * and 08xxx are TALLY_ETRANSIENT; 22xxx/23xxx (bad data) are TALLY_EINVALID;
 * everything else TALLY_ERROR. A tally_pg is not thread-safe: one per thread.
 */

#include <libpq-fe.h>
#include <stdbool.h>

#include "tally/common.h"

struct tally_config;

typedef struct tally_pg tally_pg;

/**
 * Connect to url (a libpq connection string or URI). Retries for up to
 * retry_max_ms with backoff when the server is not reachable yet.
 * libpq notices are routed into the JSON log.
 */
int tally_pg_connect(tally_pg **out, const char *url, int retry_max_ms,
		     tally_error *err) TALLY_MUSTCHECK;

/**
 * Connect with the config's database.url, database.retry_max_ms and
 * database.statement_timeout_ms (applied again after every reconnect).
 */
int tally_pg_connect_cfg(tally_pg **out, const struct tally_config *cfg,
			 tally_error *err) TALLY_MUSTCHECK;

/**
 * Connect for a request path that must not wait: one attempt, no retries
 * (tally_pg_ensure and tally_pg_exec also try once), libpq's
 * connect_timeout and the session's statement_timeout from timeout_ms.
 */
int tally_pg_connect_once(tally_pg **out, const char *url,
			  int64_t timeout_ms, tally_error *err) TALLY_MUSTCHECK;

void tally_pg_free(tally_pg *pg);

/** The live connection (borrowed; changes after a reconnect). */
PGconn *tally_pg_conn(tally_pg *pg);

/**
 * Make sure the connection is usable: if it is broken, reconnect with
 * backoff for up to the configured retry time.
 */
int tally_pg_ensure(tally_pg *pg, tally_error *err) TALLY_MUSTCHECK;

/**
 * Run one parameterised statement (text params; NULL entry = SQL NULL).
 * @param[out] out result on success (caller PQclear()s) or NULL to discard
 */
int tally_pg_exec(tally_pg *pg, PGresult **out, const char *sql, int nparams,
		  const char *const *params, tally_error *err) TALLY_MUSTCHECK;

/**
 * Like tally_pg_exec, with per-parameter lengths and formats (1 = binary,
 * as PQexecParams takes them): for large arrays sent in binary.
 */
int tally_pg_exec_bin(tally_pg *pg, PGresult **out, const char *sql,
		      int nparams, const char *const *params,
		      const int *lengths, const int *formats,
		      tally_error *err) TALLY_MUSTCHECK;

/**
 * Run sql (one or more statements, no parameters) by the simple query
 * protocol on the connection as it is: for statements inside the caller's
 * transaction (SAVEPOINT, a temporary table), so no reconnect.
 * @return 0 or as tally_pg_exec
 */
int tally_pg_exec_script(tally_pg *pg, const char *sql, tally_error *err)
	TALLY_MUSTCHECK;

/** Classify a failed result (or a NULL result on a broken connection). */
int tally_pg__classify(PGconn *conn, const PGresult *res, tally_error *err);

typedef int (*tally_pg_txn_fn)(tally_pg *pg, void *payload, tally_error *err);

/**
 * BEGIN; fn(); COMMIT, retried (with reconnect and backoff) while fn or the
 * commit fail with TALLY_ETRANSIENT, up to max_attempts (0 = until the
 * configured retry time is spent). fn must be safe to run again: it sees a
 * fresh transaction each time. Any other error rolls back and is returned;
 * so is the transient one once a stop is requested (SIGTERM), after at
 * most one more attempt (it resets a connection gone stale while idle):
 * the process does not wait out the retry time.
 */
int tally_pg_txn(tally_pg *pg, tally_pg_txn_fn fn, void *payload,
		 int max_attempts, tally_error *err) TALLY_MUSTCHECK;

/**
 * COPY ... FROM STDIN with the given (text, csv or binary, per copy_sql)
 * data, inside the caller's transaction.
 */
int tally_pg_copy(tally_pg *pg, const char *copy_sql, const char *data,
		  size_t len, tally_error *err) TALLY_MUSTCHECK;

/**
 * The same in pieces, for data produced as it is sent (memory: nothing
 * batch-sized is held, by the caller or in libpq's buffer): begin, put any
 * number of times, end. After an error from put, the connection's
 * transaction is failed; end is not needed.
 */
int tally_pg_copy_begin(tally_pg *pg, const char *copy_sql,
			tally_error *err) TALLY_MUSTCHECK;
int tally_pg_copy_put(tally_pg *pg, const char *data, size_t len,
		      tally_error *err) TALLY_MUSTCHECK;
int tally_pg_copy_end(tally_pg *pg, tally_error *err) TALLY_MUSTCHECK;

/** Capped exponential backoff with full jitter; attempt counts from 0. */
int64_t tally_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms);

/** Sleep for ms milliseconds (restarts after signals). */
void tally_sleep_ms(int64_t ms);

#endif /* TALLY_PG_H */
