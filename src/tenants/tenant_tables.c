/*
 * tenant_tables.c - which tables hold a tenant's rows, found in the
 * catalogue so that a table added later is exported and erased too:
 * tenants itself, every table of the current schema with a tenant_id
 * column (partitioned parents, not their partitions), and tables without
 * tenant_id that reference tenants or such a table by a foreign key.
 * Tables the session may not read are left out (the engine role cannot
 * read tenant_roles, a table of logins, not of the tenant's data).
 */
#include "tally/tenant_data.h"

#include <stdlib.h>
#include <string.h>

/* name, condition on alias t ($1 = tenant id as text), tenant_id's type */
static const char tables_sql[] =
	"WITH rel AS ("
	"  SELECT c.oid, c.relname FROM pg_class c"
	"   WHERE c.relnamespace = current_schema()::regnamespace"
	"     AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
	"     AND has_table_privilege(c.oid, 'SELECT')),"
	" tid AS ("
	"  SELECT r.oid, r.relname, format_type(a.atttypid, NULL) AS typ"
	"    FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid"
	"     AND a.attname = 'tenant_id' AND NOT a.attisdropped),"
	" fk AS ("
	"  SELECT r.relname, format('EXISTS (SELECT 1 FROM %I p WHERE %s AND"
	"         %s)', pr.relname,"
	"     (SELECT string_agg(format('p.%I = t.%I', pa.attname,"
	"                               ca.attname), ' AND ')"
	"        FROM unnest(con.conkey, con.confkey) AS k(ck, pk)"
	"        JOIN pg_attribute ca ON ca.attrelid = con.conrelid"
	"         AND ca.attnum = k.ck"
	"        JOIN pg_attribute pa ON pa.attrelid = con.confrelid"
	"         AND pa.attnum = k.pk),"
	"     CASE WHEN pr.relname = 'tenants' THEN 'p.id = $1::uuid'"
	"          WHEN pt.typ = 'uuid' THEN 'p.tenant_id = $1::uuid'"
	"          ELSE 'p.tenant_id::text = $1' END) AS cond"
	"    FROM pg_constraint con JOIN rel r ON r.oid = con.conrelid"
	"    JOIN pg_class pr ON pr.oid = con.confrelid"
	"    LEFT JOIN tid pt ON pt.oid = con.confrelid"
	"   WHERE con.contype = 'f' AND r.relname <> 'tenants'"
	"     AND r.oid NOT IN (SELECT oid FROM tid)"
	"     AND (pr.relname = 'tenants' OR pt.oid IS NOT NULL)"
	"     AND pr.relnamespace = current_schema()::regnamespace)"
	" SELECT relname, cond, typ FROM ("
	"  SELECT relname, 't.id = $1::uuid' AS cond, '' AS typ, 0 AS ord"
	"    FROM rel WHERE relname = 'tenants'"
	"  UNION ALL"
	"  SELECT relname, CASE WHEN typ = 'uuid' THEN 't.tenant_id = $1::uuid'"
	"         ELSE 't.tenant_id::text = $1' END, typ, 1 FROM tid"
	"  UNION ALL"
	"  SELECT relname, '(' || string_agg(cond, ') OR (') || ')', '', 1"
	"    FROM fk GROUP BY relname) x"
	" ORDER BY ord, relname";

int tally_tenant_tables_list(tally_pg *pg, tally_tenant_tables *out,
			     tally_error *err)
{
	PGresult *res = NULL;
	int i, n, rc;

	memset(out, 0, sizeof(*out));
	rc = tally_pg_exec(pg, &res, tables_sql, 0, NULL, err);
	if (rc != 0)
		return rc;
	n = PQntuples(res);
	out->v = tally_xcalloc((size_t)n + 1, sizeof(out->v[0]));
	for (i = 0; i < n; i++) {
		out->v[i].name = tally_xstrdup(PQgetvalue(res, i, 0));
		out->v[i].where = tally_xstrdup(PQgetvalue(res, i, 1));
		out->v[i].tenant_type = tally_xstrdup(PQgetvalue(res, i, 2));
	}
	out->n = (size_t)n;
	PQclear(res);
	return 0;
}

void tally_tenant_tables_free(tally_tenant_tables *t)
{
	size_t i;

	if (t == NULL || t->v == NULL)
		return;
	for (i = 0; i < t->n; i++) {
		free(t->v[i].name);
		free(t->v[i].where);
		free(t->v[i].tenant_type);
	}
	free(t->v);
	memset(t, 0, sizeof(*t));
}

int tally_tenant_resolve(tally_pg *pg, const char *ref, char id[37],
			 tally_error *err)
{
	const char *params[1] = { ref };
	PGresult *res = NULL;
	int rc;

	/* an id only when ref is a UUID (a slug is never cast) */
	rc = tally_pg_exec(pg, &res,
		"SELECT id::text FROM tenants WHERE slug = $1"
		" OR id = CASE WHEN $1 ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}"
		"-[0-9a-f]{4}-[0-9a-f]{12}$' THEN $1::uuid END",
		1, params, err);
	if (rc != 0)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return tally_error_set(err, TALLY_ENOTFOUND,
				       "no tenant with id or slug '%s'", ref);
	}
	memcpy(id, PQgetvalue(res, 0, 0), 36);
	id[36] = '\0';
	PQclear(res);
	return 0;
}
