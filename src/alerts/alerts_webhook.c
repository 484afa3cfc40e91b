/*
 * alerts_webhook.c - delivery rounds of alerts to their targets (libcurl):
 * route and claim due rows (alerts_deliveries.c), POST each, a json
 * target's body signed (Tally-Signature: Stripe's v1 scheme,
 * tally/webhook.h), a slack target's built by tally_alerts_slack_body(),
 * and record the outcome per target.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_deliveries.h"
#include "tally/alerts_slack.h"
#include "tally/event.h"
#include "tally/log.h"
#include "tally/webhook.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "Tally-Signature: t=<t>,v1=<hex>" and one more ",v1=<hex>" a secret */
#define SIG_HEADER_MAX (32 + 20 + TALLY_ALERTS_WEBHOOK_MAX_SECRETS * 68)

/* The Tally-Signature header of body at time t, one v1 per secret. */
static void sign_header(char *out, size_t outlen, const char *body,
			const tally_alerts_delivery *wh, int64_t t)
{
	size_t i, n;

	n = (size_t)snprintf(out, outlen, "Tally-Signature: t=%" PRId64, t);
	for (i = 0; i < wh->nsecrets && n < outlen; i++) {
		char hex[65];

		if (wh->secrets[i] == NULL || wh->secrets[i][0] == '\0')
			continue;
		tally_webhook_signature_hex(hex, body, strlen(body),
					    wh->secrets[i], t);
		n += (size_t)snprintf(out + n, outlen - n, ",v1=%s", hex);
	}
}

static size_t discard_cb(char *p, size_t size, size_t nmemb, void *u)
{
	(void)p;
	(void)u;
	return size * nmemb;
}

/* POST one body to t; returns the HTTP status, or 0 with errbuf on a
 * failure. A json target's body is signed; a slack target's is not. */
static long post(CURL *c, const tally_alerts_delivery *d,
		 const tally_alerts_target *t, const char *alert_id,
		 const char *body, char *errbuf)
{
	struct curl_slist *h = NULL;
	char idh[80], did[80], sig[SIG_HEADER_MAX];
	long status = 0;
	CURLcode cc;

	h = curl_slist_append(h, "Content-Type: application/json");
	if (t->type == TALLY_ALERTS_TARGET_JSON) {
		snprintf(idh, sizeof(idh), "X-Tally-Alert-Id: %s", alert_id);
		snprintf(did, sizeof(did), "Tally-Delivery-Id: %s", alert_id);
		sign_header(sig, sizeof(sig), body, d, (int64_t)time(NULL));
		h = curl_slist_append(h, idh);
		h = curl_slist_append(h, did);
		h = curl_slist_append(h, sig);
	}
	h = curl_slist_append(h, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, t->url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)d->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)d->timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tally-alerts/1");
	errbuf[0] = '\0';
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	else if (errbuf[0] == '\0')
		snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(cc));
	curl_slist_free_all(h);
	return status;
}

/* The outcome of one POST, as counted. */
static void count_outcome(tally_metrics *metrics, const char *target,
			  const char *outcome)
{
	char labels[TALLY_ALERTS_TARGET_NAME_MAX + 48];

	if (metrics == NULL)
		return;
	snprintf(labels, sizeof(labels), "target=\"%s\",outcome=\"%s\"",
		 target, outcome);
	tally_counter_add(tally_metrics_counter(metrics,
		"tally_alerts_deliveries_total", labels,
		"POSTs to alert targets: delivered, retry (scheduled again),"
		" failed (gave up)"), 1);
}

/* Whether there is at least one non-empty secret. */
static bool can_sign(const tally_alerts_delivery *d)
{
	size_t i;

	for (i = 0; i < d->nsecrets; i++)
		if (d->secrets[i] != NULL && d->secrets[i][0] != '\0')
			return true;
	return false;
}

static const tally_alerts_target *find_target(const tally_alerts_delivery *d,
					      const char *name)
{
	size_t i;

	for (i = 0; i < d->ntargets; i++)
		if (strcmp(d->targets[i].name, name) == 0)
			return &d->targets[i];
	return NULL;
}

/* Refuse what cannot be delivered right; 0 when there is a target. */
static int check_delivery(const tally_alerts_delivery *d, bool *any,
			  tally_error *err)
{
	size_t i, j;

	*any = false;
	if (d->max_attempts < 1 || d->max_age_s < 1)
		return tally_error_set(err, TALLY_EINVALID,
			"alerts: webhook delivery limits must be >= 1");
	if (d->nsecrets > TALLY_ALERTS_WEBHOOK_MAX_SECRETS)
		return tally_error_set(err, TALLY_EINVALID,
				       "alerts: too many secrets");
	for (i = 0; i < d->ntargets; i++) {
		const tally_alerts_target *t = &d->targets[i];

		if (t->name == NULL || t->name[0] == '\0' ||
		    strlen(t->name) >= TALLY_ALERTS_TARGET_NAME_MAX)
			return tally_error_set(err, TALLY_EINVALID,
				"alerts: a target needs a name (< %d bytes)",
				TALLY_ALERTS_TARGET_NAME_MAX);
		for (j = 0; j < i; j++)
			if (strcmp(d->targets[j].name, t->name) == 0)
				return tally_error_set(err, TALLY_EINVALID,
					"alerts: two targets named '%s'",
					t->name);
		if (t->url == NULL || t->url[0] == '\0')
			continue;
		if (t->type == TALLY_ALERTS_TARGET_JSON && !can_sign(d))
			return tally_error_set(err, TALLY_EINVALID,
				"alerts: webhook deliveries need a signing"
				" secret ($TALLY_ALERTS_WEBHOOK_SECRET)");
		*any = true;
	}
	return 0;
}

/* POST one claimed row and record it; counts into nd / nf. */
static int deliver_row(CURL *c, tally_pg *pg, const tally_alerts_delivery *d,
		       PGresult *res, int r, tally_metrics *metrics, int *nd,
		       int *nf, tally_error *err)
{
	const char *tid = PQgetvalue(res, r, DL_TENANT);
	const char *id = PQgetvalue(res, r, DL_ALERT);
	const char *name = PQgetvalue(res, r, DL_TARGET);
	const tally_alerts_target *t = find_target(d, name);
	char errbuf[CURL_ERROR_SIZE], why[CURL_ERROR_SIZE + 32], att[16];
	char *body;
	bool gave_up = false;
	long status = 0;
	int rc;

	if (t == NULL)
		return 0; /* claimed by name: cannot happen */
	body = t->type == TALLY_ALERTS_TARGET_SLACK ?
		tally_alerts_slack_body(PQgetvalue(res, r, DL_JSON),
			PQgetisnull(res, r, DL_TENANT_NAME) ? NULL :
			PQgetvalue(res, r, DL_TENANT_NAME), t->link) :
		tally_xstrdup(PQgetvalue(res, r, DL_JSON));
	if (body == NULL)
		snprintf(errbuf, sizeof(errbuf), "no Slack body for the alert");
	else
		status = post(c, d, t, id, body, errbuf);
	free(body);
	if (status >= 200 && status < 300) {
		rc = tally_alerts__record(pg, tid, id, name, NULL, d,
					  &gave_up, att, err);
		count_outcome(metrics, name, "delivered");
		(*nd)++;
		return rc;
	}
	if (status > 0)
		snprintf(why, sizeof(why), "HTTP %ld", status);
	else
		snprintf(why, sizeof(why), "%s", errbuf);
	rc = tally_alerts__record(pg, tid, id, name, why, d, &gave_up, att,
				  err);
	tally_log(gave_up ? TALLY_ERR : TALLY_WARN,
		  gave_up ? "alerts.webhook_gave_up" : "alerts.webhook_failed",
		  TALLY_KV_STR("alert_id", id), TALLY_KV_STR("target", name),
		  TALLY_KV_STR("error", why), TALLY_KV_STR("attempts", att));
	count_outcome(metrics, name, gave_up ? "failed" : "retry");
	(*nf)++;
	return rc;
}

int tally_alerts_deliver_targets(tally_pg *pg, const tally_alerts_delivery *d,
				 int limit, tally_metrics *metrics,
				 int *delivered, int *failed, tally_error *err)
{
	PGresult *res = NULL;
	CURL *c = NULL;
	int rc, r, nd = 0, nf = 0;
	bool any;

	if (delivered != NULL)
		*delivered = 0;
	if (failed != NULL)
		*failed = 0;
	rc = check_delivery(d, &any, err);
	if (rc != 0 || !any)
		return rc;
	rc = tally_alerts__route(pg, d, err);
	if (rc == 0)
		rc = tally_alerts__claim(pg, d, limit, &res, err);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) > 0) {
		c = curl_easy_init();
		if (c == NULL) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "curl_easy_init failed");
			goto cleanup;
		}
	}
	for (r = 0; r < PQntuples(res) && rc == 0; r++)
		rc = deliver_row(c, pg, d, res, r, metrics, &nd, &nf, err);
cleanup:
	if (c != NULL)
		curl_easy_cleanup(c);
	PQclear(res);
	if (delivered != NULL)
		*delivered = nd;
	if (failed != NULL)
		*failed = nf;
	return rc;
}

int tally_alerts_deliver(tally_pg *pg, const tally_alerts_webhook *wh,
			 int limit, tally_metrics *metrics, int *delivered,
			 int *failed, tally_error *err)
{
	tally_alerts_target t = { TALLY_ALERTS_WEBHOOK_TARGET,
				  TALLY_ALERTS_TARGET_JSON, wh->url, NULL,
				  NULL };
	tally_alerts_delivery d = { &t, 1, { NULL, NULL }, wh->nsecrets,
				    wh->timeout_ms, wh->max_attempts,
				    wh->max_age_s };
	size_t i;

	for (i = 0; i < wh->nsecrets && i < TALLY_ALERTS_WEBHOOK_MAX_SECRETS;
	     i++)
		d.secrets[i] = wh->secrets[i];
	return tally_alerts_deliver_targets(pg, &d, limit, metrics, delivered,
					    failed, err);
}
