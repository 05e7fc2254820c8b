#!/bin/bash
# One row of docs/QUANTIZATION.md §3a: quantize MODEL with ARGS (64 coco128 images, 16 held out), then real mAP with
# `inlierq eval` on the 500 coco_val500 images. Prints: profile, tag, mAP, the held-out fidelity line, the bias line.
#   bash bench/bias_correction.sh yolov5n.onnx yolov5 mse --preset w8a8 --method mse --bias-correction on
set -euo pipefail
ASSETS=${ASSETS:-$(cd "$(dirname "$0")/../.." && pwd)/shared/assets}
CLI=${INLIERQ_CLI:-$(cd "$(dirname "$0")/.." && pwd)/build/inlierq}
WORK=${WORK:-/tmp/inlierq_bias_correction}
model=$1 profile=$2 tag=$3
shift 3
mkdir -p "$WORK"
out=$WORK/$profile-$tag.onnx
"$CLI" --threads 1 quantize "$ASSETS/models/$model" --profile "$profile" --calib "$ASSETS/coco128/images/train2017" \
  --no-ort-latency --force -o "$out" "$@" > "$WORK/$profile-$tag.log" 2>&1
"$CLI" --threads 1 eval "$out" --profile "$profile" --images "$ASSETS/coco_val500/images" \
  --annotations "$ASSETS/coco_val500/instances_val500.json" --json 2>/dev/null | tail -1 > "$WORK/$profile-$tag.eval.json"
map=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["map"], 4))' "$WORK/$profile-$tag.eval.json")
echo "$profile $tag mAP $map | $(grep 'fidelity on' "$WORK/$profile-$tag.log" | sed 's/.*agreement/agreement/') | $(grep '\[bias\] corr' "$WORK/$profile-$tag.log" || echo 'no bias correction')"
