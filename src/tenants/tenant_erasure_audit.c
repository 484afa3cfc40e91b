/*
 * tenant_erasure_audit.c - an erasure's row in the audit trail. audit_log
 * is optional here (a database may not have it): the statement is built
 * from the table's columns, each filled by what its name says (the who
 * columns keep their defaults, the session's own roles), and the values
 * never include the personal data being erased.
 */
#include "tenants/tenant_data_int.h"

#include <stdlib.h>
#include <string.h>

/* A column name and the SQL value for it ($1..$5 are bound below). */
typedef struct audit_col {
	const char *names; /* space-separated, surrounded by spaces */
	const char *value;
} audit_col;

static const audit_col cols[] = {
	{ " tenant_id ", "$1::text" },
	{ " table_name tbl relation target_table table ", "'tenants'" },
	{ " row_key record_key key pk ", "jsonb_build_object('id', $1::text)" },
	/* the rows of the tenant are updated */
	{ " op operation ", "'UPDATE'" },
	{ " action event kind ", "$2::text" },
	{ " new_values new_row new new_data detail details change ",
	  "$3::text" },
	{ " old_values old_row old old_data ", "NULL" },
	{ " application_name app ", "current_setting('application_name')" },
	{ " source ", "'tally tenant erase'" },
	{ " reason why cause command_id invocation ", "$4::text" },
};

static const char *value_of(const char *col)
{
	char pat[80];
	size_t i;

	snprintf(pat, sizeof(pat), " %s ", col);
	for (i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
		if (strstr(cols[i].names, pat) != NULL)
			return cols[i].value;
	return NULL;
}

int tally_tenant__audit(tally_pg *pg, const char *tenant, const char *action,
			const char *detail, const char *why, int *written,
			tally_error *err)
{
	const char *params[4] = { tenant, action, detail, why };
	PGresult *res = NULL;
	char *names = NULL, *values = NULL;
	size_t nlen = 0, vlen = 0;
	int i, n, rc;

	*written = 0;
	rc = tally_pg_exec(pg, &res,
		"SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
		"  FROM pg_attribute a"
		" WHERE a.attrelid = to_regclass('audit_log')"
		"   AND a.attnum > 0 AND NOT a.attisdropped"
		"   AND a.attidentity = '' AND a.attgenerated = ''"
		" ORDER BY a.attnum", 0, NULL, err);
	if (rc != 0)
		return rc;
	n = PQntuples(res);
	for (i = 0; i < n; i++) {
		const char *v = value_of(PQgetvalue(res, i, 0));
		char *id;
		size_t add;

		if (v == NULL)
			continue;
		id = PQescapeIdentifier(tally_pg_conn(pg),
					PQgetvalue(res, i, 0),
					strlen(PQgetvalue(res, i, 0)));
		if (id == NULL)
			abort();
		add = strlen(id) + 2;
		names = tally_xrealloc(names, nlen + add + 1);
		nlen += (size_t)snprintf(names + nlen, add + 1, "%s%s",
					 nlen ? ", " : "", id);
		PQfreemem(id);
		add = strlen(v) + strlen(PQgetvalue(res, i, 1)) + 16;
		values = tally_xrealloc(values, vlen + add + 1);
		vlen += (size_t)snprintf(values + vlen, add + 1,
					 "%sCAST(%s AS %s)", vlen ? ", " : "",
					 v, PQgetvalue(res, i, 1));
	}
	PQclear(res);
	if (names != NULL) {
		size_t len = nlen + vlen + 160;
		char *sql = tally_xmalloc(len);

		/* $1..$4 typed even when a column does not use them */
		snprintf(sql, len, "INSERT INTO audit_log (%s) SELECT %s FROM"
			 " (SELECT $1::text, $2::text, $3::text, $4::text) p",
			 names, values);
		rc = tally_pg_exec(pg, NULL, sql, 4, params, err);
		free(sql);
		*written = rc == 0;
	}
	free(names);
	free(values);
	return rc;
}
