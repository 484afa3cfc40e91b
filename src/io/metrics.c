/*
 * metrics.c - the Prometheus registry: counters, gauges, histograms.
 *
 * Families are a linked list in registration order, each with its series;
 * registration and rendering take the registry mutex, updates are single
 * relaxed atomics on the series (a scrape may see a histogram whose count
 * and buckets differ by an in-flight observation, which Prometheus
 * tolerates). Nothing is ever unregistered, so series pointers stay valid
 * for the life of the registry.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/metrics_registry.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint64_t default_bounds[] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
	250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

tally_metrics *tally_metrics_new(void)
{
	tally_metrics *m = tally_xcalloc(1, sizeof(*m));

	pthread_mutex_init(&m->mu, NULL);
	return m;
}

void tally_metrics_free(tally_metrics *m)
{
	family *f, *fn;
	series *s, *sn;

	if (m == NULL)
		return;
	for (f = m->first; f != NULL; f = fn) {
		fn = f->next;
		for (s = f->first; s != NULL; s = sn) {
			sn = s->next;
			if (f->type == MT_HISTOGRAM)
				free(s->u.h.buckets);
			free(s->labels);
			free(s);
		}
		free(f->name);
		free(f->help);
		free(f->bounds);
		free(f);
	}
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* Called with m->mu held. */
static family *get_family(tally_metrics *m, const char *name, mtype type,
			  const char *help)
{
	family *f;

	for (f = m->first; f != NULL; f = f->next)
		if (strcmp(f->name, name) == 0) {
			assert(f->type == type && "metric registered twice "
						  "with different types");
			return f;
		}
	f = tally_xcalloc(1, sizeof(*f));
	f->name = tally_xstrdup(name);
	f->help = tally_xstrdup(help ? help : "");
	f->type = type;
	if (m->last != NULL)
		m->last->next = f;
	else
		m->first = f;
	m->last = f;
	return f;
}

/* Called with m->mu held; returns the series, created zeroed if new. */
static series *get_series(family *f, const char *labels, bool *created)
{
	series *s;

	if (labels == NULL)
		labels = "";
	*created = false;
	for (s = f->first; s != NULL; s = s->next)
		if (strcmp(s->labels, labels) == 0)
			return s;
	s = tally_xcalloc(1, sizeof(*s));
	s->labels = tally_xstrdup(labels);
	if (f->last != NULL)
		f->last->next = s;
	else
		f->first = s;
	f->last = s;
	*created = true;
	return s;
}

tally_counter *tally_metrics_counter(tally_metrics *m, const char *name,
				     const char *labels, const char *help)
{
	series *s;
	bool created;

	pthread_mutex_lock(&m->mu);
	s = get_series(get_family(m, name, MT_COUNTER, help), labels, &created);
	if (created)
		atomic_init(&s->u.c.v, 0);
	pthread_mutex_unlock(&m->mu);
	return &s->u.c;
}

void tally_counter_add(tally_counter *c, uint64_t n)
{
	atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t tally_counter_get(const tally_counter *c)
{
	return atomic_load_explicit(&((tally_counter *)c)->v,
				    memory_order_relaxed);
}

tally_gauge *tally_metrics_gauge(tally_metrics *m, const char *name,
				 const char *labels, const char *help)
{
	series *s;
	bool created;

	pthread_mutex_lock(&m->mu);
	s = get_series(get_family(m, name, MT_GAUGE, help), labels, &created);
	if (created)
		atomic_init(&s->u.g.v, 0);
	pthread_mutex_unlock(&m->mu);
	return &s->u.g;
}

void tally_gauge_set(tally_gauge *g, int64_t v)
{
	atomic_store_explicit(&g->v, v, memory_order_relaxed);
}

void tally_gauge_add(tally_gauge *g, int64_t delta)
{
	atomic_fetch_add_explicit(&g->v, delta, memory_order_relaxed);
}

int64_t tally_gauge_get(const tally_gauge *g)
{
	return atomic_load_explicit(&((tally_gauge *)g)->v,
				    memory_order_relaxed);
}

tally_histogram *tally_metrics_histogram(tally_metrics *m, const char *name,
					 const char *labels, const char *help,
					 const uint64_t *bounds_us,
					 size_t nbounds)
{
	family *f;
	series *s;
	bool created;
	size_t i;

	if (bounds_us == NULL) {
		bounds_us = default_bounds;
		nbounds = sizeof(default_bounds) / sizeof(default_bounds[0]);
	}
	for (i = 1; i < nbounds; i++)
		assert(bounds_us[i] > bounds_us[i - 1] &&
		       "histogram bounds must increase");
	pthread_mutex_lock(&m->mu);
	f = get_family(m, name, MT_HISTOGRAM, help);
	if (f->bounds == NULL) {
		f->bounds = tally_xcalloc(nbounds ? nbounds : 1,
					  sizeof(uint64_t));
		memcpy(f->bounds, bounds_us, nbounds * sizeof(uint64_t));
		f->nbounds = nbounds;
	}
	s = get_series(f, labels, &created);
	if (created) {
		s->u.h.bounds = f->bounds;
		s->u.h.nbounds = f->nbounds;
		s->u.h.buckets = tally_xcalloc(f->nbounds + 1,
					       sizeof(atomic_uint_fast64_t));
		for (i = 0; i <= f->nbounds; i++)
			atomic_init(&s->u.h.buckets[i], 0);
		atomic_init(&s->u.h.sum_us, 0);
		atomic_init(&s->u.h.count, 0);
	}
	pthread_mutex_unlock(&m->mu);
	return &s->u.h;
}

void tally_histogram_observe(tally_histogram *h, uint64_t us)
{
	size_t lo = 0, hi = h->nbounds;

	/* first bound >= us (le semantics); hi == nbounds means +Inf */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (h->bounds[mid] >= us)
			hi = mid;
		else
			lo = mid + 1;
	}
	atomic_fetch_add_explicit(&h->buckets[lo], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

uint64_t tally_histogram_count(const tally_histogram *h)
{
	return atomic_load_explicit(&((tally_histogram *)h)->count,
				    memory_order_relaxed);
}

void tally_metrics_set_render_hook(tally_metrics *m, tally_metrics_hook fn,
				   void *payload)
{
	pthread_mutex_lock(&m->mu);
	m->hook = fn;
	m->hook_payload = payload;
	pthread_mutex_unlock(&m->mu);
}

tally_histogram *tally_metrics_event_to_commit(tally_metrics *m,
					       const char *stage)
{
	static const uint64_t bounds_us[] = {
		10000, 25000, 50000, 100000, 250000, 500000, 1000000,
		2500000, 5000000, 10000000, 30000000, 60000000, 120000000,
		300000000, 600000000, 1800000000, 3600000000
	};
	char labels[96];

	snprintf(labels, sizeof(labels), "stage=\"%s\"", stage);
	return tally_metrics_histogram(m, "tally_event_to_commit_seconds",
				       labels,
				       "From an event's own time to the "
				       "commit of its stage",
				       bounds_us,
				       sizeof(bounds_us) / sizeof(bounds_us[0]));
}
