/*
 * test_stripe_local.c - stripe_sync against a scripted local Stripe
 * (libmicrohttpd on 127.0.0.1, the pattern of test_stripe_retry.c) and
 * PostgreSQL:
 * - a Stripe 4xx on the command path (400 with Stripe's error object for
 *   POST /v1/subscriptions) is recorded as `failed` with type, code,
 *   message, param, HTTP status and Request-Id, is not retried, and a
 *   redelivery of the same command is a no-op (no HTTP request at all);
 * - a 401 (tally's API key rejected) is not the command's fault: it stays
 *   pending (ETRANSIENT) and succeeds once the key works;
 * - a dispute that arrives before any event of its charge finds its tenant
 *   by fetching the charge (GET /v1/charges/{id}): by the charge's customer,
 *   else the charge's metadata.tenant_id; a charge Stripe does not know
 *   leaves the event `unknown_tenant` (processed again if redelivered);
 * - the same GET passes stripe-mock's OpenAPI validation.
 */
#include "stripe_testdb.h"
#include "tally/stripe_sync.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define T1 "5a1b2c3d-0000-4000-8000-000000000001"
#define T2 "5a1b2c3d-0000-4000-8000-000000000002"
#define T3 "5a1b2c3d-0000-4000-8000-000000000003"

static tally_pg *pg;
static tally_config *cfg;

/* ---- the local Stripe ---------------------------------------------------- */

static struct {
	pthread_mutex_t mu;
	int sub_status;        /* answer to POST /v1/subscriptions */
	int posts_subscriptions;
	int get_customers;
	int get_charges;
	int total;
	char last_key[256];
} srv = { .mu = PTHREAD_MUTEX_INITIALIZER, .sub_status = 400 };

static struct MHD_Daemon *daemon_;
static char base_[64];

static const char e400[] =
	"{\"error\":{\"type\":\"invalid_request_error\","
	"\"code\":\"resource_missing\",\"param\":\"items[0][price]\","
	"\"message\":\"No such price: 'price_starter_test'\","
	"\"doc_url\":\"https://stripe.com/docs/error-codes/resource-missing\""
	"}}";
static const char e401[] =
	"{\"error\":{\"type\":\"invalid_request_error\","
	"\"message\":\"Invalid API Key provided: sk_test_***\"}}";
static const char sub_ok[] =
	"{\"id\":\"sub_local_1\",\"object\":\"subscription\","
	"\"customer\":\"cus_local_1\",\"status\":\"trialing\","
	"\"current_period_start\":1767225600,"
	"\"current_period_end\":1769904000,\"trial_start\":1767225600,"
	"\"trial_end\":1768435200,\"cancel_at_period_end\":false,"
	"\"created\":1767225600,\"currency\":\"usd\",\"metadata\":{},"
	"\"items\":{\"object\":\"list\",\"has_more\":false,\"data\":[{"
	"\"id\":\"si_local_1\",\"object\":\"subscription_item\","
	"\"quantity\":1,\"price\":{\"id\":\"price_starter_test\","
	"\"object\":\"price\"}}]}}";
static const char charge_known[] =
	"{\"id\":\"ch_local_known\",\"object\":\"charge\",\"amount\":4900,"
	"\"currency\":\"usd\",\"customer\":\"cus_local_1\","
	"\"payment_intent\":\"pi_local_known\",\"status\":\"succeeded\","
	"\"metadata\":{}}";
static const char charge_meta[] =
	"{\"id\":\"ch_local_meta\",\"object\":\"charge\",\"amount\":4900,"
	"\"currency\":\"usd\",\"customer\":null,\"status\":\"succeeded\","
	"\"metadata\":{\"tenant_id\":\"" T2 "\"}}";
static const char e404[] =
	"{\"error\":{\"type\":\"invalid_request_error\","
	"\"code\":\"resource_missing\",\"param\":\"id\","
	"\"message\":\"No such charge: 'ch_local_missing'\"}}";

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn,
			       const char *url, const char *method,
			       const char *version, const char *data,
			       size_t *data_size, void **con_cls)
{
	static int marker;
	struct MHD_Response *resp;
	const char *body = "{}";
	char buf[512];
	const char *key;
	enum MHD_Result r;
	int status = 404;

	(void)cls;
	(void)version;
	(void)data;
	if (*con_cls == NULL) {
		*con_cls = &marker;
		return MHD_YES;
	}
	if (*data_size > 0) {
		*data_size = 0; /* the form body is not needed */
		return MHD_YES;
	}
	pthread_mutex_lock(&srv.mu);
	srv.total++;
	key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					  "Idempotency-Key");
	snprintf(srv.last_key, sizeof(srv.last_key), "%s", key ? key : "");
	if (strcmp(method, "GET") == 0 &&
	    strncmp(url, "/v1/customers/", 14) == 0) {
		srv.get_customers++;
		snprintf(buf, sizeof(buf),
			 "{\"id\":\"%s\",\"object\":\"customer\"}", url + 14);
		body = buf;
		status = 200;
	} else if (strcmp(method, "POST") == 0 &&
		   strcmp(url, "/v1/subscriptions") == 0) {
		srv.posts_subscriptions++;
		status = srv.sub_status;
		body = status == 400 ? e400 : status == 401 ? e401 : sub_ok;
	} else if (strcmp(method, "GET") == 0 &&
		   strncmp(url, "/v1/charges/", 12) == 0) {
		srv.get_charges++;
		if (strcmp(url + 12, "ch_local_known") == 0) {
			status = 200;
			body = charge_known;
		} else if (strcmp(url + 12, "ch_local_meta") == 0) {
			status = 200;
			body = charge_meta;
		} else {
			body = e404;
		}
	}
	pthread_mutex_unlock(&srv.mu);
	resp = MHD_create_response_from_buffer(strlen(body), (void *)body,
					       MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Request-Id", status == 400
				? "req_local_400" : "req_local");
	r = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return r;
}

/* Per test: Check runs each test in a fork, and threads do not follow. */
static void start_server(void)
{
	const union MHD_DaemonInfo *info;

	daemon_ = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
				   MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
				   NULL, handler, NULL, MHD_OPTION_END);
	ck_assert_msg(daemon_ != NULL, "test HTTP server must start");
	info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(base_, sizeof(base_), "http://127.0.0.1:%d",
		 (int)info->port);
}

static void setup(void)
{
	pg = testdb_create("tally_stripe_local");
	cfg = testdb_config();
	testdb_tenant(pg, T1, "local-one", "cus_local_1");
	testdb_tenant(pg, T2, "local-two", NULL);
	testdb_tenant(pg, T3, "local-three", "cus_local_3");
}

static void teardown(void)
{
	tally_config_free(cfg);
	tally_pg_free(pg);
}

typedef struct world {
	tally_stripe *stripe;
	tally_stripe_sync *ss;
} world;

static void world_start(world *w, const char *base)
{
	tally_stripe_opts o = { 0 };
	tally_stripe_sync_opts so = { 0 };
	tally_error err;

	if (base == NULL) {
		start_server();
		base = base_;
	}

	o.api_base = base;
	o.secret_key = "sk_test_local_secret";
	o.api_version = "2024-06-20";
	o.timeout_ms = 5000;
	o.max_retries = 3; /* a final 4xx must not use them */
	o.backoff_base_ms = 5;
	o.backoff_cap_ms = 20;
	ck_assert_int_eq(tally_stripe_new(&w->stripe, &o, &err), 0);
	so.pg = pg;
	so.cfg = cfg;
	so.stripe = w->stripe;
	ck_assert_int_eq(tally_stripe_sync_new(&w->ss, &so, &err), 0);
}

static void world_stop(world *w)
{
	tally_stripe_sync_free(w->ss);
	tally_stripe_free(w->stripe);
	if (daemon_ != NULL)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
}

static tally_command sub_cmd(const char *id, const char *tenant)
{
	tally_command c;

	memset(&c, 0, sizeof(c));
	c.id.ptr = id;
	c.id.len = (uint32_t)strlen(id);
	c.type = TALLY_CMD_CREATE_SUBSCRIPTION;
	ck_assert_int_eq(tally_uuid_parse(c.tenant_id, tenant,
					  (uint32_t)strlen(tenant)), 0);
	c.time_ms = 1767225600000LL;
	c.trial_days = -1;
	c.plan.ptr = "starter";
	c.plan.len = 7;
	return c;
}

static void check(const char *sql, const char *arg, const char *want)
{
	char got[512];

	testdb_get(pg, got, sizeof(got), sql, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]: want '%s', got '%s'",
		      sql, arg ? arg : "", want, got);
}

static int hits(int *field)
{
	int v;

	pthread_mutex_lock(&srv.mu);
	v = *field;
	pthread_mutex_unlock(&srv.mu);
	return v;
}

START_TEST(test_stripe_local_400_recorded_failed)
{
	world w;
	tally_command c = sub_cmd("cmd-local-400", T1);
	tally_error err;
	int rc, total;

	pthread_mutex_lock(&srv.mu);
	srv.sub_status = 400;
	pthread_mutex_unlock(&srv.mu);
	world_start(&w, NULL);
	rc = tally_stripe_sync_command(w.ss, &c, &err);
	ck_assert_msg(rc == 0, "a rejected command reaches a final state: %d "
		      "(%s)", rc, rc ? err.msg : "");
	ck_assert_int_eq(hits(&srv.posts_subscriptions), 1); /* no retry */
	pthread_mutex_lock(&srv.mu);
	ck_assert_str_eq(srv.last_key,
			 "tally-cmd-" T1 "-cmd-local-400-subscription");
	pthread_mutex_unlock(&srv.mu);
	check("SELECT concat_ws('|', status, error_type, error_code, "
	      "error_param, http_status, stripe_request_id, attempts) FROM "
	      "billing_commands WHERE command_id = $1", "cmd-local-400",
	      "failed|invalid_request_error|resource_missing|items[0][price]|"
	      "400|req_local_400|0");
	check("SELECT error_message FROM billing_commands WHERE command_id = "
	      "$1", "cmd-local-400", "No such price: 'price_starter_test'");
	check("SELECT completed_at IS NOT NULL FROM billing_commands WHERE "
	      "command_id = $1", "cmd-local-400", "t");
	/* the tenant is untouched */
	check("SELECT coalesce(stripe_subscription_id, '-') FROM tenants "
	      "WHERE id = $1", T1, "-");
	/* redelivery: a no-op, not a single HTTP request */
	total = hits(&srv.total);
	rc = tally_stripe_sync_command(w.ss, &c, &err);
	ck_assert_int_eq(rc, TALLY_EDUPLICATE);
	ck_assert_int_eq(hits(&srv.total), total);
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), 2);
	check("SELECT status || ':' || attempts FROM billing_commands WHERE "
	      "command_id = $1", "cmd-local-400", "failed:1");
	/* the secret key never reaches the row */
	check("SELECT count(*) FROM billing_commands WHERE "
	      "error_message LIKE '%sk_test_local_secret%'", NULL, "0");
	world_stop(&w);
}
END_TEST

START_TEST(test_stripe_local_401_stays_pending)
{
	world w;
	tally_command c = sub_cmd("cmd-local-401", T3);
	tally_error err;
	int rc;

	pthread_mutex_lock(&srv.mu);
	srv.sub_status = 401;
	pthread_mutex_unlock(&srv.mu);
	world_start(&w, NULL);
	rc = tally_stripe_sync_command(w.ss, &c, &err);
	ck_assert_msg(rc == TALLY_ETRANSIENT, "401 is tally's key, retried "
		      "later: got %d", rc);
	check("SELECT status FROM billing_commands WHERE command_id = $1",
	      "cmd-local-401", "pending");
	ck_assert_msg(strstr(err.msg, "sk_test_local_secret") == NULL,
		      "no secret in errors");
	/* the key is fixed: the same command now goes through */
	pthread_mutex_lock(&srv.mu);
	srv.sub_status = 200;
	pthread_mutex_unlock(&srv.mu);
	rc = tally_stripe_sync_command(w.ss, &c, &err);
	ck_assert_msg(rc == 0, "after the fix: %d (%s)", rc,
		      rc ? err.msg : "");
	check("SELECT status || ':' || stripe_object_id FROM billing_commands "
	      "WHERE command_id = $1", "cmd-local-401",
	      "succeeded:sub_local_1");
	check("SELECT stripe_subscription_id || ':' || subscription_plan "
	      "FROM tenants WHERE id = $1", T3, "sub_local_1:starter");
	world_stop(&w);
}
END_TEST

static int deliver(world *w, const char *evt, const char *dispute,
		   const char *charge, const char **outcome)
{
	char body[1024];
	tally_error err;
	int rc;

	snprintf(body, sizeof(body),
		 "{\"id\":\"%s\",\"object\":\"event\","
		 "\"type\":\"charge.dispute.created\",\"created\":1767300000,"
		 "\"livemode\":false,\"data\":{\"object\":{\"id\":\"%s\","
		 "\"object\":\"dispute\",\"amount\":4900,\"currency\":\"usd\","
		 "\"charge\":\"%s\",\"payment_intent\":null,"
		 "\"reason\":\"fraudulent\",\"status\":\"needs_response\","
		 "\"created\":1767299990,\"metadata\":{}}}}",
		 evt, dispute, charge);
	rc = tally_stripe_sync_event(w->ss, body, strlen(body), NULL, outcome,
				     &err);
	ck_assert_msg(rc == 0 || rc == TALLY_EDUPLICATE, "event %s: %d (%s)",
		      evt, rc, err.msg);
	return rc;
}

START_TEST(test_stripe_local_dispute_before_charge)
{
	world w;
	const char *outcome = NULL;

	world_start(&w, NULL);
	/* customer on the charge -> T1 */
	deliver(&w, "evt_local_d1", "dp_local_1", "ch_local_known", &outcome);
	ck_assert_str_eq(outcome, "applied");
	ck_assert_int_eq(hits(&srv.get_charges), 1);
	check("SELECT tenant_id::text || ':' || charge_id || ':' || status "
	      "FROM payments WHERE stripe_id = $1", "dp_local_1",
	      T1 ":ch_local_known:needs_response");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'dispute' AND tenant_id = $1", T1, "1");
	check("SELECT outcome || ':' || tenant_id FROM stripe_events WHERE "
	      "event_id = $1", "evt_local_d1", "applied:" T1);
	/* duplicate: no second fetch, no second signal */
	ck_assert_int_eq(deliver(&w, "evt_local_d1", "dp_local_1",
				 "ch_local_known", &outcome),
			 TALLY_EDUPLICATE);
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'dispute' AND tenant_id = $1", T1, "1");
	/* a second dispute on the same charge resolves from PostgreSQL */
	deliver(&w, "evt_local_d2", "dp_local_2", "ch_local_known", &outcome);
	ck_assert_str_eq(outcome, "applied");
	ck_assert_int_eq(hits(&srv.get_charges), 1);

	/* no customer on the charge: its metadata names the tenant */
	deliver(&w, "evt_local_d3", "dp_local_3", "ch_local_meta", &outcome);
	ck_assert_str_eq(outcome, "applied");
	check("SELECT tenant_id::text FROM payments WHERE stripe_id = $1",
	      "dp_local_3", T2);

	/* Stripe does not know the charge: unknown_tenant, kept retryable */
	deliver(&w, "evt_local_d4", "dp_local_4", "ch_local_missing",
		&outcome);
	ck_assert_str_eq(outcome, "unknown_tenant");
	check("SELECT outcome FROM stripe_events WHERE event_id = $1",
	      "evt_local_d4", "unknown_tenant");
	deliver(&w, "evt_local_d4", "dp_local_4", "ch_local_missing",
		&outcome);
	ck_assert_str_eq(outcome, "unknown_tenant"); /* tried again */
	ck_assert_int_eq(hits(&srv.get_charges), 4);
	world_stop(&w);
}
END_TEST

START_TEST(test_stripe_local_charge_fetch_stripe_mock)
{
	const char *mock = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	const char *outcome = NULL;
	world w;

	world_start(&w, mock);
	/* stripe-mock validates GET /v1/charges/{id}; its fixture charge has
	 * no customer, so the tenant stays unknown, without an error */
	deliver(&w, "evt_mock_d1", "dp_mock_1", "ch_mock_1", &outcome);
	ck_assert_str_eq(outcome, "unknown_tenant");
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), 1);
	world_stop(&w);
}
END_TEST

static Suite *tally_stripe_local_suite(void)
{
	Suite *s = suite_create("stripe_local");
	TCase *tc = tcase_create("LocalStripe");

	tcase_set_timeout(tc, 60);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_stripe_local_400_recorded_failed);
	tcase_add_test(tc, test_stripe_local_401_stays_pending);
	tcase_add_test(tc, test_stripe_local_dispute_before_charge);
	tcase_add_test(tc, test_stripe_local_charge_fetch_stripe_mock);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_local_suite)
