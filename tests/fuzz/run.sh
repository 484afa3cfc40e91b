#!/bin/sh
# tests/fuzz/run.sh [SECONDS] [TARGET...] - build the libFuzzer targets
# (tests/fuzz/fuzz_<target>.c, with ASan + UBSan) and run each for SECONDS
# (default 5) on its seed corpus tests/fuzz/corpus/<target>/. Without
# TARGET, every target runs, one after the other. Exit 0 when no crash was
# found, 1 on a crash or a build error, 2 when the toolchain is incomplete
# (clang or its libFuzzer runtime missing: ops/install-deps installs both).
# Called by ops/test. Work directory: $TALLY_FUZZ_DIR (default build-fuzz/):
# obj/ the instrumented objects, corpus/<target>/ what the runs found,
# <target>.log the last run's output, crash-<target>-* a crashing input.
# Extra libFuzzer flags: $FUZZ_FLAGS (e.g. "-jobs=2 -workers=2").
set -eu
SECS=${1:-5}
[ $# -gt 0 ] && shift
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
if [ $# -eq 0 ]; then
	set -- $(cd "$ROOT/tests/fuzz" && ls fuzz_*.c | sed -e 's/^fuzz_//' -e 's/\.c$//')
fi

# What a target links besides the pure sources (src/pure-sources.txt, also
# read by CMake): more sources under src/ and their pkg-config packages.
extra_sources() {
	case $1 in
	config) echo base/config.c base/alert_targets.c base/log.c base/kafka_props.c ;;
	esac
}
extra_packages() {
	case $1 in
	config) echo libconfig rdkafka ;;
	esac
}
max_len() {
	case $1 in
	genai) echo 16384 ;;
	stripe_event) echo 8192 ;;
	*) echo 4096 ;;
	esac
}

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all"
CFLAGS="-g -O1 -std=c11 -fno-omit-frame-pointer $SAN -I$ROOT/include -I$ROOT/src"
PKGS="msgpack jansson uuid libcrypto"
mkdir -p "$OUT/obj"

# Instrumented objects of every source a target needs, rebuilt when the
# source or any header of the repository is newer.
compile() {
	src=$1 pkgs=$2
	obj="$OUT/obj/$(echo "$src" | tr / _).o"
	if [ ! -f "$obj" ] || [ "$ROOT/src/$src" -nt "$obj" ] ||
		[ -n "$(find "$ROOT/include" "$ROOT/src" -name '*.h' -newer "$obj" | head -1)" ]; then
		# shellcheck disable=SC2086
		"$CC" $CFLAGS -fsanitize=fuzzer-no-link $(pkg-config --cflags $pkgs) \
			-c "$ROOT/src/$src" -o "$obj" || return 1
	fi
	echo "$obj"
}

# leaks inside system libraries that tally cannot free (lsan.supp says which)
LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
PURE=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/^[[:space:]]*//' \
	"$ROOT/src/pure-sources.txt")
fail=0
for t in "$@"; do
	src="$ROOT/tests/fuzz/fuzz_$t.c"
	if [ ! -f "$src" ]; then
		echo "fuzz: no target $t ($src)" >&2
		exit 1
	fi
	pkgs="$PKGS $(extra_packages "$t")"
	objs=""
	for s in $PURE $(extra_sources "$t"); do
		o=$(compile "$s" "$pkgs") || { echo "fuzz: build failed ($s)" >&2; exit 1; }
		objs="$objs $o"
	done
	# shellcheck disable=SC2086
	if ! "$CC" $CFLAGS -fsanitize=fuzzer $(pkg-config --cflags $pkgs) \
		"$src" $objs $(pkg-config --libs $pkgs) -pthread -lm \
		-o "$OUT/fuzz_$t"; then
		echo "fuzz: build failed ($t)" >&2
		exit 1
	fi
	mkdir -p "$OUT/corpus/$t"
	# new inputs go to the first directory; the seeds stay as they are
	# shellcheck disable=SC2086
	if "$OUT/fuzz_$t" -max_total_time="$SECS" -max_len="$(max_len "$t")" \
		-timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$OUT/crash-$t-" ${FUZZ_FLAGS:-} \
		"$OUT/corpus/$t" "$ROOT/tests/fuzz/corpus/$t" \
		>"$OUT/$t.log" 2>&1; then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log")
		last=$(grep -E '^#[0-9]+' "$OUT/$t.log" | tail -1 |
			sed -E 's/.*(cov: [0-9]+ ft: [0-9]+).*/\1/')
		echo "fuzz: $t OK for ${SECS}s: $execs runs, $last" >&2
	else
		tail -40 "$OUT/$t.log" >&2
		echo "fuzz: $t FAILED (input: $OUT/crash-$t-*)" >&2
		fail=1
	fi
done
exit $fail
