/*
 * metrics_table.c - a module's series registered from one table
 * (tally_metrics_register), instead of one call per series.
 */
#include "tally/metrics.h"

void tally_metrics_register(tally_metrics *m, const tally_metric_def *defs,
			    size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		const tally_metric_def *d = &defs[i];

		if (d->counter != NULL)
			*d->counter = tally_metrics_counter(m, d->name,
							    d->labels, d->help);
		else if (d->gauge != NULL)
			*d->gauge = tally_metrics_gauge(m, d->name, d->labels,
							d->help);
		else if (d->histogram != NULL)
			*d->histogram = tally_metrics_histogram(
				m, d->name, d->labels, d->help, NULL, 0);
	}
}
