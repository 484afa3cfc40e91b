/*
 * test_stripe_commands.c - billing commands against stripe-mock: every
 * request passes its OpenAPI validation; outcomes land in billing_commands
 * and tenants; the same command twice, and again after a restart, creates
 * nothing new (same Idempotency-Key, object looked up by recorded id).
 * The boundary: an id that is not a Stripe id of its kind fails its
 * command (recorded, invalid_id) or its event (TALLY_EINVALID: dead-
 * lettered by tally-stripe) without any request; tally-stripe does not
 * start without a webhook secret unless stripe.verify_signatures = false.
 */
#include "stripe_testdb.h"
#include "tally/stripe_consumer.h"
#include "tally/stripe_sync.h"

#include <stdlib.h>
#include <string.h>

#define T1 "11111111-2222-4333-8444-555555555555"
#define T2 "66666666-7777-4888-9999-aaaaaaaaaaaa"
#define T3 "33333333-4444-4555-8666-777777777777"
#define T4 "44444444-5555-4666-8777-888888888888"
#define T5 "55555555-6666-4777-8888-999999999999"
#define HOSTILE_PM "x/../../customers/cus_X#"

static tally_pg *pg;
static tally_config *cfg;

static void setup(void)
{
	pg = testdb_create("tally_stripe_cmd");
	cfg = testdb_config();
	testdb_tenant(pg, T1, "cmd-one", NULL);
	testdb_tenant(pg, T2, "cmd-two", NULL);
	testdb_tenant(pg, T3, "cmd-three", NULL);
	testdb_tenant(pg, T4, "cmd-four", "cus_1/../../invoices");
	testdb_tenant(pg, T5, "cmd-five", NULL);
}

/* The test database's URL (for a tally-stripe of its own). */
static const char *db_url(void)
{
	static char url[600];
	const char *dsn = tally_test_need_env("TALLY_TEST_PG_DSN");

	snprintf(url, sizeof(url), "%.*s/%s", (int)(strrchr(dsn, '/') - dsn),
		 dsn, testdb_name);
	return url;
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

static void world_start(world *w)
{
	tally_stripe_opts o = { 0 };
	tally_stripe_sync_opts so = { 0 };
	tally_error err;

	o.api_base = tally_test_need_env("TALLY_TEST_STRIPE_BASE");
	o.secret_key = "sk_test_123";
	o.api_version = "2024-06-20";
	o.timeout_ms = 10000;
	o.max_retries = 1;
	o.backoff_base_ms = 10;
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
}

static tally_command cmd(const char *id, tally_command_type type,
			 const char *tenant, const char *plan)
{
	tally_command c;

	memset(&c, 0, sizeof(c));
	c.id.ptr = id;
	c.id.len = (uint32_t)strlen(id);
	c.type = type;
	ck_assert_int_eq(tally_uuid_parse(c.tenant_id, tenant,
					  (uint32_t)strlen(tenant)), 0);
	c.time_ms = 1767225600000LL;
	c.trial_days = -1;
	if (plan) {
		c.plan.ptr = plan;
		c.plan.len = (uint32_t)strlen(plan);
	}
	return c;
}

static void run(world *w, const tally_command *c, int want)
{
	tally_error err;
	int rc = tally_stripe_sync_command(w->ss, c, &err);

	ck_assert_msg(rc == want, "command %.*s: want %d got %d (%s)",
		      (int)c->id.len, c->id.ptr, want, rc,
		      rc ? err.msg : "");
}

static void check(const char *sql, const char *arg, const char *want)
{
	char got[512];

	testdb_get(pg, got, sizeof(got), sql, arg);
	ck_assert_msg(strcmp(got, want) == 0, "%s [%s]: want '%s', got '%s'",
		      sql, arg ? arg : "", want, got);
}

static const char status_sql[] =
	"SELECT status || coalesce(':' || error_code, '') FROM "
	"billing_commands WHERE command_id = $1";

START_TEST(test_stripe_commands_lifecycle)
{
	world w;
	tally_command c;
	uint64_t before;
	char sub[256], sub2[256];

	world_start(&w);
	c = cmd("cmd-cus-1", TALLY_CMD_CREATE_CUSTOMER, T1, NULL);
	run(&w, &c, 0);
	check(status_sql, "cmd-cus-1", "succeeded");
	check("SELECT left(stripe_customer_id, 4) FROM tenants WHERE id = $1",
	      T1, "cus_");
	/* the same command again: a no-op without any Stripe call */
	before = tally_stripe_requests_sent(w.stripe);
	run(&w, &c, TALLY_EDUPLICATE);
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), before);

	/* subscription; trial 45 days is capped at stripe.max_trial_days */
	c = cmd("cmd-sub-1", TALLY_CMD_CREATE_SUBSCRIPTION, T1, "starter");
	c.trial_days = 45;
	run(&w, &c, 0);
	check(status_sql, "cmd-sub-1", "succeeded");
	check("SELECT result->>'trial_days' FROM billing_commands WHERE "
	      "command_id = $1", "cmd-sub-1", "30");
	testdb_get(pg, sub, sizeof(sub), "SELECT stripe_subscription_id FROM "
		   "tenants WHERE id = $1", T1);
	ck_assert_msg(strncmp(sub, "sub_", 4) == 0, "tenant has a sub_ id");
	check("SELECT idempotency_key FROM stripe_requests WHERE "
	      "command_id = $1 AND path = '/v1/subscriptions'", "cmd-sub-1",
	      "tally-cmd-" T1 "-cmd-sub-1-subscription");
	check("SELECT count(*) FROM subscriptions WHERE tenant_id = $1", T1,
	      "1");

	/* upgrade: immediately, with the requested proration */
	c = cmd("cmd-up-1", TALLY_CMD_CHANGE_PLAN, T1, "professional");
	c.proration = TALLY_PRORATION_ALWAYS;
	run(&w, &c, 0);
	check(status_sql, "cmd-up-1", "succeeded");
	check("SELECT result->>'proration' FROM billing_commands WHERE "
	      "command_id = $1", "cmd-up-1", "always_invoice");

	/* downgrade: at period end through a subscription schedule */
	testdb_sql(pg, "UPDATE tenants SET subscription_plan = 'enterprise'");
	c = cmd("cmd-down-1", TALLY_CMD_CHANGE_PLAN, T1, "starter");
	run(&w, &c, 0);
	check(status_sql, "cmd-down-1", "succeeded");
	check("SELECT result->>'at_period_end' FROM billing_commands WHERE "
	      "command_id = $1", "cmd-down-1", "true");
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'downgrade' AND tenant_id = $1", T1, "1");

	/* sync_tenant: fetch subscription, page through invoices */
	c = cmd("cmd-sync-1", TALLY_CMD_SYNC_TENANT, T1, NULL);
	run(&w, &c, 0);
	check(status_sql, "cmd-sync-1", "succeeded");

	/* cancel at period end */
	c = cmd("cmd-cancel-1", TALLY_CMD_CANCEL_SUBSCRIPTION, T1, NULL);
	run(&w, &c, 0);
	check(status_sql, "cmd-cancel-1", "succeeded");

	/* tally-side rejection: no price for the plan, recorded, final */
	c = cmd("cmd-wl-1", TALLY_CMD_CREATE_SUBSCRIPTION, T2,
		"white_label_starter");
	run(&w, &c, 0);
	check(status_sql, "cmd-wl-1", "failed:price_not_configured");
	run(&w, &c, TALLY_EDUPLICATE);

	/* second tenant: create a subscription (customer on the way), then
	 * cancel now (DELETE) */
	c = cmd("cmd-sub-2", TALLY_CMD_CREATE_SUBSCRIPTION, T2, "professional");
	c.payment_method_id.ptr = "pm_card_visa";
	c.payment_method_id.len = 12;
	run(&w, &c, 0);
	check(status_sql, "cmd-sub-2", "succeeded");
	c = cmd("cmd-cancel-2", TALLY_CMD_CANCEL_SUBSCRIPTION, T2, NULL);
	c.has_at_period_end = true;
	c.at_period_end = false;
	run(&w, &c, 0);
	check(status_sql, "cmd-cancel-2", "succeeded");
	check("SELECT status FROM tenants WHERE id = $1", T2, "cancelled");
	/* (stripe-mock's answer also says cancel_at_period_end, which
	 * signals separately: at least our cancellation is there) */
	check("SELECT count(*) FROM billing_signals_outbox WHERE kind = "
	      "'subscription_cancelled' AND tenant_id = $1 AND "
	      "payload->>'at_period_end' = 'false'", T2, "1");
	world_stop(&w);

	/* restart (new client and sync) and a replay of a command whose
	 * final write was lost: Stripe objects are looked up by their
	 * recorded ids, nothing is POSTed again */
	testdb_sql(pg, "UPDATE billing_commands SET status = 'pending' "
		       "WHERE command_id = 'cmd-sub-1'");
	world_start(&w);
	c = cmd("cmd-sub-1", TALLY_CMD_CREATE_SUBSCRIPTION, T1, "starter");
	c.trial_days = 45;
	run(&w, &c, 0);
	check(status_sql, "cmd-sub-1", "succeeded");
	check("SELECT count(*) FROM stripe_requests WHERE command_id = $1",
	      "cmd-sub-1", "1");
	check("SELECT attempts FROM billing_commands WHERE command_id = $1",
	      "cmd-sub-1", "1");
	testdb_get(pg, sub2, sizeof(sub2), "SELECT stripe_object_id FROM "
		   "billing_commands WHERE command_id = $1", "cmd-sub-1");
	ck_assert_msg(strcmp(sub, sub2) == 0,
		      "replay must adopt the recorded subscription %s, got %s",
		      sub, sub2);
	ck_assert_msg(tally_stripe_requests_sent(w.stripe) == 2,
		      "replay: GET customer + GET recorded subscription, no POST (%llu)",
		      (unsigned long long)tally_stripe_requests_sent(w.stripe));
	world_stop(&w);
}
END_TEST

/* A command recorded before the tenant joined the keys (base key
 * "tally-cmd-<id>") and still pending keeps that key: Stripe may already
 * hold an object under it, so a new key could create a second one. */
START_TEST(test_stripe_commands_recorded_key_kept)
{
	world w;
	tally_command c;

	world_start(&w);
	testdb_sql(pg, "INSERT INTO billing_commands (tenant_id, command_id, "
		       "type, idempotency_key) VALUES ('" T5 "', 'cmd-old-1', "
		       "'create_customer', 'tally-cmd-cmd-old-1')");
	c = cmd("cmd-old-1", TALLY_CMD_CREATE_CUSTOMER, T5, NULL);
	run(&w, &c, 0);
	check(status_sql, "cmd-old-1", "succeeded");
	check("SELECT idempotency_key FROM stripe_requests WHERE "
	      "command_id = $1 AND path = '/v1/customers'", "cmd-old-1",
	      "tally-cmd-cmd-old-1-customer");
	world_stop(&w);
}
END_TEST

/* A payment_method_id that walks to another endpoint: the command fails
 * (recorded) and nothing but the customer's creation reaches Stripe. */
START_TEST(test_stripe_commands_hostile_payment_method)
{
	world w;
	tally_command c;
	tally_error err;

	world_start(&w);
	c = cmd("bnd-sub-1", TALLY_CMD_CREATE_SUBSCRIPTION, T3, "starter");
	c.payment_method_id.ptr = HOSTILE_PM;
	c.payment_method_id.len = (uint32_t)strlen(HOSTILE_PM);
	ck_assert_int_eq(tally_stripe_sync_command(w.ss, &c, &err), 0);
	check(status_sql, "bnd-sub-1", "failed:invalid_id");
	ck_assert_msg(tally_stripe_requests_sent(w.stripe) == 1,
		      "only POST /v1/customers may be sent, not %llu requests",
		      (unsigned long long)tally_stripe_requests_sent(w.stripe));
	check("SELECT count(*) FROM tenants WHERE id = $1 AND "
	      "stripe_subscription_id IS NOT NULL", T3, "0");
	world_stop(&w);
}
END_TEST

/* A customer id in the database that is not one: failed, no request. */
START_TEST(test_stripe_commands_hostile_customer)
{
	world w;
	tally_command c;
	tally_error err;

	world_start(&w);
	c = cmd("bnd-sub-2", TALLY_CMD_CREATE_SUBSCRIPTION, T4, "starter");
	ck_assert_int_eq(tally_stripe_sync_command(w.ss, &c, &err), 0);
	check(status_sql, "bnd-sub-2", "failed:invalid_id");
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), 0);
	world_stop(&w);
}
END_TEST

/* An invoice event whose id would page another endpoint: the event is
 * invalid (tally-stripe dead-letters it) and nothing is requested. */
START_TEST(test_stripe_commands_hostile_event_id)
{
	world w;
	tally_error err;
	const char *outcome = NULL;
	const char *ev =
		"{\"id\":\"evt_bnd_1\",\"object\":\"event\",\"type\":"
		"\"invoice.updated\",\"created\":1767225600,\"data\":{"
		"\"object\":{\"id\":\"in_1/../../customers/cus_X\","
		"\"object\":\"invoice\",\"customer\":\"cus_bnd\","
		"\"lines\":{\"object\":\"list\",\"data\":[],"
		"\"has_more\":true}}}}";

	world_start(&w);
	ck_assert_int_eq(tally_stripe_sync_event(w.ss, ev, strlen(ev), NULL,
						 &outcome, &err),
			 TALLY_EINVALID);
	ck_assert_uint_eq(tally_stripe_requests_sent(w.stripe), 0);
	world_stop(&w);
}
END_TEST

/* tally-stripe without a webhook secret: refused, unless told. */
START_TEST(test_stripe_commands_needs_webhook_secret)
{
	tally_config *c = NULL;
	tally_stripe_consumer *a = NULL;
	tally_metrics *m = tally_metrics_new();
	tally_error err;
	char group[96];

	ck_assert_int_eq(tally_config_load(&c, NULL, &err), 0);
	snprintf(group, sizeof(group), "test.stripe_boundary.%d",
		 (int)getpid());
	tally_config_set(c, "database.url", db_url());
	tally_config_set(c, "kafka.brokers",
			 tally_test_need_env("TALLY_TEST_BROKERS"));
	tally_config_set(c, "stripe.api_base",
			 tally_test_need_env("TALLY_TEST_STRIPE_BASE"));
	tally_config_set(c, "stripe.secret_key", "sk_test_123");
	tally_config_set(c, "stripe.group", group);
	tally_config_set(c, "relay.webhook_secret", "");
	tally_config_set(c, "relay.webhook_secret_previous", "");
	ck_assert_int_eq(tally_stripe_consumer_new(&a, c, m, &err),
			 TALLY_EINVALID);
	ck_assert_ptr_null(a);
	ck_assert_msg(strstr(err.msg, "STRIPE_WEBHOOK_SECRET") != NULL &&
		      strstr(err.msg, "stripe.verify_signatures") != NULL,
		      "a clear error: %s", err.msg);
	tally_config_set(c, "stripe.verify_signatures", "false");
	ck_assert_msg(tally_stripe_consumer_new(&a, c, m, &err) == 0, "%s",
		      err.msg);
	tally_stripe_consumer_free(a);
	tally_config_set(c, "stripe.verify_signatures", "true");
	tally_config_set(c, "relay.webhook_secret", "whsec_boundary");
	ck_assert_msg(tally_stripe_consumer_new(&a, c, m, &err) == 0, "%s",
		      err.msg);
	tally_stripe_consumer_free(a);
	tally_config_free(c);
	tally_metrics_free(m);
}
END_TEST

static Suite *tally_stripe_commands_suite(void)
{
	Suite *s = suite_create("stripe_commands");
	TCase *tc = tcase_create("StripeMock");

	tcase_set_timeout(tc, 120);
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_stripe_commands_lifecycle);
	tcase_add_test(tc, test_stripe_commands_recorded_key_kept);
	tcase_add_test(tc, test_stripe_commands_hostile_payment_method);
	tcase_add_test(tc, test_stripe_commands_hostile_customer);
	tcase_add_test(tc, test_stripe_commands_hostile_event_id);
	tcase_add_test(tc, test_stripe_commands_needs_webhook_secret);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_stripe_commands_suite)
