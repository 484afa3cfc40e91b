/*
 * relay_admin.c - tally-relay's admin listener (relay.admin_listen): the
 * shared metrics server (tally_metrics_serve) with /metrics, /healthz
 * (the producer has no fatal error) and /readyz (Kafka answers a metadata
 * request). Its own thread, so a slow /readyz never holds a webhook
 * worker, and by default on loopback only.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"

#include <stdio.h>

#define READY_CACHE_MS 1000 /* /readyz probes at most one metadata call/s */

static int health_fn(char *detail, size_t n, void *payload)
{
	tally_relay *r = payload;

	if (atomic_load(&r->fatal)) {
		snprintf(detail, n, "kafka producer fatal error");
		return 1;
	}
	return 0;
}

static int ready_fn(char *detail, size_t n, void *payload)
{
	tally_relay *r = payload;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t e;
	bool stopping;
	int64_t now = tally_now_ms();
	int bad;

	if (health_fn(detail, n, payload) != 0)
		return 1;
	pthread_mutex_lock(&r->mu);
	stopping = r->stopping;
	pthread_mutex_unlock(&r->mu);
	if (stopping) {
		snprintf(detail, n, "draining");
		return 1;
	}
	pthread_mutex_lock(&r->ready_mu);
	if (now - r->ready_at_ms >= READY_CACHE_MS) {
		e = rd_kafka_metadata(r->rk, 0, NULL, &md, 2000);
		if (e == RD_KAFKA_RESP_ERR_NO_ERROR && md->broker_cnt > 0) {
			r->ready_bad = 0;
			snprintf(r->ready_detail, sizeof(r->ready_detail),
				 "kafka: %d broker(s)", md->broker_cnt);
		} else {
			r->ready_bad = 1;
			snprintf(r->ready_detail, sizeof(r->ready_detail),
				 "kafka unreachable: %s",
				 e ? rd_kafka_err2name(e) : "no brokers");
		}
		if (md != NULL)
			rd_kafka_metadata_destroy(md);
		r->ready_at_ms = tally_now_ms();
	}
	bad = r->ready_bad;
	snprintf(detail, n, "%s", r->ready_detail);
	pthread_mutex_unlock(&r->ready_mu);
	return bad;
}

int tally_relay__admin_start(tally_relay *r, const char *listen,
			     tally_error *err)
{
	return tally_metrics_serve(&r->admin, r->m, listen, health_fn,
				   ready_fn, r, err);
}
