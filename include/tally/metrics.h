#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

/**
 * @file tally/metrics.h
 * @brief Prometheus metrics: a small registry of counters, gauges and
 *        fixed-bucket latency histograms, rendered in the text exposition
 *        format (version 0.0.4), and an HTTP server (libmicrohttpd) for
 *        /metrics, /healthz and /readyz.
 *
 * Design: a series is registered once (under a mutex) and returns a stable
 * pointer that lives as long as the registry; updating it is one relaxed
 * atomic operation, safe from any thread and cheap enough for hot paths.
 * Registering the same (name, labels) twice returns the same series.
 * Histograms count integer microseconds; the exposition shows seconds,
 * formatted exactly from the integers (no floating point anywhere).
 *
 * Labels are passed pre-formatted, e.g. `reason="expired",status="400"`;
 * values must already be escaped (see tally_metrics_escape_label()).
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tally/common.h"

typedef struct tally_metrics tally_metrics;
typedef struct tally_counter tally_counter;
typedef struct tally_gauge tally_gauge;
typedef struct tally_histogram tally_histogram;
typedef struct tally_metrics_server tally_metrics_server;

/** New empty registry; free with tally_metrics_free(). Aborts on OOM. */
tally_metrics *tally_metrics_new(void);

/**
 * Free the registry and every series in it. NULL is a no-op. No thread may
 * still use one of its series, and its server must be freed first.
 */
void tally_metrics_free(tally_metrics *m);

/**
 * Get or create a counter (monotonic, uint64).
 * @param name    metric name, e.g. "tally_relay_requests_total"
 * @param labels  pre-formatted label pairs without braces, or NULL
 * @param help    HELP text of the family (first registration wins)
 * @return borrowed; lives as long as m. Thread-safe.
 * A name already registered with another type is a programmer error.
 */
tally_counter *tally_metrics_counter(tally_metrics *m, const char *name,
				     const char *labels, const char *help);

/** Add n. Thread-safe, lock-free. */
void tally_counter_add(tally_counter *c, uint64_t n);

/** Current value (for tests and health checks). */
uint64_t tally_counter_get(const tally_counter *c);

/** Get or create a gauge (int64). Same rules as tally_metrics_counter(). */
tally_gauge *tally_metrics_gauge(tally_metrics *m, const char *name,
				 const char *labels, const char *help);

void tally_gauge_set(tally_gauge *g, int64_t v);
void tally_gauge_add(tally_gauge *g, int64_t delta);
int64_t tally_gauge_get(const tally_gauge *g);

/**
 * Get or create a latency histogram with fixed upper bounds in
 * microseconds (strictly increasing; +Inf is implicit). bounds NULL means
 * the default latency buckets, 100 us … 10 s. The bounds of the first
 * registration of a family are kept for every series of it.
 * The name should end in "_seconds": the exposition is in seconds.
 */
tally_histogram *tally_metrics_histogram(tally_metrics *m, const char *name,
					 const char *labels, const char *help,
					 const uint64_t *bounds_us,
					 size_t nbounds);

/**
 * tally_event_to_commit_seconds{stage="<stage>"}: from an event's own time
 * to the commit of its stage, 10 ms to 1 h (later events, e.g. late ones,
 * land in +Inf). One bucket list for every stage.
 */
tally_histogram *tally_metrics_event_to_commit(tally_metrics *m,
					       const char *stage);

/** Record one observation of us microseconds. Thread-safe, lock-free. */
void tally_histogram_observe(tally_histogram *h, uint64_t us);

/**
 * One series of a table for tally_metrics_register(): exactly one of
 * counter, gauge and histogram (default buckets) receives it.
 */
typedef struct tally_metric_def {
	const char *name;
	const char *labels; /* NULL: none */
	const char *help;
	tally_counter **counter;
	tally_gauge **gauge;
	tally_histogram **histogram;
} tally_metric_def;

/** Get or create the n series of defs (a module's metrics as a table). */
void tally_metrics_register(tally_metrics *m, const tally_metric_def *defs,
			    size_t n);

/** tally_metrics_register() of a whole array. */
#define TALLY_METRICS_REGISTER(m, defs) \
	tally_metrics_register((m), (defs), sizeof(defs) / sizeof((defs)[0]))

/** Number of observations so far. */
uint64_t tally_histogram_count(const tally_histogram *h);

/**
 * Called at the start of every render (under no lock of the registry), to
 * refresh gauges that are sampled rather than maintained (queue lengths,
 * broker state). Only one hook; setting it again replaces it.
 */
typedef void (*tally_metrics_hook)(tally_metrics *m, void *payload);
void tally_metrics_set_render_hook(tally_metrics *m, tally_metrics_hook fn,
				   void *payload);

/**
 * Render every family in the text exposition format, families in
 * registration order.
 * @param[out] out     malloc'd NUL-terminated text; caller frees
 * @param[out] len_out its length, may be NULL
 */
void tally_metrics_render(char **out, size_t *len_out, tally_metrics *m);

/**
 * Escape a label value (backslash, double quote, newline) into out,
 * always NUL-terminated; truncates to outlen - 1 bytes.
 */
void tally_metrics_escape_label(char *out, size_t outlen, const char *value);

/**
 * Health or readiness check, called on an HTTP thread of the server.
 * Write a short one-line reason into detail (always NUL-terminated by the
 * caller's buffer); never secrets.
 * @return 0 when healthy/ready, non-zero otherwise (HTTP 503)
 */
typedef int (*tally_health_fn)(char *detail, size_t detail_len,
			       void *payload);

/**
 * Parse "HOST:PORT" ("127.0.0.1:9401", "[::1]:9401", "localhost:8088",
 * ":9401" = all interfaces) into a socket address. Port 0 picks a free port.
 * @return 0 or TALLY_EINVALID
 */
int tally_metrics_parse_listen(struct sockaddr_storage *out,
			       socklen_t *len_out, const char *listen,
			       tally_error *err) TALLY_MUSTCHECK;

/**
 * Start an HTTP server (libmicrohttpd, one internal polling thread) on
 * listen serving GET /metrics (text format), /healthz (health, or always
 * "ok" when NULL) and /readyz (ready, or health when NULL); 404 otherwise.
 * m and payload are borrowed and must outlive the server.
 * @return 0, TALLY_EINVALID (bad address) or TALLY_ERROR (cannot bind)
 */
int tally_metrics_serve(tally_metrics_server **out, tally_metrics *m,
			const char *listen, tally_health_fn health,
			tally_health_fn ready, void *payload,
			tally_error *err) TALLY_MUSTCHECK;

/** The TCP port the server is bound to (useful after port 0). */
int tally_metrics_server_port(const tally_metrics_server *srv);

/** Stop the server and free it. NULL is a no-op. */
void tally_metrics_server_free(tally_metrics_server *srv);

#endif /* TALLY_METRICS_H */
