/*
 * test_tenants.c - provisioning (tally/tenant_admin.h) on PostgreSQL:
 * a tenant created with the plan's limits, its budget, trial and billing
 * email; the same command id again changes nothing; bad input (unknown
 * plan, taken slug or domain, bad email or budget) is refused with its
 * reason, recorded as failed once and never run again; plan and budget
 * changes, suspend and resume; the same through billing.commands
 * (tally_stripe_sync_command) and through `tally tenant`; the billing
 * email becomes the Stripe customer's (stripe-mock validates the call).
 */
#include "stripe_testdb.h"
#include "stripe_scripted.h"
#include "test_support.h"
#include "tally/kafka.h"
#include "tally/producer.h"
#include "tally/stripe_sync.h"
#include "tally/tenant_admin.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define T1 "7e4a0000-0000-4000-8000-000000000001"
#define T2 "7e4a0000-0000-4000-8000-000000000002"
#define T3 "7e4a0000-0000-4000-8000-000000000003"

static tally_pg *pg;

static void setup(void)
{
	pg = testdb_create("tally_tenants");
}

static void teardown(void)
{
	tally_pg_free(pg);
}

static const char *get(const char *sql, const char *arg)
{
	static char out[1024];

	testdb_get(pg, out, sizeof(out), sql, arg);
	return out;
}

static tally_tenant_spec create_spec(const char *cmd, const char *tid,
				     const char *slug, const char *domain)
{
	tally_tenant_spec s;

	memset(&s, 0, sizeof(s));
	s.kind = TALLY_TENANT_CREATE;
	s.command_id = cmd;
	s.tenant_id = tid;
	s.name = "Acme Motors";
	s.slug = slug;
	s.domain = domain;
	s.plan = "professional";
	s.email = "ap@acme.example.com";
	s.trial_days = -1;
	return s;
}

static tally_tenant_outcome run(const tally_tenant_spec *s)
{
	tally_tenant_outcome o;
	tally_error err;

	ck_assert_msg(tally_tenant_run(pg, s, "test", "test run", &o, &err)
		      == 0, "run: %s", err.msg);
	return o;
}

static void refused(tally_tenant_spec s, const char *code)
{
	tally_tenant_outcome o = run(&s);
	char sql[100];

	ck_assert_msg(!o.succeeded && strcmp(o.code, code) == 0,
		      "%s: want %s, got %s (%s)", s.command_id, code,
		      o.succeeded ? "success" : o.code, o.message);
	ck_assert(!o.duplicate);
	/* recorded, with the reason, once */
	snprintf(sql, sizeof(sql), "failed %s 1", code);
	ck_assert_str_eq(get("SELECT status || ' ' || error_code || ' ' || "
			     "attempts FROM billing_commands WHERE "
			     "command_id = $1", s.command_id), sql);
}

START_TEST(test_tenants_create_idempotent)
{
	tally_tenant_spec s = create_spec("c-1", T1, "acme", "acme.example.com");
	tally_tenant_outcome o;

	s.budget = "250.50";
	s.trial_days = 14;
	o = run(&s);
	ck_assert_msg(o.succeeded && !o.duplicate, "%s", o.message);
	ck_assert_str_eq(o.status, "trialing");
	ck_assert_str_eq(get("SELECT concat_ws(' ', name, slug, domain, "
			     "billing_email, subscription_plan, max_users, "
			     "max_workflows, max_ai_requests_per_month, "
			     "monthly_budget, status, trial_end::date - "
			     "now()::date) FROM tenants WHERE id = $1", T1),
			 "Acme Motors acme acme.example.com "
			 "ap@acme.example.com professional 25 -1 50000 "
			 "250.50 trialing 14");
	ck_assert_str_eq(get("SELECT status || ' ' || type || ' ' || (payload "
			     "->> 'budget') FROM billing_commands WHERE "
			     "command_id = $1", "c-1"),
			 "succeeded create_tenant 250.5");
	/* again: nothing new, the recorded outcome */
	o = run(&s);
	ck_assert(o.succeeded && o.duplicate);
	ck_assert_str_eq(get("SELECT count(*) FROM tenants WHERE slug = $1",
			     "acme"), "1");
	/* no budget: the plan's price */
	s = create_spec("c-2", T2, "beta", "beta.example.com");
	s.plan = "starter";
	o = run(&s);
	ck_assert(o.succeeded);
	ck_assert_str_eq(o.status, "active");
	ck_assert_str_eq(get("SELECT monthly_budget || ' ' || max_users FROM "
			     "tenants WHERE id = $1", T2), "99.00 5");
}
END_TEST

START_TEST(test_tenants_bad_input_recorded_once)
{
	tally_tenant_spec s = create_spec("c-1", T1, "acme", "acme.example.com");
	tally_tenant_outcome o;

	ck_assert(run(&s).succeeded);
	s = create_spec("bad-plan", T2, "beta", "beta.example.com");
	s.plan = "gold";
	refused(s, "unknown_plan");
	s = create_spec("bad-slug", T2, "acme", "beta.example.com");
	refused(s, "duplicate_slug");
	s = create_spec("bad-domain", T2, "beta", "acme.example.com");
	refused(s, "duplicate_domain");
	s = create_spec("bad-email", T2, "beta", "beta.example.com");
	s.email = "ap at acme";
	refused(s, "bad_email");
	s = create_spec("bad-budget", T2, "beta", "beta.example.com");
	s.budget = "12.345";
	refused(s, "bad_budget");
	s = create_spec("bad-exists", T1, "gamma", "gamma.example.com");
	refused(s, "tenant_exists");
	ck_assert_str_eq(get("SELECT count(*) FROM tenants", NULL), "1");
	/* the nil UUID is refused at once, not retried as transient */
	{
		tally_error err;

		s = create_spec("bad-nil", "00000000-0000-0000-0000-"
				"000000000000", "nil", "nil.example.com");
		ck_assert_int_eq(tally_tenant_run(pg, &s, "test", "test run",
						  &o, &err), TALLY_EINVALID);
		ck_assert_msg(strstr(err.msg, "bad_tenant_id") != NULL, "%s",
			      err.msg);
	}
	/* a refused command is final: again, it is not run again */
	s = create_spec("bad-email", T2, "beta", "beta.example.com");
	o = run(&s);
	ck_assert(o.duplicate && !o.succeeded);
	ck_assert_str_eq(o.code, "bad_email");
	ck_assert_str_eq(get("SELECT string_agg(command_id || ':' || status "
			     "|| ':' || attempts, ' ' ORDER BY command_id) "
			     "FROM billing_commands WHERE status = 'failed'",
			     NULL),
			 "bad-budget:failed:1 bad-domain:failed:1 "
			 "bad-email:failed:1 bad-exists:failed:1 "
			 "bad-plan:failed:1 bad-slug:failed:1");
	ck_assert_str_eq(get("SELECT error_message FROM billing_commands "
			     "WHERE command_id = $1", "bad-slug"),
			 "slug acme is taken");
}
END_TEST

START_TEST(test_tenants_update_suspend_resume)
{
	tally_tenant_spec s = create_spec("c-1", T1, "acme", "acme.example.com");
	tally_tenant_outcome o;

	ck_assert(run(&s).succeeded);
	memset(&s, 0, sizeof(s));
	s.tenant_id = T1;
	s.kind = TALLY_TENANT_UPDATE;
	s.command_id = "u-1";
	s.budget = "1000";
	ck_assert(run(&s).succeeded);
	ck_assert_str_eq(get("SELECT monthly_budget || ' ' || "
			     "subscription_plan FROM tenants WHERE id = $1",
			     T1), "1000.00 professional");
	/* a new plan brings its limits and price */
	s.command_id = "u-2";
	s.budget = NULL;
	s.plan = "enterprise";
	ck_assert(run(&s).succeeded);
	ck_assert_str_eq(get("SELECT concat_ws(' ', subscription_plan, "
			     "max_users, max_ai_requests_per_month, "
			     "monthly_budget) FROM tenants WHERE id = $1", T1),
			 "enterprise -1 200000 999.00");
	s.command_id = "u-3";
	s.plan = "platinum";
	o = run(&s);
	ck_assert_str_eq(o.code, "unknown_plan");
	/* a subscribed tenant changes plan through Stripe */
	testdb_sql(pg, "UPDATE tenants SET stripe_subscription_id = 'sub_1' "
		       "WHERE id = '" T1 "'");
	s.command_id = "u-4";
	s.plan = "starter";
	o = run(&s);
	ck_assert_str_eq(o.code, "has_subscription");
	/* suspend, twice; resume */
	memset(&s, 0, sizeof(s));
	s.tenant_id = T1;
	s.kind = TALLY_TENANT_SUSPEND;
	s.command_id = "s-1";
	o = run(&s);
	ck_assert(o.succeeded);
	ck_assert_str_eq(o.status, "suspended");
	s.command_id = "s-2";
	o = run(&s);
	ck_assert(o.succeeded && !o.duplicate);
	ck_assert_str_eq(o.status, "suspended");
	s.kind = TALLY_TENANT_RESUME;
	s.command_id = "r-1";
	o = run(&s);
	ck_assert(o.succeeded);
	ck_assert_str_eq(o.status, "active");
	ck_assert_str_eq(get("SELECT status FROM tenants WHERE id = $1", T1),
			 "active");
	/* resume leaves a tenant that is not suspended as it is */
	testdb_tenant(pg, T3, "plain", NULL);
	testdb_sql(pg, "UPDATE tenants SET status = 'past_due' WHERE id = '"
		       T3 "'");
	s.tenant_id = T3;
	s.command_id = "r-2";
	o = run(&s);
	ck_assert(o.succeeded);
	ck_assert_str_eq(o.status, "past_due");
	s.tenant_id = T2;
	s.command_id = "r-3";
	o = run(&s);
	ck_assert_str_eq(o.code, "unknown_tenant");
}
END_TEST

static tally_command cmd(const char *id, tally_command_type ty,
			 const char *tid)
{
	tally_command c;

	memset(&c, 0, sizeof(c));
	c.id.ptr = id;
	c.id.len = (uint32_t)strlen(id);
	c.type = ty;
	c.time_ms = 1764151200000;
	c.trial_days = -1;
	ck_assert_int_eq(tally_uuid_parse(c.tenant_id, tid, 36), 0);
	return c;
}

static tally_str str(const char *s)
{
	tally_str v = { s, (uint32_t)strlen(s) };

	return v;
}

START_TEST(test_tenants_through_commands)
{
	tally_config *cfg = testdb_config();
	tally_stripe_sync_opts so = { 0 };
	tally_stripe_opts o = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_stripe *stripe = NULL;
	const char *base = getenv("TALLY_TEST_STRIPE_BASE");
	tally_command c = cmd("k-1", TALLY_CMD_CREATE_TENANT, T1);
	tally_error err;

	if (base != NULL) {
		o.api_base = base;
		o.secret_key = "sk_test_123";
		o.api_version = "2024-06-20";
		o.timeout_ms = 10000;
		o.max_retries = 1;
		o.backoff_base_ms = 10;
		ck_assert_int_eq(tally_stripe_new(&stripe, &o, &err), 0);
	}
	so.pg = pg;
	so.cfg = cfg;
	so.stripe = stripe;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &so, &err), 0);
	c.name = str("Kafka Co");
	c.slug = str("kafka-co");
	c.domain = str("kafka.example.com");
	c.plan = str("starter");
	c.email = str("billing@kafka.example.com");
	c.budget = str("75");
	ck_assert_msg(tally_stripe_sync_command(ss, &c, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(tally_stripe_sync_command(ss, &c, &err),
			 TALLY_EDUPLICATE);
	ck_assert_str_eq(get("SELECT monthly_budget || ' ' || billing_email "
			     "FROM tenants WHERE id = $1", T1),
			 "75.00 billing@kafka.example.com");
	/* bad input: final, recorded, not a retry */
	c = cmd("k-2", TALLY_CMD_CREATE_TENANT, T2);
	c.name = str("Other");
	c.slug = str("other");
	c.domain = str("other.example.com");
	c.plan = str("starter");
	c.email = str("nobody");
	ck_assert_int_eq(tally_stripe_sync_command(ss, &c, &err), 0);
	ck_assert_str_eq(get("SELECT status || ' ' || error_code FROM "
			     "billing_commands WHERE command_id = $1", "k-2"),
			 "failed bad_email");
	c = cmd("k-3", TALLY_CMD_SUSPEND_TENANT, T1);
	ck_assert_int_eq(tally_stripe_sync_command(ss, &c, &err), 0);
	ck_assert_str_eq(get("SELECT status FROM tenants WHERE id = $1", T1),
			 "suspended");
	ck_assert_str_eq(get("SELECT reason || ' ' || source FROM audit_log "
			     "WHERE tenant_id = $1 AND op = 'UPDATE'", T1),
			 "command k-3 billing.commands");
	/* the customer gets the billing email (stripe-mock validates the
	 * request against Stripe's API); without Stripe it stays pending */
	c = cmd("k-4", TALLY_CMD_CREATE_CUSTOMER, T1);
	if (stripe != NULL) {
		ck_assert_msg(tally_stripe_sync_command(ss, &c, &err) == 0,
			      "%s", err.msg);
		ck_assert_str_eq(get("SELECT status FROM billing_commands "
				     "WHERE command_id = $1", "k-4"),
				 "succeeded");
		ck_assert_str_eq(get("SELECT count(*) FROM stripe_requests "
				     "WHERE command_id = $1 AND object_id IS "
				     "NOT NULL", "k-4"), "1");
	} else {
		ck_assert_int_eq(tally_stripe_sync_command(ss, &c, &err),
				 TALLY_ETRANSIENT);
	}
	/* the command's audit reason ends with it */
	ck_assert_str_eq(get("SELECT coalesce(current_setting("
			     "'tally.audit_reason', true), '') || '|' || "
			     "coalesce(current_setting('tally.audit_source', "
			     "true), '')", NULL), "|");
	tally_stripe_sync_free(ss);
	tally_stripe_free(stripe);
	tally_config_free(cfg);
}
END_TEST

/* create_customer sends the tenant's billing email unless it has one */
START_TEST(test_tenants_customer_gets_billing_email)
{
	tally_config *cfg = testdb_config();
	tally_stripe_sync_opts so = { 0 };
	tally_stripe_opts o = { 0 };
	tally_stripe_sync *ss = NULL;
	tally_stripe *stripe = NULL;
	tally_tenant_spec s = create_spec("c-1", T1, "acme", "acme.example.com");
	tally_command c;
	tally_error err;

	ck_assert(run(&s).succeeded);
	s = create_spec("c-2", T2, "beta", "beta.example.com");
	ck_assert(run(&s).succeeded);
	ss_start();
	o.api_base = ss_base;
	o.secret_key = "sk_test_123";
	o.api_version = "2024-06-20";
	o.timeout_ms = 10000;
	o.max_retries = 1;
	o.backoff_base_ms = 10;
	ck_assert_int_eq(tally_stripe_new(&stripe, &o, &err), 0);
	so.pg = pg;
	so.cfg = cfg;
	so.stripe = stripe;
	ck_assert_int_eq(tally_stripe_sync_new(&ss, &so, &err), 0);
	c = cmd("cus-1", TALLY_CMD_CREATE_CUSTOMER, T1);
	ck_assert_msg(tally_stripe_sync_command(ss, &c, &err) == 0, "%s",
		      err.msg);
	ck_assert_str_eq(ss_srv.customer_email, "ap@acme.example.com");
	c = cmd("cus-2", TALLY_CMD_CREATE_CUSTOMER, T2);
	c.email = str("other@beta.example.com");
	ck_assert_msg(tally_stripe_sync_command(ss, &c, &err) == 0, "%s",
		      err.msg);
	ck_assert_str_eq(ss_srv.customer_email, "other@beta.example.com");
	ck_assert_str_eq(get("SELECT count(stripe_customer_id) FROM tenants",
			     NULL), "2");
	tally_stripe_sync_free(ss);
	tally_stripe_free(stripe);
	tally_config_free(cfg);
	ss_stop();
}
END_TEST

static const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

/* Run `tally [--config CFG] tenant ARGS` on the test database: exit
 * status, output. */
static int cli_cfg(char *out, size_t n, const char *cfg, const char *args)
{
	char cmd[1200];
	FILE *fp;
	size_t got;
	int st;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%.*s/%s' %s/tally %s%s "
		 "tenant %s 2>&1",
		 (int)(strrchr(testdb_admin, '/') - testdb_admin),
		 testdb_admin, testdb_name, bin(), cfg ? "--config " : "",
		 cfg ? cfg : "", args);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	got = fread(out, 1, n - 1, fp);
	out[got] = '\0';
	st = pclose(fp);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int cli(char *out, size_t n, const char *args)
{
	return cli_cfg(out, n, NULL, args);
}

START_TEST(test_tenants_cli)
{
	char out[4096];
	static const char create[] =
		"create --name 'Cli Co' --slug cli-co --domain cli.example.com "
		"--plan starter --email ap@cli.example.com --budget 120 "
		"--trial-days 7 --id cli-1";

	ck_assert_msg(cli(out, sizeof(out), create) == 0, "%s", out);
	ck_assert_msg(strstr(out, "created (command cli-1, status trialing)")
		      != NULL, "%s", out);
	/* again: done before, one tenant */
	ck_assert_msg(cli(out, sizeof(out), create) == 0, "%s", out);
	ck_assert_msg(strstr(out, "created before") != NULL, "%s", out);
	ck_assert_str_eq(get("SELECT count(*) || ' ' || min(monthly_budget) "
			     "FROM tenants", NULL), "1 120.00");
	/* refused with the reason, exit 3 */
	ck_assert_int_eq(cli(out, sizeof(out),
			     "create --name X --slug x --domain x.example.com "
			     "--plan starter --email bad"), 3);
	ck_assert_msg(strstr(out, "bad_email") != NULL, "%s", out);
	ck_assert_int_eq(cli(out, sizeof(out),
			     "create --name X --slug cli-co --domain "
			     "x.example.com --plan starter --email a@x.io"), 3);
	ck_assert_msg(strstr(out, "duplicate_slug") != NULL, "%s", out);
	ck_assert_int_eq(cli(out, sizeof(out), "create --name X"), 3);
	ck_assert_int_eq(cli(out, sizeof(out), "create --bogus"), 2);
	/* update, suspend, resume by slug; show; list */
	ck_assert_msg(cli(out, sizeof(out), "update cli-co --budget 300.25")
		      == 0, "%s", out);
	ck_assert_msg(cli(out, sizeof(out), "suspend cli-co") == 0, "%s", out);
	ck_assert_str_eq(get("SELECT monthly_budget || ' ' || status FROM "
			     "tenants", NULL), "300.25 suspended");
	ck_assert_msg(cli(out, sizeof(out), "show cli-co") == 0, "%s", out);
	ck_assert_msg(strstr(out, "ap@cli.example.com") != NULL &&
		      strstr(out, "suspended") != NULL, "%s", out);
	ck_assert_msg(cli(out, sizeof(out), "resume cli-co") == 0, "%s", out);
	ck_assert_msg(cli(out, sizeof(out), "list --status trialing") == 0,
		      "%s", out);
	ck_assert_msg(strstr(out, "cli-co\tstarter\ttrialing\t300.25") != NULL,
		      "%s", out);
	ck_assert_int_eq(cli(out, sizeof(out), "suspend nobody"), 3);
	/* the audit trail says who and why */
	ck_assert_str_eq(get("SELECT string_agg(op || ' ' || source || ' ' || "
			     "application_name, ', ' ORDER BY id) FROM "
			     "audit_log WHERE table_name = 'tenants'", NULL),
			 "INSERT tally-cli tally, UPDATE tally-cli tally, "
			 "UPDATE tally-cli tally, UPDATE tally-cli tally");
	ck_assert_str_eq(get("SELECT reason FROM audit_log WHERE op = "
			     "'INSERT' AND table_name = 'tenants'", NULL),
			 "tally tenant create --plan starter --budget 120 "
			 "(command cli-1)");
}
END_TEST

/* create --stripe queues create_customer and create_subscription */
START_TEST(test_tenants_cli_stripe)
{
	const char *brokers = getenv("TALLY_TEST_BROKERS");
	tally_config *cfg = NULL;
	tally_producer *p = NULL;
	rd_kafka_t *rk = NULL;
	rd_kafka_conf_t *conf;
	rd_kafka_topic_partition_list_t *parts;
	tally_error err;
	char topic[64], cfgpath[128], args[512], out[4096], tid[37], errstr[256];
	const char *topics[2] = { topic, NULL };
	const char *want[2] = { "create_customer", "create_subscription" };
	int got = 0;
	int64_t deadline;
	FILE *f;

	if (brokers == NULL)
		return; /* no broker: nothing to queue on */
	tally_test_unique(topic, sizeof(topic), "t_tenant_cmds");
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "kafka.brokers", brokers);
	ck_assert_int_eq(tally_producer_new(&p, cfg, NULL, &err), 0);
	ck_assert_msg(tally_kafka_create_topics(tally_producer_rk(p), topics,
						1, &err) == 0, "%s", err.msg);
	tally_producer_free(p);
	snprintf(cfgpath, sizeof(cfgpath), "/tmp/%s.cfg", topic);
	f = fopen(cfgpath, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "kafka: { brokers = \"%s\"; };\n"
		   "topics: { commands = \"%s\"; };\n", brokers, topic);
	fclose(f);
	snprintf(args, sizeof(args), "create --name S --slug s --domain "
		 "s.example.com --plan professional --email ap@s.example.com "
		 "--trial-days 10 --id cli-s --stripe");
	ck_assert_msg(cli_cfg(out, sizeof(out), cfgpath, args) == 0, "%s", out);
	ck_assert_msg(strstr(out, "queued cli-s-customer and "
			     "cli-s-subscription") != NULL, "%s", out);
	ck_assert_int_eq(strlen(get("SELECT id FROM tenants", NULL)), 36);
	memcpy(tid, get("SELECT id FROM tenants", NULL), sizeof(tid));
	conf = tally_kafka_conf(cfg);
	rd_kafka_conf_set(conf, "group.id", topic, errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, topic, 0)->offset =
		RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	deadline = tally_now_ms() + 30000;
	while (got < 2 && tally_now_ms() < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		tally_command c;
		tally_codec_error ce;
		char ctid[37];

		if (m == NULL)
			continue;
		ck_assert_int_eq(m->err, 0);
		memset(&ce, 0, sizeof(ce));
		ck_assert_int_eq(tally_codec_decode_command(&c, m->payload,
							    m->len, &ce), 0);
		ck_assert_str_eq(tally_command_type_name(c.type), want[got]);
		tally_uuid_fmt(ctid, c.tenant_id);
		ck_assert_str_eq(ctid, tid);
		if (got == 1) {
			ck_assert_int_eq(c.trial_days, 10);
			ck_assert(c.plan.len == 12 &&
				  memcmp(c.plan.ptr, "professional", 12) == 0);
		}
		rd_kafka_message_destroy(m);
		got++;
	}
	ck_assert_int_eq(got, 2);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	tally_config_free(cfg);
	unlink(cfgpath);
}
END_TEST

static Suite *tenants_suite(void)
{
	Suite *s = suite_create("tenants");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_tenants_create_idempotent);
	tcase_add_test(tc, test_tenants_bad_input_recorded_once);
	tcase_add_test(tc, test_tenants_update_suspend_resume);
	tcase_add_test(tc, test_tenants_through_commands);
	tcase_add_test(tc, test_tenants_customer_gets_billing_email);
	tcase_add_test(tc, test_tenants_cli);
	tcase_add_test(tc, test_tenants_cli_stripe);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tenants_suite)
