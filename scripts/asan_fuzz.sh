#!/usr/bin/env bash
# Builds the AddressSanitizer preset (build-asan) and runs the loader, executor-input and fuzz tests and
# the CLI error tests under it. Extra arguments go to the test binary, e.g. --gtest_filter=FuzzLoader.*
# The fuzz test's mutant count, seed and forward-run count can be raised with INLIERQ_FUZZ_MUTANTS,
# INLIERQ_FUZZ_SEED and INLIERQ_FUZZ_RUNS (see tests/test_fuzz_loader.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset asan
cmake --build build-asan -j"${JOBS:-2}" --target inlierq_tests inlierq_cli

# detect_leaks=0: LeakSanitizer reports libtorch's and protobuf's process-lifetime singletons.
# protect_shadow_gap=0 / alloc_dealloc_mismatch=0: needed by some libtorch builds (CUDA stubs, operator
# new/free pairs across the library boundary); harmless otherwise.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:protect_shadow_gap=0:alloc_dealloc_mismatch=0:abort_on_error=1:halt_on_error=1}"
: "${INLIERQ_FUZZ_RUNS:=10}"  # forward passes are ~3x slower under ASan
export INLIERQ_FUZZ_RUNS

./build-asan/tests/inlierq_tests --gtest_filter='LoaderErrors.*:ExecutorInputErrors.*:FuzzLoader.*' "$@"
INLIERQ_CLI=./build-asan/inlierq python3 tests/py/test_cli_errors.py
echo "asan_fuzz: no AddressSanitizer report"
