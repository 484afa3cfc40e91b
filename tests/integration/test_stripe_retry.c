/*
 * test_stripe_retry.c - the client's retry policy against a scripted local
 * HTTP server (libmicrohttpd on 127.0.0.1, no external services):
 * 429, 500, 409 lock_timeout and a timeout before success are retried with
 * the same Idempotency-Key; 400 and Stripe-Should-Retry: false are not;
 * Stripe-Should-Retry: true makes even a 400 retryable.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/stripe.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAXSTEPS 8

typedef struct step {
	int status;        /* 0 = stall past the client's timeout */
	const char *body;
	const char *should_retry; /* Stripe-Should-Retry value or NULL */
} step;

static struct {
	pthread_mutex_t mu;
	step steps[MAXSTEPS];
	int nsteps;
	int hits;
	char keys[MAXSTEPS * 2][256];
	char versions[MAXSTEPS * 2][64];
	char auth[MAXSTEPS * 2][128];
	char bodies[MAXSTEPS * 2][256];
} srv = { .mu = PTHREAD_MUTEX_INITIALIZER };

static struct MHD_Daemon *daemon_;
static int port_;

typedef struct upload {
	char buf[256];
	size_t len;
} upload;

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn,
			       const char *url, const char *method,
			       const char *version, const char *data,
			       size_t *data_size, void **con_cls)
{
	upload *up = *con_cls;
	struct MHD_Response *resp;
	const char *v;
	enum MHD_Result r;
	step st;
	int hit;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	if (up == NULL) {
		*con_cls = calloc(1, sizeof(upload));
		return MHD_YES;
	}
	if (*data_size > 0) {
		size_t n = *data_size;

		if (n > sizeof(up->buf) - 1 - up->len)
			n = sizeof(up->buf) - 1 - up->len;
		memcpy(up->buf + up->len, data, n);
		up->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	pthread_mutex_lock(&srv.mu);
	hit = srv.hits++;
	st = srv.steps[hit < srv.nsteps ? hit : srv.nsteps - 1];
	if (hit < MAXSTEPS * 2) {
		v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						"Idempotency-Key");
		snprintf(srv.keys[hit], sizeof(srv.keys[hit]), "%s",
			 v ? v : "");
		v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						"Stripe-Version");
		snprintf(srv.versions[hit], sizeof(srv.versions[hit]), "%s",
			 v ? v : "");
		v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						"Authorization");
		snprintf(srv.auth[hit], sizeof(srv.auth[hit]), "%s",
			 v ? v : "");
		memcpy(srv.bodies[hit], up->buf, up->len + 1);
	}
	pthread_mutex_unlock(&srv.mu);

	if (st.status == 0) {
		struct timespec ts = { 0, 400 * 1000000L };

		nanosleep(&ts, NULL); /* the client gives up after 150 ms */
		st.status = 200;
	}
	resp = MHD_create_response_from_buffer(strlen(st.body),
					       (void *)st.body,
					       MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Request-Id", "req_test");
	if (st.should_retry)
		MHD_add_response_header(resp, "Stripe-Should-Retry",
					st.should_retry);
	r = MHD_queue_response(conn, (unsigned)st.status, resp);
	MHD_destroy_response(resp);
	return r;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

static void start_server(void)
{
	const union MHD_DaemonInfo *info;

	daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
				   MHD_USE_THREAD_PER_CONNECTION,
				   0, NULL, NULL, handler, NULL,
				   MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
				   MHD_OPTION_END);
	ck_assert_msg(daemon_ != NULL, "test HTTP server must start");
	info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
	port_ = info->port;
}

static void stop_server(void)
{
	MHD_stop_daemon(daemon_);
	daemon_ = NULL;
}

static void script(const step *steps, int n)
{
	pthread_mutex_lock(&srv.mu);
	memcpy(srv.steps, steps, sizeof(step) * (size_t)n);
	srv.nsteps = n;
	srv.hits = 0;
	memset(srv.keys, 0, sizeof(srv.keys));
	pthread_mutex_unlock(&srv.mu);
}

static tally_stripe *client(int max_retries)
{
	tally_stripe_opts o = { 0 };
	tally_stripe *s = NULL;
	tally_error err;
	char base[64];

	snprintf(base, sizeof(base), "http://127.0.0.1:%d", port_);
	o.api_base = base;
	o.secret_key = "sk_test_retry_secret";
	o.api_version = "2024-06-20";
	o.timeout_ms = 150;
	o.max_retries = max_retries;
	o.backoff_base_ms = 5;
	o.backoff_cap_ms = 20;
	ck_assert_int_eq(tally_stripe_new(&s, &o, &err), 0);
	return s;
}

static const char ok_body[] = "{\"id\":\"cus_ok\",\"object\":\"customer\"}";
static const char e429[] = "{\"error\":{\"type\":\"invalid_request_error\","
	"\"code\":\"rate_limit\",\"message\":\"Too many requests\"}}";
static const char e500[] = "{\"error\":{\"type\":\"api_error\","
	"\"message\":\"Something went wrong\"}}";
static const char e409[] = "{\"error\":{\"type\":\"invalid_request_error\","
	"\"code\":\"lock_timeout\",\"message\":\"This object cannot be "
	"accessed right now because another API request or Stripe process "
	"is currently accessing it.\"}}";
static const char e400[] = "{\"error\":{\"type\":\"invalid_request_error\","
	"\"code\":\"parameter_missing\",\"param\":\"items\","
	"\"message\":\"Missing required param: items.\"}}";

static int post(tally_stripe *s, json_t **out, tally_stripe_error *se,
		tally_error *err)
{
	json_t *p = json_pack("{s:s, s:[{s:s}]}", "customer", "cus_1",
			      "items", "price", "price_1");
	int rc = tally_stripe_request(s, out, "POST", "/v1/subscriptions", p,
				      "tally-cmd-retry-1-subscription", se,
				      err);

	json_decref(p);
	return rc;
}

START_TEST(test_stripe_retry_until_success)
{
	const step steps[] = {
		{ 429, e429, NULL },
		{ 500, e500, NULL },
		{ 409, e409, NULL },
		{ 0, ok_body, NULL }, /* timeout: answer lost */
		{ 200, ok_body, NULL },
	};
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;
	json_t *out = NULL;
	int rc, i;

	start_server();
	script(steps, 5);
	s = client(6);
	rc = post(s, &out, &se, &err);
	ck_assert_msg(rc == 0, "429/500/409/timeout then 200 must succeed: %s",
		      err.msg);
	ck_assert_str_eq(tally_stripe_jstr(out, "id"), "cus_ok");
	ck_assert_int_eq(se.attempts, 5);
	pthread_mutex_lock(&srv.mu);
	ck_assert_int_eq(srv.hits, 5);
	for (i = 0; i < 5; i++) {
		ck_assert_msg(strcmp(srv.keys[i],
				     "tally-cmd-retry-1-subscription") == 0,
			      "attempt %d must resend the same key", i);
		ck_assert_str_eq(srv.versions[i], "2024-06-20");
		ck_assert_str_eq(srv.auth[i], "Bearer sk_test_retry_secret");
		ck_assert_str_eq(srv.bodies[i],
				 "customer=cus_1&items%5B0%5D%5Bprice%5D="
				 "price_1");
	}
	pthread_mutex_unlock(&srv.mu);
	json_decref(out);
	tally_stripe_free(s);
	stop_server();
}
END_TEST

/* every attempt is counted by its answer's class, the timeout as error */
START_TEST(test_stripe_retry_counts_status_classes)
{
	const step steps[] = {
		{ 429, e429, NULL }, { 500, e500, NULL }, { 409, e409, NULL },
		{ 0, ok_body, NULL }, { 200, ok_body, NULL },
	};
	static const struct {
		const char *status;
		uint64_t n;
	} want[] = { { "2xx", 1 }, { "429", 1 }, { "4xx", 1 }, { "5xx", 1 },
		     { "error", 1 } };
	tally_metrics *m = tally_metrics_new();
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;
	size_t i;

	start_server();
	script(steps, 5);
	s = client(6);
	tally_stripe_set_metrics(s, m);
	ck_assert_int_eq(post(s, NULL, &se, &err), 0);
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		char labels[32];

		snprintf(labels, sizeof(labels), "status=\"%s\"",
			 want[i].status);
		ck_assert_msg(tally_counter_get(tally_metrics_counter(
				      m, "tally_stripe_requests_total", labels,
				      NULL)) == want[i].n,
			      "status %s counted once", want[i].status);
	}
	tally_stripe_free(s);
	tally_metrics_free(m);
	stop_server();
}
END_TEST

START_TEST(test_stripe_retry_400_is_final)
{
	const step steps[] = { { 400, e400, NULL }, { 200, ok_body, NULL } };
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;
	int rc;

	start_server();
	script(steps, 2);
	s = client(5);
	rc = post(s, NULL, &se, &err);
	ck_assert_msg(rc == TALLY_EINVALID, "400 must not be retried");
	ck_assert_int_eq(srv.hits, 1);
	ck_assert_str_eq(se.type, "invalid_request_error");
	ck_assert_str_eq(se.code, "parameter_missing");
	ck_assert_str_eq(se.param, "items");
	ck_assert_str_eq(se.message, "Missing required param: items.");
	ck_assert_str_eq(se.request_id, "req_test");
	ck_assert_msg(strstr(err.msg, "sk_test_retry_secret") == NULL,
		      "no secret in errors");
	tally_stripe_free(s);
	stop_server();
}
END_TEST

START_TEST(test_stripe_retry_should_retry_false)
{
	const step steps[] = { { 500, e500, "false" }, { 200, ok_body, NULL } };
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;
	int rc;

	start_server();
	script(steps, 2);
	s = client(5);
	rc = post(s, NULL, &se, &err);
	ck_assert_msg(rc == TALLY_EINVALID,
		      "Stripe-Should-Retry: false must stop retries even on 500"
		      " (got %d)", rc);
	ck_assert_int_eq(srv.hits, 1);
	ck_assert_msg(se.should_retry_false, "the header is reported");
	tally_stripe_free(s);
	stop_server();
}
END_TEST

START_TEST(test_stripe_retry_should_retry_true)
{
	const step steps[] = { { 400, e400, "true" }, { 200, ok_body, NULL } };
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;

	start_server();
	script(steps, 2);
	s = client(5);
	ck_assert_msg(post(s, NULL, &se, &err) == 0,
		      "Stripe-Should-Retry: true makes a 400 retryable");
	ck_assert_int_eq(srv.hits, 2);
	tally_stripe_free(s);
	stop_server();
}
END_TEST

START_TEST(test_stripe_retry_exhausted_is_transient)
{
	const step steps[] = { { 503, e500, NULL } };
	tally_stripe *s;
	tally_stripe_error se;
	tally_error err;
	int rc;

	start_server();
	script(steps, 1);
	s = client(2);
	rc = post(s, NULL, &se, &err);
	ck_assert_msg(rc == TALLY_ETRANSIENT,
		      "retries exhausted on 5xx: ETRANSIENT, got %d", rc);
	ck_assert_int_eq(srv.hits, 3);
	tally_stripe_free(s);
	stop_server();
}
END_TEST

START_TEST(test_stripe_retry_connection_refused)
{
	tally_stripe_opts o = { 0 };
	tally_stripe *s = NULL;
	tally_stripe_error se;
	tally_error err;
	int rc;

	o.api_base = "http://127.0.0.1:1";
	o.secret_key = "sk_test_x";
	o.timeout_ms = 200;
	o.max_retries = 2;
	o.backoff_base_ms = 1;
	ck_assert_int_eq(tally_stripe_new(&s, &o, &err), 0);
	rc = tally_stripe_request(s, NULL, "GET", "/v1/customers/cus_1", NULL,
				  NULL, &se, &err);
	ck_assert_msg(rc == TALLY_ETRANSIENT, "network errors are transient");
	ck_assert_int_eq(se.attempts, 3);
	tally_stripe_free(s);
}
END_TEST

static Suite *tally_stripe_retry_suite(void)
{
	Suite *s = suite_create("stripe_retry");
	TCase *tc = tcase_create("Retry");

	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_stripe_retry_until_success);
	tcase_add_test(tc, test_stripe_retry_counts_status_classes);
	tcase_add_test(tc, test_stripe_retry_400_is_final);
	tcase_add_test(tc, test_stripe_retry_should_retry_false);
	tcase_add_test(tc, test_stripe_retry_should_retry_true);
	tcase_add_test(tc, test_stripe_retry_exhausted_is_transient);
	tcase_add_test(tc, test_stripe_retry_connection_refused);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_retry_suite)
