#ifndef TALLY_ALERTS_SLACK_H
#define TALLY_ALERTS_SLACK_H

/**
 * @file tally/alerts_slack.h
 * @brief What a `slack` alert target posts (docs/alerts.md "Targets"):
 *        Slack's incoming-webhook JSON for one alert, and the link of the
 *        alerts.targets link template. Pure: no I/O.
 */

#include <stddef.h>

/** The tenant_id of alerts on the business as a whole (no tenant). */
#define TALLY_ALERTS_BUSINESS_TENANT "00000000-0000-0000-0000-000000000000"

/**
 * The template with {tenant_id}, {alert_id} and {kind} replaced (other
 * text as is). NULL (no link) when tmpl is NULL or "", or when it names
 * {tenant_id} and the alert is on the business (no tenant). Free it.
 */
char *tally_alerts_link(const char *tmpl, const char *tenant_id,
			const char *alert_id, const char *kind);

/**
 * The Slack body of one alert: alert_json is the alert as on
 * billing.alerts (schemas/alerts.md); tenant_name may be NULL (the id is
 * shown); link_tmpl as for tally_alerts_link(). The body:
 *
 *   {"text": <one-line summary>,
 *    "blocks": [
 *      {"type": "header", "text": {"type": "plain_text", "text": <title>}},
 *      {"type": "section", "fields": [<Tenant>, <Threshold>, <Period>,
 *                                     <Kind>]},          (mrkdwn)
 *      {"type": "section", "text": <Figures: one "• key: value" line per
 *                                   payload member>},    (if any)
 *      {"type": "section", "text": "<link|Open in admin>"}, (if a link)
 *      {"type": "context", "elements": [<alert id, raised at>]}]}
 *
 * Text from the alert (tenant name, figures) is escaped for Slack
 * (&, <, >). NULL when alert_json is not an alert object. Free it.
 */
char *tally_alerts_slack_body(const char *alert_json, const char *tenant_name,
			      const char *link_tmpl);

/** A human title for kind and threshold ("Budget 80 % reached"). */
void tally_alerts_title(char *out, size_t outlen, const char *kind,
			long threshold);

#endif /* TALLY_ALERTS_SLACK_H */
