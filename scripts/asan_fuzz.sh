#!/usr/bin/env bash
# The sanitizer preset (build-asan: AddressSanitizer + UndefinedBehaviorSanitizer, UB fatal, -O1 -g1).
#
#   bash scripts/asan_fuzz.sh           # quick: loader, executor-input and fuzz tests, CLI error tests
#   bash scripts/asan_fuzz.sh --suite   # the whole default test suite (ctest) under the sanitizers
#   bash scripts/asan_fuzz.sh --fuzz    # fuzzing at scale: python3 bench/fuzz.py (docs/FUZZING.md)
#
# In the quick mode, extra arguments go to the test binary, e.g. --gtest_filter=FuzzLoader.*; the fuzz
# test's mutant count, seed and forward-run count can be raised with INLIERQ_FUZZ_MUTANTS,
# INLIERQ_FUZZ_SEED and INLIERQ_FUZZ_RUNS (see tests/test_fuzz_loader.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=quick
case "${1:-}" in
  --suite) mode=suite; shift ;;
  --fuzz) mode=fuzz; shift ;;
esac

cmake --preset asan
# Only our code is instrumented; libtorch, libonnx, protobuf and the image libraries are Debian's plain
# builds, so ASan sees their heap misuse (malloc/free are intercepted) but not their out-of-bounds reads.
# LeakSanitizer runs clean with libtorch 1.13 here; pass ASAN_OPTIONS=detect_leaks=0 where it cannot run
# (under ptrace).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

case "$mode" in
  quick)
    cmake --build build-asan -j"${JOBS:-2}" --target inlierq_tests inlierq_cli
    : "${INLIERQ_FUZZ_RUNS:=10}"  # forward passes dominate the runtime under ASan
    export INLIERQ_FUZZ_RUNS
    ./build-asan/tests/inlierq_tests --gtest_filter='LoaderErrors.*:ExecutorInputErrors.*:FuzzLoader.*' "$@"
    INLIERQ_CLI=./build-asan/inlierq python3 tests/py/test_cli_errors.py
    ;;
  suite)
    cmake --build build-asan -j"${JOBS:-2}"
    # Wall-clock checks (tests/py/test_coco_eval_vs_pycocotools.py) are skipped: sanitized code is slower.
    INLIERQ_SANITIZED=1 ctest --test-dir build-asan --output-on-failure --timeout 5400 "$@"
    ;;
  fuzz)
    cmake --build build-asan -j"${JOBS:-2}" --target inlierq_fuzz
    python3 bench/fuzz.py --no-build "$@"
    ;;
esac
echo "asan_fuzz ($mode): no sanitizer report"
