"""The second peer quantizer: NNCF's post-training quantization of ONNX models (nncf.quantize).

Usage (NNCF lives in its own virtual environment, never in the test path: bash bench/setup_peers.sh):
  bench/.venv-nncf/bin/python bench/nncf_peer.py --model yolox|nanodet|fastestdet|yolov5 -o OUT.onnx
                                                [--num-calib 64] [--preset performance|mixed] [--assets DIR]

Calibration set: the same first `num_calib` coco128 images as bench/ort_peer.py, preprocessed exactly as
bench/reference_pipeline.py does for that model (batch 1 each).

Steps, all inside the timed span "seconds":
  1. decode + preprocess the calibration images;
  2. prepare the FP32 model as bench/ort_peer.py does (drop initializers listed as graph inputs; opset < 13 ->
     13, which NNCF's ONNX backend requires for per-channel Q/DQ);
  3. nncf.quantize(model, nncf.Dataset(images), subset_size=num_calib) with every other argument at NNCF's
     default: preset None (= PERFORMANCE for CNNs: symmetric weights and activations), target device ANY,
     fast bias correction on, no ignored scope; --preset sets the preset explicitly (not the default).

Prints one JSON line (the last stdout line): {"model", "out", "seconds", "quantize_seconds", "nncf_version",
"onnxruntime_version", "opset", "num_calib", "preset", "qdq_ops", "quantized_op_types", "float_op_types"}.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ort_peer  # noqa: E402  (its image list, preprocessing and Q/DQ summary; it imports ORT only when called)
import reference_pipeline as ref  # noqa: E402


def quantize_nncf(model_name, out_path, num_calib=64, assets=ref.ASSETS, preset=None):
    import nncf
    import onnx
    import onnx.version_converter
    import onnxruntime
    from onnxruntime.tools.remove_initializer_from_input import remove_initializer_from_input

    fp32 = os.path.join(assets, "models", ref.MODELS[model_name][0])
    files = ort_peer.calibration_files(assets, num_calib)
    input_name = ort_peer.image_input_name(fp32)
    out_path = os.path.abspath(out_path)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    t0 = time.perf_counter()
    tensors = ort_peer.preprocess_images(model_name, files)
    model = onnx.load(fp32)
    opset_from = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    remove_initializer_from_input(model)
    if opset_from < ort_peer.MIN_OPSET:
        model = onnx.version_converter.convert_version(model, ort_peer.MIN_OPSET)
    t1 = time.perf_counter()
    kwargs = {}
    if preset:
        kwargs["preset"] = {"performance": nncf.QuantizationPreset.PERFORMANCE,
                            "mixed": nncf.QuantizationPreset.MIXED}[preset]
    dataset = nncf.Dataset(tensors, lambda x: {input_name: x})
    quantized = nncf.quantize(model, dataset, subset_size=len(tensors), **kwargs)
    t2 = time.perf_counter()
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(out_path), suffix=".onnx", delete=False) as tmp:
        tmp_path = tmp.name
    onnx.save(quantized, tmp_path)
    os.replace(tmp_path, out_path)
    counts, fed, float_ops = ort_peer.qdq_summary(out_path)
    return {"model": model_name, "out": out_path, "seconds": t2 - t0, "quantize_seconds": t2 - t1,
            "nncf_version": nncf.__version__, "onnxruntime_version": onnxruntime.__version__,
            "opset": [opset_from, ort_peer.model_opset(out_path)], "num_calib": len(files),
            "preset": preset or "default", "qdq_ops": counts, "quantized_op_types": fed, "float_op_types": float_ops}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=list(ref.MODELS))
    ap.add_argument("-o", "--out", required=True, help="output QDQ .onnx")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--preset", choices=("performance", "mixed"), help="not the default: NNCF's preset")
    ap.add_argument("--assets", default=ref.ASSETS)
    args = ap.parse_args()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    r = quantize_nncf(args.model, args.out, args.num_calib, args.assets, args.preset)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
