#ifndef TALLY_CODEC_INT_H
#define TALLY_CODEC_INT_H

/*
 * codec_int.h - the validation core (codec_fields.c, codec_values.c,
 * codec_time.c) shared by the msgpack decoder (codec_msgpack.c) and the
 * JSON reader (codec_json.c). A backend walks its map and
 * hands each value to the core as a tagged view (tally_codec__val); the core
 * checks types, ranges and lengths and fills the struct, so both encodings
 * obey exactly the same rules and reason codes.
 */

#include <stdbool.h>
#include <stdint.h>

#include "tally/codec.h"
#include "tally/command.h"
#include "tally/event.h"

typedef enum {
	TALLY_CV_NIL = 0,
	TALLY_CV_BOOL,
	TALLY_CV_INT,     /* fits int64 (may be negative) */
	TALLY_CV_BIGUINT, /* > INT64_MAX */
	TALLY_CV_FLOAT,
	TALLY_CV_STR,
	TALLY_CV_BIN,
	TALLY_CV_ARRAY,
	TALLY_CV_MAP,
	TALLY_CV_EXT,
} tally_codec__kind;

typedef struct tally_codec__val {
	tally_codec__kind kind;
	bool b;
	int64_t i;
	const char *s; /* STR/BIN: borrowed */
	uint32_t len;  /* STR/BIN length; ARRAY/MAP element count */
} tally_codec__val;

/* Which nested map a backend is walking. */
typedef enum {
	TALLY_CODEC__TOP = 0,
	TALLY_CODEC__DATA,
	TALLY_CODEC__COMPONENTS,
} tally_codec__scope;

/* Data fields are kept raw until the meter is known (keys are unordered). */
enum {
	DF_PROVIDER, DF_MODEL, DF_WORKFLOW_ID, DF_INPUT, DF_OUTPUT,
	DF_CACHE_READ, DF_CACHE_WRITE, DF_REASONING, DF_STEPS, DF_COMPLEXITY,
	DF_BYTES, DF_COUNT, DF_N
};

typedef enum {
	TALLY_CODEC__USAGE = 0,
	TALLY_CODEC__RATED,
	TALLY_CODEC__COMMAND,
} tally_codec__what;

typedef struct tally_codec__st {
	tally_codec__what what;
	tally_usage_event *ev; /* USAGE, RATED */
	tally_rated_event *re; /* RATED */
	tally_command *cmd;    /* COMMAND */
	tally_codec_error *err;
	uint64_t seen;         /* top-level keys seen (bit per key) */
	uint32_t dseen;        /* data keys seen */
	uint32_t cseen;        /* components seen */
	tally_codec__val data[DF_N];
} tally_codec__st;

/* Result of tally_codec__field(): descend into the value's map. */
#define TALLY_CODEC__DESCEND 1

/** Zero out and bind the state to its output struct. */
void tally_codec__begin(tally_codec__st *st, tally_codec__what what,
			void *out, tally_codec_error *err);

/**
 * One key/value of a map in scope sc. For a MAP value under a key that has
 * a nested scope ("data", "components") returns TALLY_CODEC__DESCEND: the
 * backend then feeds that map's entries with the nested scope. Otherwise
 * nested values of unknown keys must already be skipped by the backend.
 * @return 0, TALLY_CODEC__DESCEND or TALLY_EINVALID (err filled)
 */
int tally_codec__field(tally_codec__st *st, tally_codec__scope sc,
		       const char *key, uint32_t klen,
		       const tally_codec__val *v);

/** Required fields and cross-field rules; 0 or TALLY_EINVALID. */
int tally_codec__finish(tally_codec__st *st);

/** Fill err and return TALLY_EINVALID. field may be "" */
int tally_codec__fail(tally_codec_error *err, const char *reason,
		      const char *field, const char *fmt, ...)
	TALLY_PRINTF(4, 5);

/** tally_codec__fail() on the state's error. */
#define TALLY_CODEC__FAIL(st, reason, field, ...) \
	tally_codec__fail((st)->err, (reason), (field), __VA_ARGS__)

/** The len bytes at s equal the NUL-terminated lit. */
bool tally_codec__str_is(const char *s, uint32_t len, const char *lit);

/*
 * Checks of one value for the field named field (codec_values.c): each
 * stores the value in *out, or fails with the reason code (wrong_type,
 * empty, too_long, bad_utf8, out_of_range, bad_time, bad_uuid) and returns
 * TALLY_EINVALID. Strings are non-empty UTF-8 without control characters
 * and at most max bytes; out borrows v's bytes.
 */
int tally_codec__get_str(tally_codec__st *st, const char *field,
			 const tally_codec__val *v, uint32_t max,
			 tally_str *out);
int tally_codec__get_int(tally_codec__st *st, const char *field,
			 const tally_codec__val *v, int64_t min, int64_t max,
			 int64_t *out);
/** 0 .. TALLY_MAX_QUANTITY */
int tally_codec__get_qty(tally_codec__st *st, const char *field,
			 const tally_codec__val *v, int64_t *out);
/** unix ms (integer) or an RFC 3339 string */
int tally_codec__get_time(tally_codec__st *st, const char *field,
			  const tally_codec__val *v, int64_t *out);
int tally_codec__get_uuid(tally_codec__st *st, const char *field,
			  const tally_codec__val *v, uint8_t out[16]);
int tally_codec__get_bool(tally_codec__st *st, const char *field,
			  const tally_codec__val *v, bool *out);

/** Names of the rated event's cost components, by tally_comp index. */
extern const char *const tally_codec__comp_names[TALLY_COMP_N];

/**
 * Parse RFC 3339 ("2026-11-26T10:00:00.123+01:00", offset or Z required;
 * fraction truncated to ms) into unix ms. 0 or -1.
 */
int tally_codec__parse_rfc3339(int64_t *out, const char *s, uint32_t len);

/** Maximum nesting of maps/arrays in any message (top-level map = 1). */
#define TALLY_CODEC_MAX_DEPTH 16
/** Maximum size of one encoded message. */
#define TALLY_CODEC_MAX_BYTES 65536
/** Unix ms bounds accepted for `time` (1970 .. 9999-12-31). */
#define TALLY_CODEC_TIME_MAX INT64_C(253402300799999)

#endif /* TALLY_CODEC_INT_H */
