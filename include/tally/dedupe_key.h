#ifndef TALLY_DEDUPE_KEY_H
#define TALLY_DEDUPE_KEY_H

/**
 * @file tally/dedupe_key.h
 * @brief The dedupe key of an event: a 128-bit value of (source, id) that
 *        is usage_dedupe.digest and usage_ledger.digest (docs/aggregate.md,
 *        "Dedupe key"). Pure: no I/O.
 *
 * Time-led form, for an id that carries its creation time (UUIDv7 in
 * canonical 8-4-4-4-12 text, either case; ULID, 26 Crockford base32
 * characters, either case, first one <= '7') whose millisecond time t
 * satisfies max(timeled_from, 2020-01-01) <= t < 2^47: bytes 0-5 are t
 * big-endian (top bit 0), bytes 6-15 bytes 0-9 of
 * md5(decimal len(source) ":" source id). Md5 form for every other id:
 * that md5 with the top bit of byte 0 set. A key's form and its time are
 * a function of (source, id) and timeled_from only, so a re-sent event
 * with another timestamp gets the key of its first copy.
 * SQL: tally_event_digest(source, id) computes the same key.
 */

#include <stddef.h>
#include <stdint.h>

/** 2020-01-01T00:00:00Z in unix ms: no time-led key is older. */
#define TALLY_DEDUPE_TIMELED_MIN_MS INT64_C(1577836800000)
/** Time-led keys are below 2^47 ms (the top bit of byte 0 is 0). */
#define TALLY_DEDUPE_TIMELED_MAX_MS (INT64_C(1) << 47)
/** timeled_from of a database where every time-ordered id is time-led. */
#define TALLY_DEDUPE_TIMELED_ALWAYS INT64_MIN

/**
 * The millisecond time a time-ordered id carries (UUIDv7 or ULID as
 * above, exactly: no braces, no urn: prefix, no spaces), or -1 for any
 * other id.
 */
int64_t tally_id_time_ms(const char *id, size_t len);

/**
 * The dedupe key of (source, id) into out. timeled_from_ms: ids whose
 * time is earlier keep the md5 form (TALLY_DEDUPE_TIMELED_ALWAYS: none).
 * Returns the id time t for a time-led key, -1 for an md5-form key.
 */
int64_t tally_dedupe_key(uint8_t out[16], const char *source, size_t slen,
			 const char *id, size_t idlen,
			 int64_t timeled_from_ms);

#endif
