/*
 * fuzz_usage.c - libFuzzer target for the strict msgpack usage decoder
 * (tally_codec_decode_usage). Any input must be rejected with a reason or
 * decoded; a decoded message must re-encode to bytes that decode again and
 * re-encode identically (canonical form). Run: tests/fuzz/run.sh 60 usage
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/command.h"

FUZZ_MSGPACK_ROUNDTRIP(tally_usage_event, tally_codec_decode_usage,
		       tally_codec_encode_usage)
