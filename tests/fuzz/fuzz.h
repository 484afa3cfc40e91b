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

/*
 * The entry point of a target for a strict msgpack decoder: any input is
 * rejected with a reason or decoded, and a decoded message re-encodes to
 * bytes that decode again and re-encode identically (canonical form).
 */
#define FUZZ_MSGPACK_ROUNDTRIP(type, decode, encode)                        \
	int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)        \
	{                                                                   \
		tally_codec_error err;                                      \
		type m, m2;                                                 \
		msgpack_sbuffer a, b;                                       \
                                                                            \
		if (decode(&m, (const char *)data, size, &err) != 0) {      \
			if (err.reason == NULL)                             \
				abort(); /* every rejection has a reason */ \
			return 0;                                           \
		}                                                           \
		msgpack_sbuffer_init(&a);                                   \
		msgpack_sbuffer_init(&b);                                   \
		encode(&a, &m);                                             \
		if (decode(&m2, a.data, a.size, &err) != 0)                 \
			abort();                                            \
		encode(&b, &m2);                                            \
		fuzz_same(&a, &b);                                          \
		msgpack_sbuffer_destroy(&a);                                \
		msgpack_sbuffer_destroy(&b);                                \
		return 0;                                                   \
	}

#endif /* TALLY_FUZZ_H */
