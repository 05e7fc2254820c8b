"""The peer quantizer: ONNX Runtime's own static post-training quantization (onnxruntime.quantization).

Usage:
  python3 bench/ort_peer.py --model yolox|nanodet|fastestdet --method minmax|entropy|percentile -o OUT.onnx
                            [--num-calib 64] [--threads 2] [--assets DIR] [--no-spin] [--verbose]
                            [--skip-optimization] [--calib-option KEY=VALUE ...]   (the last two: not defaults)

Calibration set: the first `num_calib` images, sorted by file name, of ASSETS/coco128/images/train2017,
decoded with PIL and preprocessed exactly as bench/reference_pipeline.py does for that model (batch 1 each).

Steps, all inside the timed span "seconds" (time.perf_counter):
  1. decode + preprocess the calibration images ("preprocess_seconds");
  2. prepare the FP32 model so that ORT's result loads at all: drop the initializers listed as graph inputs
     (NanoDet; ORT's own tool remove_initializer_from_input) and convert opset 11 -> 13 (per-axis
     DequantizeLinear needs 13, quantize_static does not upgrade); then
     onnxruntime.quantization.shape_inference.quant_pre_process (symbolic + ONNX shape inference and ORT's
     basic graph optimisations) into a temporary directory. If it raises, or its optimiser step logs a
     failure (it swallows those), the prepared model is quantized instead and "pre_process_ok" is false.
     Steps 2 together: "pre_process_seconds";
  3. onnxruntime.quantization.quantize_static(quant_format=QDQ, per_channel=True, activation_type=QUInt8,
     weight_type=QInt8, calibrate_method=MinMax|Entropy|Percentile), every other argument at ORT's default
     (reduce_range=False, all supported op types, no extra_options) ("quantize_seconds").

ORT's calibration session uses a default SessionOptions (intra_op_num_threads=0 = one per physical core);
this script sets intra_op_num_threads=--threads on it (ORT offers no argument for it) so that both
quantizers use the same thread count. The calibrator settings actually used are read back from the
calibrator object ("calibrator"). ORT 1.32's defaults as quantize_static creates them: MinMax
symmetric=False, no moving average; Entropy num_bins=128, num_quantized_bins=128, symmetric=False;
Percentile num_bins=2048, percentile=99.999, symmetric=True. quantize_static forwards only
CalibTensorRangeSymmetric / CalibMovingAverage(Constant) / CalibMaxIntermediateOutputs / CalibPercentile
to the calibrator, so num_bins cannot be changed through it; with num_bins == num_quantized_bins the
entropy search has a single candidate (the full histogram range), and Entropy yields exactly MinMax's
ranges. The histogram calibrators keep every calibrated tensor of every image in memory (~8 GiB for
YOLOX / NanoDet with 64 images).

Prints one JSON line (the last stdout line): {"model", "method", "out", "seconds", "preprocess_seconds",
"pre_process_ok", "ort_version", ...}, also "pre_process_error", "pre_process_seconds", "quantize_seconds",
"opset" (before, after), "removed_initializer_inputs", "peak_rss_mb" (this process), "calibrator",
"num_calib", "threads", "source_op_types" (the graph handed to quantize_static), "qdq_ops" (QuantizeLinear
/ DequantizeLinear counts), "quantized_op_types" (op types with an input from a DequantizeLinear) and
"float_op_types" (the others).
"""
import argparse
import collections
import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_pipeline as ref  # noqa: E402

ASSETS = ref.ASSETS
METHODS = ("minmax", "entropy", "percentile")
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
# Calibrator attributes reported back (those that exist on the calibrator object).
CALIB_ATTRS = ("symmetric", "moving_average", "averaging_constant", "max_intermediate_outputs", "per_channel",
               "num_bins", "num_quantized_bins", "percentile")


def calibration_files(assets=ASSETS, num_calib=64):
    d = os.path.join(assets, "coco128", "images", "train2017")
    files = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")))
    if len(files) < num_calib:
        raise ValueError(f"{d}: {len(files)} images, {num_calib} requested")
    return [os.path.join(d, f) for f in files[:num_calib]]


def preprocess_images(model, files):
    """[1, 3, S, S] float32 tensors, exactly reference_pipeline's preprocessing of `model`."""
    pre, _ = ref.PIPELINES[model]
    size = ref.MODELS[model][1]
    out = []
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        x, _ = pre(rgb, size)
        out.append(np.ascontiguousarray(x, np.float32))
    return out


def make_reader(input_name, tensors):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds the preprocessed images one at a time (batch 1)."""

        def __init__(self):
            self.start, self.end, self.pos = 0, len(tensors), 0

        def get_next(self):
            i = self.start + self.pos
            if i >= self.end:
                return None
            self.pos += 1
            return {input_name: tensors[i]}

        def __len__(self):
            return len(tensors)

        def set_range(self, start_index, end_index):
            self.start, self.end, self.pos = start_index, min(end_index, len(tensors)), 0

        def rewind(self):
            self.pos = 0

    return Reader()


def image_input_name(path):
    """The graph input that has no initializer (NanoDet's export also lists its weights as inputs)."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"{path}: expected one non-initializer input, got {names}")
    return names[0]


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


@contextlib.contextmanager
def _patched_calibrator(threads, spin, record, calib_options=None):
    """Sets intra_op_num_threads on ORT's calibration session and records the calibrator's settings."""
    import importlib

    import onnxruntime

    # (onnxruntime.quantization.quantize is also the name of a function the package exports.)
    calibrate = importlib.import_module("onnxruntime.quantization.calibrate")
    quantize = importlib.import_module("onnxruntime.quantization.quantize")

    orig_session = calibrate.CalibraterBase.create_inference_session
    orig_create = quantize.create_calibrator

    def create_inference_session(self):
        so = onnxruntime.SessionOptions()
        so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT's own
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.infer_session = onnxruntime.InferenceSession(self.augmented_model_path, sess_options=so,
                                                          providers=self.execution_providers)

    def create_calibrator(*a, **kw):
        if calib_options:  # not ORT's defaults: only with --calib-option
            kw["extra_options"] = {**(kw.get("extra_options") or {}), **calib_options}
        c = orig_create(*a, **kw)
        record["class"] = type(c).__name__
        for k in CALIB_ATTRS:
            if hasattr(c, k):
                record[k] = getattr(c, k)
        if hasattr(c, "method"):
            record["histogram_method"] = c.method
        # The augmented model's outputs: the original outputs plus the calibrated tensors (MinMax: two each).
        record["calibration_session_outputs"] = len(c.infer_session.get_outputs())
        return c

    calibrate.CalibraterBase.create_inference_session = create_inference_session
    quantize.create_calibrator = create_calibrator
    try:
        yield
    finally:
        calibrate.CalibraterBase.create_inference_session = orig_session
        quantize.create_calibrator = orig_create


def model_opset(path):
    import onnx

    m = onnx.load(path, load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def qdq_summary(path):
    import onnx

    m = onnx.load(path)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = collections.Counter(n.op_type for n in m.graph.node
                              if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                              and any(i in dq_out for i in n.input))
    float_ops = collections.Counter(n.op_type for n in m.graph.node
                                    if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                                    and not any(i in dq_out for i in n.input))
    return {"QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0)}, \
        dict(sorted(fed.items())), dict(sorted(float_ops.items()))


def quantize_ort(model_name, method, out_path, num_calib=64, assets=ASSETS, threads=2, spin=True,
                 calib_options=None, skip_optimization=False):
    """Quantizes `model_name` with ORT's quantize_static; returns the result dict (see the module doc).
    calib_options (default none: ORT's defaults) are passed to ORT's create_calibrator as its extra_options
    (keys num_bins, num_quantized_bins, percentile, symmetric, ...; quantize_static forwards only some).
    skip_optimization=True (not the default) skips quant_pre_process's ORT graph optimisation step, whose
    only effect on these models is to fuse YOLOX's Focus slices into SpaceToDepth + Gather."""
    import onnx
    import onnx.version_converter
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.tools.remove_initializer_from_input import remove_initializer_from_input

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    calib_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    fp32 = os.path.join(assets, "models", ref.MODELS[model_name][0])
    files = calibration_files(assets, num_calib)
    input_name = image_input_name(fp32)
    out_path = os.path.abspath(out_path)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    calib_record = {}
    capture = _LogCapture()
    root = logging.getLogger()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with tempfile.TemporaryDirectory(prefix="ort_peer.") as tmp:
        t0 = time.perf_counter()
        tensors = preprocess_images(model_name, files)
        t1 = time.perf_counter()
        # Two fixes before ORT's own steps, both needed for a loadable result:
        # - NanoDet's export also lists its 158 initializers as graph inputs. ORT then treats them as
        #   overridable, not constant, and after quant_pre_process's shape inference it rejects the graph
        #   (Resize: "Either `sizes` or `scales` must be provided, but not both of them"). ORT's own warning
        #   names the remedy, onnxruntime/tools/remove_initializer_from_input.py, applied here (same graph).
        # - Per-channel Q/DQ (the DequantizeLinear "axis" attribute) needs opset 13; quantize_static keeps the
        #   model's opset (11 for all three models) and writes an invalid model ("Unrecognized attribute:
        #   axis for operator DequantizeLinear"), so older models are converted with ONNX's version converter.
        model = onnx.load(fp32)
        opset_from = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        n_inputs = len(model.graph.input)
        remove_initializer_from_input(model)
        removed_inputs = n_inputs - len(model.graph.input)
        if opset_from < MIN_OPSET:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        src = os.path.join(tmp, "prepared.onnx")
        onnx.save(model, src)
        del model
        pre_path, pre_ok, pre_error = os.path.join(tmp, "preprocessed.onnx"), True, None
        root.addHandler(capture)
        try:
            quant_pre_process(src, pre_path, skip_optimization=skip_optimization)
        except Exception as e:  # noqa: BLE001 - any failure: quantize the raw model, and say so
            pre_ok, pre_error = False, f"{type(e).__name__}: {e}"
        finally:
            root.removeHandler(capture)
        if pre_ok and capture.records:  # quant_pre_process logs (and swallows) optimiser failures
            pre_ok, pre_error = False, " | ".join(capture.records)[:2000]
        if pre_ok and not os.path.isfile(pre_path):
            pre_ok, pre_error = False, "quant_pre_process wrote no model"
        src = pre_path if pre_ok else src
        src_ops = dict(sorted(collections.Counter(n.op_type for n in onnx.load(src).graph.node).items()))
        t2 = time.perf_counter()
        # (ORT's histogram calibrators print progress on stdout: keep stdout for the JSON line.)
        with _patched_calibrator(threads, spin, calib_record, calib_options), contextlib.redirect_stdout(sys.stderr):
            quantize_static(src, out_path, make_reader(input_name, tensors), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calib_method)
        t3 = time.perf_counter()

    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts, fed, float_ops = qdq_summary(out_path)
    return {"model": model_name, "method": method, "out": out_path, "seconds": t3 - t0,
            "preprocess_seconds": t1 - t0, "pre_process_ok": pre_ok, "ort_version": onnxruntime.__version__,
            "pre_process_error": pre_error, "pre_process_seconds": t2 - t1, "quantize_seconds": t3 - t2,
            "opset": [opset_from, model_opset(out_path)], "removed_initializer_inputs": removed_inputs,
            "num_calib": len(files), "threads": threads, "spin": spin, "calib_options": calib_options or {},
            "pre_process_skip_optimization": skip_optimization,
            "calibrator": calib_record,
            "peak_rss_mb": round(max(rss0, rss1) / 1024.0, 1), "peak_rss_mb_before": round(rss0 / 1024.0, 1),
            "source_op_types": src_ops, "qdq_ops": counts, "quantized_op_types": fed, "float_op_types": float_ops}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=list(ref.MODELS))
    ap.add_argument("--method", required=True, choices=METHODS)
    ap.add_argument("-o", "--out", required=True, help="output QDQ .onnx")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of ORT's calibration session")
    ap.add_argument("--assets", default=ASSETS)
    ap.add_argument("--no-spin", action="store_true", help="calibration session: session.intra_op.allow_spinning=0")
    ap.add_argument("--verbose", action="store_true", help="keep ORT's quantization warnings")
    ap.add_argument("--calib-option", action="append", default=[], metavar="KEY=VALUE",
                    help="not ORT's default: passed to ORT's create_calibrator (e.g. num_bins=2048; "
                         "values parsed as JSON when possible)")
    ap.add_argument("--skip-optimization", action="store_true",
                    help="not ORT's default: quant_pre_process(skip_optimization=True) (no SpaceToDepth fusion)")
    args = ap.parse_args()
    calib_options = {}
    for kv in args.calib_option:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--calib-option needs KEY=VALUE, got {kv!r}")
        try:
            calib_options[k] = json.loads(v)
        except ValueError:
            calib_options[k] = v
    if not args.verbose:  # quantize_static warns about pre-processing etc. on the root logger
        logging.getLogger().setLevel(logging.ERROR)
    r = quantize_ort(args.model, args.method, args.out, args.num_calib, args.assets, args.threads,
                     spin=not args.no_spin, calib_options=calib_options, skip_optimization=args.skip_optimization)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
