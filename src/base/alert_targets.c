/*
 * alert_targets.c - the alerts.targets list of the config: several alert
 * delivery targets, each a libconfig group
 *
 *   { name = "ops"; type = "slack"; url_env = "TALLY_SLACK_OPS_URL";
 *     kinds = [ "budget", "mrr_drop" ];
 *     link = "https://admin.example/tenants/{tenant_id}"; }
 *
 * checked at load (unknown members, kinds and types are errors). The URL
 * is a secret: the file names the environment variable holding it.
 */
#define _POSIX_C_SOURCE 200809L
#include "alert_targets.h"
#include "tally/alerts_rules.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the name of the single webhook's target (tally/alerts.h) */
#define RESERVED_NAME "webhook"
#define NAME_MAX_LEN 63

void tally_atargets_free(tally_atargets *t)
{
	size_t i;

	for (i = 0; i < t->n; i++) {
		free(t->v[i].name);
		free(t->v[i].type);
		free(t->v[i].url);
		free(t->v[i].url_env);
		free(t->v[i].kinds);
		free(t->v[i].link);
	}
	free(t->v);
	t->v = NULL;
	t->n = 0;
}

void tally_atargets_show(const tally_atargets *t, FILE *fp)
{
	size_t i;

	for (i = 0; i < t->n; i++)
		fprintf(fp, "%-40s %-8s %-6s %s %s $%s kinds=%s\n",
			"alerts.targets", "yes", "file", t->v[i].name,
			t->v[i].type, t->v[i].url_env,
			t->v[i].kinds[0] ? t->v[i].kinds : "*");
}

static bool same(const char *a, const char *b)
{
	return strcmp(a, b) == 0;
}

bool tally_atargets_equal(const tally_atargets *a, const tally_atargets *b)
{
	size_t i;

	if (a->n != b->n)
		return false;
	for (i = 0; i < a->n; i++) {
		const tally_config_alert_target *x = &a->v[i], *y = &b->v[i];

		if (!same(x->name, y->name) || !same(x->type, y->type) ||
		    !same(x->url, y->url) || !same(x->url_env, y->url_env) ||
		    !same(x->kinds, y->kinds) || !same(x->link, y->link))
			return false;
	}
	return true;
}

/* A name fit for alert_deliveries and a metrics label. */
static bool good_name(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > NAME_MAX_LEN)
		return false;
	for (i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
		      s[i] == '-' || s[i] == '.'))
			return false;
	return true;
}

static bool known_kind(const char *k)
{
	int i;

	for (i = 0; i < TALLY_ALERT_KIND_N; i++)
		if (strcmp(tally_alert_kind_name((tally_alert_kind)i), k) == 0)
			return true;
	return false;
}

/* The kinds array of e as "a,b" into *out; 0 or -1 with why. */
static int parse_kinds(config_setting_t *k, char **out, char *why, size_t n)
{
	size_t len = 0;
	int i, cnt;
	char *s;

	if (k == NULL) {
		*out = tally_xstrdup("");
		return 0;
	}
	if (config_setting_type(k) != CONFIG_TYPE_ARRAY &&
	    config_setting_type(k) != CONFIG_TYPE_LIST) {
		snprintf(why, n, "kinds must be a list of alert kinds");
		return -1;
	}
	cnt = config_setting_length(k);
	for (i = 0; i < cnt; i++) {
		const char *v = config_setting_get_string_elem(k, (unsigned)i);

		if (v == NULL || !known_kind(v)) {
			snprintf(why, n, "kinds: '%s' is not an alert kind",
				 v ? v : "(not a string)");
			return -1;
		}
		len += strlen(v) + 1;
	}
	s = tally_xcalloc(1, len + 1);
	for (i = 0; i < cnt; i++) {
		if (i > 0)
			strcat(s, ",");
		strcat(s, config_setting_get_string_elem(k, (unsigned)i));
	}
	*out = s;
	return 0;
}

/* One group into t; 0 or -1 with why. */
static int parse_one(config_setting_t *e, tally_config_alert_target *t,
		     char *why, size_t n)
{
	static const char *const members[] = { "name", "type", "url_env",
					       "kinds", "link" };
	const char *name = NULL, *type = NULL, *env = NULL, *link = "", *url;
	int i, m;

	memset(t, 0, sizeof(*t));
	if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
		snprintf(why, n, "each target is a group { name; type; url_env;"
			 " kinds; link }");
		return -1;
	}
	for (i = 0; i < config_setting_length(e); i++) {
		const char *mn = config_setting_name(
			config_setting_get_elem(e, (unsigned)i));

		for (m = 0; m < 5; m++)
			if (strcmp(mn, members[m]) == 0)
				break;
		if (m == 5) {
			snprintf(why, n, "unknown member '%s' (name, type,"
				 " url_env, kinds, link)", mn);
			return -1;
		}
	}
	(void)config_setting_lookup_string(e, "name", &name);
	(void)config_setting_lookup_string(e, "type", &type);
	(void)config_setting_lookup_string(e, "url_env", &env);
	(void)config_setting_lookup_string(e, "link", &link);
	if (name == NULL || !good_name(name) || strcmp(name, RESERVED_NAME) == 0) {
		snprintf(why, n, "name must be 1-%d of [A-Za-z0-9_.-] and not"
			 " '%s' (alerts.webhook_url's)", NAME_MAX_LEN,
			 RESERVED_NAME);
		return -1;
	}
	if (type == NULL || (strcmp(type, "json") != 0 &&
			     strcmp(type, "slack") != 0)) {
		snprintf(why, n, "'%s': type must be \"json\" or \"slack\"",
			 name);
		return -1;
	}
	if (link[0] != '\0' && strcmp(type, "slack") != 0) {
		snprintf(why, n, "'%s': link is for slack targets", name);
		return -1;
	}
	url = env != NULL && env[0] != '\0' ? getenv(env) : NULL;
	if (url == NULL || url[0] == '\0') {
		snprintf(why, n, "'%s': url_env must name a set environment"
			 " variable (the URL is a secret)", name);
		return -1;
	}
	t->name = tally_xstrdup(name);
	t->type = tally_xstrdup(type);
	t->url = tally_xstrdup(url);
	t->url_env = tally_xstrdup(env);
	t->link = tally_xstrdup(link);
	if (parse_kinds(config_setting_lookup(e, "kinds"), &t->kinds, why,
			n) != 0) {
		t->kinds = tally_xstrdup("");
		return -1;
	}
	return 0;
}

int tally_atargets_parse(config_setting_t *s, tally_atargets *t,
			 const char *file, tally_error *err)
{
	char why[300];
	int i, j, n, rc = 0;

	tally_atargets_free(t);
	if (config_setting_type(s) != CONFIG_TYPE_LIST)
		return tally_error_set(err, TALLY_EINVALID,
			"%s:%u: 'alerts.targets' must be a list of groups",
			file, config_setting_source_line(s));
	n = config_setting_length(s);
	t->v = tally_xcalloc((size_t)n + 1, sizeof(*t->v));
	for (i = 0; rc == 0 && i < n; i++) {
		config_setting_t *e = config_setting_get_elem(s, (unsigned)i);

		t->n++;
		if (parse_one(e, &t->v[i], why, sizeof(why)) != 0) {
			rc = tally_error_set(err, TALLY_EINVALID,
				"%s:%u: alerts.targets: %s", file,
				config_setting_source_line(e), why);
			break;
		}
		for (j = 0; j < i; j++)
			if (strcmp(t->v[j].name, t->v[i].name) == 0)
				rc = tally_error_set(err, TALLY_EINVALID,
					"%s:%u: alerts.targets: two targets"
					" named '%s'", file,
					config_setting_source_line(e),
					t->v[i].name);
	}
	if (rc != 0)
		tally_atargets_free(t);
	return rc;
}
