/*
 * config.c - the table of configuration keys and a libconfig loader.
 *
 * Every key lives in keys[] with its type, default, whether SIGHUP may reload
 * it, and an optional environment variable that overrides the file. Values
 * are stored as strings and converted by the typed accessors; ints and bools
 * are validated at load time so a bad value fails the load, not a later read.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/config.h"
#include "tally/log.h"
#include "alert_targets.h"
#include "kafka_props.h"

#include <assert.h>
#include <inttypes.h>
#include <libconfig.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { CT_STR, CT_INT, CT_BOOL } ctype;

typedef struct keydef {
	const char *key;
	ctype type;
	const char *def;
	bool reload;
	const char *env;   /* environment override, or NULL */
	bool secret;       /* env only; never printed */
	int64_t min, max;  /* for CT_INT */
} keydef;

#define S(k, d, r, e) { k, CT_STR, d, r, e, false, 0, 0 }
#define SECRET(k, e) { k, CT_STR, "", false, e, true, 0, 0 }
#define I(k, d, r, lo, hi) { k, CT_INT, #d, r, NULL, false, lo, hi }
#define IE(k, d, r, e, lo, hi) { k, CT_INT, #d, r, e, false, lo, hi }
#define B(k, d, r) { k, CT_BOOL, d, r, NULL, false, 0, 1 }

static const keydef keys[] = {
	/* logging */
	S("log.level", "info", true, "TALLY_LOG_LEVEL"),
	/* PostgreSQL */
	S("database.url", "postgresql:///tally", false, "DATABASE_URL"),
	I("database.statement_timeout_ms", 60000, true, 0, 3600000),
	I("database.retry_max_ms", 30000, true, 100, 600000),
	/* Kafka */
	S("kafka.brokers", "127.0.0.1:19092", false, "KAFKA_BROKERS"),
	S("kafka.client_id", "tally", false, NULL),
	S("kafka.dlq_suffix", ".dlq", false, NULL),
	I("kafka.session_timeout_ms", 10000, false, 1000, 300000),
	I("kafka.rejoin_timeout_ms", 120000, false, 0, 3600000),
	SECRET("kafka.sasl_password", "KAFKA_SASL_PASSWORD"),
	SECRET("kafka.ssl_key_password", "KAFKA_SSL_KEY_PASSWORD"),
	S("topics.usage", "billing.usage", false, NULL),
	S("topics.rated", "billing.usage.rated", false, NULL),
	S("topics.totals", "billing.totals", false, NULL),
	S("topics.commands", "billing.commands", false, NULL),
	S("topics.stripe_events", "billing.stripe-events", false, NULL),
	S("topics.signals", "billing.signals", false, NULL),
	S("topics.alerts", "billing.alerts", false, NULL),
	/* tally-rate */
	S("rate.group", "tally.rate", false, NULL),
	/* "": tally-rate-<hostname>-<pid> (instance_default()) */
	S("rate.transactional_id", "", false, "TALLY_TRANSACTIONAL_ID"),
	I("rate.batch_size", 12000, true, 1, 1000000),
	I("rate.batch_ms", 50, true, 1, 60000),
	S("rate.unpriced", "dead_letter", true, NULL),
	I("rate.price_check_s", 5, true, 1, 3600),
	I("rate.prefetch_messages", 5000, false, 1000, 10000000),
	S("rate.metrics_listen", "127.0.0.1:9401", false, NULL),
	/* tally-aggregate */
	S("aggregate.group", "tally.aggregate", false, NULL),
	I("aggregate.batch_size", 30000, true, 1, 1000000),
	I("aggregate.batch_ms", 100, true, 1, 60000),
	I("aggregate.lanes", 1, false, 1, 8),
	/* distinct workflows + users kept in memory (8 bytes each) */
	I("aggregate.known_keys", 131072, false, 0, 16777216),
	/* not reloadable: the lanes keep the window they started with, and
	 * the dedupe keys are kept for it (a smaller window on reload would
	 * drop keys of events still accepted) */
	I("aggregate.lateness_days", 35, false, 1, 3650),
	I("aggregate.future_tolerance_s", 300, false, 0, 86400),
	I("aggregate.retention_days", 400, true, 36, 36500),
	I("aggregate.partitions_ahead_days", 7, true, 1, 365),
	/* distinct provider/model names per tenant; over it: dead letter */
	I("aggregate.max_models_per_tenant", 1000, false, 1, 1000000),
	S("aggregate.metrics_listen", "127.0.0.1:9402", false, NULL),
	/* Stripe */
	S("stripe.api_base", "https://api.stripe.com", false, "STRIPE_API_BASE"),
	SECRET("stripe.secret_key", "STRIPE_SECRET_KEY"),
	S("stripe.api_version", "2024-06-20", false, NULL),
	S("stripe.group", "tally.stripe", false, NULL),
	I("stripe.timeout_ms", 30000, true, 100, 600000),
	I("stripe.max_retries", 5, true, 0, 20),
	IE("stripe.default_trial_days", 14, true, "DEFAULT_TRIAL_DAYS", 0, 365),
	IE("stripe.max_trial_days", 30, true, "MAX_TRIAL_DAYS", 0, 365),
	IE("stripe.auto_suspend_days", 7, true, "AUTO_SUSPEND_DAYS", 1, 365),
	I("stripe.meter_interval_s", 3600, true, 10, 86400),
	S("stripe.meter_event_name", "ai_tokens", true, NULL),
	S("stripe.usage_billing", "invoice_items", true, NULL),
	S("stripe.invoice_grouping", "per_model", true, NULL),
	S("stripe.price_starter", "", true, "STRIPE_PRICE_ID_STARTER"),
	S("stripe.price_professional", "", true, "STRIPE_PRICE_ID_PROFESSIONAL"),
	S("stripe.price_enterprise", "", true, "STRIPE_PRICE_ID_ENTERPRISE"),
	S("stripe.price_white_label_starter", "", true,
	  "STRIPE_PRICE_ID_WHITE_LABEL_STARTER"),
	S("stripe.price_white_label_enterprise", "", true,
	  "STRIPE_PRICE_ID_WHITE_LABEL_ENTERPRISE"),
	S("stripe.metrics_listen", "127.0.0.1:9403", false, NULL),
	/* false: mirror events without a webhook secret (never by default) */
	B("stripe.verify_signatures", "true", false),
	/* tally-relay */
	S("relay.listen", "127.0.0.1:8088", false, NULL),
	S("relay.admin_listen", "127.0.0.1:9405", false, NULL),
	S("relay.path", "/webhooks/stripe", false, NULL),
	SECRET("relay.webhook_secret", "STRIPE_WEBHOOK_SECRET"),
	SECRET("relay.webhook_secret_previous", "STRIPE_WEBHOOK_SECRET_PREVIOUS"),
	I("relay.tolerance_s", 300, true, 1, 86400),
	/* + key and headers must fit message.max.bytes (checked at start) */
	I("relay.max_body", 983040, false, 1024, 67108864),
	I("relay.max_buffered", 33554432, false, 1024, 17179869184),
	I("relay.max_connections", 4096, false, 16, 1000000),
	I("relay.max_connections_per_ip", 64, false, 0, 1000000),
	I("relay.idle_timeout_s", 10, false, 1, 3600),
	I("relay.body_timeout_ms", 10000, false, 100, 600000),
	I("relay.produce_timeout_ms", 10000, true, 100, 120000),
	/* HTTP intake of usage events ("": none), API keys */
	S("relay.intake_path", "/v1/events", false, NULL),
	I("relay.intake_max_body", 2097152, false, 1024, 67108864),
	I("relay.intake_max_events", 1000, false, 1, 100000),
	I("relay.key_ttl_ms", 2000, false, 100, 600000),
	I("relay.key_cache_max", 100000, false, 16, 10000000),
	/* tally-alerts */
	S("alerts.group", "tally.alerts", false, NULL),
	S("alerts.thresholds", "50,80,100", true, NULL),
	S("alerts.webhook_url", "", true, "TALLY_ALERTS_WEBHOOK_URL"),
	/* a delivery gives up (failed) at whichever comes first */
	I("alerts.delivery_max_attempts", 12, true, 1, 1000),
	I("alerts.delivery_max_age_s", 86400, true, 1, 2592000),
	/* signs every webhook delivery (Tally-Signature); rotation: both */
	SECRET("alerts.webhook_secret", "TALLY_ALERTS_WEBHOOK_SECRET"),
	SECRET("alerts.webhook_secret_previous",
	       "TALLY_ALERTS_WEBHOOK_SECRET_PREVIOUS"),
	S("alerts.metrics_listen", "127.0.0.1:9404", false, NULL),
	I("alerts.silence_days", 7, true, 1, 365),
	I("alerts.silence_active_days", 7, true, 1, 28),
	I("alerts.silence_scan_s", 3600, true, 0, 86400),
	/* revenue alerts on the finance views: thresholds ("" = off) */
	S("alerts.mrr_change_pct", "10", true, NULL),
	S("alerts.plan_revenue_drop_pct", "20", true, NULL),
	S("alerts.usage_over_plan_pct", "200", true, NULL),
	I("alerts.revenue_scan_s", 3600, true, 0, 86400),
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

struct tally_config {
	char *path;
	char *values[NKEYS];
	bool from_env[NKEYS];
	bool from_cli[NKEYS]; /* tally_config_set(): a reload keeps it */
	tally_kprops props[TALLY_KPROPS_NSECT];
	tally_atargets targets; /* alerts.targets */
	size_t program; /* its list in tally_kprops_sections; 0: none */
};

static int find_key(const char *key)
{
	size_t i;

	for (i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].key, key) == 0)
			return (int)i;
	return -1;
}

static int check_value(const keydef *kd, const char *v, char *why, size_t n)
{
	int64_t x;

	if (kd->type == CT_INT) {
		if (tally_parse_i64(&x, v) != 0) {
			snprintf(why, n, "%s: not an integer", kd->key);
			return -1;
		}
		if (x < kd->min || x > kd->max) {
			snprintf(why, n, "%s: %" PRId64 " out of range [%" PRId64
				 ", %" PRId64 "]", kd->key, x, kd->min, kd->max);
			return -1;
		}
	} else if (kd->type == CT_BOOL) {
		if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
			snprintf(why, n, "%s: not a boolean", kd->key);
			return -1;
		}
	}
	return 0;
}

/* "a.b.c" path of a setting (libconfig 1.5 has no path accessor). */
static char *setting_path(const config_setting_t *c)
{
	const char *parts[16];
	int n = 0, i;
	size_t len = 0;
	char *out;

	for (; c != NULL && n < 16; c = config_setting_parent(c)) {
		const char *nm = config_setting_name(c);
		if (nm == NULL)
			break; /* the root */
		parts[n++] = nm;
		len += strlen(nm) + 1;
	}
	out = tally_xmalloc(len + 1);
	len = 0;
	for (i = n - 1; i >= 0; i--) {
		size_t pl = strlen(parts[i]);
		memcpy(out + len, parts[i], pl);
		len += pl;
		if (i > 0)
			out[len++] = '.';
	}
	out[len] = '\0';
	return out;
}

/* Walk the libconfig tree; every leaf must be a known key of the right type. */
static int walk(config_setting_t *s, char *vals[], tally_kprops props[],
		tally_atargets *tg, const char *file, tally_error *err)
{
	int i, n = config_setting_length(s);

	for (i = 0; i < n; i++) {
		config_setting_t *c = config_setting_get_elem(s, (unsigned)i);
		char *path;
		int k, type = config_setting_type(c);
		char buf[64], why[200];
		const char *v = NULL;

		if (type == CONFIG_TYPE_GROUP) {
			if (walk(c, vals, props, tg, file, err) != 0)
				return TALLY_EINVALID;
			continue;
		}
		path = setting_path(c);
		k = tally_kprops_section(path);
		if (k >= 0) {
			k = tally_kprops_parse(c, path, &props[k], file, err);
			free(path);
			if (k != 0)
				return TALLY_EINVALID;
			continue;
		}
		if (strcmp(path, "alerts.targets") == 0) {
			free(path);
			if (tally_atargets_parse(c, tg, file, err) != 0)
				return TALLY_EINVALID;
			continue;
		}
		k = find_key(path);
		if (k < 0) {
			tally_error_set(err, TALLY_EINVALID, "%s:%u: unknown key '%s'",
					file, config_setting_source_line(c), path);
			free(path);
			return TALLY_EINVALID;
		}
		if (keys[k].secret) {
			tally_error_set(err, TALLY_EINVALID,
					"%s:%u: '%s' is a secret and comes only from $%s",
					file, config_setting_source_line(c), path,
					keys[k].env);
			free(path);
			return TALLY_EINVALID;
		}
		switch (type) {
		case CONFIG_TYPE_STRING:
			if (keys[k].type == CT_STR)
				v = config_setting_get_string(c);
			break;
		case CONFIG_TYPE_INT:
		case CONFIG_TYPE_INT64:
			if (keys[k].type == CT_INT) {
				snprintf(buf, sizeof(buf), "%lld",
					 config_setting_get_int64(c));
				v = buf;
			}
			break;
		case CONFIG_TYPE_BOOL:
			if (keys[k].type == CT_BOOL)
				v = config_setting_get_bool(c) ? "true" : "false";
			break;
		default:
			break;
		}
		if (v == NULL) {
			tally_error_set(err, TALLY_EINVALID,
					"%s:%u: '%s' must be a %s", file,
					config_setting_source_line(c), path,
					keys[k].type == CT_STR ? "string" :
					keys[k].type == CT_INT ? "integer" : "boolean");
			free(path);
			return TALLY_EINVALID;
		}
		if (check_value(&keys[k], v, why, sizeof(why)) != 0) {
			tally_error_set(err, TALLY_EINVALID, "%s:%u: %s", file,
					config_setting_source_line(c), why);
			free(path);
			return TALLY_EINVALID;
		}
		free(vals[k]);
		vals[k] = tally_xstrdup(v);
		free(path);
	}
	return 0;
}

/*
 * rate.transactional_id left empty is made unique per process: replicas
 * sharing one id fence each other (each init_transactions aborts the
 * other's), so none could make progress. The price: a process killed
 * mid-transaction leaves it open until transaction.timeout.ms; a stable id
 * per instance ($TALLY_TRANSACTIONAL_ID) lets its restart abort it at once.
 */
static void instance_default(char *vals[])
{
	int k = find_key("rate.transactional_id");
	char host[256], id[320];

	if (*vals[k] != '\0')
		return;
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(id, sizeof(id), "tally-rate-%s-%ld", host, (long)getpid());
	free(vals[k]);
	vals[k] = tally_xstrdup(id);
}

static int load_values(char *vals[], bool from_env[], tally_kprops props[],
		       tally_atargets *tg, const char *path, tally_error *err)
{
	config_t lc;
	size_t i;
	int rc = 0;
	char why[200];

	for (i = 0; i < NKEYS; i++) {
		vals[i] = NULL;
		from_env[i] = false;
	}
	if (path != NULL && *path != '\0') {
		config_init(&lc);
		if (config_read_file(&lc, path) != CONFIG_TRUE) {
			if (config_error_type(&lc) == CONFIG_ERR_FILE_IO)
				rc = tally_error_set(err, TALLY_EINVALID,
						     "%s:0: cannot read file", path);
			else
				rc = tally_error_set(err, TALLY_EINVALID,
						     "%s:%d: %s",
						     config_error_file(&lc) ?
						     config_error_file(&lc) : path,
						     config_error_line(&lc),
						     config_error_text(&lc));
		} else {
			rc = walk(config_root_setting(&lc), vals, props, tg,
				  path, err);
		}
		config_destroy(&lc);
	}
	for (i = 0; rc == 0 && i < NKEYS; i++) {
		const char *e = keys[i].env ? getenv(keys[i].env) : NULL;

		if (e != NULL && *e != '\0') {
			if (check_value(&keys[i], e, why, sizeof(why)) != 0) {
				rc = tally_error_set(err, TALLY_EINVALID,
						     "$%s: %s", keys[i].env, why);
				break;
			}
			free(vals[i]);
			vals[i] = tally_xstrdup(e);
			from_env[i] = true;
		}
		if (vals[i] == NULL)
			vals[i] = tally_xstrdup(keys[i].def);
	}
	if (rc == 0)
		instance_default(vals);
	if (rc != 0) {
		for (i = 0; i < NKEYS; i++) {
			free(vals[i]);
			vals[i] = NULL;
		}
		for (i = 0; i < TALLY_KPROPS_NSECT; i++)
			tally_kprops_free(&props[i]);
		tally_atargets_free(tg);
	}
	return rc;
}

int tally_config_load(tally_config **out, const char *path, tally_error *err)
{
	tally_config *cfg = tally_xcalloc(1, sizeof(*cfg));
	int rc;

	rc = load_values(cfg->values, cfg->from_env, cfg->props, &cfg->targets,
			 path, err);
	if (rc != 0) {
		free(cfg);
		return rc;
	}
	cfg->path = tally_xstrdup(path ? path : "");
	*out = cfg;
	return 0;
}

int tally_config_reload(tally_config *cfg, tally_error *err)
{
	char *vals[NKEYS];
	bool env[NKEYS];
	tally_kprops props[TALLY_KPROPS_NSECT];
	tally_atargets tg = { 0, NULL };
	size_t i;
	int rc;

	memset(props, 0, sizeof(props));
	rc = load_values(vals, env, props, &tg, cfg->path, err);
	if (rc != 0)
		return rc;
	if (!tally_atargets_equal(&tg, &cfg->targets)) {
		tally_log(TALLY_INFO, "config.reloaded",
			  TALLY_KV_STR("key", "alerts.targets"));
		tally_atargets_free(&cfg->targets);
		cfg->targets = tg;
	} else {
		tally_atargets_free(&tg);
	}
	/* clients keep the properties they were created with */
	for (i = 0; i < TALLY_KPROPS_NSECT; i++) {
		if (!tally_kprops_equal(&props[i], &cfg->props[i]))
			tally_log(TALLY_WARN, "config.reload_ignored",
				  TALLY_KV_STR("key", tally_kprops_sections[i]),
				  TALLY_KV_STR("reason", "needs a restart"));
		tally_kprops_free(&props[i]);
	}
	for (i = 0; i < NKEYS; i++) {
		if (cfg->from_cli[i] || strcmp(vals[i], cfg->values[i]) == 0) {
			free(vals[i]);
			continue;
		}
		if (!keys[i].reload) {
			tally_log(TALLY_WARN, "config.reload_ignored",
				  TALLY_KV_STR("key", keys[i].key),
				  TALLY_KV_STR("reason", "needs a restart"));
			free(vals[i]);
			continue;
		}
		tally_log(TALLY_INFO, "config.reloaded",
			  TALLY_KV_STR("key", keys[i].key));
		free(cfg->values[i]);
		cfg->values[i] = vals[i];
		cfg->from_env[i] = env[i];
	}
	return 0;
}

void tally_config_free(tally_config *cfg)
{
	size_t i;

	if (cfg == NULL)
		return;
	for (i = 0; i < NKEYS; i++)
		free(cfg->values[i]);
	for (i = 0; i < TALLY_KPROPS_NSECT; i++)
		tally_kprops_free(&cfg->props[i]);
	tally_atargets_free(&cfg->targets);
	free(cfg->path);
	free(cfg);
}

static int must_find(const char *key)
{
	int k = find_key(key);

	assert(k >= 0 && "unknown config key");
	return k;
}

const char *tally_config_str(const tally_config *cfg, const char *key)
{
	return cfg->values[must_find(key)];
}

int64_t tally_config_int(const tally_config *cfg, const char *key)
{
	int64_t v = 0;
	int k = must_find(key);

	assert(keys[k].type == CT_INT);
	if (tally_parse_i64(&v, cfg->values[k]) != 0)
		v = 0; /* validated at load and set; unreachable */
	return v;
}

bool tally_config_bool(const tally_config *cfg, const char *key)
{
	return strcmp(cfg->values[must_find(key)], "true") == 0;
}

void tally_config_set(tally_config *cfg, const char *key, const char *value)
{
	int k = must_find(key);

	free(cfg->values[k]);
	cfg->values[k] = tally_xstrdup(value);
	cfg->from_cli[k] = true;
}

const char *tally_config_key(size_t i, bool *secret)
{
	if (i >= NKEYS)
		return NULL;
	if (secret != NULL)
		*secret = keys[i].secret;
	return keys[i].key;
}

size_t tally_config_alert_targets(const tally_config *cfg,
				  const tally_config_alert_target **out)
{
	*out = cfg->targets.v;
	return cfg->targets.n;
}

const char *tally_config_path(const tally_config *cfg)
{
	return cfg->path;
}

void tally_config_set_program(tally_config *cfg, const char *program)
{
	size_t i, len = program ? strlen(program) : 0;

	cfg->program = 0;
	for (i = 1; len > 0 && i < TALLY_KPROPS_NSECT; i++)
		if (strncmp(tally_kprops_sections[i], program, len) == 0 &&
		    tally_kprops_sections[i][len] == '.')
			cfg->program = i;
}

bool tally_config_kafka_property(const tally_config *cfg, size_t i,
				 const char **name, const char **value)
{
	const tally_kprops *p = &cfg->props[0];

	if (i >= p->n) {
		i -= p->n;
		p = &cfg->props[cfg->program];
		if (cfg->program == 0 || i >= p->n)
			return false;
	}
	*name = p->kv[2 * i];
	*value = p->kv[2 * i + 1];
	return true;
}

void tally_config_show(const tally_config *cfg, FILE *fp)
{
	size_t i;
	char red[512];

	fprintf(fp, "%-40s %-8s %-6s %s\n", "key", "reload", "source", "value");
	for (i = 0; i < NKEYS; i++) {
		const char *v = cfg->values[i];

		if (keys[i].secret)
			v = *v ? "(set)" : "(unset)";
		else if (strstr(keys[i].key, "url") != NULL) {
			tally_log_redact_url(red, sizeof(red), v);
			v = red;
		}
		fprintf(fp, "%-40s %-8s %-6s %s\n", keys[i].key,
			keys[i].reload ? "yes" : "no",
			cfg->from_cli[i] ? "flag" :
			cfg->from_env[i] ? "env" : "file", v);
	}
	for (i = 0; i < TALLY_KPROPS_NSECT; i++) {
		size_t j;

		for (j = 0; j < cfg->props[i].n; j++)
			fprintf(fp, "%-40s %-8s %-6s %s=%s\n", tally_kprops_sections[i], "no",
				"file", cfg->props[i].kv[2 * j],
				cfg->props[i].kv[2 * j + 1]);
	}
	tally_atargets_show(&cfg->targets, fp);
}
