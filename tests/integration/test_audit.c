/*
 * test_audit.c - the audit trail (migration 0021): every change of plans,
 * model_prices, price_overrides, billing_periods, usage_adjustments and
 * of the money-relevant columns of tenants is one audit_log row with who
 * (roles, application_name, tally.audit_source), what (table, key, old
 * and new values), when and why (tally.audit_reason); an update of other
 * columns writes nothing. The engine role writes rows only through the
 * triggers, as itself, and cannot read, update, delete or truncate them;
 * finance reads; not even the owner updates. `tally audit list` filters
 * by tenant, table and time, as a table, CSV or JSON lines.
 */
#define _POSIX_C_SOURCE 200809L
#include "roles_support.h"
#include "test_support.h"
#include "check_main.h"
#include "tally/config.h"
#include "tally/period_close.h"
#include "tally/stripe_sync.h"

#include <jansson.h>

#define TA "a0d17000-0000-4000-8000-0000000000a1"
#define TB "a0d17000-0000-4000-8000-0000000000b2"

static char db[64], dsn[512], role_eng[40], role_fin[40];
static PGconn *own;

static const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

/* first column of the first row ("" when no row or NULL) */
static const char *get(PGconn *c, const char *sql)
{
	static char out[2048];
	PGresult *r = PQexec(c, sql);

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
		      PQerrorMessage(c));
	snprintf(out, sizeof(out), "%s",
		 PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
	PQclear(r);
	return out;
}

static void roles(bool create)
{
	const char *names[2] = { role_eng, role_fin };
	const char *groups[2] = { "tally_engine", "tally_finance" };
	PGconn *c = PQconnectdb(getenv("TALLY_TEST_PG_DSN"));
	char sql[160];
	int i;

	for (i = 0; i < 2 && PQstatus(c) == CONNECTION_OK; i++) {
		snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", names[i]);
		PQclear(PQexec(c, sql));
		if (!create)
			continue;
		snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN IN ROLE %s",
			 names[i], groups[i]);
		tally_test_sql_ok(c, sql);
	}
	PQfinish(c);
}

static void setup(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_unique(db, sizeof(db), "t_audit");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	snprintf(role_eng, sizeof(role_eng), "ta_eng_%d", (int)getpid());
	snprintf(role_fin, sizeof(role_fin), "ta_fin_%d", (int)getpid());
	roles(true);
	own = PQconnectdb(dsn);
	ck_assert(PQstatus(own) == CONNECTION_OK);
	tally_test_sql_ok(own, "INSERT INTO tenants (id, name, slug, domain) VALUES "
		"('" TA "', 'Audit A', 'audit-a', 'a.example.com'), "
		"('" TB "', 'Audit B', 'audit-b', 'b.example.com')");
}

static void teardown(void)
{
	PQfinish(own);
	tally_test_db_drop(db);
	roles(false);
}

START_TEST(test_audit_who_what_why)
{
	const char *row;

	tally_test_sql_ok(own, "SET application_name = 'audit-test'");
	tally_test_sql_ok(own, "BEGIN; SET LOCAL tally.audit_reason = 'ticket-42';"
		"SET LOCAL tally.audit_source = 'pricing-team';"
		"UPDATE plans SET monthly_price = 109 WHERE id = 'starter';"
		"COMMIT");
	row = get(own, "SELECT json_build_array(tenant_id, op, row_key, "
		       "old_values, new_values, db_user = current_user, "
		       "application_name, source, reason, at <= now())::text "
		       "FROM audit_log WHERE table_name = 'plans' AND "
		       "source IS DISTINCT FROM 'tally migrate'");
	ck_assert_str_eq(row, "[null, \"UPDATE\", {\"id\": \"starter\"}, "
			      "{\"monthly_price\": 99.00}, "
			      "{\"monthly_price\": 109.00}, true, "
			      "\"audit-test\", \"pricing-team\", "
			      "\"ticket-42\", true]");
	/* the reason was transaction-local */
	tally_test_sql_ok(own, "UPDATE plans SET monthly_price = 99 WHERE id = 'starter'");
	ck_assert_str_eq(get(own, "SELECT count(*) FROM audit_log WHERE "
				  "table_name = 'plans' AND reason IS NULL"),
			 "1");
	/* what migrations changed is attributed to them */
	ck_assert_str_eq(get(own, "SELECT count(*) > 0 AND bool_and(reason LIKE"
				  " 'migration 00__\\_%.sql') FROM audit_log"
				  " WHERE source = 'tally migrate'"), "t");
}
END_TEST

START_TEST(test_audit_tenants_money_columns_only)
{
	const char *n0 = get(own, "SELECT count(*) FROM audit_log WHERE "
				  "table_name = 'tenants'");

	/* the two inserts of setup, with money columns only */
	ck_assert_str_eq(n0, "2");
	ck_assert_str_eq(get(own, "SELECT new_values ? 'name' OR new_values "
				  "? 'domain' FROM audit_log WHERE tenant_id "
				  "= '" TA "'"), "f");
	ck_assert_str_eq(get(own, "SELECT new_values ->> 'monthly_budget' "
				  "FROM audit_log WHERE tenant_id = '" TA "'"),
			 "99.00");
	/* other columns, or money columns set to what they are: nothing */
	tally_test_sql_ok(own, "UPDATE tenants SET name = 'Renamed', logo_url = 'x', "
		"updated_at = now() WHERE id = '" TA "'");
	tally_test_sql_ok(own, "UPDATE tenants SET monthly_budget = monthly_budget, "
		"status = status WHERE id = '" TA "'");
	ck_assert_str_eq(get(own, "SELECT count(*) FROM audit_log WHERE "
				  "table_name = 'tenants'"), "2");
	tally_test_sql_ok(own, "UPDATE tenants SET monthly_budget = 500, name = 'N2' "
		"WHERE id = '" TA "'");
	ck_assert_str_eq(get(own, "SELECT old_values::text || ' ' || "
				  "new_values::text FROM audit_log WHERE "
				  "tenant_id = '" TA "' AND op = 'UPDATE'"),
			 "{\"monthly_budget\": 99.00} "
			 "{\"monthly_budget\": 500.00}");
}
END_TEST

START_TEST(test_audit_prices_periods_adjustments)
{
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_sql_ok(own, "INSERT INTO price_providers (provider, name, position, "
		"source, content_sha256) VALUES ('acme', 'Acme', 1, 't', 'x')");
	tally_test_sql_ok(own, "INSERT INTO model_prices (provider, model, model_position, "
		"match, input_mtok, source, content_sha256) VALUES ('acme', "
		"'m1', 1, '{\"equals\": \"m1\"}', 3, 't', 'x')");
	tally_test_sql_ok(own, "INSERT INTO price_overrides (tenant_id, multiplier) VALUES "
		"('" TB "', 1.25)");
	tally_test_sql_ok(own, "INSERT INTO usage_adjustments (tenant_id, period_start, "
		"period_end, kind, meter, cost) VALUES ('" TB "', '2026-01-01',"
		" '2026-02-01', 'late_usage', 'api.call', 0.5)");
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_int_eq(tally_period_close(pg, TB, 1767225600, 1769904000,
					    "in_1", &err), 0);
	tally_pg_free(pg);
	ck_assert_str_eq(get(own, "SELECT string_agg(table_name || ':' || op "
				  "|| ':' || coalesce(tenant_id::text, '-'), "
				  "' ' ORDER BY id) FROM audit_log WHERE "
				  "table_name <> 'tenants' AND source IS "
				  "DISTINCT FROM 'tally migrate'"),
			 "model_prices:INSERT:- "
			 "price_overrides:INSERT:" TB " "
			 "usage_adjustments:INSERT:" TB " "
			 "billing_periods:INSERT:" TB);
	ck_assert_str_eq(get(own, "SELECT (row_key ->> 'tenant_id') || ' ' || "
				  "((row_key ->> 'period_start')::timestamptz "
				  "= '2026-01-01T00:00:00Z') FROM audit_log "
				  "WHERE table_name = 'billing_periods'"),
			 TB " true");
	ck_assert_str_eq(get(own, "SELECT new_values ->> 'input_mtok' FROM "
				  "audit_log WHERE table_name = "
				  "'model_prices'"), "3");
}
END_TEST

START_TEST(test_audit_engine_append_only)
{
	PGconn *e = tally_test_connect_as(dsn, role_eng), *f = tally_test_connect_as(dsn, role_fin);
	char sql[300];

	/* the engine's changes are audited as the engine */
	tally_test_sql_ok(e, "UPDATE tenants SET status = 'suspended' WHERE id = '" TB "'");
	snprintf(sql, sizeof(sql), "SELECT db_user || ' ' || db_session_user "
		 "FROM audit_log WHERE tenant_id = '" TB "' AND op = 'UPDATE'");
	ck_assert_msg(strncmp(get(own, sql), role_eng, strlen(role_eng)) == 0,
		      "who: %s", get(own, sql));
	/* and it cannot read, change, delete or forge them */
	tally_test_sql_denied(e, "SELECT * FROM audit_log");
	tally_test_sql_denied(e, "UPDATE audit_log SET reason = 'x'");
	tally_test_sql_denied(e, "DELETE FROM audit_log");
	tally_test_sql_denied(e, "TRUNCATE audit_log");
	tally_test_sql_denied(e, "INSERT INTO audit_log (table_name, op, row_key, db_user) "
		  "VALUES ('plans', 'UPDATE', '{}', 'somebody_else')");
	/* finance reads, writes nothing */
	ck_assert_str_eq(get(f, "SELECT count(*) > 2 FROM audit_log"), "t");
	tally_test_sql_denied(f, "UPDATE audit_log SET reason = 'x'");
	tally_test_sql_denied(f, "DELETE FROM audit_log");
	/* not even the owner rewrites history */
	tally_test_sql_denied(own, "UPDATE audit_log SET reason = 'x'");
	tally_test_sql_denied(own, "DELETE FROM audit_log");
	PQfinish(e);
	PQfinish(f);
}
END_TEST

START_TEST(test_audit_stripe_event_reason)
{
	tally_config *cfg = NULL;
	tally_stripe_sync_opts so = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_pg *pg = NULL;
	tally_error err;
	json_error_t je;
	json_t *events, *ev;
	char *body = NULL;
	size_t i;

	/* a subscription upgraded in Stripe moves the tenant's plan: the
	 * audit row names the event */
	tally_test_sql_ok(own, "UPDATE tenants SET stripe_customer_id = 'cus_TALLYTEST' "
		"WHERE id = '" TA "'");
	events = json_load_file(TALLY_SOURCE_DIR
				"/tests/fixtures/stripe/events.json", 0, &je);
	ck_assert_msg(events != NULL, "%s", je.text);
	json_array_foreach(events, i, ev)
		if (strcmp(json_string_value(json_object_get(ev, "id")),
			   "evt_sub_upgraded") == 0)
			body = json_dumps(ev, JSON_COMPACT);
	ck_assert_ptr_nonnull(body);
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "stripe.price_starter", "price_starter_test");
	tally_config_set(cfg, "stripe.price_professional",
			 "price_professional_test");
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	so.pg = pg;
	so.cfg = cfg;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &so, &err), 0);
	ck_assert_msg(tally_stripe_sync_event(ss, body, strlen(body), NULL,
					      NULL, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(get(own, "SELECT concat_ws(' ', new_values ->> "
				  "'subscription_plan', source, reason) FROM "
				  "audit_log WHERE tenant_id = '" TA "' AND op "
				  "= 'UPDATE' AND new_values ? "
				  "'subscription_plan'"),
			 "professional billing.stripe-events stripe event "
			 "evt_sub_upgraded (customer.subscription.updated)");
	tally_stripe_sync_free(ss);
	tally_pg_free(pg);
	tally_config_free(cfg);
	free(body);
	json_decref(events);
}
END_TEST

static char *run_capture(const char *cmd, int *status)
{
	FILE *fp = popen(cmd, "r");
	char *buf = calloc(1, 1 << 16);
	size_t n;

	ck_assert_ptr_nonnull(fp);
	ck_assert_ptr_nonnull(buf);
	n = fread(buf, 1, (1 << 16) - 1, fp);
	buf[n] = '\0';
	*status = pclose(fp);
	return buf;
}

START_TEST(test_audit_cli_list)
{
	char cmd[1024];
	char *out;
	int st;
	json_t *j;
	json_error_t jerr;

	tally_test_sql_ok(own, "BEGIN; SET LOCAL tally.audit_reason = 'budget review';"
		"UPDATE tenants SET monthly_budget = 42 WHERE id = '" TA "';"
		"UPDATE plans SET sso = true WHERE id = 'starter'; COMMIT");
	/* by tenant slug and table, JSON lines */
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally audit list "
		 "--tenant audit-a --table tenants --format json", dsn, bin());
	out = run_capture(cmd, &st);
	ck_assert_msg(st == 0, "%s", out);
	ck_assert_msg(strchr(out, '\n') != NULL &&
		      strchr(strchr(out, '\n') + 1, '\n') != NULL &&
		      *(strchr(strchr(out, '\n') + 1, '\n') + 1) == '\0',
		      "two lines: %s", out);
	j = json_loads(strchr(out, '\n') + 1, JSON_DISABLE_EOF_CHECK, &jerr);
	ck_assert_msg(j != NULL, "%s: %s", jerr.text, out);
	ck_assert_str_eq(json_string_value(json_object_get(j, "reason")),
			 "budget review");
	ck_assert_str_eq(json_string_value(json_object_get(j, "tenant_id")),
			 TA);
	ck_assert_str_eq(json_string_value(json_object_get(j, "op")),
			 "UPDATE");
	ck_assert(json_is_number(json_object_get(json_object_get(j,
			"new_values"), "monthly_budget")));
	json_decref(j);
	free(out);
	/* CSV, by table: header plus the plan row, quoted JSON */
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally audit list "
		 "--table plans --format csv", dsn, bin());
	out = run_capture(cmd, &st);
	ck_assert_int_eq(st, 0);
	ck_assert_msg(strncmp(out, "at,tenant_id,table_name,op,row_key,", 35)
		      == 0, "%s", out);
	ck_assert_msg(strstr(out, ",plans,UPDATE,\"{\"\"id\"\": "
			     "\"\"starter\"\"}\",") != NULL, "%s", out);
	free(out);
	/* nothing after a future instant; a bad instant or format refused */
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally audit list "
		 "--since 2999-01-01T00:00:00Z", dsn, bin());
	out = run_capture(cmd, &st);
	ck_assert_int_eq(st, 0);
	ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1,
		      "header only: %s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally audit list "
		 "--since yesterdayish 2>/dev/null", dsn, bin());
	out = run_capture(cmd, &st);
	ck_assert_int_eq(WEXITSTATUS(st), 2);
	free(out);
	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally audit list "
		 "--format xml 2>/dev/null", dsn, bin());
	out = run_capture(cmd, &st);
	ck_assert_int_eq(WEXITSTATUS(st), 2);
	free(out);
}
END_TEST

static Suite *audit_suite(void)
{
	Suite *s = suite_create("audit");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_audit_who_what_why);
	tcase_add_test(tc, test_audit_tenants_money_columns_only);
	tcase_add_test(tc, test_audit_prices_periods_adjustments);
	tcase_add_test(tc, test_audit_engine_append_only);
	tcase_add_test(tc, test_audit_stripe_event_reason);
	tcase_add_test(tc, test_audit_cli_list);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(audit_suite)
