#!/usr/bin/env bash
# Main job (until quantization lands): inspect the shared detectors, check them against ONNX Runtime,
# and evaluate YOLOX-Nano's FP32 COCO mAP on the first 100 validation images.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${INLIERQ_ASSETS:-../shared/assets}
for m in yolox_nano nanodet_m_416 fastestdet_352; do
  build/inlierq inspect "$ASSETS/models/$m.onnx" | sed -n '1,6p'
done
python3 tests/py/test_models_vs_ort.py 2>/dev/null | tail -n 1
build/inlierq --threads 2 eval "$ASSETS/models/yolox_nano.onnx" --profile yolox \
  --images "$ASSETS/coco_val500/images" --annotations "$ASSETS/coco_val500/instances_val500.json" --limit 100
