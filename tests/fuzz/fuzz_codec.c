/*
 * fuzz_codec.c - libFuzzer target for the strict decoders. Any input must
 * be rejected cleanly or decoded; a decoded message must re-encode to
 * bytes that decode again and re-encode identically (canonical form).
 * Build and run: tests/fuzz/run.sh [seconds].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tally/codec.h"
#include "tally/command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_same(msgpack_sbuffer *a, msgpack_sbuffer *b)
{
	if (a->size != b->size || memcmp(a->data, b->data, a->size) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	tally_codec_error err;
	tally_usage_event ev, ev2;
	tally_rated_event re, re2;
	tally_command cmd, cmd2;
	msgpack_sbuffer a, b;

	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	if (tally_codec_decode_usage(&ev, buf, size, &err) == 0) {
		tally_codec_encode_usage(&a, &ev);
		if (tally_codec_decode_usage(&ev2, a.data, a.size, &err) != 0)
			abort();
		tally_codec_encode_usage(&b, &ev2);
		check_same(&a, &b);
	} else if (err.reason == NULL) {
		abort(); /* every rejection has a reason */
	}
	msgpack_sbuffer_clear(&a);
	msgpack_sbuffer_clear(&b);
	if (tally_codec_decode_rated(&re, buf, size, &err) == 0) {
		tally_codec_encode_rated(&a, &re);
		if (tally_codec_decode_rated(&re2, a.data, a.size, &err) != 0)
			abort();
		tally_codec_encode_rated(&b, &re2);
		check_same(&a, &b);
	}
	msgpack_sbuffer_clear(&a);
	msgpack_sbuffer_clear(&b);
	if (tally_codec_decode_command(&cmd, buf, size, &err) == 0) {
		tally_codec_encode_command(&a, &cmd);
		if (tally_codec_decode_command(&cmd2, a.data, a.size, &err))
			abort();
		tally_codec_encode_command(&b, &cmd2);
		check_same(&a, &b);
	}
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
	return 0;
}
