#!/bin/sh
# tests/fuzz/run.sh [SECONDS] - build the codec fuzzer with clang's libFuzzer
# (+ ASan/UBSan) and run it for SECONDS (default 10) with the golden vectors
# as the seed corpus. Exit 0 when no crash was found, 1 on a crash or a
# build error, 2 when the toolchain is incomplete (clang or its libFuzzer
# runtime missing: ops/install-deps installs both). Called by ops/test.
set -eu
SECS=${1:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${TALLY_FUZZ_DIR:-$ROOT/build-fuzz}
CC=${FUZZ_CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
	echo "fuzz: toolchain incomplete: $CC not found (run ops/install-deps)" >&2
	exit 2
fi
RT=$("$CC" --print-runtime-dir 2>/dev/null)/libclang_rt.fuzzer-x86_64.a
if [ ! -f "$RT" ] && ! "$CC" -print-file-name=libclang_rt.fuzzer-x86_64.a | grep -q /; then
	echo "fuzz: toolchain incomplete: no libFuzzer runtime ($RT; Debian package libclang-rt-14-dev, run ops/install-deps)" >&2
	exit 2
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
