#ifndef TALLY_CODEC_H
#define TALLY_CODEC_H

/**
 * @file tally/codec.h
 * @brief Strict msgpack codec for usage events, rated usage events and
 *        commands (schemas/). Every rejection carries a stable reason code
 *        (used as the dead-letter header x-tally-reason and as a metric
 *        label) and the field it concerns.
 */

#include <msgpack.h>
#include <stddef.h>

#include "tally/common.h"
#include "tally/event.h"

typedef struct tally_codec_error {
	const char *reason; /* stable code, e.g. "missing_field" (static) */
	char field[48];     /* e.g. "data.input_tokens" */
	char detail[160];   /* one line for humans */
} tally_codec_error;

/**
 * Decode one usage event. Strings in out point into buf, which must outlive
 * out. Unknown keys are ignored; trailing bytes are rejected.
 * @return 0 or TALLY_EINVALID with err filled
 */
int tally_codec_decode_usage(tally_usage_event *out, const char *buf,
			     size_t len, tally_codec_error *err)
	TALLY_MUSTCHECK;

/** Append the msgpack encoding of ev to sb. */
void tally_codec_encode_usage(msgpack_sbuffer *sb, const tally_usage_event *ev);

int tally_codec_decode_rated(tally_rated_event *out, const char *buf,
			     size_t len, tally_codec_error *err)
	TALLY_MUSTCHECK;

void tally_codec_encode_rated(msgpack_sbuffer *sb, const tally_rated_event *re);

#endif /* TALLY_CODEC_H */
