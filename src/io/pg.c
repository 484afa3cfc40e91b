/*
 * pg.c - libpq helper. Every statement is parameterised (PQexecParams); a
 * broken connection is rebuilt on the next call with capped exponential
 * backoff, so a consumer survives a PostgreSQL restart by retrying its batch.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/pg.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/signals.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct tally_pg {
	PGconn *conn;
	char *url;
	int retry_max_ms;
	int64_t statement_timeout_ms; /* 0 = server default */
	char connect_timeout[24];     /* seconds; "" = libpq's default */
};

static void notice_cb(void *payload, const char *msg)
{
	size_t n = strlen(msg);
	char line[512];

	(void)payload;
	if (n > sizeof(line) - 1)
		n = sizeof(line) - 1;
	memcpy(line, msg, n);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	line[n] = '\0';
	tally_log(TALLY_INFO, "pg.notice", TALLY_KV_STR("message", line));
}

void tally_sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int64_t tally_backoff_ms(int attempt, int64_t base_ms, int64_t cap_ms)
{
	int64_t ceil = base_ms;
	int i;

	for (i = 0; i < attempt && ceil < cap_ms; i++)
		ceil *= 2;
	if (ceil > cap_ms)
		ceil = cap_ms;
	/* full jitter: uniform in [ceil/2, ceil] keeps a floor on the wait */
	return ceil / 2 + (int64_t)(rand() % (int)(ceil / 2 + 1));
}

static int try_connect(tally_pg *pg, tally_error *err)
{
	/* application_name (unless the URL sets one): the program, which
	 * the audit trail records as who made a change */
	const char *const keys[] = { "dbname", "fallback_application_name",
				     pg->connect_timeout[0] ? "connect_timeout"
							    : NULL,
				     NULL };
	const char *const vals[] = { pg->url, tally_log_program(),
				     pg->connect_timeout, NULL };
	PGconn *conn = PQconnectdbParams(keys, vals, 1);

	if (PQstatus(conn) != CONNECTION_OK) {
		char msg[200];
		size_t n;

		/* libpq's message never contains the password */
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
		n = strlen(msg);
		while (n > 0 && msg[n - 1] == '\n')
			msg[--n] = '\0';
		PQfinish(conn);
		return tally_error_set(err, TALLY_ETRANSIENT,
				       "postgres connect: %s", msg);
	}
	PQsetNoticeProcessor(conn, notice_cb, NULL);
	if (pg->statement_timeout_ms > 0) {
		char ms[24];
		const char *p[1] = { ms };
		PGresult *res;

		snprintf(ms, sizeof(ms), "%lld", (long long)pg->statement_timeout_ms);
		res = PQexecParams(conn, "SELECT set_config('statement_timeout',"
				   " $1, false)", 1, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK) {
			int rc = tally_pg__classify(conn, res, err);
			PQclear(res);
			PQfinish(conn);
			return rc;
		}
		PQclear(res);
	}
	if (pg->conn != NULL)
		PQfinish(pg->conn);
	pg->conn = conn;
	return 0;
}

static int reconnect(tally_pg *pg, tally_error *err)
{
	int64_t start = tally_mono_ns();
	int attempt = 0, rc;

	for (;;) {
		rc = try_connect(pg, err);
		if (rc == 0) {
			if (attempt > 0)
				tally_log(TALLY_INFO, "pg.reconnected",
					  TALLY_KV_INT("attempts", attempt + 1));
			return 0;
		}
		if ((tally_mono_ns() - start) / 1000000 >= pg->retry_max_ms)
			return rc;
		int64_t wait = tally_backoff_ms(attempt, 100, 5000);
		tally_log(TALLY_WARN, "pg.connect_retry",
			  TALLY_KV_INT("attempt", attempt + 1),
			  TALLY_KV_INT("wait_ms", wait),
			  TALLY_KV_STR("error", err ? err->msg : ""));
		tally_sleep_ms(wait);
		attempt++;
	}
}

int tally_pg_connect(tally_pg **out, const char *url, int retry_max_ms,
		     tally_error *err)
{
	tally_pg *pg = tally_xcalloc(1, sizeof(*pg));
	int rc;

	pg->url = tally_xstrdup(url);
	pg->retry_max_ms = retry_max_ms;
	rc = reconnect(pg, err);
	if (rc != 0) {
		tally_pg_free(pg);
		return rc;
	}
	*out = pg;
	return 0;
}

int tally_pg_connect_once(tally_pg **out, const char *url,
			  int64_t timeout_ms, tally_error *err)
{
	tally_pg *pg = tally_xcalloc(1, sizeof(*pg));
	int rc;

	pg->url = tally_xstrdup(url);
	pg->retry_max_ms = 0;
	pg->statement_timeout_ms = timeout_ms;
	/* whole seconds, at least 1 (libpq waits at least 2) */
	snprintf(pg->connect_timeout, sizeof(pg->connect_timeout), "%lld",
		 (long long)((timeout_ms + 999) / 1000 > 0 ?
			     (timeout_ms + 999) / 1000 : 1));
	rc = try_connect(pg, err);
	if (rc != 0) {
		tally_pg_free(pg);
		return rc;
	}
	*out = pg;
	return 0;
}

int tally_pg_connect_cfg(tally_pg **out, const tally_config *cfg,
			 tally_error *err)
{
	tally_pg *pg = tally_xcalloc(1, sizeof(*pg));
	int rc;

	pg->url = tally_xstrdup(tally_config_str(cfg, "database.url"));
	pg->retry_max_ms = (int)tally_config_int(cfg, "database.retry_max_ms");
	pg->statement_timeout_ms =
		tally_config_int(cfg, "database.statement_timeout_ms");
	rc = reconnect(pg, err);
	if (rc != 0) {
		tally_pg_free(pg);
		return rc;
	}
	*out = pg;
	return 0;
}

void tally_pg_free(tally_pg *pg)
{
	if (pg == NULL)
		return;
	if (pg->conn != NULL)
		PQfinish(pg->conn);
	free(pg->url);
	free(pg);
}

PGconn *tally_pg_conn(tally_pg *pg)
{
	return pg->conn;
}

int tally_pg_ensure(tally_pg *pg, tally_error *err)
{
	if (pg->conn != NULL && PQstatus(pg->conn) == CONNECTION_OK)
		return 0;
	return reconnect(pg, err);
}

int tally_pg__classify(PGconn *conn, const PGresult *res, tally_error *err)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
	char clean[200];
	size_t n;
	tally_err code = TALLY_ERROR;

	snprintf(clean, sizeof(clean), "%s", msg ? msg : "");
	n = strlen(clean);
	while (n > 0 && clean[n - 1] == '\n')
		clean[--n] = '\0';
	if (PQstatus(conn) != CONNECTION_OK || state == NULL)
		code = TALLY_ETRANSIENT;
	else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
		 strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
		 strcmp(state, "55P03") == 0 || strcmp(state, "53300") == 0)
		code = TALLY_ETRANSIENT;
	else if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0)
		code = TALLY_EINVALID;
	return tally_error_set(err, code, "postgres %s: %s",
			       state ? state : "-----", clean);
}

int tally_pg_exec(tally_pg *pg, PGresult **out, const char *sql, int nparams,
		  const char *const *params, tally_error *err)
{
	return tally_pg_exec_bin(pg, out, sql, nparams, params, NULL, NULL,
				 err);
}

int tally_pg_exec_bin(tally_pg *pg, PGresult **out, const char *sql,
		      int nparams, const char *const *params,
		      const int *lengths, const int *formats,
		      tally_error *err)
{
	PGresult *res;
	ExecStatusType st;
	int rc;

	if (out != NULL)
		*out = NULL;
	rc = tally_pg_ensure(pg, err);
	if (rc != 0)
		return rc;
	res = PQexecParams(pg->conn, sql, nparams, NULL, params, lengths,
			   formats, 0);
	st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		rc = tally_pg__classify(pg->conn, res, err);
		PQclear(res);
		return rc;
	}
	if (out != NULL)
		*out = res;
	else
		PQclear(res);
	return 0;
}

/* sql by the simple query protocol: its (last) result must be want */
static int exec_simple(tally_pg *pg, const char *sql, ExecStatusType want,
		       tally_error *err)
{
	PGresult *res = PQexec(pg->conn, sql);
	int rc = 0;

	if (res == NULL || PQresultStatus(res) != want)
		rc = tally_pg__classify(pg->conn, res, err);
	PQclear(res);
	return rc;
}

int tally_pg_exec_script(tally_pg *pg, const char *sql, tally_error *err)
{
	return exec_simple(pg, sql, PGRES_COMMAND_OK, err);
}

static int simple(tally_pg *pg, const char *sql, tally_error *err)
{
	return tally_pg_exec(pg, NULL, sql, 0, NULL, err);
}

int tally_pg_txn(tally_pg *pg, tally_pg_txn_fn fn, void *payload,
		 int max_attempts, tally_error *err)
{
	int attempt = 0, rc;
	int64_t start = tally_mono_ns();

	for (;;) {
		rc = simple(pg, "BEGIN", err);
		if (rc == 0) {
			rc = fn(pg, payload, err);
			if (rc == 0)
				rc = simple(pg, "COMMIT", err);
			if (rc != 0 && PQstatus(pg->conn) == CONNECTION_OK) {
				tally_error e2;
				if (simple(pg, "ROLLBACK", &e2) != 0) {
					/* connection is reset on next use */
				}
			}
		}
		if (rc != TALLY_ETRANSIENT)
			return rc;
		/*
		 * Stopping: one more attempt (a connection gone stale while
		 * idle, as at a shutdown after a PostgreSQL restart, is
		 * reset by it), then give up: nothing was committed.
		 */
		if (attempt >= 1 && tally_signals_stop_requested())
			return rc;
		attempt++;
		if (max_attempts > 0 && attempt >= max_attempts)
			return rc;
		if (max_attempts == 0 &&
		    (tally_mono_ns() - start) / 1000000 >= pg->retry_max_ms)
			return rc;
		int64_t wait = tally_backoff_ms(attempt, 50, 5000);
		tally_log(TALLY_WARN, "pg.txn_retry",
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait),
			  TALLY_KV_STR("error", err ? err->msg : ""));
		(void)tally_signals_sleep_ms((long)wait);
	}
}

int tally_pg_copy_begin(tally_pg *pg, const char *copy_sql,
			tally_error *err)
{
	return exec_simple(pg, copy_sql, PGRES_COPY_IN, err);
}

int tally_pg_copy_put(tally_pg *pg, const char *data, size_t len,
		      tally_error *err)
{
	/* in 64 KiB pieces: libpq copies a piece into its output buffer,
	 * which keeps the largest size it ever had */
	while (len > 0) {
		int chunk = len > (1 << 16) ? (1 << 16) : (int)len;

		if (PQputCopyData(pg->conn, data, chunk) != 1)
			return tally_pg__classify(pg->conn, NULL, err);
		data += chunk;
		len -= (size_t)chunk;
	}
	return 0;
}

int tally_pg_copy_end(tally_pg *pg, tally_error *err)
{
	PGresult *res;
	int rc = 0;

	if (PQputCopyEnd(pg->conn, NULL) != 1)
		return tally_pg__classify(pg->conn, NULL, err);
	res = PQgetResult(pg->conn);
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = tally_pg__classify(pg->conn, res, err);
	PQclear(res);
	while ((res = PQgetResult(pg->conn)) != NULL)
		PQclear(res);
	return rc;
}

int tally_pg_copy(tally_pg *pg, const char *copy_sql, const char *data,
		  size_t len, tally_error *err)
{
	int rc = tally_pg_copy_begin(pg, copy_sql, err);

	if (rc == 0)
		rc = tally_pg_copy_put(pg, data, len, err);
	if (rc == 0)
		rc = tally_pg_copy_end(pg, err);
	return rc;
}
