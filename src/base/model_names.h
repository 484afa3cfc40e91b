/*
 * model_names.h - the canonical form of provider and model names
 * (libtally-internal, pure). Names arrive from every producer with their
 * own spelling ("OpenAI", " openai", "OPENAI "); the price book matches
 * the canonical form and tally-aggregate stores it, so one provider or
 * model is one name and one id whatever the spelling.
 */
#ifndef TALLY_BASE_MODEL_NAMES_H
#define TALLY_BASE_MODEL_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/**
 * The canonical form of the len bytes at s: ASCII white space (space,
 * \t \n \v \f \r) trimmed at both ends, ASCII letters lower-cased, every
 * other byte (UTF-8 included) kept as it is. Writes at most cap - 1 bytes
 * and a NUL to out (cap >= 1; a longer name is cut) and returns the length
 * written. out may be s (in place).
 */
size_t tally_model_name_norm(char *out, size_t cap, const char *s,
			     size_t len);

/** Whether the len bytes at s have the canonical form canon (clen bytes). */
bool tally_model_name_is(const char *canon, size_t clen, const char *s,
			 size_t len);

#endif
