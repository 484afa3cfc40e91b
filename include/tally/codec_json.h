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

/** A message decoded from JSON: the member the schema asked for. */
typedef union tally_codec_msg {
	tally_usage_event usage;
	tally_rated_event rated;
	tally_command command;
} tally_codec_msg;

/**
 * One line of JSON lines (`tally produce`), without its line end: parsed
 * with duplicate keys rejected, then validated as schema 'u' (usage), 'r'
 * (rated) or 'c' (command).
 * @param[out] obj the parsed line, which out's strings borrow from:
 *                 json_decref() it after use (NULL on error)
 * @return 0, or TALLY_EINVALID with err filled: reason "bad_json" with
 *         jansson's message as detail when the line is not JSON
 */
int tally_codec_json_line(tally_codec_msg *out, char schema, const char *line,
			  size_t len, json_t **obj, tally_codec_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_CODEC_JSON_H */
