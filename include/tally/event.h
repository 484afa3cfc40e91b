#ifndef TALLY_EVENT_H
#define TALLY_EVENT_H

/**
 * @file tally/event.h
 * @brief The usage event (DESIGN.md §3) and the rated usage event, as plain
 *        structs shared by the codec, the rating function and the consumers.
 *
 * Strings are borrowed views (pointer + length) into the buffer the event was
 * decoded from, so decoding does not allocate; they are NOT NUL-terminated.
 * Quantities are int64 and validated by the codec (0 .. 10^12).
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct tally_str {
	const char *ptr;
	uint32_t len;
} tally_str;

typedef enum {
	TALLY_METER_NONE = 0,
	TALLY_METER_AI_TOKENS = 1,    /* "ai.tokens" */
	TALLY_METER_WORKFLOW = 2,     /* "workflow.execution" */
	TALLY_METER_STORAGE = 3,      /* "storage.snapshot" */
	TALLY_METER_API_CALL = 4,     /* "api.call" */
} tally_meter;

#define TALLY_MAX_QUANTITY INT64_C(1000000000000) /* 10^12 */
#define TALLY_ID_MAX 128
#define TALLY_SOURCE_MAX 256

typedef struct tally_usage_event {
	tally_str id;          /* ≤ 128 bytes, unique per source */
	tally_str source;      /* ≤ 256 bytes */
	tally_str subject;     /* optional (len 0 when absent) */
	uint8_t tenant_id[16]; /* binary UUID */
	int64_t time_ms;       /* event time, unix ms UTC */
	tally_meter meter;

	/* ai.tokens */
	tally_str provider;
	tally_str model;
	tally_str workflow_id; /* also workflow.execution */
	int64_t input_tokens;  /* total prompt, includes cache tokens */
	int64_t output_tokens;
	int64_t cache_read_tokens;
	int64_t cache_write_tokens;
	int64_t reasoning_tokens;
	bool has_reasoning;

	/* workflow.execution */
	int64_t steps;
	int64_t complexity;

	/* storage.snapshot */
	int64_t bytes;

	/* api.call */
	int64_t count;
} tally_usage_event;

/** Cost components of a rated event, in pico-units. */
typedef enum {
	TALLY_COMP_INPUT = 0,       /* uncached input tokens */
	TALLY_COMP_CACHE_READ,
	TALLY_COMP_CACHE_WRITE,
	TALLY_COMP_OUTPUT,
	TALLY_COMP_REASONING,       /* when billed separately */
	TALLY_COMP_REQUESTS,        /* requests_kcount */
	TALLY_COMP_UNITS,           /* workflow units, GB-month, API calls */
	TALLY_COMP_N
} tally_component;

typedef struct tally_rated_event {
	tally_usage_event ev;
	int64_t cost;                     /* pico-units, sum of components */
	int64_t components[TALLY_COMP_N]; /* pico-units */
	char currency[4];                 /* ISO 4217, NUL-terminated */
	int64_t price_id;                 /* model_prices row used */
	bool unpriced;                    /* no price found; cost 0 */
	int64_t rated_at_ms;              /* when tally-rate priced it */
} tally_rated_event;

/** "ai.tokens" etc., or NULL for TALLY_METER_NONE. */
const char *tally_meter_name(tally_meter m);

/** Parse a meter name; TALLY_METER_NONE when unknown. */
tally_meter tally_meter_parse(const char *s, uint32_t len);

/** Format a binary UUID as 36 lowercase characters plus NUL. */
void tally_uuid_fmt(char out[37], const uint8_t uuid[16]);

/** Parse a textual UUID (36 chars, hex + dashes); 0 or -1. */
int tally_uuid_parse(uint8_t out[16], const char *s, uint32_t len);

#endif /* TALLY_EVENT_H */
