/*
 * alert_targets.h - the alerts.targets list of the config
 * (libtally-internal, used by config.c; read through tally/config.h).
 */
#ifndef TALLY_BASE_ALERT_TARGETS_H
#define TALLY_BASE_ALERT_TARGETS_H

#include "tally/config.h"

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct tally_atargets {
	size_t n;
	tally_config_alert_target *v;
} tally_atargets;

/*
 * Replace t with the list setting s (alerts.targets, in file): each
 * element a group { name; type "json"|"slack"; url_env; kinds [...];
 * link } checked, the URL read from $url_env. On error t is empty and
 * err says "file:line: ...".
 */
int tally_atargets_parse(config_setting_t *s, tally_atargets *t,
			 const char *file, tally_error *err) TALLY_MUSTCHECK;

void tally_atargets_free(tally_atargets *t);
/* One line a target for `tally config show`: the URL's variable, never
 * the URL. */
void tally_atargets_show(const tally_atargets *t, FILE *fp);
bool tally_atargets_equal(const tally_atargets *a, const tally_atargets *b);

#endif /* TALLY_BASE_ALERT_TARGETS_H */
