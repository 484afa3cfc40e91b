/*
 * test_tenant_erase.c - `tally tenant erase` on the real PostgreSQL and
 * stripe-mock: afterwards no personal value of the tenant (name, slug,
 * domain, e-mail, subject) is found in any text, varchar, char, json,
 * jsonb or bytea column of any table of the database (the columns listed
 * from the catalogue by the test), while another tenant's values are all
 * still there and the tax records (invoices, lines, payments) are intact.
 * With Stripe unreachable the erasure is recorded as pending and a second
 * run deletes the customer; a third run changes nothing; each step that
 * changed something has a row in audit_log.
 */
#include "tenant_data_support.h"
#include "check_main.h"

static char dsn[512], dbname[64], cfg[256], engine_dsn[600], engine[64];
static td_person a, b;

static void setup(void)
{
	PGconn *c;
	FILE *fp;
	char *no_audit, sql[256];
	int i;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	tally_test_unique(dbname, sizeof(dbname), "t_terase");
	tally_test_db_create(dsn, sizeof(dsn), dbname, 1);
	td_person_make(&a, "0a000000-0000-4000-8000-0000000000aa", "alpha");
	td_person_make(&b, "0b000000-0000-4000-8000-0000000000bb", "bravo");
	c = PQconnectdb(dsn);
	td_extra_table(c);
	/* the audit trail as its migration makes it, where that is not here:
	 * append-only, the engine may insert (as itself) and not read */
	no_audit = td_value(c, "SELECT to_regclass('audit_log') IS NULL");
	if (strcmp(no_audit, "t") == 0)
		td_exec(c, "CREATE TABLE audit_log (tenant_id uuid,"
			   " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
			   " at timestamptz NOT NULL DEFAULT now(),"
			   " table_name text NOT NULL, op text NOT NULL CHECK"
			   " (op IN ('INSERT', 'UPDATE', 'DELETE')),"
			   " row_key jsonb NOT NULL, old_values jsonb,"
			   " new_values jsonb,"
			   " db_user text NOT NULL DEFAULT current_user,"
			   " db_session_user text NOT NULL DEFAULT session_user,"
			   " application_name text, source text, reason text);"
			   "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;"
			   "ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;"
			   "CREATE POLICY o ON audit_log TO CURRENT_USER"
			   " USING (true) WITH CHECK (true);"
			   "CREATE POLICY e ON audit_log FOR INSERT TO tally_engine"
			   " WITH CHECK (db_user = current_user::text);"
			   "REVOKE ALL ON audit_log FROM tally_engine;"
			   "GRANT INSERT ON audit_log TO tally_engine;");
	/* a personal column a later migration adds */
	td_exec(c, "ALTER TABLE tenants ADD COLUMN IF NOT EXISTS billing_email"
		   " varchar(256)");
	free(no_audit);
	/* the erasure runs as the programs do: a member of tally_engine */
	snprintf(engine, sizeof(engine), "te_eng_%d", (int)getpid());
	td_login(engine_dsn, sizeof(engine_dsn), dsn, engine, "tally_engine");
	td_seed(c, &a, 1, 3);
	td_seed(c, &b, 2, 3);
	for (i = 0; i < 2; i++) {
		const td_person *p = i ? &b : &a;

		/* erasable: cancelled, no more usage */
		snprintf(sql, sizeof(sql), "UPDATE tenants SET billing_email ="
			 " '%s', status = 'cancelled' WHERE id = '%s'",
			 p->email, p->id);
		td_exec(c, sql);
	}
	PQfinish(c);
	snprintf(cfg, sizeof(cfg), "/tmp/%s.cfg", dbname);
	fp = fopen(cfg, "w");
	ck_assert_ptr_nonnull(fp);
	fputs("stripe: { max_retries = 0; timeout_ms = 5000; };\n", fp);
	fclose(fp);
}

static void teardown(void)
{
	unlink(cfg);
	tally_test_db_drop(dbname);
	td_login_drop(engine);
}

/* "table.column" of every place value is found (case-insensitive), in
 * every column of a string, json or bytea type of every table. */
static int scan(PGconn *c, const char *value, char *where, size_t n)
{
	PGresult *cols = PQexec(c,
		"SELECT quote_ident(c.relname), quote_ident(a.attname),"
		"       t.typname"
		"  FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace"
		"  JOIN pg_attribute a ON a.attrelid = c.oid"
		"  JOIN pg_type t ON t.oid = a.atttypid"
		" WHERE ns.nspname NOT IN ('pg_catalog', 'information_schema')"
		"   AND ns.nspname NOT LIKE 'pg_toast%'"
		"   AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
		"   AND (t.typcategory = 'S' OR t.typname IN"
		"        ('json', 'jsonb', 'bytea', 'name'))");
	int i, hits = 0;

	ck_assert_int_eq(PQresultStatus(cols), PGRES_TUPLES_OK);
	ck_assert_int_gt(PQntuples(cols), 50);
	where[0] = '\0';
	for (i = 0; i < PQntuples(cols); i++) {
		const char *params[1] = { value };
		const char *tab = PQgetvalue(cols, i, 0);
		const char *col = PQgetvalue(cols, i, 1);
		char sql[512];
		PGresult *r;

		if (strcmp(PQgetvalue(cols, i, 2), "bytea") == 0)
			snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s"
				 " WHERE strpos(lower(encode(%s, 'escape')),"
				 " lower($1)) > 0", tab, col);
		else
			snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s"
				 " WHERE strpos(lower(%s::text), lower($1)) > 0",
				 tab, col);
		r = PQexecParams(c, sql, 1, NULL, params, NULL, NULL, 0);
		ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s",
			      sql, PQerrorMessage(c));
		if (strcmp(PQgetvalue(r, 0, 0), "0") != 0) {
			size_t len = strlen(where);

			snprintf(where + len, n - len, " %s.%s", tab, col);
			hits++;
		}
		PQclear(r);
	}
	PQclear(cols);
	return hits;
}

static const char *values_of(const td_person *p, int i)
{
	const char *v[] = { p->name, p->slug, p->domain, p->email,
			    p->subject };

	return i < 5 ? v[i] : NULL;
}

/* tally --config cfg tenant erase ref, against that Stripe; stdout to out */
static int erase(const char *ref, const char *stripe_base, const char *out)
{
	char path[512], url[700], base[300];
	char key[] = "STRIPE_SECRET_KEY=sk_test_123";
	char *env[4] = { url, base, key, NULL };
	char *argv[7] = { path, "--config", cfg, "tenant", "erase",
			  (char *)ref, NULL };

	snprintf(url, sizeof(url), "DATABASE_URL=%s", engine_dsn);
	snprintf(base, sizeof(base), "STRIPE_API_BASE=%s", stripe_base);
	snprintf(path, sizeof(path), "%s/tally", td_bin());
	char errp[320];
	int rc;

	snprintf(errp, sizeof(errp), "%s.err", out);
	rc = td_run(argv, env, out, errp, NULL);
	if (rc != 0 && rc != 3) {
		char *e = td_slurp(errp);

		fprintf(stderr, "tally tenant erase: %s", e);
		free(e);
	}
	unlink(errp);
	return rc;
}

static long count(PGconn *c, const char *sql)
{
	char *v = td_value(c, sql);
	long n = atol(v);

	free(v);
	return n;
}

START_TEST(test_erase_personal_data_everywhere)
{
	char where[4096], out[300], sql[512], audit_sql[256], *text;
	PGconn *c = PQconnectdb(dsn);
	int i;

	/* before: the scan finds each value (the test can see them) */
	for (i = 0; values_of(&a, i) != NULL; i++)
		ck_assert_msg(scan(c, values_of(&a, i), where, sizeof(where)) > 0,
			      "%s not seeded", values_of(&a, i));

	/* Stripe unreachable, no retries: erased, the customer pending */
	snprintf(out, sizeof(out), "/tmp/%s.out", dbname);
	ck_assert_int_eq(erase(a.slug, "http://127.0.0.1:9", out), 3);
	text = td_slurp(out);
	ck_assert_msg(strstr(text, "pending") != NULL, "%s", text);
	free(text);
	snprintf(sql, sizeof(sql), "SELECT stripe_status || ' ' ||"
		 " stripe_customer_id FROM tenant_erasures WHERE tenant_id ="
		 " '%s'", a.id);
	text = td_value(c, sql);
	ck_assert_str_eq(text, "pending cus_zeldaalpha");
	free(text);
	for (i = 0; values_of(&a, i) != NULL; i++)
		ck_assert_msg(scan(c, values_of(&a, i), where, sizeof(where)) == 0,
			      "%s still in:%s", values_of(&a, i), where);
	/* the other tenant keeps every value */
	for (i = 0; values_of(&b, i) != NULL; i++)
		ck_assert_msg(scan(c, values_of(&b, i), where, sizeof(where)) > 0,
			      "%s of the other tenant erased", values_of(&b, i));
	snprintf(audit_sql, sizeof(audit_sql), "SELECT count(*) FROM audit_log"
		 " WHERE tenant_id = '%s' AND row_to_json(audit_log)::text LIKE"
		 " '%%tally tenant erase%%'", a.id);
	ck_assert_int_eq(count(c, audit_sql), 1);

	/* tax records kept: invoice, line, payment with amounts and dates */
	snprintf(sql, sizeof(sql), "SELECT i.number || ' ' || i.amount_due ||"
		 " ' ' || i.period_start::date || ' ' || l.amount || ' ' ||"
		 " l.description || ' ' || p.amount FROM invoices i JOIN"
		 " invoice_lines l USING (tenant_id, invoice_id) JOIN payments p"
		 " USING (tenant_id, invoice_id) WHERE i.tenant_id = '%s'", a.id);
	text = td_value(c, sql);
	ck_assert_str_eq(text, "INV-1001 29900 2026-11-01 29900 Professional"
			 " plan 29900");
	free(text);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM usage_ledger WHERE"
		 " tenant_id = '%s'", a.id);
	ck_assert_int_eq(count(c, sql), 3);
	/* active users stay countable: two distinct pseudonyms */
	snprintf(sql, sizeof(sql), "SELECT count(DISTINCT subject) FROM"
		 " tenant_period_users WHERE tenant_id = '%s' AND subject"
		 " LIKE 'erased:%%'", a.id);
	ck_assert_int_eq(count(c, sql), 2);
	/* alerts' subject (a currency or plan code, part of their key)
	 * stays as it was: '' */
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM alerts WHERE"
		 " tenant_id = '%s' AND subject <> ''", a.id);
	ck_assert_int_eq(count(c, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM alerts WHERE"
		 " tenant_id = '%s'", a.id);
	ck_assert_int_gt(count(c, sql), 0);

	/* again, Stripe reachable (by id: the slug is gone): customer deleted */
	ck_assert_int_eq(erase(a.id, getenv("TALLY_TEST_STRIPE_BASE"), out), 0);
	snprintf(sql, sizeof(sql), "SELECT stripe_status || ' ' ||"
		 " stripe_attempts || ' ' || (completed_at IS NOT NULL) FROM"
		 " tenant_erasures WHERE tenant_id = '%s'", a.id);
	text = td_value(c, sql);
	ck_assert_str_eq(text, "deleted 2 true");
	free(text);
	ck_assert_int_eq(count(c, audit_sql), 2);

	/* a third time: nothing to do, nothing recorded */
	ck_assert_int_eq(erase(a.id, getenv("TALLY_TEST_STRIPE_BASE"), out), 0);
	text = td_slurp(out);
	ck_assert_msg(strstr(text, " 0 row(s) changed") != NULL, "%s", text);
	free(text);
	ck_assert_int_eq(count(c, audit_sql), 2);
	for (i = 0; values_of(&a, i) != NULL; i++)
		ck_assert_msg(scan(c, values_of(&a, i), where, sizeof(where)) == 0,
			      "%s still in:%s", values_of(&a, i), where);
	unlink(out);
	PQfinish(c);
}
END_TEST

START_TEST(test_erase_unknown_tenant)
{
	char out[300];

	snprintf(out, sizeof(out), "/tmp/%s.out2", dbname);
	ck_assert_int_eq(erase("0c000000-0000-4000-8000-0000000000cc",
			       getenv("TALLY_TEST_STRIPE_BASE"), out), 1);
	unlink(out);
}
END_TEST

/* A tenant that can still send usage is refused (exit 4), unchanged. */
START_TEST(test_erase_active_refused)
{
	char out[300], sql[256], where[4096], *text;
	PGconn *c = PQconnectdb(dsn);
	td_person p;
	int i;

	td_person_make(&p, "0e000000-0000-4000-8000-0000000000ee", "echo");
	td_seed(c, &p, 5, 2);
	snprintf(out, sizeof(out), "/tmp/%s.out4", dbname);
	ck_assert_int_eq(erase(p.id, getenv("TALLY_TEST_STRIPE_BASE"), out),
			 4);
	for (i = 0; values_of(&p, i) != NULL; i++)
		ck_assert_msg(scan(c, values_of(&p, i), where, sizeof(where)) > 0,
			      "%s of an active tenant erased", values_of(&p, i));
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM tenant_erasures"
		 " WHERE tenant_id = '%s'", p.id);
	text = td_value(c, sql);
	ck_assert_str_eq(text, "0");
	free(text);
	unlink(out);
	PQfinish(c);
}
END_TEST

/* `tally tenant erase --pending` finishes every pending Stripe deletion */
START_TEST(test_erase_pending_finishes)
{
	char out[300], sql[256], *text;
	PGconn *c = PQconnectdb(dsn);
	td_person p;

	td_person_make(&p, "0d000000-0000-4000-8000-0000000000dd", "delta");
	td_seed(c, &p, 4, 1);
	snprintf(sql, sizeof(sql), "UPDATE tenants SET status = 'cancelled'"
		 " WHERE id = '%s'", p.id);
	td_exec(c, sql);
	snprintf(out, sizeof(out), "/tmp/%s.out3", dbname);
	ck_assert_int_eq(erase(p.id, "http://127.0.0.1:9", out), 3);
	ck_assert_int_eq(erase("--pending", "http://127.0.0.1:9", out), 3);
	text = td_slurp(out);
	ck_assert_msg(strstr(text, "0 Stripe deletion(s) finished, 1 pending")
		      != NULL, "%s", text);
	free(text);
	ck_assert_int_eq(erase("--pending", getenv("TALLY_TEST_STRIPE_BASE"),
			       out), 0);
	text = td_slurp(out);
	ck_assert_msg(strstr(text, "1 Stripe deletion(s) finished, 0 pending")
		      != NULL, "%s", text);
	free(text);
	snprintf(sql, sizeof(sql), "SELECT stripe_status FROM tenant_erasures"
		 " WHERE tenant_id = '%s'", p.id);
	text = td_value(c, sql);
	ck_assert_str_eq(text, "deleted");
	free(text);
	unlink(out);
	PQfinish(c);
}
END_TEST

static Suite *tenant_erase_suite(void)
{
	Suite *s = suite_create("tenant_erase");
	TCase *tc = tcase_create("erase");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_erase_personal_data_everywhere);
	tcase_add_test(tc, test_erase_unknown_tenant);
	tcase_add_test(tc, test_erase_active_refused);
	tcase_add_test(tc, test_erase_pending_finishes);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tenant_erase_suite)
