#!/usr/bin/env bash
# The peer quantizers' own virtual environment (never the test path): NNCF with the same onnx / onnxruntime
# versions as the python that runs the tests, so that both peers' files are executed by the same runtime.
# Usage: bash bench/setup_peers.sh   (makes bench/.venv-nncf; bench/export_latency.py --configs ...,nncf uses it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-nncf"
py="${PYTHON:-python3}"
onnx_v="$("$py" -c 'import onnx; print(onnx.__version__)')"
ort_v="$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)')"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q nncf "onnx==$onnx_v" "onnxruntime==$ort_v" pycocotools pillow
"$venv/bin/python" -c 'import nncf, onnx, onnxruntime; print("nncf", nncf.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)'
