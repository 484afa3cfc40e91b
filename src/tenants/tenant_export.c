/*
 * tenant_export.c - GDPR export of one tenant: every row it owns (the
 * tables of tenant_tables.c) as JSON Lines per table plus manifest.json
 * with each file's row count, size and SHA-256, all read in one
 * REPEATABLE READ READ ONLY transaction so the files agree with each
 * other. Rows come through a cursor FETCHed in fixed batches and go
 * straight to the file and the digest: memory stays the same for ten rows
 * or ten million.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/tenant_data.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FETCH_ROWS 2000
#define FETCH_SQL "FETCH FORWARD 2000 FROM tally_export"
#define PROGRESS_EVERY 100000

typedef struct export_file {
	int64_t rows, bytes;
	char sha256[65];
} export_file;

/* "<dir>/<name>.jsonl" with anything but [A-Za-z0-9_.-] in name as '_' */
static void file_path(char *out, size_t n, const char *dir, const char *name,
		      const char *ext)
{
	size_t len, i;

	snprintf(out, n, "%s/", dir);
	len = strlen(out);
	for (i = 0; name[i] != '\0' && len + 1 < n; i++) {
		char c = name[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			 (c >= '0' && c <= '9') || c == '_' || c == '-';

		out[len++] = ok ? c : '_';
	}
	out[len] = '\0';
	snprintf(out + len, n - len, "%s", ext);
}

static FILE *open_private(const char *path, tally_error *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *fp;

	if (fd < 0) {
		tally_error_set(err, TALLY_ERROR, "%s: %s", path,
				strerror(errno));
		return NULL;
	}
	fp = fdopen(fd, "w");
	if (fp == NULL) {
		close(fd);
		tally_error_set(err, TALLY_ERROR, "%s: %s", path,
				strerror(errno));
	}
	return fp;
}

static void hex(char *out, const unsigned char *md, unsigned n)
{
	static const char digits[] = "0123456789abcdef";
	unsigned i;

	for (i = 0; i < n; i++) {
		out[2 * i] = digits[md[i] >> 4];
		out[2 * i + 1] = digits[md[i] & 15];
	}
	out[2 * n] = '\0';
}

/* FETCH the open cursor to fp until it is exhausted. */
static int drain_cursor(tally_pg *pg, FILE *fp, EVP_MD_CTX *md,
			const char *table, FILE *progress, export_file *f,
			tally_error *err)
{
	int64_t next_report = PROGRESS_EVERY;

	for (;;) {
		PGresult *res = NULL;
		int i, n, rc;

		rc = tally_pg_exec(pg, &res, FETCH_SQL, 0, NULL, err);
		if (rc != 0)
			return rc;
		n = PQntuples(res);
		for (i = 0; i < n; i++) {
			const char *line = PQgetvalue(res, i, 0);
			size_t len = (size_t)PQgetlength(res, i, 0);

			if (fwrite(line, 1, len, fp) != len ||
			    fputc('\n', fp) == EOF) {
				PQclear(res);
				return tally_error_set(err, TALLY_ERROR,
					"writing %s: %s", table,
					strerror(errno));
			}
			EVP_DigestUpdate(md, line, len);
			EVP_DigestUpdate(md, "\n", 1);
			f->bytes += (int64_t)len + 1;
		}
		f->rows += n;
		PQclear(res);
		if (progress != NULL && f->rows >= next_report) {
			fprintf(progress, "export: %s: %lld rows\n", table,
				(long long)f->rows);
			next_report += PROGRESS_EVERY;
		}
		if (n < FETCH_ROWS)
			return 0;
	}
}

static int export_table(tally_pg *pg, const tally_tenant_table *t,
			const char *tenant, const char *dir, FILE *progress,
			export_file *f, tally_error *err)
{
	const char *params[1] = { tenant };
	char path[4096], *ident, *sql;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	EVP_MD_CTX *md;
	FILE *fp;
	size_t n;
	int rc;

	memset(f, 0, sizeof(*f));
	ident = PQescapeIdentifier(tally_pg_conn(pg), t->name,
				   strlen(t->name));
	if (ident == NULL)
		return tally_error_set(err, TALLY_ERROR, "quote %s", t->name);
	n = strlen(ident) + strlen(t->where) + 128;
	sql = tally_xmalloc(n);
	snprintf(sql, n, "DECLARE tally_export NO SCROLL CURSOR FOR"
		 " SELECT row_to_json(t)::text FROM %s t WHERE %s",
		 ident, t->where);
	PQfreemem(ident);
	rc = tally_pg_exec(pg, NULL, sql, 1, params, err);
	free(sql);
	if (rc != 0)
		return rc;
	file_path(path, sizeof(path), dir, t->name, ".jsonl");
	fp = open_private(path, err);
	if (fp == NULL)
		return TALLY_ERROR;
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		abort();
	rc = drain_cursor(pg, fp, md, t->name, progress, f, err);
	EVP_DigestFinal_ex(md, digest, &dlen);
	EVP_MD_CTX_free(md);
	hex(f->sha256, digest, dlen);
	if (fclose(fp) != 0 && rc == 0)
		rc = tally_error_set(err, TALLY_ERROR, "%s: %s", path,
				     strerror(errno));
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, "CLOSE tally_export", 0, NULL,
				   err);
	if (rc == 0 && progress != NULL)
		fprintf(progress, "export: %s: %lld rows, done\n", t->name,
			(long long)f->rows);
	return rc;
}

static int write_manifest(const char *dir, json_t *m, tally_error *err)
{
	char path[4096], *text;
	FILE *fp;
	int rc = 0;

	snprintf(path, sizeof(path), "%s/manifest.json", dir);
	text = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (text == NULL)
		abort();
	fp = open_private(path, err);
	if (fp == NULL) {
		free(text);
		return TALLY_ERROR;
	}
	if (fputs(text, fp) == EOF || fputc('\n', fp) == EOF)
		rc = tally_error_set(err, TALLY_ERROR, "%s: %s", path,
				     strerror(errno));
	if (fclose(fp) != 0 && rc == 0)
		rc = tally_error_set(err, TALLY_ERROR, "%s: %s", path,
				     strerror(errno));
	free(text);
	return rc;
}

/* Every table into dir; the manifest's "files" array is filled. */
static int export_all(tally_pg *pg, const char *tenant, const char *dir,
		      FILE *progress, json_t *files,
		      tally_tenant_export_stats *st, tally_error *err)
{
	tally_tenant_tables tables;
	size_t i;
	int rc;

	rc = tally_tenant_tables_list(pg, &tables, err);
	for (i = 0; rc == 0 && i < tables.n; i++) {
		char path[4096];
		export_file f;

		rc = export_table(pg, &tables.v[i], tenant, dir, progress, &f,
				  err);
		if (rc != 0)
			break;
		file_path(path, sizeof(path), "", tables.v[i].name, ".jsonl");
		json_array_append_new(files, json_pack(
			"{s:s, s:s, s:I, s:I, s:s}", "table",
			tables.v[i].name, "file", path + 1, "rows",
			(json_int_t)f.rows, "bytes", (json_int_t)f.bytes,
			"sha256", f.sha256));
		st->tables++;
		st->rows += f.rows;
		st->bytes += f.bytes;
	}
	tally_tenant_tables_free(&tables);
	return rc;
}

/* Tables with tenant_id the session may not read: named in the manifest,
 * so a reader knows what the export could not include. */
static int unreadable(tally_pg *pg, json_t *m, tally_error *err)
{
	PGresult *res = NULL;
	json_t *a = json_array();
	int i, rc;

	rc = tally_pg_exec(pg, &res, "SELECT c.relname FROM pg_class c"
		" JOIN pg_attribute a ON a.attrelid = c.oid"
		"  AND a.attname = 'tenant_id' AND NOT a.attisdropped"
		" WHERE c.relnamespace = current_schema()::regnamespace"
		"   AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
		"   AND NOT has_table_privilege(c.oid, 'SELECT')"
		" ORDER BY 1", 0, NULL, err);
	for (i = 0; rc == 0 && i < PQntuples(res); i++)
		json_array_append_new(a, json_string(PQgetvalue(res, i, 0)));
	PQclear(res);
	json_object_set_new(m, "unreadable", a);
	return rc;
}

int tally_tenant_export(tally_pg *pg, const char *ref, const char *dir,
			FILE *progress, tally_tenant_export_stats *st,
			tally_error *err)
{
	char tenant[37];
	PGresult *res = NULL;
	json_t *m = NULL, *files;
	int rc;

	memset(st, 0, sizeof(*st));
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return tally_error_set(err, TALLY_EINVALID, "%s: %s", dir,
				       strerror(errno));
	rc = tally_pg_exec(pg, NULL, "BEGIN ISOLATION LEVEL REPEATABLE READ"
			   " READ ONLY", 0, NULL, err);
	if (rc != 0)
		return rc;
	/* the first query takes the snapshot every later one reads */
	rc = tally_pg_exec(pg, &res, "SELECT to_char(now() AT TIME ZONE 'UTC',"
			   " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", 0, NULL,
			   err);
	if (rc != 0)
		goto done;
	snprintf(st->snapshot_at, sizeof(st->snapshot_at), "%s",
		 PQgetvalue(res, 0, 0));
	PQclear(res);
	rc = tally_tenant_resolve(pg, ref, tenant, err);
	if (rc != 0)
		goto done;
	files = json_array();
	m = json_pack("{s:s, s:s, s:s, s:o}", "tenant_id", tenant,
		      "snapshot_at", st->snapshot_at, "format",
		      "jsonl; one row_to_json object per line", "files", files);
	rc = export_all(pg, tenant, dir, progress, files, st, err);
	if (rc == 0)
		rc = unreadable(pg, m, err);
	if (rc == 0) {
		json_object_set_new(m, "rows", json_integer(st->rows));
		rc = write_manifest(dir, m, err);
	}
done:
	json_decref(m);
	{
		tally_error e2;
		int rc2 = tally_pg_exec(pg, NULL, rc == 0 ? "COMMIT" :
					"ROLLBACK", 0, NULL, &e2);

		if (rc == 0 && rc2 != 0) {
			*err = e2;
			rc = rc2;
		}
	}
	return rc;
}
