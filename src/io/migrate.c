/*
 * migrate.c - numbered SQL migrations. The advisory lock is a session lock
 * taken before schema_migrations is even created, so two `tally migrate`
 * processes started together apply each file exactly once. A file's script
 * runs through PQexec (a migration is a multi-statement script, the one
 * place we do not use parameters) inside BEGIN/COMMIT together with its
 * schema_migrations row.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/migrate.h"
#include "tally/log.h"

#include <dirent.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#ifndef TALLY_SOURCE_DIR
#define TALLY_SOURCE_DIR "."
#endif

#define MIGRATE_LOCK "7245880101" /* arbitrary, stable advisory lock key */

const char *tally_migrate_default_dir(void)
{
	const char *d = getenv("TALLY_MIGRATIONS_DIR");

	return (d != NULL && *d != '\0') ? d : TALLY_SOURCE_DIR "/migrations";
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_file(char **out, size_t *len, const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	struct stat st;
	long n;

	if (fp == NULL)
		return -1;
	/* a directory opens too, and its "size" is anything */
	if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) ||
	    fseek(fp, 0, SEEK_END) != 0 || (n = ftell(fp)) < 0 ||
	    fseek(fp, 0, SEEK_SET) != 0) {
		fclose(fp);
		return -1;
	}
	buf = tally_xmalloc((size_t)n + 1);
	if (fread(buf, 1, (size_t)n, fp) != (size_t)n) {
		free(buf);
		fclose(fp);
		return -1;
	}
	buf[n] = '\0';
	fclose(fp);
	*out = buf;
	*len = (size_t)n;
	return 0;
}

static void sha256_hex(char out[65], const char *data, size_t len)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	for (i = 0; i < mdlen && i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[64] = '\0';
}

/*
 * Roles are shared by every database of a cluster, and the migration lock
 * is per database: two databases migrating at once (a first install, the
 * tests' parallel suites) can both find a role missing and both create it;
 * the second then fails with unique_violation (pg_authid) or
 * duplicate_object once the first commits. Such a failure rolled the whole
 * migration back, so it is simply run again (a few times): it then finds
 * the role. A conflict that stays is reported as before.
 */
#define MIGRATE_RACE_TRIES 5

static bool shared_object_race(const PGresult *res)
{
	const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	return st != NULL && (strcmp(st, "23505") == 0 ||
			      strcmp(st, "42710") == 0);
}

static int apply_one(tally_pg *pg, const char *name, const char *version,
		     const char *sql, const char *sum, tally_error *err)
{
	PGresult *res;
	const char *params[3] = { version, name, sum };
	int rc, attempt;

	for (attempt = 1;; attempt++) {
		bool race;

		rc = tally_pg_exec(pg, NULL, "BEGIN", 0, NULL, err);
		if (rc != 0)
			return rc;
		/* who and why of what the file changes, for the audit trail
		 * (migration 0021's triggers); transaction-local */
		rc = tally_pg_exec(pg, NULL,
			"SELECT set_config('tally.audit_source', 'tally migrate',"
			" true), set_config('tally.audit_reason', 'migration ' ||"
			" $1, true)", 1, &name, err);
		if (rc != 0)
			return rc;
		res = PQexec(tally_pg_conn(pg), sql);
		if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK)
			break;
		rc = tally_pg__classify(tally_pg_conn(pg), res, err);
		race = shared_object_race(res);
		PQclear(res);
		tally_error e2;
		if (tally_pg_exec(pg, NULL, "ROLLBACK", 0, NULL, &e2) != 0) {
			/* connection broken: nothing was committed */
		}
		if (race && attempt < MIGRATE_RACE_TRIES) {
			tally_log(TALLY_WARN, "migrate.retry",
				  TALLY_KV_STR("file", name),
				  TALLY_KV_STR("error", err->msg));
			tally_sleep_ms(50 * attempt);
			continue;
		}
		char why[sizeof(err->msg)];
		snprintf(why, sizeof(why), "%s", err->msg);
		return tally_error_set(err, rc, "%s: %s", name, why);
	}
	PQclear(res);
	rc = tally_pg_exec(pg, NULL,
			   "INSERT INTO schema_migrations(version, name, checksum)"
			   " VALUES ($1::int, $2, $3)", 3, params, err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, "COMMIT", 0, NULL, err);
	return rc;
}

/* The *.sql file names in dir, sorted (the caller frees them); 0 or an
 * error when dir cannot be opened. */
static int list_files(const char *dir, char ***out, size_t *nout,
		      tally_error *err)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **files = NULL;
	size_t nfiles = 0, cap = 0;

	if (d == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "cannot open migrations dir %s", dir);
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		if (n < 10 || strcmp(de->d_name + n - 4, ".sql") != 0)
			continue;
		if (nfiles == cap) {
			cap = cap ? cap * 2 : 16;
			files = tally_xrealloc(files, cap * sizeof(*files));
		}
		files[nfiles++] = tally_xstrdup(de->d_name);
	}
	closedir(d);
	qsort(files, nfiles, sizeof(*files), cmp_str);
	*out = files;
	*nout = nfiles;
	return 0;
}

/* Migration `name` of dir: checked against its recorded checksum if it
 * was applied, else applied now (*applied set). */
static int migrate_file(tally_pg *pg, const char *dir, const char *name,
			bool *applied, tally_error *err)
{
	char path[4096], sum[65], version[16];
	const char *vp[1] = { version };
	PGresult *res = NULL;
	char *sql = NULL;
	size_t k, len;
	int rc;

	*applied = false;
	for (k = 0; k < 4; k++)
		if (name[k] < '0' || name[k] > '9' || name[4] != '_')
			return tally_error_set(err, TALLY_EINVALID,
					       "%s: name is not NNNN_<what>.sql",
					       name);
	snprintf(version, sizeof(version), "%.4s", name);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (read_file(&sql, &len, path) != 0)
		return tally_error_set(err, TALLY_EINVALID, "cannot read %s",
				       path);
	sha256_hex(sum, sql, len);
	rc = tally_pg_exec(pg, &res,
			   "SELECT checksum, name FROM schema_migrations"
			   " WHERE version = $1::int", 1, vp, err);
	if (rc == 0 && PQntuples(res) == 1) {
		if (strcmp(PQgetvalue(res, 0, 0), sum) != 0)
			rc = tally_error_set(err, TALLY_EINVALID,
					     "%s was changed after it was "
					     "applied (checksum %.12s, "
					     "recorded %.12s); add a new "
					     "migration instead", name, sum,
					     PQgetvalue(res, 0, 0));
	} else if (rc == 0) {
		rc = apply_one(pg, name, version, sql, sum, err);
		if (rc == 0) {
			tally_log(TALLY_INFO, "migrate.applied",
				  TALLY_KV_STR("file", name));
			*applied = true;
		}
	}
	PQclear(res);
	free(sql);
	return rc;
}

int tally_migrate(tally_pg *pg, const char *dir, int *applied,
		  tally_error *err)
{
	char **files = NULL;
	size_t nfiles = 0, i;
	int rc = 0, count = 0;
	const char *lockp[1] = { MIGRATE_LOCK };

	if (applied != NULL)
		*applied = 0;
	rc = list_files(dir, &files, &nfiles, err);
	if (rc != 0)
		return rc;
	rc = tally_pg_exec(pg, NULL, "SELECT pg_advisory_lock($1::bigint)", 1,
			   lockp, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_pg_exec(pg, NULL,
			   "CREATE TABLE IF NOT EXISTS schema_migrations ("
			   " version int PRIMARY KEY, name text NOT NULL,"
			   " checksum text NOT NULL,"
			   " applied_at timestamptz NOT NULL DEFAULT now())",
			   0, NULL, err);
	for (i = 0; rc == 0 && i < nfiles; i++) {
		bool one = false;

		rc = migrate_file(pg, dir, files[i], &one, err);
		if (one)
			count++;
	}
	{
		tally_error e2;
		if (tally_pg_exec(pg, NULL,
				  "SELECT pg_advisory_unlock($1::bigint)", 1,
				  lockp, &e2) != 0) {
			/* the lock dies with the session anyway */
		}
	}
cleanup:
	for (i = 0; i < nfiles; i++)
		free(files[i]);
	free(files);
	if (applied != NULL)
		*applied = count;
	return rc;
}
