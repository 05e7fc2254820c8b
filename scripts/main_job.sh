#!/usr/bin/env bash
# Main job: quantize YOLOX-Nano to W8A8 from the shared assets with no option but the preset (64 calibration
# images of coco128; --method auto chooses calibrator, weights, concat scales, head and fallback by the label-free
# fidelity on 16 further coco128 images) and print the FP32 vs W8A8 COCO mAP on coco_val500. Writes build/main_job/yolox_nano_w8a8.{onnx,
# encodings.json,trt.cache}.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${INLIERQ_ASSETS:-../shared/assets}
OUT=build/main_job
mkdir -p "$OUT"
build/inlierq inspect "$ASSETS/models/yolox_nano.onnx" | sed -n '1,4p'
build/inlierq --threads 2 quantize "$ASSETS/models/yolox_nano.onnx" --profile yolox \
  --calib "$ASSETS/coco128/images/train2017" --num-calib 64 --preset w8a8 \
  -o "$OUT/yolox_nano_w8a8.onnx" --force \
  --eval-images "$ASSETS/coco_val500/images" --eval-annotations "$ASSETS/coco_val500/instances_val500.json" \
  ${INLIERQ_EVAL_LIMIT:+--eval-limit "$INLIERQ_EVAL_LIMIT"}
