#!/bin/sh
# tests/fuzz/run.sh [SECONDS] - build the codec fuzzer with clang's libFuzzer
# (+ ASan/UBSan) and run it for SECONDS (default 10) with the golden vectors
# as the seed corpus. Exit 0 when no crash was found; 77 when clang or
# libFuzzer is unavailable (skipped). Called by ops/test.
set -eu
SECS=${1:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${TALLY_FUZZ_DIR:-$ROOT/build-fuzz}
CC=${FUZZ_CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
	echo "fuzz: $CC not found, skipped" >&2
	exit 77
fi
mkdir -p "$OUT/corpus"
cp "$ROOT"/schemas/vectors/valid/*.msgpack "$ROOT"/schemas/vectors/invalid/*.msgpack \
	"$OUT/corpus/" 2>/dev/null || true
# the pure sources (src/pure-sources.txt, also read by CMake) are all the
# fuzzer links: the codec and what it needs, and nothing that does I/O
PURE=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e "s|^[[:space:]]*|$ROOT/src/|" \
	"$ROOT/src/pure-sources.txt")
# shellcheck disable=SC2046,SC2086
if ! "$CC" -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=all -I"$ROOT/include" -I"$ROOT/src" \
	$(pkg-config --cflags msgpack jansson uuid libcrypto) \
	"$ROOT/tests/fuzz/fuzz_codec.c" $PURE \
	$(pkg-config --libs msgpack jansson uuid libcrypto) -pthread -lm -o "$OUT/fuzz_codec"; then
	echo "fuzz: build failed" >&2
	exit 1
fi
"$OUT/fuzz_codec" -max_total_time="$SECS" -max_len=4096 \
	-timeout=5 -print_final_stats=1 "$OUT/corpus" 2>"$OUT/fuzz.log" || {
	tail -40 "$OUT/fuzz.log" >&2
	exit 1
}
grep -E "stat::number_of_executed_units|Done" "$OUT/fuzz.log" >&2 || true
echo "fuzz: codec OK for ${SECS}s" >&2
