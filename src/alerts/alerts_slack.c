/*
 * alerts_slack.c - the Slack incoming-webhook body of an alert and the
 * link template of alerts.targets (tally/alerts_slack.h). Pure: jansson
 * only.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts_slack.h"
#include "base/strbuf.h"
#include "tally/common.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *tally_alerts_link(const char *tmpl, const char *tenant_id,
			const char *alert_id, const char *kind)
{
	tally_strbuf b = TALLY_STRBUF_INIT;
	const char *p;

	if (tmpl == NULL || tmpl[0] == '\0')
		return NULL;
	if (strstr(tmpl, "{tenant_id}") != NULL &&
	    strcmp(tenant_id, TALLY_ALERTS_BUSINESS_TENANT) == 0)
		return NULL;
	for (p = tmpl; *p != '\0';) {
		static const char *const names[3] = { "{tenant_id}",
						      "{alert_id}", "{kind}" };
		const char *vals[3] = { tenant_id, alert_id, kind };
		size_t k;

		for (k = 0; k < 3; k++)
			if (strncmp(p, names[k], strlen(names[k])) == 0)
				break;
		if (k < 3) {
			tally_strbuf_puts(&b, vals[k]);
			p += strlen(names[k]);
		} else {
			tally_strbuf_add(&b, p++, 1);
		}
	}
	return tally_strbuf_detach(&b);
}

/* kinds whose threshold is a percentage */
static bool pct_kind(const char *kind)
{
	static const char *const k[] = { "budget", "plan_limit", "mrr_drop",
					 "mrr_rise", "plan_revenue_drop",
					 "usage_over_plan" };
	size_t i;

	for (i = 0; i < sizeof(k) / sizeof(k[0]); i++)
		if (strcmp(kind, k[i]) == 0)
			return true;
	return false;
}

void tally_alerts_title(char *out, size_t outlen, const char *kind,
			long threshold)
{
	/* text, then (when num is set) the threshold and num */
	static const struct {
		const char *kind;
		long th;     /* -1: any */
		const char *text, *num;
	} t[] = {
		{ "budget", -1, "Budget ", " % reached" },
		{ "plan_limit", -1, "Plan limit ", " % reached" },
		{ "revenue", 0, "Refund", NULL },
		{ "revenue", -1, "Usage revenue reached the plan price", NULL },
		{ "churn_risk", 0, "Churn risk: cancellation scheduled", NULL },
		{ "churn_risk", 50, "Churn risk: usage dropped", NULL },
		{ "churn_risk", 100, "Churn risk: usage stopped", NULL },
		{ "payment_failed", -1, "Payment failed", NULL },
		{ "dunning", 2, "Dunning: suspended", NULL },
		{ "dunning", -1, "Dunning: past due", NULL },
		{ "subscription_cancelled", -1, "Subscription cancelled", NULL },
		{ "downgrade", -1, "Downgrade", NULL },
		{ "trial_ending", -1, "Trial ending", NULL },
		{ "dispute", -1, "Dispute opened", NULL },
		{ "mrr_drop", -1, "MRR fell more than ",
		  " % month over month" },
		{ "mrr_rise", -1, "MRR rose more than ",
		  " % month over month" },
		{ "plan_revenue_drop", -1, "Plan revenue fell more than ",
		  " % month over month" },
		{ "usage_over_plan", -1, "Usage revenue over ",
		  " % of the plan price" },
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		if (strcmp(t[i].kind, kind) != 0 ||
		    (t[i].th >= 0 && t[i].th != threshold))
			continue;
		if (t[i].num != NULL)
			snprintf(out, outlen, "%s%ld%s", t[i].text, threshold,
				 t[i].num);
		else
			snprintf(out, outlen, "%s", t[i].text);
		return;
	}
	snprintf(out, outlen, "Alert %s %ld", kind, threshold);
}

/* Append s escaped for Slack's text (&, <, > are its control characters). */
static void esc(tally_strbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '&')
			tally_strbuf_puts(b, "&amp;");
		else if (*s == '<')
			tally_strbuf_puts(b, "&lt;");
		else if (*s == '>')
			tally_strbuf_puts(b, "&gt;");
		else
			tally_strbuf_add(b, s, 1);
	}
}

static json_t *mrkdwn(const char *text)
{
	return json_pack("{s:s, s:s}", "type", "mrkdwn", "text", text);
}

/* One "*label*\nvalue" field, value escaped. */
static json_t *field(const char *label, const char *value)
{
	tally_strbuf b = TALLY_STRBUF_INIT;
	json_t *f;

	tally_strbuf_printf(&b, "*%s*\n", label);
	esc(&b, value);
	f = mrkdwn(tally_strbuf_cstr(&b));
	tally_strbuf_free(&b);
	return f;
}

/* "*Figures*" and one "• key: value" line per payload member; NULL when
 * the payload has none. */
static json_t *figures(json_t *payload)
{
	tally_strbuf b = TALLY_STRBUF_INIT;
	const char *k;
	json_t *v, *sec = NULL;

	if (!json_is_object(payload) || json_object_size(payload) == 0)
		return NULL;
	tally_strbuf_puts(&b, "*Figures*");
	json_object_foreach(payload, k, v) {
		char *d = json_is_string(v) ? NULL :
			json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

		tally_strbuf_puts(&b, "\n\xe2\x80\xa2 ");
		esc(&b, k);
		tally_strbuf_puts(&b, ": ");
		esc(&b, d != NULL ? d : json_string_value(v));
		free(d);
	}
	sec = json_pack("{s:s, s:o}", "type", "section", "text",
			mrkdwn(tally_strbuf_cstr(&b)));
	tally_strbuf_free(&b);
	return sec;
}

char *tally_alerts_slack_body(const char *alert_json, const char *tenant_name,
			      const char *link_tmpl)
{
	json_t *a = json_loads(alert_json, 0, NULL), *blocks, *fields, *fig;
	const char *id, *tid, *kind, *ps, *raised;
	char title[160], th[32], *link, *out = NULL;
	tally_strbuf s = TALLY_STRBUF_INIT;
	bool business;
	long thv;

	id = json_string_value(json_object_get(a, "id"));
	tid = json_string_value(json_object_get(a, "tenant_id"));
	kind = json_string_value(json_object_get(a, "kind"));
	ps = json_string_value(json_object_get(a, "period_start"));
	raised = json_string_value(json_object_get(a, "raised_at"));
	if (id == NULL || tid == NULL || kind == NULL || ps == NULL ||
	    !json_is_integer(json_object_get(a, "threshold"))) {
		json_decref(a);
		return NULL;
	}
	thv = (long)json_integer_value(json_object_get(a, "threshold"));
	business = strcmp(tid, TALLY_ALERTS_BUSINESS_TENANT) == 0;
	if (business)
		tenant_name = "the business (all tenants)";
	else if (tenant_name == NULL || tenant_name[0] == '\0')
		tenant_name = tid;
	tally_alerts_title(title, sizeof(title), kind, thv);
	snprintf(th, sizeof(th), "%ld%s", thv, pct_kind(kind) ? " %" : "");
	fields = json_pack("[o, o, o, o]", field("Tenant", tenant_name),
			   field("Threshold", th), field("Period", ps),
			   field("Kind", kind));
	blocks = json_pack("[{s:s, s:{s:s, s:s}}, {s:s, s:o}]",
			   "type", "header", "text", "type", "plain_text",
			   "text", title, "type", "section", "fields", fields);
	fig = figures(json_object_get(a, "payload"));
	if (fig != NULL)
		json_array_append_new(blocks, fig);
	link = tally_alerts_link(link_tmpl, tid, id, kind);
	if (link != NULL) {
		tally_strbuf_printf(&s, "<%s|Open in admin>", link);
		json_array_append_new(blocks, json_pack("{s:s, s:o}", "type",
			"section", "text", mrkdwn(tally_strbuf_cstr(&s))));
		tally_strbuf_reset(&s);
		free(link);
	}
	tally_strbuf_printf(&s, "alert %s \xc2\xb7 raised %s", id,
			    raised ? raised : "?");
	json_array_append_new(blocks, json_pack("{s:s, s:[o]}", "type",
		"context", "elements", mrkdwn(tally_strbuf_cstr(&s))));
	tally_strbuf_reset(&s);
	tally_strbuf_printf(&s, "%s: ", title);
	esc(&s, tenant_name);
	json_decref(a);
	a = json_pack("{s:s, s:o}", "text", tally_strbuf_cstr(&s), "blocks",
		      blocks);
	tally_strbuf_free(&s);
	if (a != NULL)
		out = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	return out;
}
