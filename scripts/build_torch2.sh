#!/bin/bash
# Builds inlierq against a PyTorch 2.x wheel (CUDA build, the same wheel the GPU machine has in
# /opt/torch/.venv) instead of Debian's libtorch 1.13, and runs the gtest suite with it on the CPU.
#
#   bash scripts/build_torch2.sh [--torch-version 2.11.0] [--cache DIR] [--build DIR] [--no-test]
#
# Downloads (once, into --cache, default /tmp/inlierq_torch2) the torch wheel from PyPI without its
# dependencies, plus the three NVIDIA libraries libtorch_cuda.so needs that the CUDA toolkit here lacks
# (cuSPARSELt, NVSHMEM, cuFile); the rest (cudart, cuBLAS, cuDNN, ...) come from /usr/local/cuda.
# Not part of the default test run: about 800 MB of downloads and a full rebuild.
# On the GPU machine, configure with -DTorch_DIR=/opt/torch/.venv/lib/python3.12/site-packages/torch/share/cmake/Torch.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=2.11.0
CACHE=/tmp/inlierq_torch2
BUILD=$ROOT/build-torch2
TEST=1
while [ $# -gt 0 ]; do
  case $1 in
    --torch-version) VERSION=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    --no-test) TEST=0; shift ;;
    *) echo "build_torch2.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
PY=python3
mkdir -p "$CACHE"
T=$CACHE/torch-$VERSION/torch
if [ ! -f "$T/share/cmake/Torch/TorchConfig.cmake" ]; then
  $PY -m pip download --no-deps "torch==$VERSION" -d "$CACHE/wheels"
  whl=$(ls "$CACHE"/wheels/torch-"$VERSION"-*.whl | head -1)
  rm -rf "$CACHE/torch-$VERSION.part" && $PY -m zipfile -e "$whl" "$CACHE/torch-$VERSION.part"
  mv "$CACHE/torch-$VERSION.part" "$CACHE/torch-$VERSION"
fi
NV=$CACHE/nvidia-libs
if [ ! -d "$NV/nvidia" ]; then
  # The versions torch 2.11.0 pins (its METADATA); adjust with --torch-version.
  $PY -m pip download --no-deps nvidia-cusparselt-cu13==0.8.0 nvidia-nvshmem-cu13==3.4.5 "nvidia-cufile==1.15.1.6.*" -d "$CACHE/wheels"
  rm -rf "$NV.part" && mkdir -p "$NV.part"
  for w in "$CACHE"/wheels/nvidia_*.whl; do $PY -m zipfile -e "$w" "$NV.part"; done
  mv "$NV.part" "$NV"
fi
LIBS=/usr/local/cuda/lib64
for d in $(find -L "$NV" -name '*.so*' -printf '%h\n' | sort -u); do LIBS=$LIBS:$d; done
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# Torch_DIR alone is not enough: Debian's Caffe2 config and libtorch.so would be found first.
# The linker may not resolve what libtorch_cuda.so's own dependencies need here (no driver); that is
# checked at run time instead.
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DINLIERQ_BUILD_BENCH=OFF \
  -DTorch_DIR="$T/share/cmake/Torch" -DCaffe2_DIR="$T/share/cmake/Caffe2" \
  -DTORCH_LIBRARY="$T/lib/libtorch.so" -Dc10_LIBRARY="$T/lib/libc10.so" -DCUDAToolkit_ROOT=/usr/local/cuda \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--unresolved-symbols=ignore-in-shared-libs"
cmake --build "$BUILD"
if [ "$TEST" = 1 ]; then
  INLIERQ_CLI=$BUILD/inlierq "$BUILD/tests/inlierq_tests" --gtest_brief=1
fi
echo "built against torch $VERSION in $BUILD; run with LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
