#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

/**
 * @file tally/config.h
 * @brief Configuration: one table of keys (type, default, SIGHUP-reloadable,
 *        environment override), parsed from a libconfig file.
 *
 * Keys are dotted paths ("kafka.brokers", "aggregate.batch_size") into the
 * libconfig groups of the file. Unknown keys are an error (a typo must not
 * pass silently); errors read "file:line: message". Secrets (Stripe keys,
 * webhook secrets) come only from the environment and are never printed.
 * Values are read with typed accessors; asking for a key that is not in the
 * table is a programmer error (assert).
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "tally/common.h"

typedef struct tally_config tally_config;

/**
 * Load a config file; path may be NULL for defaults + environment only.
 * @param[out] out new config; free with tally_config_free()
 * @return 0 or TALLY_EINVALID with "file:line: message" in err
 */
int tally_config_load(tally_config **out, const char *path, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Re-read the file the config came from (SIGHUP). Reloadable keys take their
 * new values; changed non-reloadable keys are logged and keep their value.
 * On any error nothing changes and the old config stays in force.
 * Call from the thread that reads the config.
 */
int tally_config_reload(tally_config *cfg, tally_error *err) TALLY_MUSTCHECK;

void tally_config_free(tally_config *cfg);

/** String value (never NULL; "" when unset). Borrowed from cfg. */
const char *tally_config_str(const tally_config *cfg, const char *key);
int64_t tally_config_int(const tally_config *cfg, const char *key);
bool tally_config_bool(const tally_config *cfg, const char *key);

/**
 * Override a value in memory (command-line flags, tests). The value is
 * not checked against the table's type, and a later reload keeps it.
 */
void tally_config_set(tally_config *cfg, const char *key, const char *value);

/** Print every key, its effective value (secrets masked) and reloadability. */
void tally_config_show(const tally_config *cfg, FILE *fp);

/**
 * The i-th key of the table (dotted path), or NULL past the end; *secret
 * (if non-NULL) tells whether it comes only from the environment.
 */
const char *tally_config_key(size_t i, bool *secret);

/**
 * Which program's own Kafka properties apply: "rate" selects
 * rate.kafka.properties (also aggregate, stripe, alerts, relay). NULL or
 * any other name: only kafka.properties. tally_program_start() sets it.
 */
void tally_config_set_program(tally_config *cfg, const char *program);

/**
 * The i-th librdkafka property (name, value) for this program's clients:
 * the pairs of kafka.properties, then those of the program's list (set them
 * in this order, so the program's win). False past the end. Secret
 * properties are never here: kafka.sasl_password ($KAFKA_SASL_PASSWORD)
 * and kafka.ssl_key_password ($KAFKA_SSL_KEY_PASSWORD) are keys.
 */
bool tally_config_kafka_property(const tally_config *cfg, size_t i,
				 const char **name, const char **value);

/**
 * One target of alerts.targets (docs/alerts.md "Targets"): name, type
 * "json" or "slack", the URL read from the environment variable the file
 * names (webhook URLs are secrets: never in the file, never printed), the
 * kinds it receives ("a,b"; "" = every kind) and, for slack, the link
 * template ("" = none).
 */
typedef struct tally_config_alert_target {
	char *name, *type, *url, *url_env, *kinds, *link;
} tally_config_alert_target;

/**
 * The targets of alerts.targets (reloaded on SIGHUP); *out is borrowed
 * from cfg until the next reload. @return how many
 */
size_t tally_config_alert_targets(const tally_config *cfg,
				  const tally_config_alert_target **out);

/** The file the config was loaded from, or "" when none. */
const char *tally_config_path(const tally_config *cfg);

#endif /* TALLY_CONFIG_H */
