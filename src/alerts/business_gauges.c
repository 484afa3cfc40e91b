/*
 * business_gauges.c - MRR, ARR, paying tenants, tenants by status and open
 * alerts as gauges, refreshed by one thread on its own connection (see
 * tally/business_gauges.h). One statement: the figures share a snapshot.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/business_gauges.h"
#include "tally/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* (figure, label value, integer value); amounts in minor units */
static const char *const refresh_sql =
	"WITH m AS (SELECT date_trunc('month', now() AT TIME ZONE 'UTC')"
	"           AT TIME ZONE 'UTC' AS start),"
	/* MRR per currency (amounts in different currencies are never
	 * added) in its minor units; the plans' currencies always have a
	 * series, 0 without revenue */
	" f AS (SELECT f.currency, f.mrr * 10::numeric ^ coalesce((SELECT"
	"   minor_digits FROM currencies c WHERE c.code = f.currency), 2)"
	"   AS minor FROM finance_mrr f, m WHERE f.month = m.start),"
	" k AS (SELECT upper(currency)::char(3) AS currency FROM plans"
	"   UNION SELECT currency FROM f)"
	" SELECT 'mrr'::text, k.currency::text, coalesce(round(f.minor), 0)"
	"   ::bigint FROM k LEFT JOIN f USING (currency)"
	" UNION ALL SELECT 'arr', k.currency, coalesce(round(f.minor * 12), 0)"
	"   ::bigint FROM k LEFT JOIN f USING (currency)"
	" UNION ALL SELECT 'paying', '', (SELECT count(DISTINCT tenant_id)"
	"   FROM finance_subscription_months, m"
	"   WHERE paying AND month = m.start)"
	" UNION ALL SELECT 'tenants', status, count(*) FROM tenants"
	"   GROUP BY status"
	" UNION ALL SELECT 'alerts', kind, count(*) FROM alerts, m"
	"   WHERE delivered_at IS NULL AND raised_at >= m.start GROUP BY kind";

/* the CHECK constraints' values: their series exist even at zero */
static const char *const statuses[] = {
	"active", "trialing", "past_due", "suspended", "cancelled",
	"incomplete", NULL,
};
static const char *const kinds[] = {
	"budget", "plan_limit", "payment_failed", "dunning",
	"subscription_cancelled", "downgrade", "trial_ending", "churn_risk",
	"revenue", "dispute", NULL,
};

struct tally_business_gauges {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	char *url;
	int retry_max_ms;
	long interval_ms;
	tally_metrics *m;
};

static tally_gauge *labelled(tally_metrics *m, const char *name,
			     const char *label, const char *value,
			     const char *help)
{
	char esc[128], labels[160];

	tally_metrics_escape_label(esc, sizeof(esc), value);
	snprintf(labels, sizeof(labels), "%s=\"%s\"", label, esc);
	return tally_metrics_gauge(m, name, labels, help);
}

static tally_gauge *status_gauge(tally_metrics *m, const char *status)
{
	return labelled(m, "tally_business_tenants", "status", status,
			"Tenants by status");
}

static tally_gauge *kind_gauge(tally_metrics *m, const char *kind)
{
	return labelled(m, "tally_business_alerts_open", "kind", kind,
			"Alerts raised this UTC month, not yet delivered");
}

static tally_gauge *scalar_gauge(tally_metrics *m, const char *figure,
				 const char *currency)
{
	if (strcmp(figure, "mrr") == 0)
		return labelled(m, "tally_business_mrr_cents", "currency",
			currency, "MRR of the current UTC month per currency, "
			"minor units (finance_mrr)");
	if (strcmp(figure, "arr") == 0)
		return labelled(m, "tally_business_arr_cents", "currency",
			currency, "ARR (12 x MRR) per currency, minor units "
			"(finance_arr)");
	return tally_metrics_gauge(m, "tally_business_paying_tenants", NULL,
		"Tenants with a paying subscription this UTC month");
}

static void zero_labelled(tally_metrics *m)
{
	int i;

	for (i = 0; statuses[i] != NULL; i++)
		tally_gauge_set(status_gauge(m, statuses[i]), 0);
	for (i = 0; kinds[i] != NULL; i++)
		tally_gauge_set(kind_gauge(m, kinds[i]), 0);
}

int tally_business_gauges_refresh(tally_pg *pg, tally_metrics *m,
				  tally_error *err)
{
	PGresult *res;
	int i, rc;
	int64_t v;

	rc = tally_pg_exec(pg, &res, refresh_sql, 0, NULL, err);
	if (rc != 0)
		return rc;
	zero_labelled(m);
	for (i = 0; i < PQntuples(res); i++) {
		const char *fig = PQgetvalue(res, i, 0);
		const char *label = PQgetvalue(res, i, 1);

		if (tally_parse_i64(&v, PQgetvalue(res, i, 2)) != 0)
			continue; /* a bigint always parses */
		if (strcmp(fig, "tenants") == 0)
			tally_gauge_set(status_gauge(m, label), v);
		else if (strcmp(fig, "alerts") == 0)
			tally_gauge_set(kind_gauge(m, label), v);
		else
			tally_gauge_set(scalar_gauge(m, fig, label), v);
	}
	PQclear(res);
	tally_gauge_set(tally_metrics_gauge(m,
		"tally_business_refreshed_seconds", NULL,
		"Unix time of the last successful refresh of the business "
		"gauges"), tally_now_ms() / 1000);
	return 0;
}

/* Wait up to ms or until stop; returns true when stopping. */
static bool wait_or_stop(tally_business_gauges *bg, long ms)
{
	struct timespec until;
	bool stop;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&bg->mu);
	while (!bg->stop &&
	       pthread_cond_timedwait(&bg->cv, &bg->mu, &until) != ETIMEDOUT)
		;
	stop = bg->stop;
	pthread_mutex_unlock(&bg->mu);
	return stop;
}

static void *run(void *arg)
{
	tally_business_gauges *bg = arg;
	tally_counter *failures = tally_metrics_counter(bg->m,
		"tally_business_refresh_failures_total", NULL,
		"Refreshes of the business gauges that failed");
	tally_pg *pg = NULL;
	tally_error err;

	do {
		tally_error_clear(&err);
		if (pg == NULL && tally_pg_connect(&pg, bg->url,
						   bg->retry_max_ms, &err) != 0)
			pg = NULL;
		if (pg == NULL ||
		    tally_business_gauges_refresh(pg, bg->m, &err) != 0) {
			tally_counter_add(failures, 1);
			tally_log(TALLY_WARN, "business_gauges.refresh_failed",
				  TALLY_KV_STR("error", err.msg));
		}
	} while (!wait_or_stop(bg, bg->interval_ms));
	tally_pg_free(pg);
	return NULL;
}

int tally_business_gauges_start(tally_business_gauges **out,
				const char *database_url, int retry_max_ms,
				tally_metrics *m, long interval_ms,
				tally_error *err)
{
	tally_business_gauges *bg = tally_xcalloc(1, sizeof(*bg));
	pthread_condattr_t ca;
	int rc;

	bg->url = tally_xstrdup(database_url);
	bg->retry_max_ms = retry_max_ms;
	bg->interval_ms = interval_ms > 0 ? interval_ms : 60000;
	bg->m = m;
	pthread_mutex_init(&bg->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&bg->cv, &ca);
	pthread_condattr_destroy(&ca);
	rc = pthread_create(&bg->thread, NULL, run, bg);
	if (rc != 0) {
		pthread_cond_destroy(&bg->cv);
		pthread_mutex_destroy(&bg->mu);
		free(bg->url);
		free(bg);
		return tally_error_set(err, TALLY_ERROR,
				       "business gauges thread: %s",
				       strerror(rc));
	}
	*out = bg;
	return 0;
}

void tally_business_gauges_stop(tally_business_gauges *bg)
{
	if (bg == NULL)
		return;
	pthread_mutex_lock(&bg->mu);
	bg->stop = true;
	pthread_cond_signal(&bg->cv);
	pthread_mutex_unlock(&bg->mu);
	pthread_join(bg->thread, NULL);
	pthread_cond_destroy(&bg->cv);
	pthread_mutex_destroy(&bg->mu);
	free(bg->url);
	free(bg);
}
