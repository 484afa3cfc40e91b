/* test_metrics.c - registry, text exposition format, thread safety. */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/metrics.h"
#include "tally/signals.h"

#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static char *render(tally_metrics *m)
{
	char *text = NULL;
	size_t len = 0;

	tally_metrics_render(&text, &len, m);
	ck_assert_ptr_nonnull(text);
	ck_assert_uint_eq(len, strlen(text));
	return text;
}

START_TEST(test_metrics_counter_format)
{
	tally_metrics *m = tally_metrics_new();
	tally_counter *a, *b, *a2, *plain;
	char *t;

	a = tally_metrics_counter(m, "tally_relay_requests_total",
				  "status=\"400\",reason=\"expired\"",
				  "Webhook requests by status and reason.");
	b = tally_metrics_counter(m, "tally_relay_requests_total",
				  "status=\"200\",reason=\"ok\"", "ignored");
	a2 = tally_metrics_counter(m, "tally_relay_requests_total",
				   "status=\"400\",reason=\"expired\"", NULL);
	plain = tally_metrics_counter(m, "tally_up_total", NULL, "Ups.");
	ck_assert_msg(a == a2, "same name+labels must return the same series");
	tally_counter_add(a, 2);
	tally_counter_add(a2, 1);
	tally_counter_add(b, 7);
	tally_counter_add(plain, 1);
	ck_assert_uint_eq(tally_counter_get(a), 3);
	t = render(m);
	ck_assert_str_eq(t,
		"# HELP tally_relay_requests_total Webhook requests by status "
		"and reason.\n"
		"# TYPE tally_relay_requests_total counter\n"
		"tally_relay_requests_total{status=\"400\",reason=\"expired\"} 3\n"
		"tally_relay_requests_total{status=\"200\",reason=\"ok\"} 7\n"
		"# HELP tally_up_total Ups.\n"
		"# TYPE tally_up_total counter\n"
		"tally_up_total 1\n");
	free(t);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_metrics_gauge_format)
{
	tally_metrics *m = tally_metrics_new();
	tally_gauge *g = tally_metrics_gauge(m, "tally_inflight", NULL,
					     "In flight.\nSecond \\ line");
	char *t;

	tally_gauge_set(g, 5);
	tally_gauge_add(g, -7);
	ck_assert_int_eq(tally_gauge_get(g), -2);
	t = render(m);
	ck_assert_str_eq(t,
		"# HELP tally_inflight In flight.\\nSecond \\\\ line\n"
		"# TYPE tally_inflight gauge\n"
		"tally_inflight -2\n");
	free(t);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_metrics_histogram_format)
{
	static const uint64_t bounds[] = { 250, 1000, 1500000 };
	tally_metrics *m = tally_metrics_new();
	tally_histogram *h;
	char *t;

	h = tally_metrics_histogram(m, "tally_produce_seconds",
				    "topic=\"x\"", "Produce latency.", bounds,
				    3);
	tally_histogram_observe(h, 250);     /* le 250 is inclusive */
	tally_histogram_observe(h, 251);
	tally_histogram_observe(h, 1000000);
	tally_histogram_observe(h, 9000000); /* +Inf */
	ck_assert_uint_eq(tally_histogram_count(h), 4);
	t = render(m);
	ck_assert_str_eq(t,
		"# HELP tally_produce_seconds Produce latency.\n"
		"# TYPE tally_produce_seconds histogram\n"
		"tally_produce_seconds_bucket{topic=\"x\",le=\"0.00025\"} 1\n"
		"tally_produce_seconds_bucket{topic=\"x\",le=\"0.001\"} 2\n"
		"tally_produce_seconds_bucket{topic=\"x\",le=\"1.5\"} 3\n"
		"tally_produce_seconds_bucket{topic=\"x\",le=\"+Inf\"} 4\n"
		"tally_produce_seconds_sum{topic=\"x\"} 10.000501\n"
		"tally_produce_seconds_count{topic=\"x\"} 4\n");
	free(t);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_metrics_histogram_default_buckets)
{
	tally_metrics *m = tally_metrics_new();
	tally_histogram *h = tally_metrics_histogram(m, "lat_seconds", NULL,
						     "L.", NULL, 0);
	char *t;

	tally_histogram_observe(h, 0);
	t = render(m);
	ck_assert_msg(strstr(t, "lat_seconds_bucket{le=\"0.0001\"} 1\n") != NULL,
		      "first default bucket is 100 us: %s", t);
	ck_assert_msg(strstr(t, "lat_seconds_bucket{le=\"10\"} 1\n") != NULL,
		      "last default bucket is 10 s");
	ck_assert_msg(strstr(t, "lat_seconds_sum 0\n") != NULL, "sum 0");
	free(t);
	tally_metrics_free(m);
}
END_TEST

static void hook(tally_metrics *m, void *payload)
{
	tally_gauge_set(tally_metrics_gauge(m, "sampled", NULL, "S."),
			*(int *)payload);
}

START_TEST(test_metrics_render_hook)
{
	tally_metrics *m = tally_metrics_new();
	int v = 42;
	char *t;

	tally_metrics_set_render_hook(m, hook, &v);
	t = render(m);
	ck_assert_msg(strstr(t, "\nsampled 42\n") != NULL,
		      "hook must run before rendering: %s", t);
	free(t);
	tally_metrics_free(m);
}
END_TEST

static void *hammer(void *arg)
{
	tally_metrics *m = arg;
	tally_counter *c = tally_metrics_counter(m, "n_total", NULL, "N.");
	tally_histogram *h = tally_metrics_histogram(m, "h_seconds", NULL,
						     "H.", NULL, 0);
	int i;

	for (i = 0; i < 100000; i++) {
		tally_counter_add(c, 1);
		tally_histogram_observe(h, (uint64_t)i);
	}
	return NULL;
}

START_TEST(test_metrics_threads)
{
	tally_metrics *m = tally_metrics_new();
	pthread_t th[4];
	int i;

	for (i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, hammer, m);
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	ck_assert_uint_eq(tally_counter_get(tally_metrics_counter(
				  m, "n_total", NULL, NULL)), 400000);
	ck_assert_uint_eq(tally_histogram_count(tally_metrics_histogram(
				  m, "h_seconds", NULL, NULL, NULL, 0)),
			  400000);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_metrics_escape_label)
{
	char b[16];

	tally_metrics_escape_label(b, sizeof(b), "a\"b\\c\nd");
	ck_assert_str_eq(b, "a\\\"b\\\\c\\nd");
	tally_metrics_escape_label(b, 4, "abcdef");
	ck_assert_str_eq(b, "abc");
	tally_metrics_escape_label(b, 3, "a\"");
	ck_assert_msg(strcmp(b, "a") == 0, "never split an escape: %s", b);
}
END_TEST

START_TEST(test_metrics_parse_listen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	tally_error err;

	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl, "127.0.0.1:9401",
						    &err), 0);
	ck_assert_int_eq(ss.ss_family, AF_INET);
	ck_assert_int_eq(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9401);
	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl, "[::1]:0", &err),
			 0);
	ck_assert_int_eq(ss.ss_family, AF_INET6);
	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl, ":8088", &err),
			 0);
	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl, "127.0.0.1",
						    &err), TALLY_EINVALID);
	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl, "127.0.0.1:x",
						    &err), TALLY_EINVALID);
	ck_assert_int_eq(tally_metrics_parse_listen(&ss, &sl,
						    "127.0.0.1:65536", &err),
			 TALLY_EINVALID);
}
END_TEST

START_TEST(test_signals_flags)
{
	tally_signals_install();
	ck_assert(!tally_signals_stop_requested());
	ck_assert(!tally_signals_reload_requested());
	raise(SIGHUP);
	ck_assert_msg(tally_signals_reload_requested(), "SIGHUP sets reload");
	ck_assert_msg(!tally_signals_reload_requested(), "reading clears it");
	raise(SIGTERM);
	ck_assert_msg(tally_signals_stop_requested(), "SIGTERM sets stop");
	ck_assert_msg(tally_signals_sleep_ms(10000),
		      "sleep returns at once when stopping");
}
END_TEST

START_TEST(test_signals_fast_exit)
{
	tally_signals_install();
	raise(SIGINT);
	raise(SIGINT); /* second one: _exit(1) */
	ck_abort_msg("a second SIGINT must exit at once");
}
END_TEST

START_TEST(test_metrics_register_table)
{
	tally_metrics *m = tally_metrics_new();
	tally_counter *c = NULL;
	tally_gauge *g = NULL;
	tally_histogram *h = NULL;
	const tally_metric_def defs[] = {
		{ "tally_t_total", "k=\"v\"", "Things.", &c },
		{ "tally_t_level", NULL, "Level.", .gauge = &g },
		{ "tally_t_seconds", NULL, "Time.", .histogram = &h },
	};
	char *t;

	TALLY_METRICS_REGISTER(m, defs);
	ck_assert_ptr_nonnull(c);
	ck_assert_ptr_nonnull(g);
	ck_assert_ptr_nonnull(h);
	ck_assert(c == tally_metrics_counter(m, "tally_t_total", "k=\"v\"",
					     NULL));
	tally_counter_add(c, 3);
	tally_gauge_set(g, -4);
	tally_histogram_observe(h, 5);
	t = render(m);
	/* in table order, with the table's help texts */
	ck_assert_msg(strstr(t, "# HELP tally_t_total Things.\n"
			     "# TYPE tally_t_total counter\n"
			     "tally_t_total{k=\"v\"} 3\n"
			     "# HELP tally_t_level Level.\n"
			     "# TYPE tally_t_level gauge\n"
			     "tally_t_level -4\n"
			     "# HELP tally_t_seconds Time.\n"
			     "# TYPE tally_t_seconds histogram\n") == t,
		      "%s", t);
	ck_assert_uint_eq(tally_histogram_count(h), 1);
	free(t);
	tally_metrics_free(m);
}
END_TEST

static Suite *tally_metrics_suite(void)
{
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("Core");
	TCase *ts = tcase_create("Signals");

	tcase_set_timeout(tc, 10);
	tcase_add_test(tc, test_metrics_counter_format);
	tcase_add_test(tc, test_metrics_gauge_format);
	tcase_add_test(tc, test_metrics_histogram_format);
	tcase_add_test(tc, test_metrics_histogram_default_buckets);
	tcase_add_test(tc, test_metrics_render_hook);
	tcase_add_test(tc, test_metrics_threads);
	tcase_add_test(tc, test_metrics_escape_label);
	tcase_add_test(tc, test_metrics_parse_listen);
	tcase_add_test(tc, test_metrics_register_table);
	suite_add_tcase(s, tc);
	tcase_set_timeout(ts, 10);
	tcase_add_test(ts, test_signals_flags);
	tcase_add_exit_test(ts, test_signals_fast_exit, 1);
	suite_add_tcase(s, ts);
	return s;
}

TALLY_CHECK_MAIN(tally_metrics_suite)
