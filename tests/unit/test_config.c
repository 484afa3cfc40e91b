/* test_config.c - config table: file:line errors, unknown keys, types,
 * ranges, secrets from the environment only, env overrides, reload. */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libconfig.h>

static char path[64];

static void write_cfg(const char *text)
{
	FILE *fp;

	snprintf(path, sizeof(path), "/tmp/tally_cfg_%d.cfg", (int)getpid());
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	fputs(text, fp);
	fclose(fp);
}

/* The services' env file (DATABASE_URL, KAFKA_BROKERS, ...) must not
 * leak into these tests: unset every variable the table reads. */
static void setup(void)
{
	static const char *const env[] = {
		"TALLY_LOG_LEVEL", "DATABASE_URL", "KAFKA_BROKERS",
		"TALLY_TRANSACTIONAL_ID", "STRIPE_API_BASE", "STRIPE_SECRET_KEY",
		"DEFAULT_TRIAL_DAYS", "MAX_TRIAL_DAYS", "AUTO_SUSPEND_DAYS",
		"STRIPE_PRICE_ID_STARTER", "STRIPE_PRICE_ID_PROFESSIONAL",
		"STRIPE_PRICE_ID_ENTERPRISE", "STRIPE_PRICE_ID_WHITE_LABEL_STARTER",
		"STRIPE_PRICE_ID_WHITE_LABEL_ENTERPRISE", "STRIPE_WEBHOOK_SECRET",
		"STRIPE_WEBHOOK_SECRET_PREVIOUS", "TALLY_ALERTS_WEBHOOK_URL", NULL
	};
	int i;

	for (i = 0; env[i] != NULL; i++)
		unsetenv(env[i]);
}

static void teardown(void)
{
	unlink(path);
	unsetenv("KAFKA_BROKERS");
	unsetenv("DATABASE_URL");
	unsetenv("STRIPE_SECRET_KEY");
	unsetenv("AUTO_SUSPEND_DAYS");
}

START_TEST(test_config_defaults_without_file)
{
	tally_config *cfg = NULL;
	tally_error err;

	unsetenv("KAFKA_BROKERS");
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	ck_assert_str_eq(tally_config_str(cfg, "topics.usage"), "billing.usage");
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.lateness_days"), 35);
	ck_assert_str_eq(tally_config_str(cfg, "stripe.secret_key"), "");
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_config_reads_file_values)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("kafka: { brokers = \"10.0.0.1:9092\"; };\n"
		  "aggregate: { batch_size = 5000; };\n");
	ck_assert_msg(tally_config_load(&cfg, path, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(tally_config_str(cfg, "kafka.brokers"), "10.0.0.1:9092");
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.batch_size"), 5000);
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_config_syntax_error_has_file_and_line)
{
	tally_config *cfg = NULL;
	tally_error err;
	char want[128];

	write_cfg("kafka: {\n  brokers = \"x\"\n  oops\n};\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	snprintf(want, sizeof(want), "%s:", path);
	ck_assert_msg(strncmp(err.msg, want, strlen(want)) == 0,
		      "error should start with file: got '%s'", err.msg);
	ck_assert_msg(strstr(err.msg, ":3:") || strstr(err.msg, ":4:"),
		      "error should name the line: '%s'", err.msg);
}
END_TEST

START_TEST(test_config_unknown_key_rejected_with_line)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("kafka: { brokers = \"x\"; };\n"
		  "aggregate: { batch_sise = 10; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, ":2: unknown key 'aggregate.batch_sise'"),
		      "got '%s'", err.msg);
}
END_TEST

START_TEST(test_config_type_and_range_checked)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("aggregate: { batch_size = \"many\"; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, ":1:") && strstr(err.msg, "integer"),
		      "got '%s'", err.msg);
	write_cfg("aggregate: { batch_size = 0; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "out of range"), "got '%s'", err.msg);
	/* tally-aggregate's lanes: 1..8 (it has room for 8) */
	write_cfg("aggregate: { lanes = 9; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "out of range"), "got '%s'", err.msg);
	write_cfg("aggregate: { lanes = 0; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	write_cfg("aggregate: { lanes = 8; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.lanes"), 8);
	tally_config_free(cfg);
	cfg = NULL;
}
END_TEST

START_TEST(test_config_secret_only_from_env)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("stripe: { secret_key = \"sk_live_oops\"; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "STRIPE_SECRET_KEY") != NULL, "got '%s'",
		      err.msg);
	ck_assert_msg(strstr(err.msg, "sk_live_oops") == NULL,
		      "the secret must not appear in the error");
	setenv("STRIPE_SECRET_KEY", "sk_test_abc", 1);
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	ck_assert_str_eq(tally_config_str(cfg, "stripe.secret_key"),
			 "sk_test_abc");
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_config_env_overrides_file)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("kafka: { brokers = \"file:1\"; };\n"
		  "database: { url = \"postgresql:///file\"; };\n");
	setenv("KAFKA_BROKERS", "env:2", 1);
	setenv("DATABASE_URL", "postgresql:///env", 1);
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	ck_assert_str_eq(tally_config_str(cfg, "kafka.brokers"), "env:2");
	ck_assert_str_eq(tally_config_str(cfg, "database.url"),
			 "postgresql:///env");
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_config_seed_env_names)
{
	tally_config *cfg = NULL;
	tally_error err;

	setenv("AUTO_SUSPEND_DAYS", "3", 1);
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	ck_assert_int_eq(tally_config_int(cfg, "stripe.auto_suspend_days"), 3);
	tally_config_free(cfg);
	setenv("AUTO_SUSPEND_DAYS", "soon", 1);
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "$AUTO_SUSPEND_DAYS") != NULL, "got '%s'",
		      err.msg);
}
END_TEST

START_TEST(test_config_reload_keeps_non_reloadable)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("kafka: { brokers = \"a:1\"; };\n"
		  "aggregate: { batch_size = 100; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	write_cfg("kafka: { brokers = \"b:2\"; };\n"
		  "aggregate: { batch_size = 200; };\n");
	ck_assert_int_eq(tally_config_reload(cfg, &err), 0);
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.batch_size"), 200);
	ck_assert_msg(strcmp(tally_config_str(cfg, "kafka.brokers"), "a:1") == 0,
		      "kafka.brokers needs a restart and must keep its value");
	/* a value set from the command line survives a reload quietly */
	tally_config_set(cfg, "aggregate.batch_ms", "7");
	ck_assert_int_eq(tally_config_reload(cfg, &err), 0);
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.batch_ms"), 7);
	/* a broken file on reload keeps the old config */
	write_cfg("aggregate: { batch_size = ; };\n");
	ck_assert_int_eq(tally_config_reload(cfg, &err), TALLY_EINVALID);
	ck_assert_int_eq(tally_config_int(cfg, "aggregate.batch_size"), 200);
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_config_missing_file)
{
	tally_config *cfg = NULL;
	tally_error err;

	ck_assert_int_eq(tally_config_load(&cfg, "/nonexistent/x.cfg", &err),
			 TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "/nonexistent/x.cfg:0: cannot read"),
		      "got '%s'", err.msg);
}
END_TEST

START_TEST(test_config_alert_targets)
{
	tally_config *cfg = NULL;
	const tally_config_alert_target *t;
	tally_error err;
	char *shown = NULL;
	size_t shown_len = 0;
	FILE *fp;

	setenv("T_SLACK_URL", "https://hooks.slack.example/T0/B0/secret42", 1);
	setenv("T_FIN_URL", "https://fin.example/hook", 1);
	write_cfg("alerts: { targets = (\n"
		  " { name = \"ops\"; type = \"slack\"; url_env ="
		  " \"T_SLACK_URL\"; kinds = [\"budget\", \"mrr_drop\"];"
		  " link = \"https://a.example/{tenant_id}\"; },\n"
		  " { name = \"fin\"; type = \"json\"; url_env ="
		  " \"T_FIN_URL\"; }\n); };\n");
	ck_assert_msg(tally_config_load(&cfg, path, &err) == 0, "%s", err.msg);
	ck_assert_int_eq(tally_config_alert_targets(cfg, &t), 2);
	ck_assert_str_eq(t[0].name, "ops");
	ck_assert_str_eq(t[0].type, "slack");
	ck_assert_str_eq(t[0].url, "https://hooks.slack.example/T0/B0/secret42");
	ck_assert_str_eq(t[0].kinds, "budget,mrr_drop");
	ck_assert_str_eq(t[0].link, "https://a.example/{tenant_id}");
	ck_assert_str_eq(t[1].kinds, "");
	/* the URL is a secret: config show names its variable only */
	fp = open_memstream(&shown, &shown_len);
	tally_config_show(cfg, fp);
	fclose(fp);
	ck_assert_ptr_null(strstr(shown, "secret42"));
	ck_assert_ptr_nonnull(strstr(shown, "$T_SLACK_URL"));
	free(shown);
	tally_config_free(cfg);
	cfg = NULL;
	/* hostile or wrong lists: a clear error with the line */
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"slack\";"
		  " url_env = \"T_SLACK_URL\"; kinds = [\"nope\"]; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, ":1: alerts.targets: kinds: 'nope'")
		      != NULL, "got '%s'", err.msg);
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"slack\";"
		  " url_env = \"T_UNSET_URL\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "url_env"));
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"json\";"
		  " url_env = \"T_FIN_URL\"; }, { name = \"x\"; type ="
		  " \"json\"; url_env = \"T_FIN_URL\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "two targets named 'x'"));
	write_cfg("alerts: { targets = ( { name = \"webhook\"; type ="
		  " \"json\"; url_env = \"T_FIN_URL\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	write_cfg("alerts: { targets = ( { name = \"a b\"; type ="
		  " \"json\"; url_env = \"T_FIN_URL\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"xml\";"
		  " url_env = \"T_FIN_URL\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"json\";"
		  " url_env = \"T_FIN_URL\"; url = \"http://x\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "unknown member 'url'"));
	write_cfg("alerts: { targets = ( { name = \"x\"; type = \"json\";"
		  " url_env = \"T_FIN_URL\"; link = \"http://x\"; } ); };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	write_cfg("alerts: { targets = \"http://x\"; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), TALLY_EINVALID);
	unsetenv("T_SLACK_URL");
	unsetenv("T_FIN_URL");
}
END_TEST

START_TEST(test_config_example_documents_every_key)
{
	const char *ex = TALLY_SOURCE_DIR "/ops/tally.cfg.example";
	tally_config *cfg = NULL;
	tally_error err;
	config_t lc;
	const char *key;
	bool secret;
	size_t i;

	ck_assert_msg(tally_config_load(&cfg, ex, &err) == 0, "%s", err.msg);
	tally_config_free(cfg);
	config_init(&lc);
	ck_assert(config_read_file(&lc, ex) == CONFIG_TRUE);
	for (i = 0; (key = tally_config_key(i, &secret)) != NULL; i++)
		ck_assert_msg(secret || config_lookup(&lc, key) != NULL,
			      "ops/tally.cfg.example lacks key %s", key);
	config_destroy(&lc);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_config_defaults_without_file);
	tcase_add_test(tc, test_config_reads_file_values);
	tcase_add_test(tc, test_config_syntax_error_has_file_and_line);
	tcase_add_test(tc, test_config_unknown_key_rejected_with_line);
	tcase_add_test(tc, test_config_type_and_range_checked);
	tcase_add_test(tc, test_config_secret_only_from_env);
	tcase_add_test(tc, test_config_env_overrides_file);
	tcase_add_test(tc, test_config_seed_env_names);
	tcase_add_test(tc, test_config_reload_keeps_non_reloadable);
	tcase_add_test(tc, test_config_missing_file);
	tcase_add_test(tc, test_config_alert_targets);
	tcase_add_test(tc, test_config_example_documents_every_key);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(config_suite)
