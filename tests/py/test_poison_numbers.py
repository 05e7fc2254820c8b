"""Numbers that would poison a quantized model are caught by name or handled by a documented rule
(docs/QUANTIZATION.md, "Degenerate numbers"), and OUT.onnx never holds a NaN, an Inf, or a zero or
denormal scale.

A tiny synthetic detector (decoded-box output, its own profile) is quantized by the CLI at W8A8 and W4A4:
- handled by a rule, quantize succeeds:
  - an all-zero weight channel (scale 1: the bias s_in·s_w then fits int32);
  - a weight channel of denormal values (~1e-39: the scale floor 1e-8, codes 0);
  - an activation that is zero on every calibration image (scale 1, like a dead weight channel);
  then every float initializer of OUT.onnx is finite, every Q/DQ scale is a normal positive float, ONNX
  Runtime runs the file, and its outputs are finite and match inlierq's own execution of the file;
- caught, quantize exits 1 naming the tensor and the node that produced it:
  - an activation that is +Inf on the calibration images (a division by a zero constant);
  - an activation that is NaN (the square root of a negative number);
  - a NaN weight (refused at load) and an Inf bias.
"""
import json
import os
import subprocess
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import onnxruntime as ort

from common import CLI, Checks

SIZE = 32
PROFILE = {
    "name": "poison",
    "preprocess": {"preset": "yolov5", "width": SIZE, "height": SIZE},
    "decoder": {"kind": "decoded", "output": "out", "layout": "positions_channels",
                "boxes": {"channels": [0, 4], "format": "cxcywh", "units": "pixels"},
                "objectness": {"channel": 4}, "scores": {"channels": [5, 6]}},
    "class_ids": [1], "class_names": ["thing"],
}


def build(path, case):
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w1[2] = 0.0                      # an all-zero output channel
    w1[5] = 1e-39                    # a channel of denormals
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    if case == "nan_weight":
        w1[1, 0, 0, 0] = np.nan
    if case == "inf_bias":
        b1[3] = np.inf
    nodes.append(helper.make_node("Conv", ["x", init("w1", w1), init("b1", b1)], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["h1"], name="relu1"))
    feature = "h1"
    if case == "inf_activation":
        nodes.append(helper.make_node("Add", ["h1", init("one", [1.0])], ["h1p"], name="add_one"))
        nodes.append(helper.make_node("Div", ["h1p", init("zero", [0.0])], ["blown_up"], name="div_by_zero"))
        feature = "blown_up"
    if case == "nan_activation":
        nodes.append(helper.make_node("Sub", [init("minus_one", [-1.0]), "h1"], ["neg"], name="negate"))
        nodes.append(helper.make_node("Sqrt", ["neg"], ["not_a_number"], name="sqrt_of_negative"))
        feature = "not_a_number"
    # A dead branch: zero weights and a negative bias before a ReLU give zeros on every image. conv3 and
    # conv2 are body convs (their inputs are quantized); conv_head is the head (kept in float).
    nodes.append(helper.make_node("Conv", [feature, init("w_dead", np.zeros((4, 8, 1, 1))), init("b_dead", -np.ones(4))],
                                  ["c_dead"], name="conv_dead"))
    nodes.append(helper.make_node("Relu", ["c_dead"], ["dead"], name="relu_dead"))
    nodes.append(helper.make_node("Conv", ["dead", init("w3", rng.standard_normal((8, 4, 1, 1)) * 0.2),
                                           init("b3", rng.standard_normal(8) * 0.1)], ["c3"], name="conv3"))
    nodes.append(helper.make_node("Conv", [feature, init("w2", rng.standard_normal((8, 8, 3, 3)) * 0.2),
                                           init("b2", rng.standard_normal(8) * 0.1)], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Add", ["c2", "c3"], ["body"], name="body_add"))
    nodes.append(helper.make_node("Relu", ["body"], ["body_relu"], name="body_relu"))
    nodes.append(helper.make_node("Conv", ["body_relu", init("w_head", rng.standard_normal((6, 8, 1, 1)) * 0.2),
                                           init("b_head", rng.standard_normal(6) * 0.1)], ["head"], name="conv_head"))
    nodes.append(helper.make_node("Sigmoid", ["head"], ["head_sig"], name="head_sigmoid"))
    nodes.append(helper.make_node("Reshape", ["head_sig", "shape"], ["flat"], name="flatten"))
    inits.append(numpy_helper.from_array(np.array([1, 6, SIZE * SIZE], np.int64), "shape"))
    nodes.append(helper.make_node("Transpose", ["flat"], ["t"], name="to_positions", perm=[0, 2, 1]))
    nodes.append(helper.make_node("Mul", ["t", init("box_scale", [SIZE, SIZE, SIZE, SIZE, 1, 1])], ["out"], name="scale_boxes"))
    graph = helper.make_graph(nodes, "poison", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, SIZE * SIZE, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), path)


def scales_and_floats(model):
    """(name, array) of every float initializer, and the names of the Q/DQ scale inputs."""
    floats = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    scale_names = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return floats, scale_names


def calibration_and_profile(tmp, seed=1):
    """Four random 48x40 PNGs in TMP/calib and the synthetic detector's profile in TMP/poison.json."""
    calib = os.path.join(tmp, "calib")
    os.makedirs(calib)
    rng = np.random.default_rng(seed)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(os.path.join(calib, f"{i}.png"))
    profile = os.path.join(tmp, "poison.json")
    with open(profile, "w") as f:
        json.dump(PROFILE, f)
    return calib, profile


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib, profile = calibration_and_profile(tmp)
        rng = np.random.default_rng(1)

        def quantize(case, preset):
            model = os.path.join(tmp, f"{case}.onnx")
            build(model, case)
            out = os.path.join(tmp, f"{case}_{preset}_q.onnx")
            r = subprocess.run([CLI, "quantize", model, "--profile", profile, "--calib", calib, "--preset", preset,
                                "--no-ort-latency", "-o", out], capture_output=True, text=True)
            return r, out

        for preset in ["w8a8", "w4a4"]:
            r, out = quantize("rules", preset)
            checks.check(r.returncode == 0, f"{preset}: zero, denormal and dead channels quantize (rc={r.returncode}) "
                                            f"{[l for l in r.stderr.splitlines() if 'error' in l.lower()][-3:] or r.stderr.strip()[-300:]}")
            if r.returncode != 0:
                continue
            q = onnx.load(out)
            floats, scale_names = scales_and_floats(q)
            bad = [n for n, a in floats if not np.all(np.isfinite(a))]
            checks.check(not bad, f"{preset}: every float initializer of OUT.onnx is finite (non-finite: {bad[:5]})")
            arrays = dict(floats)
            scales = np.concatenate([arrays[s].ravel() for s in scale_names])
            checks.check(len(scale_names) > 0 and bool(np.all(scales >= np.finfo(np.float32).tiny)) and
                         bool(np.all(np.isfinite(scales))),
                         f"{preset}: {len(scales)} Q/DQ scales are normal positive floats (min {scales.min():.3g})")
            w1_scale = next((arrays[s] for s in scale_names if s.startswith("w1")), None)
            checks.check(w1_scale is not None and w1_scale[2] == 1.0 and w1_scale[5] == np.float32(1e-8),
                         f"{preset}: the zero weight channel has scale 1 and the denormal one the 1e-8 floor "
                         f"({None if w1_scale is None else (float(w1_scale[2]), float(w1_scale[5]))})")
            dead_scale = [float(arrays[s].ravel()[0]) for s in scale_names if s.startswith("dead_")]
            checks.check(dead_scale == [1.0], f"{preset}: the always-zero activation 'dead' has scale 1 ({dead_scale})")
            # The bias of the conv reading the dead activation is int32 with s_in·s_w (it fits with scale 1).
            has_int_bias = any(t.name.startswith("b3") and t.data_type == TensorProto.INT32 for t in q.graph.initializer)
            if preset == "w8a8":
                checks.check(has_int_bias, "w8a8: conv3's bias (input: the dead activation) is exported as int32")
            x = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
            # The file's Q/DQ semantics exactly (ORT's fused integer kernels round biases their own way).
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            y = ort.InferenceSession(out, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            np.save(os.path.join(tmp, "x.npy"), x)
            ours = subprocess.run([CLI, "infer", out, "--input", "x=" + os.path.join(tmp, "x.npy"), "--output-dir",
                                   os.path.join(tmp, f"infer_{preset}")], capture_output=True, text=True)
            mine = None
            if ours.returncode == 0:
                mine = np.load(os.path.join(tmp, f"infer_{preset}", "out.npy"))
            checks.check(bool(np.all(np.isfinite(y))) and mine is not None and float(np.abs(mine - y).max()) < 1e-3,
                         f"{preset}: ONNX Runtime runs OUT.onnx, outputs finite and equal to inlierq's "
                         f"(max diff {None if mine is None else float(np.abs(mine - y).max()):.2g}) {ours.stderr[-200:]}")

        first_png = os.path.join(calib, "0.png")  # the batch's files are named
        for case, must_name in [("inf_activation", ["blown_up", "div_by_zero", "Inf", first_png]),
                                ("nan_activation", ["not_a_number", "sqrt_of_negative", "NaN", first_png]),
                                ("nan_weight", ["w1", "NaN"]), ("inf_bias", ["b1", "Inf"])]:
            r, out = quantize(case, "w8a8")
            err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
            checks.check(r.returncode == 1 and all(s in r.stderr for s in must_name) and not os.path.exists(out),
                         f"{case}: exit {r.returncode}, no OUT.onnx, the error names {must_name}: {err}")
    return checks.finish()


if __name__ == "__main__":
    raise SystemExit(main())
