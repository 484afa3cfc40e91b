/*
 * metrics_registry.h - the registry's families and series (libtally-
 * internal), shared by the registry (metrics.c) and its rendering
 * (metrics_render.c).
 */
#ifndef TALLY_IO_METRICS_REGISTRY_H
#define TALLY_IO_METRICS_REGISTRY_H

#include "tally/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM } mtype;

struct tally_counter {
	atomic_uint_fast64_t v;
};

struct tally_gauge {
	atomic_int_fast64_t v;
};

struct tally_histogram {
	const uint64_t *bounds; /* owned by the family */
	size_t nbounds;
	atomic_uint_fast64_t *buckets; /* nbounds + 1 (the last is +Inf) */
	atomic_uint_fast64_t sum_us;
	atomic_uint_fast64_t count;
};

typedef struct series {
	struct series *next;
	char *labels; /* "" when none */
	union {
		struct tally_counter c;
		struct tally_gauge g;
		struct tally_histogram h;
	} u;
} series;

typedef struct family {
	struct family *next;
	char *name;
	char *help;
	mtype type;
	uint64_t *bounds;
	size_t nbounds;
	series *first, *last;
} family;

struct tally_metrics {
	pthread_mutex_t mu;
	family *first, *last;
	tally_metrics_hook hook;
	void *hook_payload;
};

#endif
