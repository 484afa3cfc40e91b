/*
 * kafka_props.c - the librdkafka property lists of the config
 * (kafka.properties, <program>.kafka.properties): parsed from libconfig,
 * each pair checked by librdkafka, secrets refused (they come from the
 * environment, see config.c).
 */
#define _POSIX_C_SOURCE 200809L
#include "kafka_props.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const tally_kprops_sections[TALLY_KPROPS_NSECT] = {
	"kafka.properties", "rate.kafka.properties",
	"aggregate.kafka.properties", "stripe.kafka.properties",
	"alerts.kafka.properties", "relay.kafka.properties",
};

/* librdkafka properties that hold secrets: never from the file */
static const struct {
	const char *name, *env;
} secret_props[] = {
	{ "sasl.password", "KAFKA_SASL_PASSWORD" },
	{ "ssl.key.password", "KAFKA_SSL_KEY_PASSWORD" },
	{ "ssl.keystore.password", NULL },
	{ "ssl.key.pem", NULL },
	{ "sasl.oauthbearer.client.secret", NULL },
	{ "sasl.oauthbearer.config", NULL },
};

void tally_kprops_free(tally_kprops *p)
{
	size_t i;

	for (i = 0; i < 2 * p->n; i++)
		free(p->kv[i]);
	free(p->kv);
	p->kv = NULL;
	p->n = 0;
}

bool tally_kprops_equal(const tally_kprops *a, const tally_kprops *b)
{
	size_t i;

	if (a->n != b->n)
		return false;
	for (i = 0; i < 2 * a->n; i++)
		if (strcmp(a->kv[i], b->kv[i]) != 0)
			return false;
	return true;
}

/* Whether name may be set from the file; why says what is wrong if not. */
static bool prop_allowed(const char *name, char *why, size_t n)
{
	size_t i;

	for (i = 0; i < sizeof(secret_props) / sizeof(secret_props[0]); i++) {
		if (strcmp(name, secret_props[i].name) != 0)
			continue;
		if (secret_props[i].env != NULL)
			snprintf(why, n, "'%s' is a secret and comes only from "
				 "$%s", name, secret_props[i].env);
		else
			snprintf(why, n, "'%s' is a secret and may not be in "
				 "the file", name);
		return false;
	}
	if (strcmp(name, "bootstrap.servers") == 0 ||
	    strcmp(name, "metadata.broker.list") == 0) {
		snprintf(why, n, "'%s' is set by kafka.brokers", name);
		return false;
	}
	return true;
}

/*
 * One ("name", "value") list into p; every pair is checked by librdkafka
 * on a scratch conf, so a misspelt property fails the load.
 */
int tally_kprops_parse(config_setting_t *s, const char *path,
		      tally_kprops *p, const char *file, tally_error *err)
{
	rd_kafka_conf_t *scratch;
	int i, n, rc = 0;
	char why[300], errstr[256];

	if (config_setting_type(s) != CONFIG_TYPE_LIST &&
	    config_setting_type(s) != CONFIG_TYPE_ARRAY)
		return tally_error_set(err, TALLY_EINVALID,
				       "%s:%u: '%s' must be a list of "
				       "(\"name\", \"value\") pairs", file,
				       config_setting_source_line(s), path);
	tally_kprops_free(p);
	scratch = rd_kafka_conf_new();
	n = config_setting_length(s);
	for (i = 0; rc == 0 && i < n; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
		const char *k = NULL, *v = NULL;
		unsigned line = config_setting_source_line(e);

		if (config_setting_is_aggregate(e) &&
		    config_setting_length(e) == 2) {
			k = config_setting_get_string_elem(e, 0);
			v = config_setting_get_string_elem(e, 1);
		}
		if (k == NULL || v == NULL || *k == '\0') {
			rc = tally_error_set(err, TALLY_EINVALID,
					     "%s:%u: '%s': element %d is not a "
					     "(\"name\", \"value\") pair",
					     file, line, path, i + 1);
		} else if (!prop_allowed(k, why, sizeof(why))) {
			rc = tally_error_set(err, TALLY_EINVALID, "%s:%u: %s: %s",
					     file, line, path, why);
		} else if (rd_kafka_conf_set(scratch, k, v, errstr,
					     sizeof(errstr)) != RD_KAFKA_CONF_OK) {
			rc = tally_error_set(err, TALLY_EINVALID, "%s:%u: %s: %s",
					     file, line, path, errstr);
		} else {
			p->kv = tally_xrealloc(p->kv, 2 * (p->n + 1) *
					       sizeof(*p->kv));
			p->kv[2 * p->n] = tally_xstrdup(k);
			p->kv[2 * p->n + 1] = tally_xstrdup(v);
			p->n++;
		}
	}
	rd_kafka_conf_destroy(scratch);
	if (rc != 0)
		tally_kprops_free(p);
	return rc;
}

int tally_kprops_section(const char *path)
{
	size_t i;

	for (i = 0; i < TALLY_KPROPS_NSECT; i++)
		if (strcmp(tally_kprops_sections[i], path) == 0)
			return (int)i;
	return -1;
}

