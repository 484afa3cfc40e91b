#ifndef TALLY_LOG_H
#define TALLY_LOG_H

/**
 * @file tally/log.h
 * @brief Structured logging: one JSON object per line on stderr.
 *
 * Fixed keys first (`ts` UTC with ms, `level`, `program`, `event`), then the
 * caller's fields. `event` is a stable dotted id ("pg.retry"). The level is
 * checked in the macro before anything is formatted. Thread-safe: each line
 * is built in a local buffer and written with one write(2).
 *
 * Never pass payload bytes, customer data or secrets: log ids, keys, offsets.
 */

#include <stddef.h>
#include <stdint.h>

typedef enum {
	TALLY_DEBUG = 0,
	TALLY_INFO = 1,
	TALLY_WARN = 2,
	TALLY_ERR = 3,
	TALLY_FATAL = 4,
} tally_log_level;

typedef enum {
	TALLY_KV_T_END = 0,
	TALLY_KV_T_STR,
	TALLY_KV_T_INT,
	TALLY_KV_T_RAW, /* pre-encoded JSON value, e.g. a number string */
} tally_kv_type;

typedef struct tally_kv {
	const char *key;
	tally_kv_type type;
	const char *s;
	int64_t i;
} tally_kv;

#define TALLY_KV_STR(k, v) ((tally_kv){ (k), TALLY_KV_T_STR, (v), 0 })
#define TALLY_KV_INT(k, v) ((tally_kv){ (k), TALLY_KV_T_INT, NULL, (int64_t)(v) })
#define TALLY_KV_RAW(k, v) ((tally_kv){ (k), TALLY_KV_T_RAW, (v), 0 })
#define TALLY_KV_END ((tally_kv){ NULL, TALLY_KV_T_END, NULL, 0 })

extern volatile int tally_log__min_level;

/** Set the program name shown in every line and the minimum level. */
void tally_log_init(const char *program, tally_log_level min);
/** The program name given to tally_log_init ("tally" before it). */
const char *tally_log_program(void);

/** Change the minimum level (e.g. on SIGHUP). */
void tally_log_set_level(tally_log_level min);

/** Parse "debug|info|warn|error"; returns -1 when unknown. */
int tally_log_level_parse(const char *s);

/** Write one line; use the tally_log() macro instead. */
void tally_log__write(tally_log_level level, const char *event, ...);

/**
 * tally_log(TALLY_WARN, "pg.retry", TALLY_KV_STR("sqlstate", st),
 *           TALLY_KV_INT("attempt", n));
 */
#define tally_log(level, ...)                                                \
	do {                                                                 \
		if ((int)(level) >= tally_log__min_level)                    \
			tally_log__write((level), __VA_ARGS__, TALLY_KV_END); \
	} while (0)

/**
 * Copy a connection URL with any password replaced by "***", so a
 * DATABASE_URL can be logged. Always NUL-terminates out.
 */
void tally_log_redact_url(char *out, size_t outlen, const char *url);

#endif /* TALLY_LOG_H */
