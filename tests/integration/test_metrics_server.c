/*
 * test_metrics_server.c - the metrics server over real HTTP (libcurl):
 * /metrics, /healthz, /readyz with a failing check, 404 and 405.
 */
#define _DEFAULT_SOURCE
#include "relay_webhook_support.h"

static int sick(char *detail, size_t n, void *payload)
{
	(void)payload;
	snprintf(detail, n, "db down");
	return 1;
}

START_TEST(test_metrics_server_http)
{
	tally_metrics *m = tally_metrics_new();
	tally_metrics_server *srv = NULL;
	tally_error err = { 0 };
	buf resp;
	int port;

	tally_counter_add(tally_metrics_counter(m, "x_total", NULL, "X."), 3);
	ck_assert_msg(tally_metrics_serve(&srv, m, "127.0.0.1:0", NULL, sick,
					  NULL, &err) == 0, "%s", err.msg);
	port = tally_metrics_server_port(srv);
	ck_assert_int_eq(http(port, "GET", "/metrics", NULL, NULL, &resp), 200);
	ck_assert_msg(strstr(resp.data, "\nx_total 3\n") != NULL, "%s",
		      resp.data);
	ck_assert_int_eq(http(port, "GET", "/healthz", NULL, NULL, &resp), 200);
	ck_assert_int_eq(http(port, "GET", "/readyz", NULL, NULL, &resp), 503);
	ck_assert_str_eq(resp.data, "unavailable: db down\n");
	ck_assert_int_eq(http(port, "GET", "/nope", NULL, NULL, NULL), 404);
	ck_assert_int_eq(http(port, "POST", "/metrics", "x", NULL, NULL), 405);
	tally_metrics_server_free(srv);
	tally_metrics_free(m);
}
END_TEST

static Suite *tally_metrics_server_suite(void)
{
	Suite *s = suite_create("metrics_server");
	TCase *tc = tcase_create("Relay");

	relay_suite_init();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_metrics_server_http);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_metrics_server_suite)
