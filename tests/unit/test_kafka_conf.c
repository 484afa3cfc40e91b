/*
 * test_kafka_conf.c - librdkafka properties from the config: kafka.properties
 * for every client, a program's own list merged over it, secrets only from
 * $KAFKA_SASL_PASSWORD / $KAFKA_SSL_KEY_PASSWORD (refused in the file, also
 * as a property), misspelt properties refused with file:line, and a
 * program's tuned defaults never over an operator's property, and the
 * shorter first reconnect backoff of every client unless named.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/config.h"
#include "tally/kafka.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static void write_cfg(const char *text)
{
	FILE *fp;

	snprintf(path, sizeof(path), "/tmp/tally_kconf_%d.cfg", (int)getpid());
	fp = fopen(path, "w");
	ck_assert_ptr_nonnull(fp);
	fputs(text, fp);
	fclose(fp);
}

static void setup(void)
{
	unsetenv("KAFKA_SASL_PASSWORD");
	unsetenv("KAFKA_SSL_KEY_PASSWORD");
	unsetenv("KAFKA_BROKERS");
}

static void teardown(void)
{
	unlink(path);
	setup();
}

/* the value librdkafka holds for name in a conf made from cfg */
static void conf_value(const tally_config *cfg, const char *name, char *out,
		       size_t n)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);

	out[0] = '\0';
	if (rd_kafka_conf_get(conf, name, out, &n) != RD_KAFKA_CONF_OK)
		out[0] = '\0';
	rd_kafka_conf_destroy(conf);
}

static const char MERGED[] =
	"kafka: { brokers = \"b:9\";\n"
	"  properties = ( (\"security.protocol\", \"sasl_ssl\"),\n"
	"                 (\"sasl.mechanism\", \"SCRAM-SHA-512\"),\n"
	"                 (\"sasl.username\", \"all\") ); };\n"
	"rate: { kafka: { properties = ( (\"sasl.username\", \"rater\") ); }; };\n";

START_TEST(test_kafka_conf_program_list_merged_over_global)
{
	tally_config *cfg = NULL;
	tally_error err;
	char v[128];

	write_cfg(MERGED);
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	conf_value(cfg, "sasl.username", v, sizeof(v));
	ck_assert_str_eq(v, "all"); /* no program: the global list */
	conf_value(cfg, "security.protocol", v, sizeof(v));
	ck_assert_str_eq(v, "sasl_ssl");
	tally_config_set_program(cfg, "rate");
	conf_value(cfg, "sasl.username", v, sizeof(v));
	ck_assert_str_eq(v, "rater");
	conf_value(cfg, "sasl.mechanisms", v, sizeof(v));
	ck_assert_str_eq(v, "SCRAM-SHA-512");
	tally_config_set_program(cfg, "aggregate");
	conf_value(cfg, "sasl.username", v, sizeof(v));
	ck_assert_str_eq(v, "all");
	tally_config_free(cfg);
}
END_TEST

/* the value after tally_kafka_conf_default(name, dflt) on cfg's conf */
static void default_value(const tally_config *cfg, const char *name,
			  const char *dflt, char *out, size_t n)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	tally_error err;

	ck_assert_int_eq(tally_kafka_conf_default(conf, cfg, name, dflt, &err),
			 0);
	out[0] = '\0';
	if (rd_kafka_conf_get(conf, name, out, &n) != RD_KAFKA_CONF_OK)
		out[0] = '\0';
	rd_kafka_conf_destroy(conf);
}

START_TEST(test_kafka_conf_default_yields_to_operator)
{
	tally_config *cfg = NULL;
	tally_error err;
	rd_kafka_conf_t *conf;
	char v[64];

	write_cfg("kafka: { brokers = \"b:9\";\n"
		  "  properties = ( (\"fetch.wait.max.ms\", \"7\") ); };\n"
		  "aggregate: { kafka: { properties = "
		  "( (\"fetch.min.bytes\", \"1000\") ); }; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	tally_config_set_program(cfg, "aggregate");
	default_value(cfg, "fetch.min.bytes", "131072", v, sizeof(v));
	ck_assert_str_eq(v, "1000"); /* the program's own list */
	default_value(cfg, "fetch.wait.max.ms", "100", v, sizeof(v));
	ck_assert_str_eq(v, "7");    /* the global list */
	default_value(cfg, "fetch.max.bytes", "1048576", v, sizeof(v));
	ck_assert_str_eq(v, "1048576"); /* not named: the default */
	tally_config_set_program(cfg, "rate");
	default_value(cfg, "fetch.min.bytes", "262144", v, sizeof(v));
	ck_assert_str_eq(v, "262144"); /* another program's list */
	/* a bad default is an error, not a silent no-op */
	conf = tally_kafka_conf(cfg);
	ck_assert_int_ne(tally_kafka_conf_default(conf, cfg, "fetch.min.bytes",
						  "-5", &err), 0);
	rd_kafka_conf_destroy(conf);
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_kafka_conf_reconnect_backoff_default)
{
	tally_config *cfg = NULL;
	tally_error err;
	char v[64];

	write_cfg("kafka: { brokers = \"b:9\"; };\n"
		  "rate: { kafka: { properties = "
		  "( (\"reconnect.backoff.ms\", \"250\") ); }; };\n");
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	tally_config_set_program(cfg, "aggregate");
	conf_value(cfg, "reconnect.backoff.ms", v, sizeof(v));
	ck_assert_str_eq(v, "20");
	tally_config_set_program(cfg, "rate");
	conf_value(cfg, "reconnect.backoff.ms", v, sizeof(v));
	ck_assert_str_eq(v, "250"); /* the operator's property wins */
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_kafka_conf_secrets_from_env_only)
{
	tally_config *cfg = NULL;
	tally_error err;
	char v[128];

	write_cfg("kafka: { properties = ( (\"sasl.username\", \"u\"),\n"
		  "  (\"sasl.password\", \"hunter2\") ); };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, ":2:") != NULL, "%s", err.msg);
	ck_assert_msg(strstr(err.msg, "$KAFKA_SASL_PASSWORD") != NULL, "%s",
		      err.msg);
	ck_assert_msg(strstr(err.msg, "hunter2") == NULL, "%s", err.msg);

	write_cfg("kafka: { sasl_password = \"hunter2\"; };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, "$KAFKA_SASL_PASSWORD") != NULL, "%s",
		      err.msg);

	write_cfg("rate: { kafka: { properties = ( (\"ssl.key.password\", "
		  "\"x\") ); }; };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, "$KAFKA_SSL_KEY_PASSWORD") != NULL, "%s",
		      err.msg);

	setenv("KAFKA_SASL_PASSWORD", "from-env", 1);
	setenv("KAFKA_SSL_KEY_PASSWORD", "key-env", 1);
	write_cfg(MERGED);
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	conf_value(cfg, "sasl.password", v, sizeof(v));
	ck_assert_str_eq(v, "from-env");
	conf_value(cfg, "ssl.key.password", v, sizeof(v));
	ck_assert_str_eq(v, "key-env");
	tally_config_free(cfg);
}
END_TEST

START_TEST(test_kafka_conf_bad_property_has_file_and_line)
{
	tally_config *cfg = NULL;
	tally_error err;

	write_cfg("log: { level = \"info\"; };\n"
		  "kafka: { properties = ( (\"security.protocoll\", \"ssl\") ); };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, ":2:") != NULL &&
		      strstr(err.msg, "security.protocoll") != NULL, "%s",
		      err.msg);

	write_cfg("kafka: { properties = ( (\"security.protocol\", \"tls\") ); };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);

	write_cfg("kafka: { properties = ( \"security.protocol=ssl\" ); };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, "pair") != NULL, "%s", err.msg);

	write_cfg("kafka: { properties = ( (\"bootstrap.servers\", \"x:1\") ); };\n");
	ck_assert_int_ne(tally_config_load(&cfg, path, &err), 0);
	ck_assert_msg(strstr(err.msg, "kafka.brokers") != NULL, "%s", err.msg);
}
END_TEST

START_TEST(test_kafka_conf_reload_keeps_properties)
{
	tally_config *cfg = NULL;
	tally_error err;
	char v[128];

	write_cfg(MERGED);
	ck_assert_int_eq(tally_config_load(&cfg, path, &err), 0);
	write_cfg("kafka: { brokers = \"b:9\"; properties = ( "
		  "(\"sasl.username\", \"changed\") ); };\n");
	ck_assert_int_eq(tally_config_reload(cfg, &err), 0);
	conf_value(cfg, "sasl.username", v, sizeof(v));
	ck_assert_str_eq(v, "all"); /* clients keep what they started with */
	tally_config_free(cfg);
}
END_TEST

static Suite *kafka_conf_suite(void)
{
	Suite *s = suite_create("kafka_conf");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_kafka_conf_program_list_merged_over_global);
	tcase_add_test(tc, test_kafka_conf_default_yields_to_operator);
	tcase_add_test(tc, test_kafka_conf_reconnect_backoff_default);
	tcase_add_test(tc, test_kafka_conf_secrets_from_env_only);
	tcase_add_test(tc, test_kafka_conf_bad_property_has_file_and_line);
	tcase_add_test(tc, test_kafka_conf_reload_keeps_properties);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(kafka_conf_suite)
