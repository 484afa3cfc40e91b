/*
 * metrics_server.c - the /metrics, /healthz and /readyz HTTP server
 * (libmicrohttpd), and the listen-address parser programs share.
 */
#define _POSIX_C_SOURCE 200809L
#include "metrics_int.h"
#include "tally/log.h"

#include <assert.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
