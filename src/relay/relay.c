/*
 * relay.c - tally-relay: Stripe webhooks and usage events onto Kafka,
 * durable before 2xx. This file: the relay's life (start, drain, stop) and
 * its metrics; the HTTP side is relay_http.c, the Kafka hand-off
 * relay_kafka.c, the signature and event checks relay_event.c, the usage
 * intake relay_intake.c and its API keys relay_auth.c.
 *
 * Key design decision: a verified request is never answered from the
 * HTTP thread. The handler suspends the connection (MHD suspend/resume),
 * produces the raw body, and returns; librdkafka's delivery report (on the
 * relay's poll thread) records 200 or 503 and resumes the connection, whose
 * next handler call queues the answer. So a 2xx is only ever sent after
 * acks=all succeeded, HTTP threads never block on Kafka, and the number of
 * events waiting for Kafka is bounded by connections, not threads.
 *
 * The connection is suspended *before* producing, so a delivery report
 * that arrives at once always finds a suspended connection to resume
 * (resuming one that is not suspended is undefined in libmicrohttpd).
 * Drain on stop: new requests get 503 under r->mu, the listener is
 * quiesced, and stop waits for r->pending (produced, no report yet) to
 * reach 0 before MHD_stop_daemon (which must never see a suspended
 * connection).
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "io/metrics_int.h"
#include "tally/log.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4           /* MHD worker threads; handlers never block */
#define CONN_MEMORY 16384   /* MHD's per-connection pool: headers, buffers */

const struct tally_relay__answer tally_relay__outcomes[O__COUNT] = {
	[O_OK] = { 200, "ok" },
	[O_MISSING_HEADER] = { 400, "missing_header" },
	[O_MALFORMED_HEADER] = { 400, "malformed_header" },
	[O_NO_V1] = { 400, "no_v1" },
	[O_EXPIRED] = { 400, "expired" },
	[O_BAD_SIGNATURE] = { 400, "bad_signature" },
	[O_MALFORMED_BODY] = { 400, "malformed_body" },
	[O_TOO_LARGE] = { 413, "too_large" },
	[O_KAFKA] = { 503, "kafka_unavailable" },
	[O_DRAINING] = { 503, "draining" },
	[O_METHOD] = { 405, "method_not_allowed" },
	[O_NOT_FOUND] = { 404, "not_found" },
	[O_BODY_TIMEOUT] = { 408, "body_timeout" },
	[O_BUSY] = { 503, "busy" },
	[O_ACCEPTED] = { 202, "accepted" },
	[O_PARTIAL] = { 207, "partial" },
	[O_UNSUPPORTED_TYPE] = { 415, "unsupported_media_type" },
	[O_NO_KEY] = { 401, "missing_key" },
	[O_BAD_KEY] = { 401, "invalid_key" },
	[O_RATE_LIMITED] = { 429, "rate_limited" },
	[O_AUTH_UNAVAILABLE] = { 503, "auth_unavailable" },
	[O_TOO_MANY_EVENTS] = { 413, "too_many_events" },
};

static void register_metrics(tally_relay *r)
{
	const tally_metric_def defs[] = {
		{ "tally_relay_delivered_total", NULL,
		  "Events acknowledged by Kafka (each is one record on the "
		  "topic; a client that left before its 200 still counts).",
		  &r->delivered },
		{ "tally_relay_delivery_failed_total", NULL,
		  "Events Kafka could not take in time (answered 503).",
		  &r->delivery_failed },
		{ "tally_relay_produce_seconds", NULL,
		  "Time from produce to Kafka delivery report (acks=all).",
		  .histogram = &r->produce_lat },
		{ "tally_relay_request_seconds", NULL,
		  "Time from request headers to a 200 answer.",
		  .histogram = &r->request_lat },
		{ "tally_relay_inflight", NULL,
		  "Requests waiting for their delivery reports.",
		  .gauge = &r->inflight },
		{ "tally_relay_intake_events_total", "result=\"accepted\"",
		  EVENTS_HELP, &r->events_accepted },
		{ "tally_relay_intake_events_total", "result=\"unavailable\"",
		  EVENTS_HELP, &r->events_unavailable },
	};
	char labels[96];
	int i;

	for (i = 0; i < O__COUNT; i++) {
		snprintf(labels, sizeof(labels),
			 "status=\"%u\",reason=\"%s\"",
			 tally_relay__outcomes[i].status,
			 tally_relay__outcomes[i].reason);
		r->requests[i] = tally_metrics_counter(
			r->m, "tally_relay_requests_total", labels,
			"Requests answered (webhooks and the intake), by HTTP "
			"status and reason.");
	}
	TALLY_METRICS_REGISTER(r->m, defs);
	if (r->intake_path[0] != '\0')
		tally_relay__intake_metrics(r);
}

/* The relay's settings from cfg, its locks and metrics. */
static void configure(tally_relay *r, const tally_config *cfg,
		      tally_metrics *m)
{
	const char *s;

	r->m = m;
	r->lsock = MHD_INVALID_SOCKET;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	pthread_mutex_init(&r->ready_mu, NULL);
	atomic_init(&r->poll_stop, 0);
	atomic_init(&r->fatal, 0);
	atomic_init(&r->tolerance_s,
		    tally_config_int(cfg, "relay.tolerance_s"));
	r->topic = tally_xstrdup(tally_config_str(cfg, "topics.stripe_events"));
	r->path = tally_xstrdup(tally_config_str(cfg, "relay.path"));
	r->produce_timeout_ms = tally_config_int(cfg,
						 "relay.produce_timeout_ms");
	r->max_body = (size_t)tally_config_int(cfg, "relay.max_body");
	r->body_timeout_ms = tally_config_int(cfg, "relay.body_timeout_ms");
	r->max_buffered = (size_t)tally_config_int(cfg, "relay.max_buffered");
	r->intake_path = tally_xstrdup(tally_config_str(cfg,
							"relay.intake_path"));
	r->intake_max_body = (size_t)tally_config_int(cfg,
						      "relay.intake_max_body");
	r->intake_max_events = (size_t)tally_config_int(
		cfg, "relay.intake_max_events");
	if (r->intake_path[0] != '\0')
		r->auth = tally_relay__auth_new(
			tally_config_str(cfg, "database.url"),
			tally_config_int(cfg, "relay.key_ttl_ms"),
			(size_t)tally_config_int(cfg, "relay.key_cache_max"),
			m);
	atomic_init(&r->buffered, 0);
	s = tally_config_str(cfg, "relay.webhook_secret");
	if (*s != '\0')
		r->secrets[r->nsecrets++] = tally_xstrdup(s);
	s = tally_config_str(cfg, "relay.webhook_secret_previous");
	if (*s != '\0')
		r->secrets[r->nsecrets++] = tally_xstrdup(s);
	r->secret_list[0] = r->secrets[0];
	r->secret_list[1] = r->secrets[1];
	register_metrics(r);
	r->stopped = true; /* until the server runs: stop is a no-op */
}

/* Room for limit connections (and the relay's own files): raise the
 * soft RLIMIT_NOFILE towards the hard one when needed. */
static void fd_room(unsigned limit)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)limit + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
		? want : rl.rlim_max;
	(void)setrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		tally_log(TALLY_WARN, "relay.nofile_low",
			  TALLY_KV_INT("limit", (int64_t)rl.rlim_cur),
			  TALLY_KV_INT("max_connections", (int64_t)limit));
}

/*
 * Listen on ss (libmicrohttpd, a pool of THREADS) within the limits a
 * stranger's requests may use: relay.max_connections in all (MHD splits
 * them among the workers), relay.max_connections_per_ip from one address
 * (0: none), CONN_MEMORY per connection for headers and buffers, and
 * relay.idle_timeout_s without a byte (headers included).
 */
static int start_daemon(tally_relay *r, const tally_config *cfg,
			const struct sockaddr_storage *ss, const char *listen,
			tally_error *err)
{
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD |
			 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	unsigned limit = (unsigned)tally_config_int(cfg,
						    "relay.max_connections");

	if (ss->ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	fd_room(limit);
	r->d = MHD_start_daemon(
		flags, 0, NULL, NULL, tally_relay__access_cb, r,
		/* must come first, or MHD logs to stderr before it is set */
		MHD_OPTION_EXTERNAL_LOGGER, tally_metrics__mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)THREADS,
		MHD_OPTION_CONNECTION_LIMIT, limit,
		MHD_OPTION_PER_IP_CONNECTION_LIMIT,
		(unsigned)tally_config_int(cfg, "relay.max_connections_per_ip"),
		MHD_OPTION_CONNECTION_TIMEOUT,
		(unsigned)tally_config_int(cfg, "relay.idle_timeout_s"),
		MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
		MHD_OPTION_NOTIFY_COMPLETED, tally_relay__completed_cb, r,
		MHD_OPTION_END);
	if (r->d == NULL)
		return tally_error_set(err, TALLY_ERROR, "cannot listen on %s",
				       listen);
	info = MHD_get_daemon_info(r->d, MHD_DAEMON_INFO_BIND_PORT);
	r->port = info != NULL ? (int)info->port : 0;
	r->stopped = false;
	return 0;
}

int tally_relay_new(tally_relay **out, const tally_config *cfg,
		    tally_metrics *m, tally_error *err)
{
	tally_relay *r = tally_xcalloc(1, sizeof(*r));
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	const char *listen = tally_config_str(cfg, "relay.listen");
	const char *admin = tally_config_str(cfg, "relay.admin_listen");
	int rc;

	configure(r, cfg, m);
	if (r->nsecrets == 0) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "no webhook secret: set "
				     "STRIPE_WEBHOOK_SECRET");
		goto fail;
	}
	if (r->path[0] != '/') {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "relay.path must start with '/'");
		goto fail;
	}
	if (r->max_buffered < r->max_body) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "relay.max_buffered must be at least "
				     "relay.max_body");
		goto fail;
	}
	if (r->intake_max_body > r->max_buffered) /* one body fits the budget */
		r->intake_max_body = r->max_buffered;
	if (r->auth != NULL && (r->intake_path[0] != '/' ||
				strcmp(r->intake_path, r->path) == 0)) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "relay.intake_path must start with '/' "
				     "and differ from relay.path");
		goto fail;
	}
	rc = tally_metrics_parse_listen(&ss, &sl, listen, err);
	if (rc != 0)
		goto fail;
	rc = tally_relay__kafka_setup(r, cfg, err);
	if (rc != 0)
		goto fail;
	if (pthread_create(&r->poller, NULL, tally_relay__poll_main, r) != 0) {
		rc = tally_error_set(err, TALLY_ERROR, "cannot start thread");
		goto fail;
	}
	r->poller_started = true;
	if (r->auth != NULL) {
		rc = tally_relay__usage_setup(r, cfg, err);
		if (rc != 0)
			goto fail;
		if (pthread_create(&r->usage_poller, NULL,
				   tally_relay__usage_poll_main, r) != 0) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "cannot start thread");
			goto fail;
		}
		r->usage_poller_started = true;
	}
	rc = tally_relay__admin_start(r, admin, err);
	if (rc == 0)
		rc = start_daemon(r, cfg, &ss, listen, err);
	if (rc != 0)
		goto fail;
	tally_log(TALLY_INFO, "relay.listening", TALLY_KV_STR("listen", listen),
		  TALLY_KV_INT("port", r->port),
		  TALLY_KV_INT("admin_port", tally_relay_admin_port(r)),
		  TALLY_KV_STR("path", r->path),
		  TALLY_KV_STR("topic", r->topic),
		  TALLY_KV_STR("intake_path", r->intake_path),
		  TALLY_KV_INT("secrets", (int64_t)r->nsecrets));
	*out = r;
	return 0;
fail:
	tally_relay_free(r);
	return rc;
}

int tally_relay_port(const tally_relay *r)
{
	return r->port;
}

int tally_relay_admin_port(const tally_relay *r)
{
	return tally_metrics_server_port(r->admin);
}

void tally_relay_reload(tally_relay *r, const tally_config *cfg)
{
	atomic_store(&r->tolerance_s,
		     tally_config_int(cfg, "relay.tolerance_s"));
}

int tally_relay_failed(const tally_relay *r)
{
	return atomic_load(&((tally_relay *)r)->fatal);
}

/* Wait until nothing is pending or deadline (monotonic ns) passes. */
static bool wait_pending(tally_relay *r, int64_t deadline_ns)
{
	struct timespec ts;
	bool done;

	pthread_mutex_lock(&r->mu);
	while (r->pending > 0 && tally_mono_ns() < deadline_ns) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&r->cv, &r->mu, &ts);
	}
	done = r->pending == 0;
	pthread_mutex_unlock(&r->mu);
	return done;
}

void tally_relay_stop(tally_relay *r)
{
	int64_t deadline;
	int left;

	pthread_mutex_lock(&r->mu);
	if (r->stopped || r->stopping) {
		pthread_mutex_unlock(&r->mu);
		return;
	}
	r->stopping = true;
	left = r->pending;
	pthread_mutex_unlock(&r->mu);
	tally_log(TALLY_INFO, "relay.draining", TALLY_KV_INT("pending", left));

	r->lsock = MHD_quiesce_daemon(r->d);
	/* every message gets a report within message.timeout.ms */
	deadline = tally_mono_ns() + (r->produce_timeout_ms + 5000) * 1000000;
	if (!wait_pending(r, deadline)) {
		tally_log(TALLY_WARN, "relay.purge",
			  TALLY_KV_STR("reason", "drain timeout"));
		rd_kafka_purge(r->rk, RD_KAFKA_PURGE_F_QUEUE |
				      RD_KAFKA_PURGE_F_INFLIGHT);
		if (r->usage != NULL)
			rd_kafka_purge(tally_producer_rk(r->usage),
				       RD_KAFKA_PURGE_F_QUEUE |
					       RD_KAFKA_PURGE_F_INFLIGHT);
		(void)wait_pending(r,
				   tally_mono_ns() + 5000 * INT64_C(1000000));
	}
	rd_kafka_flush(r->rk, 5000);
	MHD_stop_daemon(r->d);
	r->d = NULL;
	if (r->lsock != MHD_INVALID_SOCKET)
		close(r->lsock);
	r->lsock = MHD_INVALID_SOCKET;
	pthread_mutex_lock(&r->mu);
	r->stopped = true;
	pthread_mutex_unlock(&r->mu);
	tally_log(TALLY_INFO, "relay.stopped",
		  TALLY_KV_INT("ok", (int64_t)tally_counter_get(
					     r->requests[O_OK])));
}

void tally_relay_free(tally_relay *r)
{
	size_t i;

	if (r == NULL)
		return;
	tally_relay_stop(r);
	tally_metrics_server_free(r->admin);
	atomic_store(&r->poll_stop, 1);
	if (r->poller_started)
		pthread_join(r->poller, NULL);
	if (r->usage_poller_started)
		pthread_join(r->usage_poller, NULL);
	if (r->rk != NULL)
		rd_kafka_destroy(r->rk);
	tally_producer_free(r->usage);
	tally_relay__auth_free(r->auth);
	free(r->intake_path);
	for (i = 0; i < r->nsecrets; i++) {
		OPENSSL_cleanse(r->secrets[i], strlen(r->secrets[i]));
		free(r->secrets[i]);
	}
	free(r->topic);
	free(r->path);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->ready_mu);
	free(r);
}
