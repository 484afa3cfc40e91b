/*
 * fuzz.h - what the libFuzzer targets of tests/fuzz/ share: the entry
 * point's prototype and the checks that turn a wrong result into a crash
 * libFuzzer reports.
 */
#ifndef TALLY_FUZZ_H
#define TALLY_FUZZ_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Two encodings of the same message must be byte-identical. */
static inline void fuzz_same(const msgpack_sbuffer *a,
			     const msgpack_sbuffer *b)
{
	if (a->size != b->size || memcmp(a->data, b->data, a->size) != 0)
		abort();
}

/* A NUL-terminated copy of the input (parsers that take C strings). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s == NULL)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

#endif /* TALLY_FUZZ_H */
