#!/bin/bash
# Packs what the GPU machine needs to run inlierq into .gpu/ (git-ignored, for device `run`'s carry):
# the binary built against the torch wheel the machine has (scripts/build_torch2.sh, torch 2.11.0 cu130),
# the non-system libraries it links (ONNX, protobuf, fmt: that image has none of them), and the model
# and calibration images of the prepared benchmark (bench/gpu_recon.sh). The shared assets are copied
# only into this ignored folder, because ../shared does not travel to the device.
#
#   bash scripts/gpu_bundle.sh [--build build-torch2] [--out .gpu] [--assets ../shared/assets]
# then, on a session with a device:  run(command="bash bench/gpu_recon.sh", carry=[".gpu"], timeout_s=590)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build-torch2
OUT=$ROOT/.gpu
ASSETS=$ROOT/../shared/assets
while [ $# -gt 0 ]; do
  case $1 in
    --build) BUILD=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --assets) ASSETS=$2; shift 2 ;;
    *) echo "gpu_bundle.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$BUILD/inlierq" ] || { echo "gpu_bundle.sh: $BUILD/inlierq missing: run scripts/build_torch2.sh first" >&2; exit 1; }
grep -q "torch-2.11.0" "$BUILD/CMakeCache.txt" || echo "gpu_bundle.sh: warning: $BUILD is not the torch 2.11.0 build the GPU machine matches" >&2
rm -rf "$OUT.part" && mkdir -p "$OUT.part/bin" "$OUT.part/lib" "$OUT.part/assets/calib"
cp "$BUILD/inlierq" "$OUT.part/bin/"
# Everything ldd resolves outside torch/CUDA and outside glibc/libstdc++/zlib (present on that image).
for lib in $(ldd "$BUILD/inlierq" 2>/dev/null | awk '$3 ~ /^\// {print $3}'); do
  case $(basename "$lib") in
    libcu*|libnv*|libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libutil.so*|ld-linux*|libgcc_s.so*|libstdc++.so*|libz.so*) ;;
    *) case $lib in */torch*|*/cuda*|*/nvidia*) ;; *) cp -L "$lib" "$OUT.part/lib/" ;; esac ;;
  esac
done
cp "$ASSETS/models/yolox_nano.onnx" "$OUT.part/assets/"
ls "$ASSETS/coco128/images/train2017" | sort | head -64 | while read -r f; do cp "$ASSETS/coco128/images/train2017/$f" "$OUT.part/assets/calib/"; done
rm -rf "$OUT" && mv "$OUT.part" "$OUT"
grep -qx "/.gpu/" "$ROOT/.git/info/exclude" 2>/dev/null || echo "/.gpu/" >> "$ROOT/.git/info/exclude"
du -sh "$OUT"; ls "$OUT/lib"
