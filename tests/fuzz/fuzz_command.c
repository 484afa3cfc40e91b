/*
 * fuzz_command.c - libFuzzer target for the strict msgpack command decoder
 * (tally_codec_decode_command). Any input must be rejected with a reason or
 * decoded; a decoded message must re-encode to bytes that decode again and
 * re-encode identically (canonical form). Run: tests/fuzz/run.sh 60 command
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/command.h"

FUZZ_MSGPACK_ROUNDTRIP(tally_command, tally_codec_decode_command,
		       tally_codec_encode_command)
