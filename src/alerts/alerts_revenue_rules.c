/*
 * alerts_revenue_rules.c - the revenue alerts on the business
 * (tally/alerts_rules.h, docs/alerts.md "Revenue alerts"): company MRR
 * month over month, a plan's revenue dropping, a tenant's usage revenue
 * over its plan price. Exact: 128-bit pico-units, integer comparisons.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_rules.h"
#include "base/calendar.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef tally_money128 i128;

static const uint8_t business[16] = { 0 };

/* num * 100 / den with two decimals, truncated towards zero: "-12.34" */
static void fmt_pct(char out[48], i128 num, i128 den)
{
	i128 bp = num * 10000 / den;
	bool neg = bp < 0;
	i128 a = neg ? -bp : bp;
	int64_t whole = (int64_t)(a / 100), frac = (int64_t)(a % 100);

	snprintf(out, 48, "%s%lld.%02lld", neg ? "-" : "", (long long)whole,
		 (long long)frac);
}

static char *money(i128 v)
{
	char s[64];

	tally_money_fmt128(s, sizeof(s), v);
	return tally_xstrdup(s);
}

/* Month "YYYY-MM" of month_ms. */
static void fmt_month(char out[16], int64_t month_ms)
{
	int64_t y;
	int m, d;

	tally_civil_from_days(tally_floor_div(month_ms, TALLY_MS_PER_DAY), &y,
			      &m, &d);
	snprintf(out, 16, "%04lld-%02d", (long long)y, m);
}

/* {"month", <a_name>: a, <b_name>: b, "change_pct" | <pct_name>, and
 * "plan" and "currency" when given} */
static char *payload(int64_t month_ms, const char *plan, const char *currency,
		     const char *a_name,
		     i128 a, const char *b_name, i128 b, const char *pct_name,
		     const char *pct)
{
	char mo[16], *as = money(a), *bs = money(b), *s;
	json_t *o;

	fmt_month(mo, month_ms);
	o = json_pack("{s:s, s:s, s:s, s:s}", "month", mo, a_name, as, b_name,
		      bs, pct_name, pct);
	if (plan != NULL)
		json_object_set_new(o, "plan", json_string(plan));
	if (currency != NULL)
		json_object_set_new(o, "currency", json_string(currency));
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	free(as);
	free(bs);
	if (s == NULL)
		abort();
	return s;
}

/* A currency code is the subject: 3 letters (finance views keep them). */
static bool currency_ok(const char *c)
{
	return c != NULL && strlen(c) == 3 && c[0] >= 'A' && c[0] <= 'Z' &&
	       c[1] >= 'A' && c[1] <= 'Z' && c[2] >= 'A' && c[2] <= 'Z';
}

int tally_alerts_eval_mrr(tally_alert_list *out, int64_t month_ms,
			  const char *currency, i128 prev, i128 cur,
			  const tally_alert_thresholds *th)
{
	char pct[48];
	int i, n = 0;

	if (prev <= 0 || !currency_ok(currency))
		return 0;
	fmt_pct(pct, cur - prev, prev);
	for (i = 0; i < th->n; i++) {
		i128 lim = prev * th->pct[i];
		tally_alert_kind k;

		if ((cur - prev) * 100 > lim)
			k = TALLY_ALERT_MRR_RISE;
		else if ((prev - cur) * 100 > lim)
			k = TALLY_ALERT_MRR_DROP;
		else
			continue;
		tally_alert_list_push(out, business, k, month_ms, th->pct[i],
				      currency,
				      payload(month_ms, NULL, currency, "mrr", cur,
					      "previous_mrr", prev,
					      "change_pct", pct));
		n++;
	}
	return n;
}

int tally_alerts_eval_plan_revenue(tally_alert_list *out, int64_t month_ms,
				   const char *plan, const char *currency,
				   i128 prev, i128 cur,
				   const tally_alert_thresholds *th)
{
	char pct[48], subject[TALLY_ALERT_SUBJECT_MAX];
	int i, n = 0;

	if (prev <= 0 || plan == NULL || plan[0] == '\0' ||
	    !currency_ok(currency) ||
	    strlen(plan) + 4 >= TALLY_ALERT_SUBJECT_MAX)
		return 0;
	snprintf(subject, sizeof(subject), "%s/%s", plan, currency);
	fmt_pct(pct, cur - prev, prev);
	for (i = 0; i < th->n; i++) {
		if ((prev - cur) * 100 <= prev * th->pct[i])
			continue;
		tally_alert_list_push(out, business,
				      TALLY_ALERT_PLAN_REVENUE_DROP, month_ms,
				      th->pct[i], subject,
				      payload(month_ms, plan, currency,
					      "revenue", cur,
					      "previous_revenue", prev,
					      "change_pct", pct));
		n++;
	}
	return n;
}

int tally_alerts_eval_usage_over_plan(tally_alert_list *out,
				      const uint8_t tenant_id[16],
				      int64_t month_ms, const char *plan,
				      i128 usage, i128 price,
				      const tally_alert_thresholds *th)
{
	char pct[48];
	int i, n = 0;

	if (price <= 0)
		return 0;
	fmt_pct(pct, usage, price);
	for (i = 0; i < th->n; i++) {
		if (usage * 100 <= price * th->pct[i])
			continue;
		tally_alert_list_push(out, tenant_id,
				      TALLY_ALERT_USAGE_OVER_PLAN, month_ms,
				      th->pct[i], "",
				      payload(month_ms, plan, NULL, "usage_revenue",
					      usage, "plan_price", price,
					      "usage_pct_of_price", pct));
		n++;
	}
	return n;
}
