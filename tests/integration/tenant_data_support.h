#ifndef TALLY_TESTS_TENANT_DATA_SUPPORT_H
#define TALLY_TESTS_TENANT_DATA_SUPPORT_H

/*
 * tenant_data_support.h - for the GDPR export and erasure tests: a tenant
 * with rows in many tables, each carrying its personal values (name, slug,
 * domain, e-mail, subject), a table added by the test that is tied to
 * tenants only by a foreign key, and a child process run with its peak
 * memory.
 */

#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE /* wait4, putenv */
#endif
#include "program_support.h"
#include "test_support.h"

#include <sys/resource.h>
#include <sys/wait.h>

/* The personal values of the tenant tagged tag (lower case [a-z0-9]). */
typedef struct td_person {
	char id[37], name[64], slug[64], domain[64], email[96], subject[64],
	    customer[64];
} td_person;

static inline void td_person_make(td_person *p, const char *id,
				  const char *tag)
{
	snprintf(p->id, sizeof(p->id), "%s", id);
	snprintf(p->name, sizeof(p->name), "Zelda %s Personal GmbH", tag);
	snprintf(p->slug, sizeof(p->slug), "zelda-%s-slug", tag);
	snprintf(p->domain, sizeof(p->domain), "zelda-%s.example", tag);
	snprintf(p->email, sizeof(p->email), "zelda.%s@mailbox.example", tag);
	snprintf(p->subject, sizeof(p->subject), "user-zelda-%s-4711", tag);
	snprintf(p->customer, sizeof(p->customer), "cus_zelda%s", tag);
}

static inline void td_exec(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);

	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK ||
		      PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
		      PQerrorMessage(c));
	PQclear(r);
}

/* A scalar query's value (first row, first column), malloc'd. */
static inline char *td_value(PGconn *c, const char *sql)
{
	PGresult *r = PQexec(c, sql);
	char *v;

	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK &&
		      PQntuples(r) == 1, "%s: %s", sql, PQerrorMessage(c));
	v = strdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return v;
}

/* The table a later migration might add: no tenant_id, only a foreign
 * key to tenants, with a personal e-mail and JSON notes. */
static inline void td_extra_table(PGconn *c)
{
	td_exec(c, "CREATE TABLE IF NOT EXISTS tenant_contacts ("
		   " id serial PRIMARY KEY,"
		   " owner uuid NOT NULL REFERENCES tenants (id),"
		   " contact_email text, notes jsonb)");
}

/* The tenant and rows of it in many tables (ledger_rows usage rows). */
static inline void td_seed(PGconn *c, const td_person *p, int offset,
			   int ledger_rows)
{
	char sql[4096];

	snprintf(sql, sizeof(sql),
		"INSERT INTO tenants (id, name, slug, domain,"
		" stripe_customer_id, custom_domain, logo_url, company_name,"
		" custom_css, industry_settings) VALUES ('%s', '%s', '%s',"
		" '%s', '%s', 'billing.%s', 'https://%s/logo.png', '%s',"
		" '/* %s */', '{\"contact\": \"%s\", \"seats\": 5}');",
		p->id, p->name, p->slug, p->domain, p->customer, p->domain,
		p->domain, p->name, p->email, p->email);
	td_exec(c, sql);
	snprintf(sql, sizeof(sql),
		"INSERT INTO alerts (id, tenant_id, kind, period_start,"
		" threshold, payload) VALUES (gen_random_uuid(), '%s',"
		" 'budget', '2026-11-01', 80, '{\"tenant_slug\": \"%s\","
		" \"customer_email\": \"%s\", \"subject\": \"%s\","
		" \"spent\": \"12.5\"}');"
		"INSERT INTO billing_commands (tenant_id, command_id, type,"
		" idempotency_key, payload, error_message, result) VALUES"
		" ('%s', 'cmd-1', 'create_customer', 'key-%d', '{\"email\":"
		" \"%s\", \"name\": \"%s\", \"plan\": \"starter\"}',"
		" 'Invalid email: %s', '{\"customer_id\": \"%s\", \"customer\":"
		" {\"email\": \"%s\", \"name\": \"%s\"}}');",
		p->id, p->slug, p->email, p->subject, p->id, offset, p->email,
		p->name, p->email, p->customer, p->email, p->name);
	td_exec(c, sql);
	snprintf(sql, sizeof(sql),
		"INSERT INTO billing_signals_outbox (tenant_id, signal_id, kind,"
		" payload) VALUES ('%s', gen_random_uuid(), 'payment_failed',"
		" '{\"customer_name\": \"%s\", \"amount\": 29900}');"
		"INSERT INTO billing_periods VALUES ('%s', '2026-11-01',"
		" '2026-12-01', 'invoiced');"
		"INSERT INTO tenant_period_users (tenant_id, period_start,"
		" subject) VALUES ('%s', '2026-11-01', '%s'),"
		" ('%s', '2026-11-01', '%s/2');"
		"INSERT INTO tenant_period_usage (tenant_id, period_start,"
		" period_end, ai_requests, cost) VALUES ('%s', '2026-11-01',"
		" '2026-12-01', 3, 0.75);"
		"INSERT INTO usage_hourly (tenant_id, hour, meter, provider,"
		" model, events, cost) VALUES ('%s', '2026-11-02 10:00Z',"
		" 'ai.tokens', 'openai', 'gpt-4o', 3, 0.75);"
		"INSERT INTO subscriptions (tenant_id, subscription_id,"
		" customer_id, status, stripe_created, as_of) VALUES ('%s',"
		" 'sub_%s', '%s', 'active', now(), now());",
		p->id, p->name, p->id, p->id, p->subject, p->id, p->subject,
		p->id, p->id, p->id, p->id + 24, p->customer);
	td_exec(c, sql);
	snprintf(sql, sizeof(sql),
		"INSERT INTO invoices (tenant_id, invoice_id, customer_id,"
		" number, status, currency, amount_due, amount_paid,"
		" amount_remaining, period_start, period_end, stripe_created,"
		" as_of) VALUES ('%s', 'in_%s', '%s', 'INV-%d', 'paid', 'USD',"
		" 29900, 29900, 0, '2026-11-01', '2026-12-01', now(), now());"
		"INSERT INTO invoice_lines (tenant_id, invoice_id, line_id,"
		" amount, currency, description) VALUES ('%s', 'in_%s',"
		" 'il_1', 29900, 'USD', 'Professional plan');"
		"INSERT INTO payments (tenant_id, stripe_id, object, customer_id,"
		" invoice_id, status, amount, currency, stripe_created, as_of)"
		" VALUES ('%s', 'pi_%s', 'payment_intent', '%s', 'in_%s',"
		" 'succeeded', 29900, 'USD', now(), now());",
		p->id, p->id + 24, p->customer, 1000 + offset, p->id,
		p->id + 24, p->id, p->id + 24, p->customer, p->id + 24);
	td_exec(c, sql);
	snprintf(sql, sizeof(sql),
		"INSERT INTO dead_letters (tenant_id, consumer_group, topic,"
		" partition, \"offset\", reason, detail, payload) VALUES ('%s',"
		" 'tally.aggregate', 'billing.usage', 0, %d, 'bad_field',"
		" 'subject %s rejected', convert_to('{\"subject\": \"%s\","
		" \"email\": \"%s\"}', 'UTF8'));"
		"INSERT INTO stripe_events (event_id, type, tenant_id,"
		" object_id, event_created, outcome, detail) VALUES"
		" ('evt_%s', 'customer.updated', '%s', '%s', now(), 'applied',"
		" 'customer %s updated');"
		"INSERT INTO tenant_contacts (owner, contact_email, notes)"
		" VALUES ('%s', '%s', '{\"name\": \"%s\", \"kind\": \"billing\"}');"
		"INSERT INTO usage_dedupe (tenant_id, digest, occurred_at)"
		" VALUES ('%s', gen_random_uuid(), now() - interval '1 hour');",
		p->id, offset, p->subject, p->subject, p->email, p->id + 24,
		p->id, p->customer, p->email, p->id, p->email, p->name, p->id);
	td_exec(c, sql);
	td_exec(c, "SELECT * FROM tally_ledger_maintain(3, 3, 400, 37)");
	snprintf(sql, sizeof(sql),
		"INSERT INTO usage_ledger (occurred_at, quantity, input_tokens,"
		" output_tokens, tenant_id, digest, meter_id, cost)"
		" SELECT now() - interval '1 hour', 1, g, 2 * g, '%s',"
		" gen_random_uuid(), 1, 0.000001 * g"
		" FROM generate_series(1, %d) g", p->id, ledger_rows);
	td_exec(c, sql);
}

/*
 * A login role named role in group (tally_engine, tally_finance), and dsn
 * with it as the user (dsn: postgresql://user@host/db).
 */
static inline void td_login(char *out, size_t n, const char *dsn,
			    const char *role, const char *group)
{
	const char *at = strchr(dsn, '@'), *scheme = strstr(dsn, "://");
	char sql[256];
	PGconn *c = PQconnectdb(getenv("TALLY_TEST_PG_DSN"));

	ck_assert_msg(at != NULL && scheme != NULL, "DSN with a user: %s",
		      dsn);
	snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", role);
	td_exec(c, sql);
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN IN ROLE %s", role,
		 group);
	td_exec(c, sql);
	PQfinish(c);
	snprintf(out, n, "%.*s%s%s", (int)(scheme + 3 - dsn), dsn, role, at);
}

static inline void td_login_drop(const char *role)
{
	char sql[256];
	PGconn *c = PQconnectdb(getenv("TALLY_TEST_PG_DSN"));

	snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", role);
	PQclear(PQexec(c, sql));
	PQfinish(c);
}

/*
 * Run argv (a NULL-terminated vector) with extra environment entries
 * ("K=V", NULL-terminated), stdout to out_path and stderr to err_path
 * (NULL: /dev/null); returns the exit status and the child's peak RSS
 * in KiB (getrusage of the child through wait4).
 */
static inline int td_run(char *const argv[], char *const env[],
			 const char *out_path, const char *err_path,
			 long *maxrss_kb)
{
	posix_spawn_file_actions_t fa;
	char **envp = prog_env((const char *const *)env, NULL);
	struct rusage ru;
	int status = 0, rc;
	pid_t pid = -1;

	ck_assert(posix_spawn_file_actions_init(&fa) == 0);
	ck_assert(posix_spawn_file_actions_addopen(
			  &fa, 1, out_path ? out_path : "/dev/null",
			  O_WRONLY | O_CREAT | O_TRUNC, 0644) == 0);
	ck_assert(posix_spawn_file_actions_addopen(
			  &fa, 2, err_path ? err_path : "/dev/null",
			  O_WRONLY | O_CREAT | O_TRUNC, 0644) == 0);
	rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, envp);
	posix_spawn_file_actions_destroy(&fa);
	free(envp);
	ck_assert_msg(rc == 0, "cannot start %s: %s", argv[0], strerror(rc));
	ck_assert_int_eq(wait4(pid, &status, 0, &ru), pid);
	if (maxrss_kb != NULL)
		*maxrss_kb = ru.ru_maxrss;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* The file's text (at most 1 MiB; "" if unreadable); caller frees. */
static inline char *td_slurp(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf = calloc(1, 1 << 20);

	ck_assert_ptr_nonnull(buf);
	if (fp != NULL) {
		buf[fread(buf, 1, (1 << 20) - 1, fp)] = '\0';
		fclose(fp);
	}
	return buf;
}

static inline const char *td_bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

#endif /* TALLY_TESTS_TENANT_DATA_SUPPORT_H */
