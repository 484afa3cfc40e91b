#ifndef TALLY_PROGRAM_H
#define TALLY_PROGRAM_H

/**
 * @file tally/program.h
 * @brief What every long-running tally program does at start-up and on
 *        SIGHUP: parse `--config FILE` and the listen flag, start the JSON
 *        log, load the config (file:line errors), apply `log.level`, and
 *        install the signal flags; later, reload the config and the log
 *        level. One place, so the five consumers behave the same.
 */

#include "tally/config.h"
#include "tally/metrics.h"

#include <stddef.h>

typedef struct tally_program_opts {
	const char *name;        /* "tally-aggregate": log program name */
	const char *listen_flag; /* "--metrics-listen" or "--listen" */
	const char *listen_key;  /* config key it overrides, or NULL */
	const char *usage_extra; /* more of the usage line, or NULL */
	/*
	 * Program-specific options: return how many argv entries were
	 * consumed at argv[i] (0: not ours, -1: bad value). May be NULL.
	 */
	int (*arg)(int argc, char **argv, int i, void *payload);
	void *payload;
} tally_program_opts;

/**
 * Start a program. On 0 the caller owns *out (tally_config_free) and runs;
 * otherwise it exits with *exit_code (0 after --help, 2 for a usage error,
 * 1 when the config could not be loaded, which is logged).
 */
int tally_program_start(tally_config **out, const tally_program_opts *o,
			int argc, char **argv, int *exit_code) TALLY_MUSTCHECK;

/**
 * On SIGHUP: reload the config (a failed reload logs and keeps the old one)
 * and apply log.level again. Returns 0 or the reload error.
 */
int tally_program_reload(tally_config *cfg);

/**
 * Bound the heap of a consumer that holds batch-sized buffers (glibc; a
 * no-op elsewhere): a fixed mmap threshold (bytes) keeps such buffers in
 * their own mappings, so growing one is an mremap rather than a copy that
 * holds old and new at once, and glibc's dynamic threshold cannot move
 * them into the heap where freed space stays resident; at most two malloc
 * arenas. Call first thing in main (it overrides MALLOC_* variables).
 * Too low a threshold costs mmap/munmap per allocation: measured per
 * program (docs/aggregate.md: 128 KiB; docs/pricing.md: 512 KiB).
 */
void tally_program_bound_heap(size_t mmap_threshold);

/** A consumer as tally_program_run_consumer() drives it. */
typedef struct tally_consumer_vtable {
	const char *name;    /* log events "<name>.start_failed", ".fatal" */
	const char *stopped; /* logged after a clean stop, or NULL */
	/* *c is freed with destroy() whatever create returns */
	int (*create)(void **c, tally_config *cfg, tally_metrics *m,
		      tally_error *err);
	int (*run)(void *c, tally_error *err);
	void (*destroy)(void *c);
	tally_health_fn health; /* /healthz and /readyz; NULL: always ok */
} tally_consumer_vtable;

/**
 * The static tally_consumer_vtable `var` of a consumer whose functions are
 * prefix##_new(T **, cfg, m, err), prefix##_run(T *, err) and
 * prefix##_free(T *) (the three adapters to void * are defined here).
 */
#define TALLY_CONSUMER_VTABLE(var, T, prefix, name, stopped, health)      \
	static int var##_create(void **c, tally_config *cfg,              \
				tally_metrics *m, tally_error *err)       \
	{                                                                 \
		T *x = NULL;                                              \
		int rc = prefix##_new(&x, cfg, m, err);                   \
                                                                          \
		*c = x;                                                   \
		return rc;                                                \
	}                                                                 \
	static int var##_run(void *c, tally_error *err)                   \
	{                                                                 \
		return prefix##_run(c, err);                              \
	}                                                                 \
	static void var##_destroy(void *c)                                \
	{                                                                 \
		prefix##_free(c);                                         \
	}                                                                 \
	static const tally_consumer_vtable var = {                        \
		name, stopped, var##_create, var##_run, var##_destroy,    \
		health                                                    \
	}

/**
 * The whole life of a consumer program: tally_program_start(), a metrics
 * registry, create, the metrics server on o->listen_key (a failure to
 * bind is logged as metrics.serve_failed and the program runs without
 * it), run until a stop signal, free. Logs "<name>.start_failed" or
 * "<name>.fatal" (with the error) when create or run fails.
 * @return the exit code: 0 after a clean stop, 1 on a failure (or what
 *         tally_program_start() says)
 */
int tally_program_run_consumer(const tally_program_opts *o,
			       const tally_consumer_vtable *vt, int argc,
			       char **argv);

#endif /* TALLY_PROGRAM_H */
