/*
 * alerts_webhook.c - webhook delivery of alerts (libcurl): claim due rows
 * under a lease, POST each, record the result with exponential backoff.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/alerts.h"
#include "tally/log.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static size_t discard_cb(char *p, size_t size, size_t nmemb, void *u)
{
	(void)p;
	(void)u;
	return size * nmemb;
}

/* POST one body; returns the HTTP status, or 0 with errbuf on a failure */
static long post_json(CURL *c, const char *url, const char *alert_id,
		      const char *body, int timeout_ms, char *errbuf)
{
	struct curl_slist *h = NULL;
	char idh[80];
	long status = 0;
	CURLcode cc;

	snprintf(idh, sizeof(idh), "X-Tally-Alert-Id: %s", alert_id);
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, idh);
	h = curl_slist_append(h, "Expect:");
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
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

/* Claim up to limit due rows under a lease: no other worker POSTs them
 * until it ends. Rows: tenant_id, id, the alert JSON, attempts. */
static int claim_due(tally_pg *pg, int limit, int timeout_ms,
		     PGresult **res, tally_error *err)
{
	char lim[16], lease[16];
	const char *params[2];

	snprintf(lim, sizeof(lim), "%d", limit);
	snprintf(lease, sizeof(lease), "%d",
		 (int)((int64_t)limit * timeout_ms / 1000 + 60));
	params[0] = lim;
	params[1] = lease;
	return tally_pg_exec(pg, res,
		"UPDATE alerts a SET next_delivery_at = now() +"
		" $2::int * interval '1 s' FROM (SELECT tenant_id, id FROM"
		" alerts WHERE delivered_at IS NULL AND next_delivery_at <="
		" now() ORDER BY next_delivery_at LIMIT $1::int FOR UPDATE"
		" SKIP LOCKED) c WHERE a.tenant_id = c.tenant_id AND"
		" a.id = c.id RETURNING a.tenant_id::text, a.id::text, "
		"json_build_object('id', a.id, 'tenant_id', a.tenant_id,"
		" 'kind', a.kind, 'period_start', to_char(a.period_start AT"
		" TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
		" 'threshold', a.threshold, 'payload', a.payload,"
		" 'raised_at', to_char(a.raised_at AT TIME ZONE 'UTC',"
		" 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text,"
		" a.delivery_attempts", 2, params, err);
}

/* Record one POST's outcome: delivered, or the next attempt scheduled. */
static int record_result(tally_pg *pg, const char *tid, const char *id,
			 bool ok, const char *why, tally_metrics *metrics,
			 tally_error *err)
{
	const char *up[3] = { tid, id, why };
	int rc;

	if (ok) {
		rc = tally_pg_exec(pg, NULL,
			"UPDATE alerts SET delivered_at = now(),"
			" delivery_attempts = delivery_attempts + 1,"
			" last_delivery_error = NULL WHERE"
			" tenant_id = $1::uuid AND id = $2::uuid",
			2, up, err);
	} else {
		/* backoff 1, 2, 4 ... 300 s after the n-th failure */
		rc = tally_pg_exec(pg, NULL,
			"UPDATE alerts SET delivery_attempts ="
			" delivery_attempts + 1, last_delivery_error"
			" = $3, next_delivery_at = now() +"
			" least(power(2, least(delivery_attempts, 9)),"
			" 300) * interval '1 s' WHERE"
			" tenant_id = $1::uuid AND id = $2::uuid",
			3, up, err);
		tally_log(TALLY_WARN, "alerts.webhook_failed",
			  TALLY_KV_STR("alert_id", id),
			  TALLY_KV_STR("error", why));
	}
	if (metrics != NULL)
		tally_counter_add(tally_metrics_counter(metrics,
			"tally_alerts_webhook_total",
			ok ? "result=\"delivered\"" : "result=\"failed\"",
			"webhook POSTs, by result"), 1);
	return rc;
}

int tally_alerts_deliver(tally_pg *pg, const char *url, int timeout_ms,
			 int limit, tally_metrics *metrics, int *delivered,
			 int *failed, tally_error *err)
{
	PGresult *res = NULL;
	CURL *c = NULL;
	int rc, r, nd = 0, nf = 0;

	if (delivered != NULL)
		*delivered = 0;
	if (failed != NULL)
		*failed = 0;
	if (url == NULL || url[0] == '\0')
		return 0;
	rc = claim_due(pg, limit, timeout_ms, &res, err);
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
	for (r = 0; r < PQntuples(res) && rc == 0; r++) {
		const char *id = PQgetvalue(res, r, 1);
		char errbuf[CURL_ERROR_SIZE], why[CURL_ERROR_SIZE + 32];
		long status = post_json(c, url, id, PQgetvalue(res, r, 2),
					timeout_ms, errbuf);
		bool ok = status >= 200 && status < 300;

		if (status > 0)
			snprintf(why, sizeof(why), "HTTP %ld", status);
		else
			snprintf(why, sizeof(why), "%s", errbuf);
		rc = record_result(pg, PQgetvalue(res, r, 0), id, ok, why,
				   metrics, err);
		if (ok)
			nd++;
		else
			nf++;
	}
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
