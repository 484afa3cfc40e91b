#ifndef TALLY_COMMON_H
#define TALLY_COMMON_H

/**
 * @file tally/common.h
 * @brief Error convention, attributes and allocation helpers shared by every
 *        module of libtally.
 *
 * Functions return 0 on success and a negative tally_err on failure; the
 * human-readable message goes into caller-owned storage (tally_error), never
 * into a thread-local. Errors are sorted by what the caller does next:
 * TALLY_EINVALID is dead-lettered, TALLY_ETRANSIENT is retried.
 */

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define TALLY_MUSTCHECK __attribute__((warn_unused_result))
#define TALLY_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define TALLY_NORETURN __attribute__((noreturn))
#define TALLY_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TALLY_MUSTCHECK
#define TALLY_PRINTF(f, a)
#define TALLY_NORETURN
#define TALLY_UNLIKELY(x) (x)
#endif

typedef enum {
	TALLY_OK = 0,
	TALLY_ERROR = -1,      /* unexpected; details in err->msg */
	TALLY_ENOTFOUND = -2,
	TALLY_EINVALID = -3,   /* bad message/config: never retry */
	TALLY_EDUPLICATE = -4, /* idempotency key already applied: done */
	TALLY_ETRANSIENT = -5, /* PG/Kafka/HTTP unavailable: retry */
	TALLY_EOVERFLOW = -6,  /* arithmetic overflow of an amount */
	TALLY_EFENCED = -7,    /* another instance owns the partition now */
} tally_err;

typedef struct tally_error {
	tally_err code;
	char msg[256];
} tally_error;

/**
 * Format a message into err (if non-NULL) and return code, so that callers
 * can write `return tally_error_set(err, TALLY_EINVALID, "...");`.
 */
int tally_error_set(tally_error *err, tally_err code, const char *fmt, ...)
	TALLY_PRINTF(3, 4);

/** Reset err to TALLY_OK and an empty message. NULL is a no-op. */
void tally_error_clear(tally_error *err);

/** Stable lower-case name of a code ("invalid", "transient", ...). */
const char *tally_err_name(int code);

/* Allocation failure aborts the process: nothing can go on without memory. */
void *tally_xmalloc(size_t n);
void *tally_xcalloc(size_t n, size_t size);
void *tally_xrealloc(void *p, size_t n);
char *tally_xstrdup(const char *s);
char *tally_xstrndup(const char *s, size_t n);

/**
 * Parse a whole string as a signed 64-bit integer (decimal, optional sign).
 * @return 0, or TALLY_EINVALID for empty input, junk or out of range.
 */
int tally_parse_i64(int64_t *out, const char *s) TALLY_MUSTCHECK;

/** The value of hex digit c (either case), or -1. Inline: the id and
 * digest parsers call it for every character of every event. */
static inline int tally_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/** Current wall-clock time in unix milliseconds. */
int64_t tally_now_ms(void);

/** Monotonic clock in nanoseconds, for durations and latency only. */
int64_t tally_mono_ns(void);

/** Format unix ms as RFC 3339 UTC "2026-11-26T10:00:00.000Z" (25 bytes). */
void tally_fmt_time_ms(char out[32], int64_t ms);

#endif /* TALLY_COMMON_H */
