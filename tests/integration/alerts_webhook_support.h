/*
 * alerts_webhook_support.h - what the webhook delivery suites share: a
 * migrated database with one tenant, a loopback libmicrohttpd receiver
 * and a one-number query.
 */
#ifndef TALLY_ALERTS_WEBHOOK_SUPPORT_H
#define TALLY_ALERTS_WEBHOOK_SUPPORT_H

#include "test_support.h"
#include "check_main.h"

#include "tally/log.h"

#include <curl/curl.h>
#include <microhttpd.h>

#define AW_TENANT "4d7f3a52-2b1c-4c8e-9f0a-1b2c3d4e5f60"

/* A fresh migrated database named after prefix, with the tenant AW_TENANT;
 * db and dsn receive its name and DSN. */
static inline tally_pg *aw_db_open(char *db, size_t dbn, char *dsn,
				   size_t dsnn, const char *prefix)
{
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init(prefix, TALLY_FATAL);
	tally_test_unique(db, dbn, prefix);
	tally_test_db_create(dsn, dsnn, db, 1);
	ck_assert_msg(tally_pg_connect(&pg, dsn, 10000, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(tally_pg_exec(pg, NULL,
		"INSERT INTO tenants (id, name, slug, domain,"
		" subscription_plan, monthly_budget) VALUES ('" AW_TENANT "',"
		" 'Acme', 'acme', 'acme.example', 'enterprise', 100.00)",
		0, NULL, &err), 0);
	return pg;
}

/* The first column of the first row of q, a number. */
static inline int64_t aw_q_int(tally_pg *pg, const char *q)
{
	PGresult *res = NULL;
	tally_error err;
	int64_t v = -1;

	ck_assert_msg(tally_pg_exec(pg, &res, q, 0, NULL, &err) == 0, "%s: %s",
		      q, err.msg);
	ck_assert_int_eq(tally_parse_i64(&v, PQgetvalue(res, 0, 0)), 0);
	PQclear(res);
	return v;
}

/* A receiver on 127.0.0.1 (any free port) calling handler, done after
 * each request (may be NULL); url receives http://127.0.0.1:PORT/hook. */
static inline struct MHD_Daemon *
aw_rx_start(MHD_AccessHandlerCallback handler,
	    MHD_RequestCompletedCallback done, char *url, size_t n)
{
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
			     MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
			     handler, NULL, MHD_OPTION_NOTIFY_COMPLETED,
			     done, NULL, MHD_OPTION_END);
	ck_assert_msg(d != NULL, "receiver must start");
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(url, n, "http://127.0.0.1:%u/hook", (unsigned)info->port);
	return d;
}

/* A request body as it arrives (up to 4 KiB), in a handler's *con_cls. */
typedef struct aw_body {
	char buf[4096];
	size_t len;
} aw_body;

/* The body part of an access handler: true while the request is still
 * arriving (the handler returns MHD_YES), false once *con_cls (an
 * aw_body, freed by aw_body_done) holds all of it. */
static inline bool aw_body_more(void **con_cls, const char *data,
				size_t *data_size)
{
	aw_body *b = *con_cls;
	size_t n = *data_size;

	if (b == NULL) {
		*con_cls = calloc(1, sizeof(aw_body));
		return true;
	}
	if (n == 0)
		return false;
	if (n > sizeof(b->buf) - 1 - b->len)
		n = sizeof(b->buf) - 1 - b->len;
	memcpy(b->buf + b->len, data, n);
	b->len += n;
	*data_size = 0;
	return true;
}

/* MHD_OPTION_NOTIFY_COMPLETED: free the aw_body. */
static inline void aw_body_done(void *cls, struct MHD_Connection *conn,
				void **con_cls,
				enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

/* Answer status with an empty body. */
static inline enum MHD_Result aw_reply(struct MHD_Connection *conn,
				       unsigned status)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0,
		(void *)"", MHD_RESPMEM_PERSISTENT);
	enum MHD_Result r = MHD_queue_response(conn, status, resp);

	MHD_destroy_response(resp);
	return r;
}

#endif /* TALLY_ALERTS_WEBHOOK_SUPPORT_H */
