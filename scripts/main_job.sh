#!/usr/bin/env bash
# Main job: inspect every shared detector and run it on one real image, comparing with ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${INLIERQ_ASSETS:-../shared/assets}
for m in yolox_nano nanodet_m_416 fastestdet_352; do
  build/inlierq inspect "$ASSETS/models/$m.onnx" | sed -n '1,6p'
done
python3 tests/py/test_models_vs_ort.py
