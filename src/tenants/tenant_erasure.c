/*
 * tenant_erasure.c - GDPR erasure of one tenant's personal data.
 *
 * In one transaction: the tenants row loses its name, slug, domain and
 * branding (pseudonyms derived from the tenant id keep the unique keys);
 * every table the tenant owns (tenant_tables.c) has the personal keys
 * removed from its json/jsonb columns (tally_erase_json, migration 0022)
 * and its personal text columns, recognised by name (e-mail, phone,
 * address, contact, subject, ...), cleared; free-text details that may
 * quote personal data and dead letters' raw payloads are cleared. Amounts,
 * dates, invoice numbers and Stripe ids stay: tax law keeps them.
 * Then the Stripe customer is deleted (tenant_erasure_stripe.c).
 * Every statement changes only rows that still differ, so a second run
 * changes nothing.
 */
#include "tally/stripe.h"
#include "tenants/tenant_data_int.h"

#include <stdlib.h>
#include <string.h>

/* Text columns holding personal data, by name (lower case, any table). */
static const char personal_text_re[] =
	"(email|e_mail|phone|address|contact|customer_name|company_name|"
	"full_name|first_name|last_name|subject|ip_address|user_agent)";

/* The tenants row: unique keys get pseudonyms made of the tenant id. */
static const char tenants_sql[] =
	"UPDATE tenants SET name = 'erased', slug = 'erased-' || id,"
	" domain = id || '.erased.invalid', custom_domain = NULL,"
	" logo_url = NULL, company_name = NULL, custom_css = NULL,"
	" industry_settings = NULL, updated_at = now()"
	" WHERE id = $1::uuid AND (name, slug, domain) IS DISTINCT FROM"
	" ('erased', 'erased-' || id, id || '.erased.invalid')";

/* Free text that may quote personal data, per table. */
static const char *const free_text_sql[] = {
	"UPDATE dead_letters SET payload = NULL, detail = 'erased'"
	" WHERE tenant_id = $1 AND (payload IS NOT NULL"
	" OR detail <> 'erased')",
	"UPDATE stripe_events SET detail = NULL"
	" WHERE tenant_id = $1::uuid AND detail IS NOT NULL",
	"UPDATE billing_commands SET error_message = NULL"
	" WHERE tenant_id = $1::uuid AND error_message IS NOT NULL",
};

/* Columns of a table that erasure rewrites: json/jsonb and personal text
 * (name, type category, nullable). */
static const char columns_sql[] =
	"SELECT a.attname, CASE WHEN t.typname IN ('json', 'jsonb')"
	"  THEN t.typname ELSE 'text' END, NOT a.attnotnull"
	"  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
	" WHERE a.attrelid = to_regclass(quote_ident($1))"
	"   AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''"
	"   AND (t.typname IN ('json', 'jsonb') OR (t.typcategory = 'S'"
	"        AND lower(a.attname) ~ $2))";

static int exec_count(tally_pg *pg, const char *sql, const char *tenant,
		      int64_t *changed, tally_error *err)
{
	const char *params[1] = { tenant };
	PGresult *res = NULL;
	int rc = tally_pg_exec(pg, &res, sql, 1, params, err);

	if (rc == 0) {
		*changed += strtoll(PQcmdTuples(res), NULL, 10);
		PQclear(res);
	}
	return rc;
}

/* One column of one table, only the tenant's rows that still differ. */
static int erase_column(tally_pg *pg, const tally_tenant_table *t,
			const char *ident, const char *col, const char *kind,
			bool nullable, const char *tenant, int64_t *changed,
			tally_error *err)
{
	char *c = PQescapeIdentifier(tally_pg_conn(pg), col, strlen(col));
	char *sql;
	size_t n;
	int rc;

	if (c == NULL)
		abort();
	n = 4 * strlen(c) + strlen(ident) + strlen(t->where) + 256;
	sql = tally_xmalloc(n);
	if (strcmp(kind, "text") != 0)
		snprintf(sql, n, "UPDATE %s t SET %s ="
			 " tally_erase_json(%s::jsonb)::%s WHERE (%s) AND"
			 " %s IS NOT NULL AND %s::jsonb IS DISTINCT FROM"
			 " tally_erase_json(%s::jsonb)",
			 ident, c, c, kind, t->where, c, c, c);
	else if (nullable)
		snprintf(sql, n, "UPDATE %s t SET %s = NULL WHERE (%s) AND"
			 " %s IS NOT NULL", ident, c, t->where, c);
	else /* NOT NULL, maybe part of a key (tenant_period_users.subject):
	      * a random pseudonym per row keeps rows distinct, counts exact;
	      * '' holds nothing and stays */
		snprintf(sql, n, "UPDATE %s t SET %s = 'erased:' ||"
			 " gen_random_uuid() WHERE (%s) AND %s <> '' AND %s"
			 " NOT LIKE 'erased:%%'", ident, c, t->where, c, c);
	rc = exec_count(pg, sql, tenant, changed, err);
	free(sql);
	PQfreemem(c);
	return rc;
}

/* Tables erasure never rewrites: the audit trail is append-only and the
 * erasure record holds nothing personal. */
static bool kept_table(const char *name)
{
	return strcmp(name, "audit_log") == 0 ||
	       strcmp(name, "tenant_erasures") == 0;
}

/* Columns whose name looks personal but whose values never are:
 * alerts.subject is a currency or plan code, part of the alerts' key
 * (rewriting it would raise and deliver the alerts again). */
static bool kept_column(const char *table, const char *col)
{
	return strcmp(table, "alerts") == 0 && strcmp(col, "subject") == 0;
}

/* Refuse a tenant that can still produce usage: its next event would
 * add its users again under their real subjects (counted twice) while
 * it keeps billing. Only a cancelled tenant is final (a suspended one
 * can be resumed). */
static int check_erasable(tally_pg *pg, const char *tenant,
			  tally_error *err)
{
	const char *params[1] = { tenant };
	PGresult *res = NULL;
	int rc = tally_pg_exec(pg, &res, "SELECT status FROM tenants"
			       " WHERE id = $1::uuid FOR UPDATE", 1, params,
			       err);

	if (rc != 0)
		return rc;
	if (PQntuples(res) == 1 &&
	    strcmp(PQgetvalue(res, 0, 0), "cancelled") != 0)
		rc = tally_error_set(err, TALLY_EINVALID, "tenant %s is %s:"
				     " only a cancelled tenant is erased"
				     " (cancel it first)", tenant,
				     PQgetvalue(res, 0, 0));
	PQclear(res);
	return rc;
}

static int erase_table(tally_pg *pg, const tally_tenant_table *t,
		       const char *tenant, int64_t *changed, tally_error *err)
{
	const char *params[2] = { t->name, personal_text_re };
	PGresult *res = NULL;
	char *ident;
	int i, rc;

	if (kept_table(t->name))
		return 0;
	rc = tally_pg_exec(pg, &res, columns_sql, 2, params, err);
	if (rc != 0)
		return rc;
	ident = PQescapeIdentifier(tally_pg_conn(pg), t->name,
				   strlen(t->name));
	if (ident == NULL)
		abort();
	for (i = 0; rc == 0 && i < PQntuples(res); i++)
		if (!kept_column(t->name, PQgetvalue(res, i, 0)))
				rc = erase_column(pg, t, ident, PQgetvalue(res, i, 0),
					  PQgetvalue(res, i, 1),
					  PQgetvalue(res, i, 2)[0] == 't',
					  tenant, changed, err);
	PQfreemem(ident);
	PQclear(res);
	return rc;
}

typedef struct erase_txn {
	const char *ref, *why;
	tally_tenant_erase_result *res;
} erase_txn;

static int erase_data_txn(tally_pg *pg, void *payload, tally_error *err)
{
	erase_txn *x = payload;
	tally_tenant_erase_result *r = x->res;
	tally_tenant_tables tables;
	char detail[160];
	size_t i;
	int rc;

	r->rows_changed = 0;
	r->audited = 0;
	rc = tally_tenant_resolve(pg, x->ref, r->tenant_id, err);
	if (rc != 0)
		return rc;
	/* one erasure of a tenant at a time, of a cancelled tenant only */
	rc = check_erasable(pg, r->tenant_id, err);
	if (rc == 0)
		rc = exec_count(pg, "INSERT INTO tenant_erasures (tenant_id,"
			" stripe_customer_id, stripe_status) SELECT id,"
			" stripe_customer_id, CASE WHEN stripe_customer_id IS"
			" NULL THEN 'none' ELSE 'pending' END FROM tenants"
			" WHERE id = $1::uuid ON CONFLICT DO NOTHING",
			r->tenant_id, &r->rows_changed, err);
	if (rc == 0)
		rc = exec_count(pg, tenants_sql, r->tenant_id,
				&r->rows_changed, err);
	for (i = 0; rc == 0 && i < sizeof(free_text_sql) /
			sizeof(free_text_sql[0]); i++)
		rc = exec_count(pg, free_text_sql[i], r->tenant_id,
				&r->rows_changed, err);
	if (rc == 0)
		rc = tally_tenant_tables_list(pg, &tables, err);
	else
		return rc;
	for (i = 0; rc == 0 && i < tables.n; i++)
		rc = erase_table(pg, &tables.v[i], r->tenant_id,
				 &r->rows_changed, err);
	tally_tenant_tables_free(&tables);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, "UPDATE tenant_erasures SET"
			" data_erased_at = coalesce(data_erased_at, now()),"
			" completed_at = CASE WHEN stripe_status <> 'pending'"
			" THEN coalesce(completed_at, now()) END"
			" WHERE tenant_id = $1::uuid",
			1, (const char *const[]){ r->tenant_id }, err);
	if (rc == 0 && r->rows_changed > 0) {
		snprintf(detail, sizeof(detail), "{\"erasure\": \"personal"
			 " data\", \"rows\": %lld}",
			 (long long)r->rows_changed);
		rc = tally_tenant__audit(pg, r->tenant_id, "erase", detail,
					 x->why, &r->audited, err);
	}
	return rc;
}

int tally_tenant_erase(tally_pg *pg, tally_stripe *stripe, const char *ref,
		       const char *why, tally_tenant_erase_result *res,
		       tally_error *err)
{
	erase_txn x = { ref, why, res };
	int rc;

	memset(res, 0, sizeof(*res));
	rc = tally_pg_txn(pg, erase_data_txn, &x, 5, err);
	if (rc != 0)
		return rc;
	return tally_tenant__erase_stripe(pg, stripe, res->tenant_id, why,
					  res, err);
}
