/*
 * cmd_report.c - `tally report <name> [--format table|csv|json] [filters]`:
 * what finance reads, from the finance views. Every report is one
 * parameterised query; the formatter is shared. Numbers are printed exactly
 * as PostgreSQL's numeric text (JSON carries them as strings, so no reader
 * turns money into a float by accident).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include "tally/gen.h"

#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char tally_cmd_report_help[] =
	"finance reports: mrr arr churn revenue movements nrr clv usage "
	"invoices alerts [--format table|csv|json] [--month YYYY-MM] "
	"[--tenant UUID]";

/* What --month, --from and --to select in a report. */
typedef enum report_time {
	BY_MONTH,   /* calendar months (the month column) */
	BY_INSTANT, /* any instant: days, invoices, alerts */
	AS_OF,      /* a window ending with --month (CLV) */
} report_time;

typedef struct report {
	const char *name;
	/* $1 from, $2 to (instants, NULL = open), $3 tenant (NULL = all) */
	const char *sql;
	report_time time;
	bool tenant; /* --tenant applies */
	const char *about;
} report;

#define MONTH_RANGE                                                       \
	"WHERE ($1::timestamptz IS NULL OR month >= $1) "                 \
	"AND ($2::timestamptz IS NULL OR month < $2) "                    \
	"AND ($3::uuid IS NULL OR true) "
#define MONTH_TEXT "to_char(month AT TIME ZONE 'UTC', 'YYYY-MM') AS month, "

static const report reports[] = {
	{ "mrr",
	  "SELECT " MONTH_TEXT "currency, plan_mrr, usage_revenue, mrr, "
	  "paying_subscriptions FROM finance_mrr " MONTH_RANGE
	  "ORDER BY month, currency",
	  BY_MONTH, false,
	  "monthly recurring revenue per currency: plan-only and "
	  "usage-inclusive" },
	{ "arr",
	  "SELECT " MONTH_TEXT "currency, plan_arr, arr FROM finance_arr "
	  MONTH_RANGE "ORDER BY month, currency",
	  BY_MONTH, false, "annual run rate (12 x MRR)" },
	{ "churn",
	  "SELECT " MONTH_TEXT "currency, subscriptions_at_start, "
	  "churned_subscriptions, logo_churn_rate, plan_mrr_at_start, "
	  "churned_plan_mrr, revenue_churn_rate FROM finance_churn "
	  MONTH_RANGE "ORDER BY month, currency",
	  BY_MONTH, false, "logo and revenue churn per month" },
	{ "revenue",
	  "SELECT " MONTH_TEXT "currency, plan, paying_subscriptions, "
	  "plan_revenue, usage_revenue FROM finance_revenue_by_plan "
	  MONTH_RANGE "ORDER BY month, currency, plan",
	  BY_MONTH, false, "revenue by plan per month" },
	{ "movements",
	  "SELECT " MONTH_TEXT "currency, start_mrr, new_mrr, expansion_mrr, "
	  "contraction_mrr, churned_mrr, reactivation_mrr, net_new_mrr, "
	  "end_mrr, customers_at_start, customers_at_end "
	  "FROM finance_mrr_movements " MONTH_RANGE "ORDER BY month, currency",
	  BY_MONTH, false,
	  "MRR movements: new, expansion, contraction, churned, "
	  "reactivation" },
	{ "nrr",
	  "SELECT " MONTH_TEXT "currency, start_mrr, expansion_mrr, "
	  "contraction_mrr, churned_mrr, retained_mrr, nrr FROM finance_nrr "
	  MONTH_RANGE "ORDER BY month, currency",
	  BY_MONTH, false, "net revenue retention per month" },
	{ "clv",
	  "SELECT plan, currency, arpa_monthly, monthly_logo_churn, clv "
	  "FROM tally_finance_clv(coalesce($2::timestamptz, now())) "
	  "WHERE ($1::timestamptz IS NULL OR true) "
	  "AND ($3::uuid IS NULL OR true) ORDER BY plan, currency",
	  AS_OF, false,
	  "customer lifetime value per plan (the 12 months before this one, "
	  "or ending with --month)" },
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
	  BY_INSTANT, true, "usage and cost per tenant, model and day (UTC)" },
	{ "invoices",
	  "SELECT f.invoice_id, f.tenant_id, t.slug AS tenant, i.number, "
	  "f.status, f.currency, f.period_start, f.period_end, f.plan_amount, "
	  "f.usage_exact, f.usage_rounded, f.amount_due, f.amount_paid, "
	  "tally_minor_units(i.amount_remaining, i.currency) AS amount_remaining, "
	  "f.difference, i.paid_at "
	  "FROM finance_invoices f JOIN invoices i ON i.tenant_id = f.tenant_id "
	  "AND i.invoice_id = f.invoice_id "
	  "LEFT JOIN tenants t ON t.id = f.tenant_id "
	  "WHERE ($1::timestamptz IS NULL OR i.stripe_created >= $1) "
	  "AND ($2::timestamptz IS NULL OR i.stripe_created < $2) "
	  "AND ($3::uuid IS NULL OR f.tenant_id = $3) "
	  "ORDER BY i.stripe_created, f.invoice_id",
	  BY_INSTANT, true,
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
	  BY_INSTANT, true, "alerts raised" },
};

#define NREPORTS (sizeof(reports) / sizeof(reports[0]))

static void usage(FILE *fp)
{
	size_t i;

	fprintf(fp, "usage: tally report <name> [--format table|csv|json] "
		    "[--month YYYY-MM | --from T --to T] [--tenant UUID]\n");
	for (i = 0; i < NREPORTS; i++)
		fprintf(fp, "  %-9s %s%s\n", reports[i].name, reports[i].about,
			reports[i].tenant ? " [--tenant]" : "");
	fprintf(fp, "T is a date or an instant such as 2026-11-01T00:00:00Z; "
		    "ranges are half-open [from, to); --month is one UTC "
		    "calendar month\n");
}

/* "YYYY-MM" -> the instants of its start and of the next month's. */
static bool parse_month(const char *s, char from[64], char to[64])
{
	int y, m;
	char end;

	if (strlen(s) != 7 || s[4] != '-' ||
	    sscanf(s, "%4d-%2d%c", &y, &m, &end) != 2 || y < 1970 ||
	    y > 9998 || m < 1 || m > 12 || strspn(s, "0123456789-") != 7)
		return false;
	snprintf(from, 64, "%04d-%02d-01T00:00:00Z", y, m);
	snprintf(to, 64, "%04d-%02d-01T00:00:00Z", m == 12 ? y + 1 : y,
		 m == 12 ? 1 : m + 1);
	return true;
}

/* A date or RFC 3339 instant -> canonical UTC text. */
static bool parse_instant(const char *s, char out[64])
{
	int64_t ms;
	time_t t;
	struct tm tm;

	if (tally_gen_parse_time(&ms, s) != 0 || strlen(s) < 10 ||
	    s[4] != '-')
		return false; /* not unix milliseconds either: say a date */
	t = (time_t)(ms / 1000);
	if (gmtime_r(&t, &tm) == NULL)
		return false;
	snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(ms % 1000));
	return true;
}

static bool is_uuid(const char *s)
{
	int i;

	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++)
		if ((i == 8 || i == 13 || i == 18 || i == 23)
			? s[i] != '-' : !isxdigit((unsigned char)s[i]))
			return false;
	return true;
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

/* The options after the report's name; prints the error; 0 or 2. */
static int parse_args(const report *r, int argc, char **argv,
		      const char **format, char bufs[2][64],
		      const char *params[3])
{
	const char *month = NULL, *from = NULL, *to = NULL;
	int i;

	for (i = 2; i < argc; i += 2) {
		const char *opt = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(opt, "--format") != 0 && strcmp(opt, "--month") != 0 &&
		    strcmp(opt, "--from") != 0 && strcmp(opt, "--to") != 0 &&
		    strcmp(opt, "--tenant") != 0) {
			fprintf(stderr, "tally report %s: unknown option "
					"'%s'\n", r->name, opt);
			return 2;
		}
		if (v == NULL) {
			fprintf(stderr, "tally report %s: %s needs a value\n",
				r->name, opt);
			return 2;
		}
		if (strcmp(opt, "--format") == 0)
			*format = v;
		else if (strcmp(opt, "--month") == 0)
			month = v;
		else if (strcmp(opt, "--from") == 0)
			from = v;
		else if (strcmp(opt, "--to") == 0)
			to = v;
		else
			params[2] = v;
	}
	if (strcmp(*format, "table") != 0 && strcmp(*format, "csv") != 0 &&
	    strcmp(*format, "json") != 0) {
		fprintf(stderr, "tally report %s: --format must be table, csv "
				"or json, not '%s'\n", r->name, *format);
		return 2;
	}
	if (params[2] && !r->tenant) {
		fprintf(stderr, "tally report %s: --tenant does not apply: the "
				"figures are company-wide (per currency)\n",
			r->name);
		return 2;
	}
	if (params[2] && !is_uuid(params[2])) {
		fprintf(stderr, "tally report %s: --tenant must be a tenant id "
				"(UUID), not '%s'\n", r->name, params[2]);
		return 2;
	}
	if (month && (from || to)) {
		fprintf(stderr, "tally report %s: --month or --from/--to, not "
				"both\n", r->name);
		return 2;
	}
	if (r->time == AS_OF && from) {
		fprintf(stderr, "tally report %s: --from does not apply: the "
				"window is the 12 months ending with --month\n",
			r->name);
		return 2;
	}
	if (month) {
		if (!parse_month(month, bufs[0], bufs[1])) {
			fprintf(stderr, "tally report %s: --month must be "
					"YYYY-MM, not '%s'\n", r->name, month);
			return 2;
		}
		params[0] = r->time == AS_OF ? NULL : bufs[0];
		params[1] = bufs[1];
		return 0;
	}
	if (from && !parse_instant(from, bufs[0])) {
		fprintf(stderr, "tally report %s: --from must be a date or an "
				"RFC 3339 instant, not '%s'\n", r->name, from);
		return 2;
	}
	if (to && !parse_instant(to, bufs[1])) {
		fprintf(stderr, "tally report %s: --to must be a date or an "
				"RFC 3339 instant, not '%s'\n", r->name, to);
		return 2;
	}
	params[0] = from ? bufs[0] : NULL;
	params[1] = to ? bufs[1] : NULL;
	return 0;
}

int tally_cmd_report(tally_cli *cli, int argc, char **argv)
{
	const report *r = NULL;
	const char *format = "table", *params[3] = { NULL, NULL, NULL };
	char bufs[2][64];
	tally_pg *pg = NULL;
	PGresult *res = NULL;
	tally_error err;
	size_t k;
	int rc;

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
	rc = parse_args(r, argc, argv, &format, bufs, params);
	if (rc != 0)
		return rc;
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	/* REPEATABLE READ READ ONLY: one consistent snapshot for the report;
	 * instants printed in UTC, as the months are */
	rc = tally_pg_exec(pg, NULL, "SET TIME ZONE 'UTC'", 0, NULL, &err);
	if (rc == 0)
		rc = tally_pg_exec(pg, NULL, "BEGIN ISOLATION LEVEL REPEATABLE "
					     "READ READ ONLY", 0, NULL, &err);
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
