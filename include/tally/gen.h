#ifndef TALLY_GEN_H
#define TALLY_GEN_H

/**
 * @file tally/gen.h
 * @brief Deterministic workload generator for benchmarks, the demo and
 *        fault tests: N usage events for T tenants over [from, to), a mix of
 *        meters and models, exact duplicates, out-of-order and late events,
 *        and the exact per-tenant totals of the unique events.
 *
 * Everything is integer arithmetic on splitmix64 streams: the same options
 * give the same bytes on every machine. The content of unique event u is a
 * pure function of (seed, u), so a duplicate is that function evaluated
 * again: same id, same source, same content.
 */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/event.h"

typedef struct tally_gen tally_gen;

typedef struct tally_gen_opts {
	uint64_t events;   /* records to emit, duplicates included */
	uint32_t tenants;  /* ≥ 1 */
	int64_t from_ms;   /* event times in [from_ms, to_ms) */
	int64_t to_ms;
	uint64_t seed;
	int64_t dup_frac;  /* fractions in pico (10^12 = 1.0): exact dups */
	int64_t ooo_frac;  /* out of order: time moved back 1 s .. 5 min */
	int64_t late_frac; /* late: time moved back 1 h .. 3 days */
	int64_t mix[5];    /* weights by tally_meter (index 1..4), pico */
	const char **models; /* "provider:model"; NULL = built-in list */
	size_t nmodels;
} tally_gen_opts;

/** Defaults: 1000 events, 10 tenants, November 2025, seed 1, no dups,
 *  mix ai=70 workflow=20 storage=2 api=8. */
void tally_gen_opts_init(tally_gen_opts *o);

/** @return 0 or TALLY_EINVALID (bad range, no models, zero mix) */
int tally_gen_new(tally_gen **out, const tally_gen_opts *o, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Next event. Strings in out point into g and stay valid until the next
 * call. is_dup (may be NULL) tells whether it repeats an earlier event.
 * @return false when all events were emitted
 */
bool tally_gen_next(tally_gen *g, tally_usage_event *out, bool *is_dup);

/** Tenant i's UUID (deterministic from the seed). */
void tally_gen_tenant(const tally_gen *g, uint32_t i, uint8_t out[16]);

/**
 * Exact totals of the unique events emitted so far, per tenant:
 * {"seed", "records", "unique", "duplicates", "tenants": [{"tenant_id",
 * "events", "ai_requests", "input_tokens", "output_tokens",
 * "cache_read_tokens", "cache_write_tokens", "workflow_executions",
 * "workflow_steps", "complexity_units", "api_calls", "storage_snapshots",
 * "by_model": {"provider:model": {"requests", "input_tokens", ...}}}]}.
 * New reference.
 */
json_t *tally_gen_totals_json(const tally_gen *g);

/** The built-in model list (NULL-terminated). */
extern const char *const tally_gen_default_models[];

/** Write ev as one JSON line (no trailing newline) into buf; length. */
size_t tally_gen_format_json(char *buf, size_t n, const tally_usage_event *ev);

/** Parse "2025-11-01", RFC 3339 with offset, or unix ms. 0 or -1. */
int tally_gen_parse_time(int64_t *out, const char *s) TALLY_MUSTCHECK;

/** Parse a fraction "0.05" (exact decimal in [0, 1]) as pico. 0 or -1. */
int tally_gen_parse_frac(int64_t *out, const char *s) TALLY_MUSTCHECK;

/** Parse "ai=70,workflow=20,storage=2,api=8" (missing = 0). 0 or -1. */
int tally_gen_parse_mix(int64_t mix[5], const char *s) TALLY_MUSTCHECK;

/** A provider:model name the generator accepts (safe ASCII). */
bool tally_gen_model_ok(const char *s);

void tally_gen_free(tally_gen *g);

#endif /* TALLY_GEN_H */
