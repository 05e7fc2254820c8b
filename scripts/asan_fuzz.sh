#!/usr/bin/env bash
# Builds the AddressSanitizer preset (build-asan) and runs the loader, executor-input and fuzz tests and
# the CLI error tests under it. Extra arguments go to the test binary, e.g. --gtest_filter=FuzzLoader.*
# The fuzz test's mutant count, seed and forward-run count can be raised with INLIERQ_FUZZ_MUTANTS,
# INLIERQ_FUZZ_SEED and INLIERQ_FUZZ_RUNS (see tests/test_fuzz_loader.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset asan
cmake --build build-asan -j"${JOBS:-2}" --target inlierq_tests inlierq_cli

# Only our code is instrumented; libtorch, libonnx and protobuf are Debian's plain builds, so ASan sees
# their heap misuse (malloc/free are intercepted) but not their out-of-bounds reads. LeakSanitizer runs
# clean with libtorch 1.13 here; pass ASAN_OPTIONS=detect_leaks=0 where it cannot run (under ptrace).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
: "${INLIERQ_FUZZ_RUNS:=10}"  # forward passes dominate the runtime under ASan
export INLIERQ_FUZZ_RUNS

./build-asan/tests/inlierq_tests --gtest_filter='LoaderErrors.*:ExecutorInputErrors.*:FuzzLoader.*' "$@"
INLIERQ_CLI=./build-asan/inlierq python3 tests/py/test_cli_errors.py
echo "asan_fuzz: no AddressSanitizer report"
