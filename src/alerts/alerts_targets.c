/*
 * alerts_targets.c - tally-alerts' delivery targets from the config
 * (alerts.webhook_url, alerts.targets) as owned copies: the delivery
 * thread works on its own copy while a SIGHUP replaces the config's.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_targets.h"

#include <stdlib.h>
#include <string.h>

tally_alerts_target *tally_alerts__targets_copy(const tally_alerts_target *v,
						size_t n)
{
	tally_alerts_target *c = tally_xcalloc(n + 1, sizeof(*c));
	size_t i;

	for (i = 0; i < n; i++) {
		c[i].name = tally_xstrdup(v[i].name);
		c[i].type = v[i].type;
		c[i].url = tally_xstrdup(v[i].url ? v[i].url : "");
		c[i].kinds = tally_xstrdup(v[i].kinds ? v[i].kinds : "");
		c[i].link = tally_xstrdup(v[i].link ? v[i].link : "");
	}
	return c;
}

void tally_alerts__targets_free(tally_alerts_target *v, size_t n)
{
	size_t i;

	for (i = 0; v != NULL && i < n; i++) {
		free((char *)v[i].name);
		free((char *)v[i].url);
		free((char *)v[i].kinds);
		free((char *)v[i].link);
	}
	free(v);
}

tally_alerts_target *tally_alerts__targets_from_config(const tally_config *cfg,
						       size_t *n)
{
	const tally_config_alert_target *ct;
	size_t nc = tally_config_alert_targets(cfg, &ct), i, k = 0;
	tally_alerts_target *v = tally_xcalloc(nc + 1, sizeof(*v)), *c;
	const char *url = tally_config_str(cfg, "alerts.webhook_url");

	if (url[0] != '\0')
		v[k++] = (tally_alerts_target){ TALLY_ALERTS_WEBHOOK_TARGET,
			TALLY_ALERTS_TARGET_JSON, url, "", "" };
	for (i = 0; i < nc; i++)
		v[k++] = (tally_alerts_target){ ct[i].name,
			strcmp(ct[i].type, "slack") == 0 ?
			TALLY_ALERTS_TARGET_SLACK : TALLY_ALERTS_TARGET_JSON,
			ct[i].url, ct[i].kinds, ct[i].link };
	c = tally_alerts__targets_copy(v, k);
	free(v);
	*n = k;
	return c;
}

bool tally_alerts__targets_signed(const tally_alerts_target *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (v[i].type == TALLY_ALERTS_TARGET_JSON &&
		    v[i].url != NULL && v[i].url[0] != '\0')
			return true;
	return false;
}
