#!/bin/bash
# Runs ON THE GPU MACHINE (device `run`, carry [".gpu"] made by scripts/gpu_bundle.sh): issue 5's
# full-budget benchmark, QDrop W4A4 on YOLOX-Nano, 64 calibration images, --iters 20000 --recon-batch 32 and the references' learning rates.
# A 20-iteration smoke run first checks the CUDA path; the long run stops at LIMIT_S and leaves its log
# (per-unit lines with times) and, if it finished, the model under $OUT for `inlierq eval` on this side.
#   env: ITERS (20000), LIMIT_S (480), SMOKE (1), METHOD (qdrop), EXTRA (more quantize flags),
#        DEVICE (cuda), NUM_CALIB (64), TORCH_LIB (torch/lib of python3's torch)
set -uo pipefail
B=${BUNDLE:-.gpu}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
TORCH_LIB=${TORCH_LIB:-$(python3 -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")}
export LD_LIBRARY_PATH=$B/lib:$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; python3 -c "import torch; print('torch', torch.__version__)"; ldd "$B/bin/inlierq" | grep "not found"; } 2>&1 | tee "$OUT/env.txt"
Q=("$B/bin/inlierq" quantize "$B/assets/yolox_nano.onnx" --profile yolox --calib "$B/assets/calib" --num-calib "${NUM_CALIB:-64}"
   --preset w4a4 --method "${METHOD:-qdrop}" --recon-batch 32 --lr-round 1e-3 --lr-act 4e-5 --brecq-lr-act 4e-4 --brecq-act-iters 5000 --device "${DEVICE:-cuda}" --seed 0 --force ${EXTRA:-})
if [ "${SMOKE:-1}" = 1 ]; then
  /usr/bin/time -v "${Q[@]}" --iters 20 -o /tmp/smoke.onnx > "$OUT/smoke.log" 2>&1
  echo "smoke rc $?"; tr '\r' '\n' < "$OUT/smoke.log" | grep -a "\[recon\]\|rror\|Maximum resident\|Elapsed" | tail -8
fi
start=$(date +%s)
timeout "${LIMIT_S:-480}" /usr/bin/time -v "${Q[@]}" --iters "${ITERS:-20000}" -o "$OUT/yolox_w4a4_${METHOD:-qdrop}.onnx" \
  --checkpoint-dir /tmp/gpu_ckpt > "$OUT/quantize.log" 2>&1
echo "long run rc $? after $(( $(date +%s) - start )) s"
tr '\r' '\n' < "$OUT/quantize.log" | grep -a "^\[[0-9]*/[0-9]*\]\|\[recon\]\|rror\|Maximum resident\|Elapsed" | tail -40
