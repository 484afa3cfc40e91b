/*
 * alerts_targets.h - tally-alerts' delivery targets as configured
 * (alerts.webhook_url and alerts.targets), owned copies that outlive a
 * reload (libtally-internal).
 */
#ifndef TALLY_ALERTS_TARGETS_H
#define TALLY_ALERTS_TARGETS_H

#include "tally/alerts.h"
#include "tally/config.h"

/* The targets of cfg: alerts.webhook_url as the json target "webhook"
 * (when set), then alerts.targets; owned, *n of them. */
tally_alerts_target *tally_alerts__targets_from_config(const tally_config *cfg,
						       size_t *n);

/* An owned copy of n targets. */
tally_alerts_target *tally_alerts__targets_copy(const tally_alerts_target *v,
						size_t n);

/* Free an owned array of n targets (NULL: nothing). */
void tally_alerts__targets_free(tally_alerts_target *v, size_t n);

/* Whether one of the n targets is a json one (its POSTs are signed). */
bool tally_alerts__targets_signed(const tally_alerts_target *v, size_t n);

#endif /* TALLY_ALERTS_TARGETS_H */
