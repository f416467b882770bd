#!/usr/bin/env bash
# Build ring_wake_stress.c with the C core under ThreadSanitizer and run it.
# Exits 0 if the stress passed with no TSan report, 77 if this machine cannot
# build TSan programs (no libtsan: apt package libtsan2), non-zero otherwise.
#
#   bash tests/native/tsan/run_tsan.sh [TASKS]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NATIVE=$(cd "$HERE/../../../catzilla_mp/native" && pwd)
CC=${CC:-gcc}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/czmp-tsan.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# can this compiler link a TSan program at all?
echo 'int main(void){return 0;}' >"$WORK/probe.c"
if ! "$CC" -fsanitize=thread "$WORK/probe.c" -o "$WORK/probe" 2>/dev/null || ! "$WORK/probe"; then
    echo "ThreadSanitizer unavailable ($CC -fsanitize=thread cannot build; install libtsan2)"
    exit 77
fi

"$CC" -std=gnu11 -fsanitize=thread -O1 -g -fno-omit-frame-pointer -pthread \
    -Wall -Wextra -Wno-unused-parameter -Wno-tsan -I"$NATIVE" \
    "$NATIVE"/segment.c "$NATIVE"/ring.c "$NATIVE"/wake.c "$NATIVE"/slots.c "$NATIVE"/arena.c \
    "$HERE/ring_wake_stress.c" -o "$WORK/ring_wake_stress" -lrt

# -Wno-tsan: TSan does not model atomic_thread_fence (wake.c, slots.c); the
# fences still run, TSan just cannot credit them, so a report that depends
# on one of them must be read with that in mind.
# halt_on_error: the first report fails the run; exitcode 66 tells it apart
# from the stress's own failures (1, 2)
TSAN_OPTIONS="halt_on_error=1:exitcode=66:second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    "$WORK/ring_wake_stress" "${1:-20000}"
