/*
 * cmd_report.c - `tally report <name> [--format table|csv|json] [filters]`:
 * what finance reads, from the finance views. Every report is one
 * parameterised query; the formatter is shared. Numbers are printed exactly
 * as PostgreSQL's numeric text (JSON carries them as strings, so no reader
 * turns money into a float by accident).
 */
#include "cli.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_report_help[] =
	"finance reports: mrr arr churn revenue clv usage invoices alerts "
	"[--format table|csv|json]";

typedef struct report {
	const char *name;
	const char *sql; /* $1 from, $2 to, $3 tenant (NULL = no filter) */
	const char *about;
} report;

static const report reports[] = {
	{ "mrr",
	  "SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, "
	  "plan_mrr, usage_revenue, mrr, paying_subscriptions FROM finance_mrr "
	  "WHERE ($1::timestamptz IS NULL OR month >= $1) "
	  "AND ($2::timestamptz IS NULL OR month < $2) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY month",
	  "monthly recurring revenue: plan-only and usage-inclusive" },
	{ "arr",
	  "SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, "
	  "plan_arr, arr FROM finance_arr "
	  "WHERE ($1::timestamptz IS NULL OR month >= $1) "
	  "AND ($2::timestamptz IS NULL OR month < $2) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY month",
	  "annual run rate (12 x MRR)" },
	{ "churn",
	  "SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, "
	  "subscriptions_at_start, churned_subscriptions, logo_churn_rate, "
	  "plan_mrr_at_start, churned_plan_mrr, revenue_churn_rate "
	  "FROM finance_churn WHERE ($1::timestamptz IS NULL OR month >= $1) "
	  "AND ($2::timestamptz IS NULL OR month < $2) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY month",
	  "logo and revenue churn per month" },
	{ "revenue",
	  "SELECT to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, plan, "
	  "paying_subscriptions, plan_revenue, usage_revenue "
	  "FROM finance_revenue_by_plan "
	  "WHERE ($1::timestamptz IS NULL OR month >= $1) "
	  "AND ($2::timestamptz IS NULL OR month < $2) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY month, plan",
	  "revenue by plan per month" },
	{ "clv",
	  "SELECT plan, arpa_monthly, monthly_logo_churn, clv FROM finance_clv "
	  "WHERE ($1::timestamptz IS NULL OR true) "
	  "AND ($2::timestamptz IS NULL OR true) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY plan",
	  "customer lifetime value per plan (last 12 months)" },
	{ "usage",
	  "SELECT day, tenant_id, tenant, meter, provider, model, events, "
	  "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
	  "cost FROM finance_usage_cost_daily "
	  "WHERE ($1::timestamptz IS NULL OR day >= ($1::timestamptz "
	  "AT TIME ZONE 'UTC')::date) "
	  "AND ($2::timestamptz IS NULL OR day < ($2::timestamptz "
	  "AT TIME ZONE 'UTC')::date) "
	  "AND ($3::uuid IS NULL OR tenant_id = $3) "
	  "ORDER BY day, tenant_id, meter, provider, model",
	  "usage and cost per tenant, model and day (UTC)" },
	{ "invoices",
	  "SELECT f.invoice_id, f.tenant_id, t.slug AS tenant, i.number, "
	  "f.status, f.currency, f.period_start, f.period_end, f.plan_amount, "
	  "f.usage_exact, f.usage_rounded, f.amount_due, f.amount_paid, "
	  "tally_from_minor(i.amount_remaining, i.currency) AS amount_remaining, "
	  "f.difference, i.paid_at "
	  "FROM finance_invoices f JOIN invoices i ON i.tenant_id = f.tenant_id "
	  "AND i.invoice_id = f.invoice_id "
	  "LEFT JOIN tenants t ON t.id = f.tenant_id "
	  "WHERE ($1::timestamptz IS NULL OR i.stripe_created >= $1) "
	  "AND ($2::timestamptz IS NULL OR i.stripe_created < $2) "
	  "AND ($3::uuid IS NULL OR f.tenant_id = $3) "
	  "ORDER BY i.stripe_created, f.invoice_id",
	  "invoices mirrored from Stripe with tally's usage (exact, rounded) "
	  "and the difference, in currency units" },
	{ "alerts",
	  "SELECT a.raised_at, a.tenant_id, t.slug AS tenant, a.kind, "
	  "a.threshold, a.period_start, a.delivered_at, a.id "
	  "FROM alerts a LEFT JOIN tenants t ON t.id = a.tenant_id "
	  "WHERE ($1::timestamptz IS NULL OR a.raised_at >= $1) "
	  "AND ($2::timestamptz IS NULL OR a.raised_at < $2) "
	  "AND ($3::uuid IS NULL OR a.tenant_id = $3) "
	  "ORDER BY a.raised_at, a.tenant_id, a.kind",
	  "alerts raised" },
};

#define NREPORTS (sizeof(reports) / sizeof(reports[0]))

static void usage(FILE *fp)
{
	size_t i;

	fprintf(fp, "usage: tally report <name> [--format table|csv|json] "
		    "[--from T] [--to T] [--tenant UUID]\n");
	for (i = 0; i < NREPORTS; i++)
		fprintf(fp, "  %-9s %s\n", reports[i].name, reports[i].about);
	fprintf(fp, "T is an instant such as 2026-11-01T00:00:00Z; ranges are "
		    "half-open [from, to)\n");
}

static void print_csv_field(const char *v)
{
	const char *p;

	if (strpbrk(v, ",\"\n\r") == NULL) {
		fputs(v, stdout);
		return;
	}
	putchar('"');
	for (p = v; *p; p++) {
		if (*p == '"')
			putchar('"');
		putchar(*p);
	}
	putchar('"');
}

static void print_table(const PGresult *res)
{
	int nf = PQnfields(res), nt = PQntuples(res), f, t;
	int *w = tally_xcalloc((size_t)nf, sizeof(int));

	for (f = 0; f < nf; f++) {
		w[f] = (int)strlen(PQfname(res, f));
		for (t = 0; t < nt; t++)
			if (PQgetlength(res, t, f) > w[f])
				w[f] = PQgetlength(res, t, f);
	}
	for (f = 0; f < nf; f++)
		printf("%s%-*s", f ? "  " : "", w[f], PQfname(res, f));
	putchar('\n');
	for (f = 0; f < nf; f++) {
		int i;
		printf("%s", f ? "  " : "");
		for (i = 0; i < w[f]; i++)
			putchar('-');
	}
	putchar('\n');
	for (t = 0; t < nt; t++) {
		for (f = 0; f < nf; f++) {
			const char *v = PQgetisnull(res, t, f) ? "" :
					PQgetvalue(res, t, f);
			/* numbers right-aligned, text left-aligned */
			Oid typ = PQftype(res, f);
			bool num = typ == 20 || typ == 21 || typ == 23 ||
				   typ == 1700;
			printf("%s%*s", f ? "  " : "", num ? w[f] : -w[f], v);
		}
		putchar('\n');
	}
	printf("(%d row%s)\n", nt, nt == 1 ? "" : "s");
	free(w);
}

static void print_csv(const PGresult *res)
{
	int nf = PQnfields(res), nt = PQntuples(res), f, t;

	for (f = 0; f < nf; f++) {
		if (f)
			putchar(',');
		print_csv_field(PQfname(res, f));
	}
	putchar('\n');
	for (t = 0; t < nt; t++) {
		for (f = 0; f < nf; f++) {
			if (f)
				putchar(',');
			if (!PQgetisnull(res, t, f))
				print_csv_field(PQgetvalue(res, t, f));
		}
		putchar('\n');
	}
}

static void print_json(const PGresult *res)
{
	int nf = PQnfields(res), nt = PQntuples(res), f, t;
	json_t *arr = json_array();
	char *s;

	for (t = 0; t < nt; t++) {
		json_t *o = json_object();
		for (f = 0; f < nf; f++)
			json_object_set_new(o, PQfname(res, f),
					    PQgetisnull(res, t, f) ? json_null() :
					    json_string(PQgetvalue(res, t, f)));
		json_array_append_new(arr, o);
	}
	s = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	printf("%s\n", s);
	free(s);
	json_decref(arr);
}

int tally_cmd_report(tally_cli *cli, int argc, char **argv)
{
	const report *r = NULL;
	const char *format = "table", *params[3] = { NULL, NULL, NULL };
	tally_pg *pg = NULL;
	PGresult *res = NULL;
	tally_error err;
	size_t k;
	int i, rc;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	for (k = 0; k < NREPORTS; k++)
		if (strcmp(reports[k].name, argv[1]) == 0)
			r = &reports[k];
	if (r == NULL) {
		fprintf(stderr, "tally report: unknown report '%s'\n", argv[1]);
		usage(stderr);
		return 2;
	}
	for (i = 2; i < argc; i++) {
		if (i + 1 >= argc) {
			usage(stderr);
			return 2;
		}
		if (strcmp(argv[i], "--format") == 0)
			format = argv[++i];
		else if (strcmp(argv[i], "--from") == 0)
			params[0] = argv[++i];
		else if (strcmp(argv[i], "--to") == 0)
			params[1] = argv[++i];
		else if (strcmp(argv[i], "--tenant") == 0)
			params[2] = argv[++i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (strcmp(format, "table") != 0 && strcmp(format, "csv") != 0 &&
	    strcmp(format, "json") != 0) {
		fprintf(stderr, "tally report: --format must be table, csv or "
				"json\n");
		return 2;
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	/* REPEATABLE READ READ ONLY: one consistent snapshot for the report */
	rc = tally_pg_exec(pg, NULL, "BEGIN ISOLATION LEVEL REPEATABLE READ "
				     "READ ONLY", 0, NULL, &err);
	if (rc == 0)
		rc = tally_pg_exec(pg, &res, r->sql, 3, params, &err);
	if (rc != 0) {
		fprintf(stderr, "tally report %s: %s\n", r->name, err.msg);
		tally_pg_free(pg);
		return 1;
	}
	if (strcmp(format, "csv") == 0)
		print_csv(res);
	else if (strcmp(format, "json") == 0)
		print_json(res);
	else
		print_table(res);
	PQclear(res);
	tally_pg_free(pg);
	return 0;
}
