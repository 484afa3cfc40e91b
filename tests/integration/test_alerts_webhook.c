/*
 * test_alerts_webhook.c - the tally-alerts engine on a real PostgreSQL and
 * a webhook receiver (libmicrohttpd): each alert arrives once, and a
 * failing receiver is retried until delivered_at is set.
 */
#include "alerts_engine_support.h"

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>

/* webhook receiver --------------------------------------------------- */

static struct {
	pthread_mutex_t mu;
	int fail_left;       /* answer 500 to this many requests */
	int requests;
	char ok_ids[16][40]; /* ids answered 2xx */
	int nok;
	char last_body[2048];
} rx = { PTHREAD_MUTEX_INITIALIZER, 0, 0, { { 0 } }, 0, "" };

typedef struct body {
	char buf[2048];
	size_t len;
} body;

static enum MHD_Result rx_handler(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *data,
				  size_t *data_size, void **con_cls)
{
	body *b = *con_cls;
	struct MHD_Response *resp;
	const char *id;
	unsigned status;
	enum MHD_Result r;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	if (b == NULL) {
		*con_cls = calloc(1, sizeof(body));
		return MHD_YES;
	}
	if (*data_size > 0) {
		size_t n = *data_size;

		if (n > sizeof(b->buf) - 1 - b->len)
			n = sizeof(b->buf) - 1 - b->len;
		memcpy(b->buf + b->len, data, n);
		b->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					 "X-Tally-Alert-Id");
	pthread_mutex_lock(&rx.mu);
	rx.requests++;
	if (rx.fail_left > 0) {
		rx.fail_left--;
		status = 500;
	} else {
		status = 204;
		if (rx.nok < 16)
			snprintf(rx.ok_ids[rx.nok++], 40, "%s", id ? id : "");
		memcpy(rx.last_body, b->buf, b->len + 1);
	}
	pthread_mutex_unlock(&rx.mu);
	resp = MHD_create_response_from_buffer(0, (void *)"",
					       MHD_RESPMEM_PERSISTENT);
	r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static void rx_done(void *cls, struct MHD_Connection *conn, void **con_cls,
		    enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

START_TEST(test_alerts_webhook_retry_then_once)
{
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	tally_alerts_opts ao = { 0 };
	tally_alerts *a = NULL;
	tally_pg *pg2 = NULL;
	tally_error err;
	char url[128];
	tally_alerts_webhook wh = { url, { "whsec_test", NULL }, 1, 2000, 12,
				    86400 };
	int nd = -1, nf = -1, i, j;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
			     MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
			     rx_handler, NULL, MHD_OPTION_NOTIFY_COMPLETED,
			     rx_done, NULL, MHD_OPTION_END);
	ck_assert_msg(d != NULL, "receiver must start");
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/hook",
		 (unsigned)info->port);

	ao.group = "g_hook";
	ao.totals_topic = "tt";
	ao.signals_topic = "ts";
	ck_assert_int_eq(tally_alerts_new(&a, pg, &ao, &err), 0);
	assign0(a, "tt", "ts");
	raise_four(a, "tt", "ts");
	ck_assert_int_eq(tally_pg_connect(&pg2, dsn, 5000, &err), 0);

	/* the receiver is down (500): every alert fails once */
	rx.fail_left = 4;
	ck_assert_int_eq(tally_alerts_deliver(pg2, &wh, 50, NULL, &nd,
					      &nf, &err), 0);
	ck_assert_int_eq(nd, 0);
	ck_assert_int_eq(nf, 4);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivered_at IS NULL AND delivery_attempts"
			       " = 1 AND last_delivery_error = 'HTTP 500'"),
			 4);
	/* not due yet: the backoff holds them back */
	ck_assert_int_eq(tally_alerts_deliver(pg2, &wh, 50, NULL, &nd,
					      &nf, &err), 0);
	ck_assert_int_eq(nd + nf, 0);
	/* after the first backoff (1 s) they go through, once each */
	tally_sleep_ms(1200);
	ck_assert_int_eq(tally_alerts_deliver(pg2, &wh, 50, NULL, &nd,
					      &nf, &err), 0);
	ck_assert_int_eq(nd, 4);
	ck_assert_int_eq(nf, 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivered_at IS NOT NULL AND"
			       " delivered_at > raised_at AND"
			       " delivery_attempts = 2"), 4);
	tally_sleep_ms(1200);
	ck_assert_int_eq(tally_alerts_deliver(pg2, &wh, 50, NULL, &nd,
					      &nf, &err), 0);
	ck_assert_int_eq(nd + nf, 0);
	pthread_mutex_lock(&rx.mu);
	ck_assert_int_eq(rx.requests, 8);
	ck_assert_int_eq(rx.nok, 4);
	for (i = 0; i < rx.nok; i++)
		for (j = i + 1; j < rx.nok; j++)
			ck_assert_msg(strcmp(rx.ok_ids[i], rx.ok_ids[j]) != 0,
				      "each alert is delivered once");
	ck_assert_msg(strstr(rx.last_body, "\"tenant_id\"") &&
		      strstr(rx.last_body, "\"payload\"") &&
		      strstr(rx.last_body, "\"raised_at\""),
		      "body is the alert JSON: %s", rx.last_body);
	pthread_mutex_unlock(&rx.mu);

	tally_pg_free(pg2);
	tally_alerts_free(a);
	MHD_stop_daemon(d);
}
END_TEST

static Suite *tally_alerts_webhook_suite(void)
{
	Suite *s = suite_create("alerts_webhook");
	TCase *tc = tcase_create("Postgres");

	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_alerts_webhook_retry_then_once);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_webhook_suite)
