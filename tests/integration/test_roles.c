/*
 * test_roles.c - the roles of migration 0014, each through its own login:
 * a tenant reads none of another tenant's rows through any table or view,
 * also after SET tally.tenant_id or SET ROLE, and writes nothing; finance
 * reads every tenant's rows and writes nothing; the engine runs
 * tally-aggregate (COPY, temporary tables, partition maintenance, upserts)
 * to exact totals and cannot DROP, CREATE, ALTER or TRUNCATE.
 *
 * Roles are cluster-wide, databases are per test: the login roles carry
 * the pid in their names and are dropped with the database.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_kafka_support.h"
#include "check_main.h"
#include "tally/pricebook_pg.h"

#define TENANT_A "aaaaaaaa-0000-4000-8000-00000000000a"
#define TENANT_B "bbbbbbbb-0000-4000-8000-00000000000b"

static char owner_dsn[512];
static char role_a[40], role_b[40], role_fin[40], role_eng[40];

/* the test DSN (postgresql://user@host...) with another user */
static void dsn_as(char *out, size_t n, const char *role)
{
	const char *at = strchr(owner_dsn, '@');

	ck_assert(at != NULL && strncmp(owner_dsn, "postgresql://", 13) == 0);
	snprintf(out, n, "postgresql://%s%s", role, at);
}

static PGconn *connect_as(const char *role)
{
	char d[512];
	PGconn *c;

	dsn_as(d, sizeof(d), role);
	c = PQconnectdb(d);
	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s: %s", role,
		      PQerrorMessage(c));
	return c;
}

/* SQLSTATE of sql on c ("" when it succeeds) */
static const char *try_sql(PGconn *c, const char *sql)
{
	static char st[8];
	PGresult *r = PQexec(c, sql);
	const char *s = PQresultErrorField(r, PG_DIAG_SQLSTATE);

	snprintf(st, sizeof(st), "%s", s ? s : "");
	PQclear(r);
	return st;
}

static void exec_ok(PGconn *c, const char *sql)
{
	ck_assert_msg(strcmp(try_sql(c, sql), "") == 0, "%s: %s", sql,
		      PQerrorMessage(c));
}

static void denied(PGconn *c, const char *sql)
{
	ck_assert_msg(strcmp(try_sql(c, sql), "42501") == 0,
		      "should be refused (42501): %s; got: %s", sql,
		      PQerrorMessage(c));
}

static void create_roles(void)
{
	char sql[256];
	const char *names[4] = { role_a, role_b, role_fin, role_eng };
	const char *groups[4] = { "tally_tenant", "tally_tenant",
				  "tally_finance", "tally_engine" };
	int i;

	snprintf(owner_dsn, sizeof(owner_dsn), "%s", dsn);
	snprintf(role_a, sizeof(role_a), "tr_a_%d", (int)getpid());
	snprintf(role_b, sizeof(role_b), "tr_b_%d", (int)getpid());
	snprintf(role_fin, sizeof(role_fin), "tr_fin_%d", (int)getpid());
	snprintf(role_eng, sizeof(role_eng), "tr_eng_%d", (int)getpid());
	for (i = 0; i < 4; i++) {
		snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", names[i]);
		exec_ok(chk, sql);
		snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN IN ROLE %s",
			 names[i], groups[i]);
		exec_ok(chk, sql);
	}
}

static void drop_roles(void)
{
	const char *names[4] = { role_a, role_b, role_fin, role_eng };
	char sql[128];
	PGconn *c = PQconnectdb(getenv("TALLY_TEST_PG_DSN"));
	int i;

	for (i = 0; i < 4 && PQstatus(c) == CONNECTION_OK; i++) {
		snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", names[i]);
		PQclear(PQexec(c, sql));
	}
	PQfinish(c);
}

/* Two tenants, each with a login role and rows in every table it reads. */
static void seed(void)
{
	static const char *const tenants[2] = { TENANT_A, TENANT_B };
	const char *roles[2] = { role_a, role_b };
	char sql[2048];
	int i;

	for (i = 0; i < 2; i++) {
		const char *t = tenants[i];

		snprintf(sql, sizeof(sql),
			 "INSERT INTO tenants (id, name, slug, domain) VALUES"
			 " ('%s', 't%d', 't%d', 't%d.example');"
			 "INSERT INTO tenant_roles VALUES ('%s', '%s');"
			 "INSERT INTO alerts (id, tenant_id, kind, period_start)"
			 " VALUES (gen_random_uuid(), '%s', 'budget', now());"
			 "INSERT INTO invoices (tenant_id, invoice_id, customer_id,"
			 " currency, amount_due, amount_paid, amount_remaining,"
			 " stripe_created, as_of) VALUES ('%s', 'in_%d', 'cus_%d',"
			 " 'usd', 1, 0, 1, now(), now());"
			 "INSERT INTO invoice_lines (tenant_id, invoice_id, line_id,"
			 " amount, currency) VALUES ('%s', 'in_%d', 'il_%d', 1,"
			 " 'usd');"
			 "INSERT INTO subscriptions (tenant_id, subscription_id,"
			 " customer_id, status, stripe_created, as_of) VALUES"
			 " ('%s', 'sub_%d', 'cus_%d', 'active', now(), now());"
			 "INSERT INTO usage_hourly (tenant_id, hour, meter) VALUES"
			 " ('%s', date_trunc('hour', now()), 'api.call');"
			 "INSERT INTO tenant_period_usage (tenant_id, period_start,"
			 " period_end) VALUES ('%s', date_trunc('month', now()),"
			 " date_trunc('month', now()) + interval '1 month');",
			 t, i, i, i, roles[i], t, t, t, i, i, t, i, i, t, i, i,
			 t, t);
		exec_ok(chk, sql);
	}
}

static void roles_setup(void)
{
	setup();
	create_roles();
	seed();
}

static void engine_setup(void)
{
	setup();
	create_roles();
}

static void roles_teardown(void)
{
	char log[300];

	snprintf(log, sizeof(log), "/tmp/%s.0.log", db);
	unlink(log);
	unlink(cfgpath);
	teardown();
	drop_roles();
}

/* Every relation of schema public, and the tenant column it has if any. */
static PGresult *relations(void)
{
	PGresult *r = PQexec(chk,
		"SELECT c.relname, c.relkind,"
		" (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid"
		"   AND a.attname IN ('tenant_id', 'role') AND NOT a.attisdropped"
		"   ORDER BY a.attname = 'role' DESC LIMIT 1)"
		" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
		" WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m')"
		" ORDER BY 1");

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s",
		      PQerrorMessage(chk));
	ck_assert_int_gt(PQntuples(r), 40);
	return r;
}

/*
 * As tenant session c (tenant own, role me): every relation is either
 * refused or shows only own rows; returns how many own rows it saw.
 */
static int64_t tenant_reads(PGconn *c, const char *own, const char *me)
{
	PGresult *rels = relations();
	int64_t seen = 0;
	int i;

	for (i = 0; i < PQntuples(rels); i++) {
		const char *rel = PQgetvalue(rels, i, 0);
		const char *col = PQgetvalue(rels, i, 2);
		char sql[512];
		PGresult *r;

		if (strcmp(rel, "tenants") == 0)
			col = "id";
		snprintf(sql, sizeof(sql), "SELECT %s::text FROM %s",
			 *col ? col : "NULL", rel);
		r = PQexec(c, sql);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			ck_assert_msg(strcmp(PQresultErrorField(r,
					PG_DIAG_SQLSTATE), "42501") == 0,
				      "%s: %s", sql, PQerrorMessage(c));
			PQclear(r);
			continue;
		}
		ck_assert_msg(*col != '\0' || PQntuples(r) == 0,
			      "a tenant reads %s, which has no tenant column",
			      rel);
		for (int k = 0; k < PQntuples(r); k++) {
			const char *v = PQgetvalue(r, k, 0);

			ck_assert_msg(strcmp(v, strcmp(col, "role") == 0 ?
					     me : own) == 0,
				      "%s shows %s to tenant %s", rel, v, own);
			seen++;
		}
		PQclear(r);
	}
	PQclear(rels);
	return seen;
}

/* c may write no table: DELETE and INSERT are refused everywhere. */
static void writes_nothing(PGconn *c)
{
	PGresult *rels = relations();
	int i;

	for (i = 0; i < PQntuples(rels); i++) {
		char sql[256];

		if (PQgetvalue(rels, i, 1)[0] == 'v')
			continue;
		snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE false",
			 PQgetvalue(rels, i, 0));
		denied(c, sql);
		snprintf(sql, sizeof(sql), "INSERT INTO %s DEFAULT VALUES",
			 PQgetvalue(rels, i, 0));
		denied(c, sql);
	}
	PQclear(rels);
}

START_TEST(test_roles_tenant_reads_only_its_rows)
{
	PGconn *a = connect_as(role_a);
	char sql[160];

	/* own rows of the six tables granted to tenants and tenant_roles */
	ck_assert_int_eq(tenant_reads(a, TENANT_A, role_a), 7);
	/* the old way to choose a tenant changes nothing */
	exec_ok(a, "SET tally.tenant_id = '" TENANT_B "'");
	ck_assert_int_eq(tenant_reads(a, TENANT_A, role_a), 7);
	exec_ok(a, "RESET tally.tenant_id");
	snprintf(sql, sizeof(sql), "SET ROLE %s", role_b);
	denied(a, sql);
	exec_ok(a, "SET ROLE tally_tenant"); /* maps to no tenant */
	ck_assert_int_eq(tenant_reads(a, TENANT_A, role_a), 0);
	exec_ok(a, "RESET ROLE");
	denied(a, "UPDATE tenant_roles SET tenant_id = '" TENANT_B "'");
	denied(a, "SELECT * FROM tally_ledger_maintain(37, 7, 400, 37)");
	writes_nothing(a);
	PQfinish(a);
}
END_TEST

START_TEST(test_roles_every_tenant_table_forces_rls)
{
	/* every table with a tenant_id column, but the two tally-aggregate
	 * fills with COPY (no tenant is granted them) and ledger partitions */
	PGresult *r = PQexec(chk,
		"SELECT c.relname FROM pg_class c JOIN pg_namespace n ON "
		"n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = "
		"c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped "
		"WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND "
		"NOT c.relispartition AND c.relname NOT IN ('usage_dedupe', "
		"'usage_ledger') AND NOT (c.relrowsecurity AND "
		"c.relforcerowsecurity) ORDER BY 1");

	ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
	ck_assert_msg(PQntuples(r) == 0, "no FORCE ROW LEVEL SECURITY on %s%s",
		      PQntuples(r) ? PQgetvalue(r, 0, 0) : "",
		      PQntuples(r) > 1 ? " and more" : "");
	PQclear(r);
}
END_TEST

START_TEST(test_roles_finance_reads_all_writes_nothing)
{
	static const char *const tables[] = {
		"alerts", "invoices", "invoice_lines", "subscriptions",
		"usage_hourly", "tenant_period_usage", "tenants"
	};
	PGconn *f = connect_as(role_fin);
	PGresult *rels;
	size_t i;

	for (i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
		char sql[160];

		snprintf(sql, sizeof(sql), "SELECT count(DISTINCT %s) FROM %s",
			 strcmp(tables[i], "tenants") == 0 ? "id" : "tenant_id",
			 tables[i]);
		ck_assert_msg(strcmp(agg_query1(f, sql), "2") == 0,
			      "finance sees both tenants in %s", tables[i]);
	}
	rels = relations();
	for (i = 0; i < (size_t)PQntuples(rels); i++) {
		char sql[160];

		snprintf(sql, sizeof(sql), "SELECT * FROM %s LIMIT 1",
			 PQgetvalue(rels, (int)i, 0));
		exec_ok(f, sql);
	}
	PQclear(rels);
	writes_nothing(f);
	PQfinish(f);
}
END_TEST

START_TEST(test_roles_engine_runs_aggregate_no_ddl)
{
	PGconn *e = connect_as(role_eng);
	tally_pricebook *pb = NULL;
	tally_pg *pg = NULL;
	tally_error err;
	rd_kafka_t *rk;
	char edsn[512];
	int64_t n = 20000, sent = 0, base = tally_now_ms() - 2 * 3600000;

	denied(e, "DROP TABLE usage_ledger");
	denied(e, "DROP TABLE alerts");
	denied(e, "CREATE TABLE engine_made (i int)");
	denied(e, "ALTER TABLE tenants ADD COLUMN engine_made int");
	denied(e, "TRUNCATE alerts");
	denied(e, "UPDATE schema_migrations SET name = name");
	exec_ok(e, "SELECT * FROM tally_ledger_maintain(37, 7, 400, 37)");
	exec_ok(e, "LISTEN tally_prices");
	PQfinish(e);
	/* tally-rate's reads */
	dsn_as(edsn, sizeof(edsn), role_eng);
	ck_assert_msg(tally_pg_connect(&pg, edsn, 5000, &err) == 0, "%s",
		      err.msg);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	tally_pricebook_free(pb);
	tally_pg_free(pg);
	/* tally-aggregate as the engine; chk stays the owner */
	snprintf(dsn, sizeof(dsn), "%s", edsn);
	rk = producer();
	write_config(5000);
	start(0);
	produce_range(rk, 0, n, base, &sent);
	ck_assert(rd_kafka_flush(rk, 30000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	wait_done(sent, 300);
	stop(0, SIGTERM);
	expect_all(n, base);
	rd_kafka_destroy(rk);
	snprintf(dsn, sizeof(dsn), "%s", owner_dsn);
}
END_TEST

static Suite *roles_suite(void)
{
	Suite *s = suite_create("roles");
	TCase *tc = tcase_create("isolation");
	TCase *te = tcase_create("engine");

	/* each test migrates a database and reads every relation: more than
	 * Check's default 4 s on a loaded machine */
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, roles_setup, roles_teardown);
	tcase_add_test(tc, test_roles_tenant_reads_only_its_rows);
	tcase_add_test(tc, test_roles_finance_reads_all_writes_nothing);
	tcase_add_test(tc, test_roles_every_tenant_table_forces_rls);
	suite_add_tcase(s, tc);
	tcase_set_timeout(te, 600);
	tcase_add_checked_fixture(te, engine_setup, roles_teardown);
	tcase_add_test(te, test_roles_engine_runs_aggregate_no_ddl);
	suite_add_tcase(s, te);
	return s;
}

TALLY_CHECK_MAIN(roles_suite)
