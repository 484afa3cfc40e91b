/*
 * cmd_audit.c - `tally audit list [--tenant T] [--table X] [--since TS]
 * [--limit N] [--format table|csv|json]`: the audit trail (audit_log),
 * oldest first. The engine role cannot read it: run it with a finance
 * (or the owner's) database.url.
 * table: tab-separated with a header; csv: RFC 4180 with a header; json:
 * one JSON object per line.
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_audit_help[] =
	"audit trail: list [--tenant T] [--table X] [--since TS]";

static const char usage_text[] =
	"usage: tally audit list [--tenant TENANT] [--table TABLE] "
	"[--since TIMESTAMP]\n"
	"                        [--limit N] [--format table|csv|json]\n";

/* The rows asked for; $1 tenant id or slug, $2 table, $3 since, $4
 * limit, each NULL when not given. */
static const char query[] =
	"SELECT a.at, coalesce(a.tenant_id::text, '') AS tenant_id, "
	"a.table_name, a.op, a.row_key, a.old_values, a.new_values, "
	"a.db_user, a.db_session_user, a.application_name, a.source, "
	"a.reason FROM audit_log a WHERE ($1::text IS NULL OR "
	"a.tenant_id::text = $1 OR a.tenant_id = (SELECT id FROM tenants "
	"WHERE slug = $1)) AND ($2::text IS NULL OR a.table_name = $2) AND "
	"($3::timestamptz IS NULL OR a.at >= $3::timestamptz) "
	"ORDER BY a.id LIMIT coalesce($4::bigint, 1000)";

static void csv_field(const char *s, bool last)
{
	if (strpbrk(s, ",\"\r\n") == NULL) {
		fputs(s, stdout);
	} else {
		putchar('"');
		for (; *s; s++) {
			if (*s == '"')
				putchar('"');
			putchar(*s);
		}
		putchar('"');
	}
	putchar(last ? '\n' : ',');
}

/* one field for the tab-separated table: tabs and newlines as spaces */
static void table_field(const char *s, bool last)
{
	for (; *s; s++)
		putchar(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s);
	putchar(last ? '\n' : '\t');
}

static void print(PGresult *res, bool csv)
{
	int i, j, nf = PQnfields(res);

	for (j = 0; j < nf; j++)
		(csv ? csv_field : table_field)(PQfname(res, j), j + 1 == nf);
	for (i = 0; i < PQntuples(res); i++)
		for (j = 0; j < nf; j++)
			(csv ? csv_field : table_field)(PQgetvalue(res, i, j),
							j + 1 == nf);
}

int tally_cmd_audit(tally_cli *cli, int argc, char **argv)
{
	const char *p[4] = { NULL, NULL, NULL, NULL };
	const char *format = "table";
	char sql[sizeof(query) + 64];
	tally_pg *pg = NULL;
	PGresult *res = NULL;
	tally_error err;
	int i, rc;

	if (argc < 2 || strcmp(argv[1], "list") != 0) {
		fputs(usage_text, stderr);
		return 2;
	}
	for (i = 2; i < argc; i++) {
		const char **slot = NULL;

		if (strcmp(argv[i], "--tenant") == 0) slot = &p[0];
		else if (strcmp(argv[i], "--table") == 0) slot = &p[1];
		else if (strcmp(argv[i], "--since") == 0) slot = &p[2];
		else if (strcmp(argv[i], "--limit") == 0) slot = &p[3];
		else if (strcmp(argv[i], "--format") == 0) slot = &format;
		if (slot == NULL || i + 1 >= argc) {
			fputs(usage_text, stderr);
			return 2;
		}
		*slot = argv[++i];
	}
	if (strcmp(format, "table") != 0 && strcmp(format, "csv") != 0 &&
	    strcmp(format, "json") != 0) {
		fprintf(stderr, "tally audit: --format is table, csv or json\n");
		return 2;
	}
	if (p[3] != NULL) {
		int64_t n;

		if (tally_parse_i64(&n, p[3]) != 0 || n < 1) {
			fprintf(stderr, "tally audit: bad --limit %s\n", p[3]);
			return 2;
		}
	}
	if (strcmp(format, "json") == 0)
		snprintf(sql, sizeof(sql), "SELECT row_to_json(r)::text FROM "
			 "(%s) r", query);
	else
		snprintf(sql, sizeof(sql), "%s", query);
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_pg_exec(pg, &res, sql, 4, p, &err);
	if (rc != 0) {
		/* a bad --since is PostgreSQL's to reject */
		fprintf(stderr, "tally audit: %s\n", err.msg);
		tally_pg_free(pg);
		return rc == TALLY_EINVALID ? 2 : 1;
	}
	if (strcmp(format, "json") == 0)
		for (i = 0; i < PQntuples(res); i++)
			printf("%s\n", PQgetvalue(res, i, 0));
	else
		print(res, strcmp(format, "csv") == 0);
	PQclear(res);
	tally_pg_free(pg);
	return 0;
}
