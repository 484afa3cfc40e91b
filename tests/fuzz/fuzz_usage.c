/*
 * fuzz_usage.c - libFuzzer target for the strict msgpack usage decoder
 * (tally_codec_decode_usage). Any input must be rejected with a reason or
 * decoded; a decoded message must re-encode to bytes that decode again and
 * re-encode identically (canonical form). Run: tests/fuzz/run.sh 60 usage
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	tally_codec_error err;
	tally_usage_event m, m2;
	msgpack_sbuffer a, b;

	if (tally_codec_decode_usage(&m, buf, size, &err) != 0) {
		if (err.reason == NULL)
			abort(); /* every rejection has a reason */
		return 0;
	}
	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	tally_codec_encode_usage(&a, &m);
	if (tally_codec_decode_usage(&m2, a.data, a.size, &err) != 0)
		abort();
	tally_codec_encode_usage(&b, &m2);
	fuzz_same(&a, &b);
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
	return 0;
}
