/*
 * fuzz_rated.c - libFuzzer target for the strict msgpack rated decoder
 * (tally_codec_decode_rated). Any input must be rejected with a reason or
 * decoded; a decoded message must re-encode to bytes that decode again and
 * re-encode identically (canonical form). Run: tests/fuzz/run.sh 60 rated
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/command.h"

FUZZ_MSGPACK_ROUNDTRIP(tally_rated_event, tally_codec_decode_rated,
		       tally_codec_encode_rated)
