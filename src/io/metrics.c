/*
 * metrics.c - Prometheus registry and the /metrics /healthz /readyz server.
 *
 * Families are a linked list in registration order, each with its series;
 * registration and rendering take the registry mutex, updates are single
 * relaxed atomics on the series (a scrape may see a histogram whose count
 * and buckets differ by an in-flight observation, which Prometheus
 * tolerates). Nothing is ever unregistered, so series pointers stay valid
 * for the life of the registry.
 */
#define _POSIX_C_SOURCE 200809L
#include "metrics_int.h"
#include "tally/log.h"

#include <assert.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM } mtype;

struct tally_counter {
	atomic_uint_fast64_t v;
};

struct tally_gauge {
	atomic_int_fast64_t v;
};

struct tally_histogram {
	const uint64_t *bounds; /* owned by the family */
	size_t nbounds;
	atomic_uint_fast64_t *buckets; /* nbounds + 1 (the last is +Inf) */
	atomic_uint_fast64_t sum_us;
	atomic_uint_fast64_t count;
};

typedef struct series {
	struct series *next;
	char *labels; /* "" when none */
	union {
		struct tally_counter c;
		struct tally_gauge g;
		struct tally_histogram h;
	} u;
} series;

typedef struct family {
	struct family *next;
	char *name;
	char *help;
	mtype type;
	uint64_t *bounds;
	size_t nbounds;
	series *first, *last;
} family;

struct tally_metrics {
	pthread_mutex_t mu;
	family *first, *last;
	tally_metrics_hook hook;
	void *hook_payload;
};

static const uint64_t default_bounds[] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
	250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

tally_metrics *tally_metrics_new(void)
{
	tally_metrics *m = tally_xcalloc(1, sizeof(*m));

	pthread_mutex_init(&m->mu, NULL);
	return m;
}

void tally_metrics_free(tally_metrics *m)
{
	family *f, *fn;
	series *s, *sn;

	if (m == NULL)
		return;
	for (f = m->first; f != NULL; f = fn) {
		fn = f->next;
		for (s = f->first; s != NULL; s = sn) {
			sn = s->next;
			if (f->type == MT_HISTOGRAM)
				free(s->u.h.buckets);
			free(s->labels);
			free(s);
		}
		free(f->name);
		free(f->help);
		free(f->bounds);
		free(f);
	}
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* Called with m->mu held. */
static family *get_family(tally_metrics *m, const char *name, mtype type,
			  const char *help)
{
	family *f;

	for (f = m->first; f != NULL; f = f->next)
		if (strcmp(f->name, name) == 0) {
			assert(f->type == type && "metric registered twice "
						  "with different types");
			return f;
		}
	f = tally_xcalloc(1, sizeof(*f));
	f->name = tally_xstrdup(name);
	f->help = tally_xstrdup(help ? help : "");
	f->type = type;
	if (m->last != NULL)
		m->last->next = f;
	else
		m->first = f;
	m->last = f;
	return f;
}

/* Called with m->mu held; returns the series, created zeroed if new. */
static series *get_series(family *f, const char *labels, bool *created)
{
	series *s;

	if (labels == NULL)
		labels = "";
	*created = false;
	for (s = f->first; s != NULL; s = s->next)
		if (strcmp(s->labels, labels) == 0)
			return s;
	s = tally_xcalloc(1, sizeof(*s));
	s->labels = tally_xstrdup(labels);
	if (f->last != NULL)
		f->last->next = s;
	else
		f->first = s;
	f->last = s;
	*created = true;
	return s;
}

tally_counter *tally_metrics_counter(tally_metrics *m, const char *name,
				     const char *labels, const char *help)
{
	series *s;
	bool created;

	pthread_mutex_lock(&m->mu);
	s = get_series(get_family(m, name, MT_COUNTER, help), labels, &created);
	if (created)
		atomic_init(&s->u.c.v, 0);
	pthread_mutex_unlock(&m->mu);
	return &s->u.c;
}

void tally_counter_add(tally_counter *c, uint64_t n)
{
	atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t tally_counter_get(const tally_counter *c)
{
	return atomic_load_explicit(&((tally_counter *)c)->v,
				    memory_order_relaxed);
}

tally_gauge *tally_metrics_gauge(tally_metrics *m, const char *name,
				 const char *labels, const char *help)
{
	series *s;
	bool created;

	pthread_mutex_lock(&m->mu);
	s = get_series(get_family(m, name, MT_GAUGE, help), labels, &created);
	if (created)
		atomic_init(&s->u.g.v, 0);
	pthread_mutex_unlock(&m->mu);
	return &s->u.g;
}

void tally_gauge_set(tally_gauge *g, int64_t v)
{
	atomic_store_explicit(&g->v, v, memory_order_relaxed);
}

void tally_gauge_add(tally_gauge *g, int64_t delta)
{
	atomic_fetch_add_explicit(&g->v, delta, memory_order_relaxed);
}

int64_t tally_gauge_get(const tally_gauge *g)
{
	return atomic_load_explicit(&((tally_gauge *)g)->v,
				    memory_order_relaxed);
}

tally_histogram *tally_metrics_histogram(tally_metrics *m, const char *name,
					 const char *labels, const char *help,
					 const uint64_t *bounds_us,
					 size_t nbounds)
{
	family *f;
	series *s;
	bool created;
	size_t i;

	if (bounds_us == NULL) {
		bounds_us = default_bounds;
		nbounds = sizeof(default_bounds) / sizeof(default_bounds[0]);
	}
	for (i = 1; i < nbounds; i++)
		assert(bounds_us[i] > bounds_us[i - 1] &&
		       "histogram bounds must increase");
	pthread_mutex_lock(&m->mu);
	f = get_family(m, name, MT_HISTOGRAM, help);
	if (f->bounds == NULL) {
		f->bounds = tally_xcalloc(nbounds ? nbounds : 1,
					  sizeof(uint64_t));
		memcpy(f->bounds, bounds_us, nbounds * sizeof(uint64_t));
		f->nbounds = nbounds;
	}
	s = get_series(f, labels, &created);
	if (created) {
		s->u.h.bounds = f->bounds;
		s->u.h.nbounds = f->nbounds;
		s->u.h.buckets = tally_xcalloc(f->nbounds + 1,
					       sizeof(atomic_uint_fast64_t));
		for (i = 0; i <= f->nbounds; i++)
			atomic_init(&s->u.h.buckets[i], 0);
		atomic_init(&s->u.h.sum_us, 0);
		atomic_init(&s->u.h.count, 0);
	}
	pthread_mutex_unlock(&m->mu);
	return &s->u.h;
}

void tally_histogram_observe(tally_histogram *h, uint64_t us)
{
	size_t lo = 0, hi = h->nbounds;

	/* first bound >= us (le semantics); hi == nbounds means +Inf */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (h->bounds[mid] >= us)
			hi = mid;
		else
			lo = mid + 1;
	}
	atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

uint64_t tally_histogram_count(const tally_histogram *h)
{
	return atomic_load_explicit(&((tally_histogram *)h)->count,
				    memory_order_relaxed);
}

void tally_metrics_set_render_hook(tally_metrics *m, tally_metrics_hook fn,
				   void *payload)
{
	pthread_mutex_lock(&m->mu);
	m->hook = fn;
	m->hook_payload = payload;
	pthread_mutex_unlock(&m->mu);
}

/* --- rendering ---------------------------------------------------------- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (b->len + n + 1 > cap)
			cap *= 2;
		b->p = tally_xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

static void sb_u64(sbuf *b, uint64_t v)
{
	char t[32];
	int n = snprintf(t, sizeof(t), "%" PRIu64, v);
	sb_put(b, t, (size_t)n);
}

/* Microseconds as exact decimal seconds: 250 -> "0.00025", 1000000 -> "1". */
static void sb_seconds(sbuf *b, uint64_t us)
{
	char t[48];
	int n;
	uint64_t frac = us % 1000000;

	if (frac == 0) {
		n = snprintf(t, sizeof(t), "%" PRIu64, us / 1000000);
	} else {
		n = snprintf(t, sizeof(t), "%" PRIu64 ".%06" PRIu64,
			     us / 1000000, frac);
		while (t[n - 1] == '0')
			n--;
	}
	sb_put(b, t, (size_t)n);
}

/* HELP text escaping: backslash and newline. */
static void sb_help(sbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			sb_str(b, "\\\\");
		else if (*s == '\n')
			sb_str(b, "\\n");
		else
			sb_put(b, s, 1);
	}
}

/* name{labels[,extra]} */
static void sb_name(sbuf *b, const char *name, const char *suffix,
		    const char *labels, const char *extra)
{
	bool any = *labels != '\0' || extra != NULL;

	sb_str(b, name);
	sb_str(b, suffix);
	if (!any)
		return;
	sb_str(b, "{");
	sb_str(b, labels);
	if (extra != NULL) {
		if (*labels != '\0')
			sb_str(b, ",");
		sb_str(b, extra);
	}
	sb_str(b, "}");
}

static void render_histogram(sbuf *b, const family *f, series *s)
{
	tally_histogram *h = &s->u.h;
	uint64_t cum = 0;
	size_t i;
	char le[64];

	for (i = 0; i <= h->nbounds; i++) {
		cum += atomic_load_explicit(&h->buckets[i],
					    memory_order_relaxed);
		if (i < h->nbounds) {
			sbuf t = { 0 };
			sb_seconds(&t, h->bounds[i]);
			snprintf(le, sizeof(le), "le=\"%s\"", t.p);
			free(t.p);
		} else {
			snprintf(le, sizeof(le), "le=\"+Inf\"");
		}
		sb_name(b, f->name, "_bucket", s->labels, le);
		sb_str(b, " ");
		sb_u64(b, cum);
		sb_str(b, "\n");
	}
	sb_name(b, f->name, "_sum", s->labels, NULL);
	sb_str(b, " ");
	sb_seconds(b, atomic_load_explicit(&h->sum_us, memory_order_relaxed));
	sb_str(b, "\n");
	sb_name(b, f->name, "_count", s->labels, NULL);
	sb_str(b, " ");
	/* the +Inf bucket, so that _count equals it even mid-update */
	sb_u64(b, cum);
	sb_str(b, "\n");
}

void tally_metrics_render(char **out, size_t *len_out, tally_metrics *m)
{
	sbuf b = { 0 };
	family *f;
	series *s;
	tally_metrics_hook hook;
	void *hp;
	static const char *const tname[] = { "counter", "gauge", "histogram" };

	pthread_mutex_lock(&m->mu);
	hook = m->hook;
	hp = m->hook_payload;
	pthread_mutex_unlock(&m->mu);
	if (hook != NULL)
		hook(m, hp); /* may register or set gauges: no lock held */

	sb_put(&b, "", 0);
	pthread_mutex_lock(&m->mu);
	for (f = m->first; f != NULL; f = f->next) {
		sb_str(&b, "# HELP ");
		sb_str(&b, f->name);
		sb_str(&b, " ");
		sb_help(&b, f->help);
		sb_str(&b, "\n# TYPE ");
		sb_str(&b, f->name);
		sb_str(&b, " ");
		sb_str(&b, tname[f->type]);
		sb_str(&b, "\n");
		for (s = f->first; s != NULL; s = s->next) {
			char t[32];

			if (f->type == MT_HISTOGRAM) {
				render_histogram(&b, f, s);
				continue;
			}
			sb_name(&b, f->name, "", s->labels, NULL);
			if (f->type == MT_COUNTER)
				snprintf(t, sizeof(t), " %" PRIu64 "\n",
					 (uint64_t)atomic_load_explicit(
						 &s->u.c.v,
						 memory_order_relaxed));
			else
				snprintf(t, sizeof(t), " %" PRId64 "\n",
					 (int64_t)atomic_load_explicit(
						 &s->u.g.v,
						 memory_order_relaxed));
			sb_str(&b, t);
		}
	}
	pthread_mutex_unlock(&m->mu);
	*out = b.p;
	if (len_out != NULL)
		*len_out = b.len;
}

void tally_metrics_escape_label(char *out, size_t outlen, const char *value)
{
	size_t o = 0;

	assert(outlen > 0);
	for (; *value != '\0'; value++) {
		const char *rep = NULL;
		size_t rl = 1;

		if (*value == '\\')
			rep = "\\\\";
		else if (*value == '"')
			rep = "\\\"";
		else if (*value == '\n')
			rep = "\\n";
		if (rep != NULL)
			rl = 2;
		if (o + rl >= outlen)
			break;
		if (rep != NULL)
			memcpy(out + o, rep, rl);
		else
			out[o] = *value;
		o += rl;
	}
	out[o] = '\0';
}

/* --- HTTP ---------------------------------------------------------------- */

int tally_metrics_parse_listen(struct sockaddr_storage *out,
			       socklen_t *len_out, const char *listen,
			       tally_error *err)
{
	char host[256];
	const char *colon, *port_s, *h;
	size_t hl;
	int64_t port;
	struct addrinfo hints, *res = NULL;
	int rc;

	colon = strrchr(listen, ':');
	if (colon == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "listen '%s': expected HOST:PORT", listen);
	port_s = colon + 1;
	if (tally_parse_i64(&port, port_s) != 0 || port < 0 || port > 65535)
		return tally_error_set(err, TALLY_EINVALID,
				       "listen '%s': bad port", listen);
	h = listen;
	hl = (size_t)(colon - listen);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return tally_error_set(err, TALLY_EINVALID,
				       "listen '%s': host too long", listen);
	memcpy(host, h, hl);
	host[hl] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
	rc = getaddrinfo(hl ? host : NULL, port_s, &hints, &res);
	if (rc != 0 || res == NULL)
		return tally_error_set(err, TALLY_EINVALID, "listen '%s': %s",
				       listen, gai_strerror(rc));
	/* prefer IPv4 for names like localhost that resolve to both */
	{
		struct addrinfo *ai, *pick = res;
		for (ai = res; ai != NULL; ai = ai->ai_next)
			if (ai->ai_family == AF_INET) {
				pick = ai;
				break;
			}
		memset(out, 0, sizeof(*out));
		memcpy(out, pick->ai_addr, pick->ai_addrlen);
		*len_out = pick->ai_addrlen;
	}
	freeaddrinfo(res);
	return 0;
}

void tally_metrics__mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];
	size_t n;

	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	tally_log(TALLY_WARN, "http.log", TALLY_KV_STR("message", buf));
}

enum MHD_Result tally_metrics__respond_text(struct MHD_Connection *conn,
					    unsigned status, const char *text)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(text), (void *)text,
					       MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
				"text/plain; charset=utf-8");
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

int tally_metrics__handle(enum MHD_Result *result, struct MHD_Connection *conn,
			  const char *method, const char *url,
			  tally_metrics *m, tally_health_fn health,
			  tally_health_fn ready, void *payload)
{
	bool is_metrics = strcmp(url, "/metrics") == 0;
	bool is_health = strcmp(url, "/healthz") == 0;
	bool is_ready = strcmp(url, "/readyz") == 0;
	char detail[200], line[256];
	tally_health_fn fn;
	int bad;

	if (!is_metrics && !is_health && !is_ready)
		return 0;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		struct MHD_Response *resp;

		resp = MHD_create_response_from_buffer(
			0, NULL, MHD_RESPMEM_PERSISTENT);
		*result = MHD_NO;
		if (resp != NULL) {
			MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
						"GET, HEAD");
			*result = MHD_queue_response(
				conn, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
			MHD_destroy_response(resp);
		}
		return 1;
	}
	if (is_metrics) {
		struct MHD_Response *resp;
		char *text = NULL;
		size_t len = 0;

		tally_metrics_render(&text, &len, m);
		resp = MHD_create_response_from_buffer_with_free_callback(
			len, text, free);
		*result = MHD_NO;
		if (resp == NULL) {
			free(text);
			return 1;
		}
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
					"text/plain; version=0.0.4; "
					"charset=utf-8");
		*result = MHD_queue_response(conn, MHD_HTTP_OK, resp);
		MHD_destroy_response(resp);
		return 1;
	}
	fn = is_ready && ready != NULL ? ready : health;
	detail[0] = '\0';
	bad = fn != NULL ? fn(detail, sizeof(detail), payload) : 0;
	detail[sizeof(detail) - 1] = '\0';
	snprintf(line, sizeof(line), "%s%s%s\n", bad ? "unavailable" : "ok",
		 detail[0] ? ": " : "", detail);
	*result = tally_metrics__respond_text(
		conn, bad ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, line);
	return 1;
}

struct tally_metrics_server {
	struct MHD_Daemon *d;
	tally_metrics *m;
	tally_health_fn health, ready;
	void *payload;
	int port;
};

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn,
				 const char *url, const char *method,
				 const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	tally_metrics_server *srv = cls;
	enum MHD_Result ret = MHD_NO;
	static int marker;

	(void)version;
	(void)upload_data;
	if (*con_cls == NULL) {
		/* first call: headers only; answer on the next one */
		*con_cls = &marker;
		return MHD_YES;
	}
	if (*upload_data_size != 0) {
		*upload_data_size = 0; /* discard any body */
		return MHD_YES;
	}
	if (tally_metrics__handle(&ret, conn, method, url, srv->m,
				  srv->health, srv->ready, srv->payload))
		return ret;
	return tally_metrics__respond_text(conn, MHD_HTTP_NOT_FOUND,
					   "not found\n");
}

int tally_metrics_serve(tally_metrics_server **out, tally_metrics *m,
			const char *listen, tally_health_fn health,
			tally_health_fn ready, void *payload,
			tally_error *err)
{
	struct sockaddr_storage ss;
	socklen_t sl = 0;
	tally_metrics_server *srv;
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	int rc;

	rc = tally_metrics_parse_listen(&ss, &sl, listen, err);
	if (rc != 0)
		return rc;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	srv = tally_xcalloc(1, sizeof(*srv));
	srv->m = m;
	srv->health = health;
	srv->ready = ready;
	srv->payload = payload;
	srv->d = MHD_start_daemon(
		flags, 0, NULL, NULL, access_cb, srv,
		/* must come first, or MHD logs to stderr before it is set */
		MHD_OPTION_EXTERNAL_LOGGER, tally_metrics__mhd_log, NULL,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
		MHD_OPTION_END);
	if (srv->d == NULL) {
		free(srv);
		return tally_error_set(err, TALLY_ERROR,
				       "metrics: cannot listen on %s", listen);
	}
	info = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
	srv->port = info != NULL ? (int)info->port : 0;
	tally_log(TALLY_INFO, "metrics.listening",
		  TALLY_KV_STR("listen", listen),
		  TALLY_KV_INT("port", srv->port));
	*out = srv;
	return 0;
}

int tally_metrics_server_port(const tally_metrics_server *srv)
{
	return srv->port;
}

void tally_metrics_server_free(tally_metrics_server *srv)
{
	if (srv == NULL)
		return;
	MHD_stop_daemon(srv->d);
	free(srv);
}
