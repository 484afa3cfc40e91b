/*
 * test_report_cli.c - `tally report` for every report on the finance
 * fixture (finance_fixture.h): the CSV compared with figures worked out by
 * hand, the JSON and the table holding the same values (JSON numbers as
 * exact decimal strings), --month, --from/--to and --tenant where they
 * apply, and every bad argument refused with a clear error and exit 2.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_support.h"
#include "check_main.h"

#include "finance_fixture.h"
#include "tally/log.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define ONE "11111111-1111-1111-1111-111111111111"
#define TWO "22222222-2222-2222-2222-222222222222"

static char db[64], dsn[512];

static void setup(void)
{
	tally_test_unique(db, sizeof(db), "t_report");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	tally_test_exec(dsn, finance_fixture);
}

static void teardown(void)
{
	tally_test_db_drop(db);
}

/* Run `tally report <args>`: its stdout (and stderr when err) in out,
 * its exit status returned. */
static int report(char *out, size_t n, const char *args, bool err)
{
	const char *bin = getenv("TALLY_BIN_DIR");
	char cmd[1024];
	size_t len = 0, got;
	FILE *fp;
	int st;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally report %s %s",
		 dsn, bin ? bin : TALLY_BINARY_DIR, args,
		 err ? "2>&1 >/dev/null" : "2>/dev/null");
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	while (len + 1 < n && (got = fread(out + len, 1, n - len - 1, fp)) > 0)
		len += got;
	out[len] = '\0';
	st = pclose(fp);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Split s at sep into at most max fields (in place). */
static int split(char *s, char sep, char **f, int max)
{
	int n = 0;

	while (n < max) {
		char *e = strchr(s, sep);

		f[n++] = s;
		if (e == NULL)
			break;
		*e = '\0';
		s = e + 1;
	}
	return n;
}

/* The JSON and the table of `args` hold what the CSV holds. */
static void same_in_every_format(const char *args, const char *csv)
{
	static char out[16384], lines_buf[16384], row[4096];
	char *lines[64], *head[32], *vals[32], *tl[64], cmd[512];
	json_t *arr, *o;
	json_error_t je;
	int nl, nh, r, f, nt;

	snprintf(lines_buf, sizeof(lines_buf), "%s", csv);
	nl = split(lines_buf, '\n', lines, 64) - 1; /* csv ends with \n */
	nh = split(lines[0], ',', head, 32);

	snprintf(cmd, sizeof(cmd), "%s --format json", args);
	ck_assert_int_eq(report(out, sizeof(out), cmd, false), 0);
	arr = json_loads(out, 0, &je);
	ck_assert_msg(json_is_array(arr), "%s: %s", cmd, je.text);
	ck_assert_int_eq((int)json_array_size(arr), nl - 1);
	for (r = 1; r < nl; r++) {
		snprintf(row, sizeof(row), "%s", lines[r]);
		ck_assert_int_eq(split(row, ',', vals, 32), nh);
		o = json_array_get(arr, (size_t)r - 1);
		ck_assert_int_eq((int)json_object_size(o), nh);
		for (f = 0; f < nh; f++) {
			json_t *v = json_object_get(o, head[f]);

			if (*vals[f] == '\0') {
				ck_assert_msg(json_is_null(v), "%s %s", cmd,
					      head[f]);
				continue;
			}
			/* every value a string: numbers stay exact */
			ck_assert_msg(json_is_string(v), "%s %s", cmd, head[f]);
			ck_assert_str_eq(json_string_value(v), vals[f]);
		}
	}
	json_decref(arr);

	snprintf(cmd, sizeof(cmd), "%s --format table", args);
	ck_assert_int_eq(report(out, sizeof(out), cmd, false), 0);
	nt = split(out, '\n', tl, 64) - 1;
	snprintf(lines_buf, sizeof(lines_buf), "%s", csv);
	split(lines_buf, '\n', lines, 64);
	ck_assert_int_eq(nt, nl + 2); /* header, rule, rows, (n rows) */
	snprintf(row, sizeof(row), "(%d row%s)", nl - 1, nl == 2 ? "" : "s");
	ck_assert_str_eq(tl[nt - 1], row);
	for (r = 0; r < nl; r++) {
		/* the table's line, spaces collapsed, is the CSV's values */
		char want[4096], got[4096], *p, *q;
		int k = 0;

		snprintf(row, sizeof(row), "%s", lines[r]);
		ck_assert_int_eq(split(row, ',', vals, 32), nh);
		want[0] = '\0';
		for (f = 0; f < nh; f++)
			if (*vals[f])
				k += snprintf(want + k, sizeof(want) - (size_t)k,
					      "%s%s", k ? " " : "", vals[f]);
		for (p = tl[r ? r + 1 : 0], q = got; *p; p++)
			if (*p != ' ' || (q > got && q[-1] != ' '))
				*q++ = *p;
		while (q > got && q[-1] == ' ')
			q--;
		*q = '\0';
		ck_assert_str_eq(got, want);
	}
}

static void check_report(const char *args, const char *csv)
{
	static char out[16384];
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "%s --format csv", args);
	ck_assert_int_eq(report(out, sizeof(out), cmd, false), 0);
	ck_assert_str_eq(out, csv);
	same_in_every_format(args, csv);
}

START_TEST(test_report_month_figures)
{
	/* the state at the end of February: sub_1 99.00; usage 3.000000000001
	 * (0.000000000001 + 0.5 storage + 2.5) */
	check_report("mrr --month 2026-02",
		     "month,currency,plan_mrr,usage_revenue,mrr,"
		     "paying_subscriptions\n"
		     "2026-02,USD,99.00,3.000000000001,102.000000000001,1\n");
	/* [from, to) selects exactly February */
	check_report("mrr --from 2026-02-01T00:00:00Z --to 2026-03-01",
		     "month,currency,plan_mrr,usage_revenue,mrr,"
		     "paying_subscriptions\n"
		     "2026-02,USD,99.00,3.000000000001,102.000000000001,1\n");
	/* (99 + 999) x 12 */
	check_report("arr --month 2026-03", "month,currency,plan_arr,arr\n"
		     "2026-03,USD,13176.00,13176.00\n");
	/* 1 of 2; 299 of 398 = 0.7512562.. */
	check_report("churn --month 2026-02",
		     "month,currency,subscriptions_at_start,"
		     "churned_subscriptions,logo_churn_rate,plan_mrr_at_start,"
		     "churned_plan_mrr,revenue_churn_rate\n"
		     "2026-02,USD,2,1,0.500000,398.00,299.00,0.751256\n");
	/* tenant one's February usage: 0.000000000001 + 0.5 storage */
	check_report("revenue --month 2026-02",
		     "month,currency,plan,paying_subscriptions,plan_revenue,"
		     "usage_revenue\n"
		     "2026-02,USD,enterprise,0,0.00,0\n"
		     "2026-02,USD,professional,0,0.00,2.5\n"
		     "2026-02,USD,starter,1,99.00,0.500000000001\n");
	/* Jan: new 99 + 299; Feb: churned 299; Mar: new 999 */
	check_report("movements --from 2026-01-01 --to 2026-04-01",
		     "month,currency,start_mrr,new_mrr,expansion_mrr,"
		     "contraction_mrr,churned_mrr,reactivation_mrr,net_new_mrr,"
		     "end_mrr,customers_at_start,customers_at_end\n"
		     "2026-01,USD,0.00,398.00,0.00,0.00,0.00,0.00,398.00,398.00,"
		     "0,2\n"
		     "2026-02,USD,398.00,0.00,0.00,0.00,299.00,0.00,-299.00,"
		     "99.00,2,1\n"
		     "2026-03,USD,99.00,999.00,0.00,0.00,0.00,0.00,999.00,"
		     "1098.00,1,2\n");
	/* (398 - 299) / 398 = 0.2487437.. */
	check_report("nrr --month 2026-02",
		     "month,currency,start_mrr,expansion_mrr,contraction_mrr,"
		     "churned_mrr,retained_mrr,nrr\n"
		     "2026-02,USD,398.00,0.00,0.00,299.00,99.00,0.248744\n");
	/*
	 * the 12 months ending with March 2026 (January to March):
	 * starter: (99 + 2.10, 99 + 0.500000000001, 99) / 3 = 99.8666..;
	 * no churn. professional: 299 in January (not paying at the end of
	 * February: no figure), churn 1 of 1 in February: CLV 299 / 1.
	 * enterprise: 999 in March, no churn.
	 */
	check_report("clv --month 2026-03",
		     "plan,currency,arpa_monthly,monthly_logo_churn,clv\n"
		     "enterprise,USD,999.00,0.000000,\n"
		     "professional,USD,299.00,1.000000,299.00\n"
		     "starter,USD,99.87,0.000000,\n");
}
END_TEST

START_TEST(test_report_tenant_figures)
{
	check_report("usage --month 2026-01 --tenant " ONE,
		     "day,tenant_id,tenant,meter,provider,model,events,"
		     "input_tokens,output_tokens,cache_read_tokens,"
		     "cache_write_tokens,cost\n"
		     "2026-01-20," ONE ",one,ai.tokens,openai,gpt-4o,1,100,10,"
		     "0,0,0.75\n"
		     "2026-01-31," ONE ",one,ai.tokens,openai,gpt-4o,3,300,30,"
		     "0,0,1.25\n");
	/* 101.10 due = 99.00 plan + 2.10 usage: difference 0.00 */
	check_report("invoices --month 2026-02 --tenant " ONE,
		     "invoice_id,tenant_id,tenant,number,status,currency,"
		     "period_start,period_end,plan_amount,usage_exact,"
		     "usage_rounded,amount_due,amount_paid,amount_remaining,"
		     "difference,paid_at\n"
		     "in_1," ONE ",one,ONE-1,paid,USD,2026-01-10 00:00:00+00,"
		     "2026-02-10 00:00:00+00,99.00,2.1,2.10,101.10,101.10,0.00,"
		     "0.00,\n");
	check_report("alerts --month 2026-02 --tenant " TWO,
		     "raised_at,tenant_id,tenant,kind,threshold,period_start,"
		     "delivered_at,id\n"
		     "2026-02-12 09:30:00+00," TWO ",two,budget,80,"
		     "2026-02-01 00:00:00+00,,"
		     "a1a1a1a1-0000-4000-8000-000000000001\n");
	/* another tenant's alerts are not shown; nor another month's */
	check_report("alerts --tenant " ONE, "raised_at,tenant_id,tenant,kind,"
		     "threshold,period_start,delivered_at,id\n");
	check_report("alerts --month 2026-03", "raised_at,tenant_id,tenant,"
		     "kind,threshold,period_start,delivered_at,id\n");
}
END_TEST

START_TEST(test_report_bad_arguments)
{
	static const char *const bad[][2] = {
		{ "", "usage: tally report" },
		{ "nosuch", "unknown report 'nosuch'" },
		{ "mrr --format xml", "--format must be table, csv or json" },
		{ "mrr --month", "--month needs a value" },
		{ "mrr --month 2026-13", "--month must be YYYY-MM" },
		{ "mrr --month 2026-2", "--month must be YYYY-MM" },
		{ "mrr --month 2026-02 --to 2026-03-01",
		  "--month or --from/--to, not both" },
		{ "mrr --from yesterday", "--from must be a date" },
		{ "usage --to 2026-02-30T25:00:00Z", "--to must be a date" },
		{ "mrr --tenant " ONE, "mrr: --tenant does not apply" },
		{ "movements --tenant " ONE, "--tenant does not apply" },
		{ "clv --from 2026-01-01", "clv: --from does not apply" },
		{ "usage --tenant one", "--tenant must be a tenant id" },
		{ "invoices --tenant '1;DROP TABLE x'",
		  "--tenant must be a tenant id" },
		{ "alerts --limit 3", "unknown option '--limit'" },
	};
	char out[4096];
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(report(out, sizeof(out), bad[i][0], true) == 2,
			      "'%s' must exit 2", bad[i][0]);
		ck_assert_msg(strstr(out, bad[i][1]) != NULL,
			      "'%s': want '%s' in: %s", bad[i][0], bad[i][1],
			      out);
	}
}
END_TEST

static Suite *report_cli_suite(void)
{
	Suite *s = suite_create("report_cli");
	TCase *tc = tcase_create("Reports");

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test_report_cli", TALLY_WARN);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_report_month_figures);
	tcase_add_test(tc, test_report_tenant_figures);
	tcase_add_test(tc, test_report_bad_arguments);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(report_cli_suite)
