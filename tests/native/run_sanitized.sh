#!/usr/bin/env bash
# Run tests/native against the C core built with AddressSanitizer and
# UndefinedBehaviorSanitizer. Exits non-zero on any failing test or any
# sanitizer report (in the test process or in any process it starts).
#
#   bash tests/native/run_sanitized.sh [pytest args...]
#
# The instrumented extension is built in a scratch copy of the package, so the
# normal build in the repository is never touched. Python itself is not
# instrumented, so the ASan runtime must be loaded first: LD_PRELOAD.
# PYTHON selects the interpreter (default: python3 on PATH); it needs cffi,
# psutil and pytest. CZMP_STRESS_ITEMS defaults to 200000 here: ASan makes
# the C paths several times slower and the stress test's job in this run is
# to drive every C path across processes, not to reach a million.
set -euo pipefail

PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/czmp-sanitize.XXXXXX")
[ -n "${CZMP_KEEP_SANITIZE_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT

# 1. a scratch copy of the package and its tests
cp -r "$REPO/catzilla_mp" "$REPO/tests" "$REPO/pyproject.toml" "$WORK/"
find "$WORK" \( -name '*.so' -o -name '__pycache__' -o -name '_native.c' \) -prune -exec rm -rf {} +

# 2. build catzilla_mp._native instrumented, in place in the copy
(cd "$WORK" && CZMP_SANITIZE=address,undefined "$PYTHON" -c '
import os, sys
sys.path.insert(0, "catzilla_mp/native")
from build_native import ffibuilder
ffibuilder.compile(tmpdir=".", verbose=False)
') >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; echo "sanitized build failed"; exit 2; }

LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
[ -f "$LIBASAN" ] || { echo "libasan not found (gcc -print-file-name=libasan.so)"; exit 2; }

# 3. the environment every process of the run inherits (children too).
# detect_leaks=0: LeakSanitizer would report the interpreter's own allocations
# that CPython deliberately never frees at exit (interned strings, static
# types, module state), none of them ours; use-after-free, overflows and UB
# in our C are still fatal. abort_on_error/halt_on_error make any report kill
# the process with a non-zero status, which fails the test that ran it
# (children's exit codes are asserted) and, in the test process, the run.
export LD_PRELOAD="$LIBASAN${LIBUBSAN:+:$LIBUBSAN}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:verify_asan_link_order=0"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export PYTHONPATH="$WORK"
export PYTHONDONTWRITEBYTECODE=1
export CZMP_STRESS_ITEMS=${CZMP_STRESS_ITEMS:-200000}

cd "$WORK"
# make sure we really test the instrumented build, not an installed one
"$PYTHON" -c '
import catzilla_mp._native as n, os, sys
if not n.__file__.startswith(os.getcwd()):
    sys.exit(f"imported {n.__file__}, not the sanitized build")
print("sanitized build:", n.__file__)
'

# --capture=sys: sanitizers write their reports to fd 2; pytest's default fd
# capture would swallow the report of a process that aborts. The output is
# also scanned, so a report from a process whose death a test tolerated
# (e.g. a fault-injection victim) still fails the run.
status=0
# CZMP_SANITIZE_TESTS: which tests (default tests/native); the engine's tests
# run worker processes, which inherit LD_PRELOAD and load this build too.
# shellcheck disable=SC2086
"$PYTHON" -m pytest ${CZMP_SANITIZE_TESTS:-tests/native} -q -p no:cacheprovider --capture=sys "$@" 2>&1 \
    | tee "$WORK/output.log" || status=${PIPESTATUS[0]}
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$WORK/output.log"; then
    echo "*** sanitizer report(s) above ***"
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
