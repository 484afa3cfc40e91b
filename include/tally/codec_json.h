#ifndef TALLY_CODEC_JSON_H
#define TALLY_CODEC_JSON_H

/**
 * @file tally/codec_json.h
 * @brief JSON <-> event structs, for `tally produce`, `tally rate` and
 *        `tally gen`. The JSON form has the same keys as the msgpack map and
 *        is validated by the same core, with the same reason codes (a JSON
 *        float where an integer is required is "wrong_type").
 *
 * from_json: strings in out are borrowed from obj, which must outlive out.
 * to_json: returns a new reference (caller json_decref()s it); `time` is
 * written as unix ms, money as exact decimal strings.
 */

#include <jansson.h>

#include "tally/codec.h"
#include "tally/command.h"
#include "tally/common.h"
#include "tally/event.h"

/** @return 0 or TALLY_EINVALID with err filled. */
int tally_codec_usage_from_json(tally_usage_event *out, const json_t *obj,
				tally_codec_error *err) TALLY_MUSTCHECK;
json_t *tally_codec_usage_to_json(const tally_usage_event *ev);

/** Rated: the usage keys plus cost, components, currency, price_id,
 *  unpriced, rated_at. */
int tally_codec_rated_from_json(tally_rated_event *out, const json_t *obj,
				tally_codec_error *err) TALLY_MUSTCHECK;
json_t *tally_codec_rated_to_json(const tally_rated_event *re);

int tally_codec_command_from_json(tally_command *out, const json_t *obj,
				  tally_codec_error *err) TALLY_MUSTCHECK;
json_t *tally_codec_command_to_json(const tally_command *cmd);

/** What a JSON line holds (tally_codec_from_json_line). */
typedef enum tally_json_schema {
	TALLY_JSON_USAGE = 0,
	TALLY_JSON_RATED,
	TALLY_JSON_COMMAND,
} tally_json_schema;

/** What the strings of a decoded line may borrow from; one per thread. */
typedef struct tally_json_line {
	json_t *held; /* the jansson tree of the last slow-path line */
} tally_json_line;

void tally_json_line_init(tally_json_line *l);

/** Drop what the last line's strings borrowed (also done by the next
 *  tally_codec_from_json_line on l). */
void tally_json_line_release(tally_json_line *l);

/**
 * One JSON text (s, n bytes; a line without its newline) into *out (a
 * tally_usage_event, tally_rated_event or tally_command as schema says).
 * Verdicts, reason codes and messages are those of json_loadb() with
 * JSON_REJECT_DUPLICATES followed by the matching *_from_json (JSON that
 * does not parse: reason "bad_json", jansson's text as detail), but plain
 * events are read without building a tree or allocating. Strings in out
 * borrow from s or from l, until l's next line or release.
 * @return 0 or TALLY_EINVALID with err filled.
 */
int tally_codec_from_json_line(tally_json_schema schema, void *out,
			       const char *s, size_t n, tally_json_line *l,
			       tally_codec_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_CODEC_JSON_H */
