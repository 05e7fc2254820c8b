"""`quantize --sensitivity` and `--fallback N` (FastestDet, W8A8 minmax, 8 calibration images, 4 probes):

- the sensitivity list in OUT.encodings.json is sorted, most harmful (lowest output SQNR) first;
- each listed SQNR equals an independent computation: the FP32 model in ONNX Runtime with a
  QuantizeLinear/DequantizeLinear pair inserted after every value of that one group (scale and zero point
  from the encodings), on the same four preprocessed images, SQNR = 10·log10(Σ ref² / Σ (ref − q)²) over all
  outputs; checked for the three most harmful groups and the least harmful one, within 0.01 dB for a
  one-value group. A group of several chained values (FastestDet's 15 Concat inputs, each feeding the next
  through convs) gets 0.1 dB: one code on a rounding boundary goes the other way in ONNX Runtime (its float
  input differs in the last ulp) and cascades through the group's later members to ~500 differing codes,
  0.07 dB measured — the same rounding-history effect test_qdq_vs_ort.py checks code by code;
- `--fallback 2` leaves exactly the two most harmful groups in floating point: their values have no
  QuantizeLinear in OUT.onnx and no encoding, every other group keeps its quantizers, and the plan gives
  the reason.

Reconstruction's automatic fallback (FastestDet W4A4 `--method qdrop --iters 1`, the default `--fallback auto`):
- the groups it raises to 8 bits are exactly those that the `--fallback 0 --sensitivity` run of the same job
  lists below 8 dB at 4 bits, with the same SQNR; their encodings are 8-bit, every other activation's 4-bit
  (the network input's 8-bit), and the plan names the reason;
- no FastestDet group falls below 10 dB at 8 bits, so nothing is left in floating point;
- `--fallback 0` leaves every activation at 4 bits. (The floating-point branch is checked on a synthetic graph
  by the gtest Sensitivity.EightBitProbeFindsChannelsNoGridHolds, and on YOLOX-Nano in docs/RECONSTRUCTION.md.)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import CLI, MODELS, SOURCE_DIR, Checks, calibration_folder

sys.path.insert(0, os.path.join(SOURCE_DIR, "bench"))
import reference_pipeline as rp  # noqa: E402

MODEL = MODELS["fastestdet_352"][0]
PREPROCESS_TOOL = os.environ.get("INLIERQ_PREPROCESS_TOOL", os.path.join(SOURCE_DIR, "build", "tests", "preprocess_tool"))


def quantize(tmp, calib, name, *extra, preset="w8a8"):
    out = os.path.join(tmp, name + ".onnx")
    r = subprocess.run([CLI, "quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8", "--preset",
                        preset, "--sensitivity-images", "4", "--no-ort-latency", "-o", out, *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"quantize {extra} failed: {r.stderr[-800:]}")
    with open(os.path.join(tmp, name + ".encodings.json")) as f:
        return out, json.load(f)


def with_group_quantized(model, values, encodings):
    """The FP32 model with Q/DQ after each value (consumers read the dequantized value)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    renamed = {}
    for v in values:
        e = encodings[v]
        s, z = f"{v}_s", f"{v}_z"
        m.graph.initializer.append(numpy_helper.from_array(np.array(e["scale"][0], np.float32), s))
        zp_type = np.uint8 if e["qmin"] >= 0 else np.int8
        m.graph.initializer.append(numpy_helper.from_array(np.array(e["zero_point"][0], zp_type), z))
        nodes.append((v, [helper.make_node("QuantizeLinear", [v, s, z], [v + "_q"]),
                          helper.make_node("DequantizeLinear", [v + "_q", s, z], [v + "_dq"])]))
        renamed[v] = v + "_dq"
    out_nodes = []
    graph_inputs = {i.name for i in m.graph.input}
    for v, pair in nodes:
        if v in graph_inputs:
            out_nodes.extend(pair)
    for n in m.graph.node:
        for k, i in enumerate(n.input):
            if i in renamed:
                n.input[k] = renamed[i]
        out_nodes.append(n)
        for v, pair in nodes:
            if v in n.output:
                out_nodes.extend(pair)
    del m.graph.node[:]
    m.graph.node.extend(out_nodes)
    return m


def sqnr(ref, got):
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    noise = sum(float(np.sum((r.astype(np.float64) - g) ** 2)) for r, g in zip(ref, got))
    return 10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30))


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(tmp, 8)
        _, enc = quantize(tmp, calib, "sens", "--sensitivity")
        sens = enc["meta"]["sensitivity"]
        dbs = [s["sqnr_db"] for s in sens]
        checks.check(len(sens) > 4 and dbs == sorted(dbs),
                     f"{len(sens)} groups, sorted most harmful first ({dbs[0]:.1f} … {dbs[-1]:.1f} dB)")

        # The probe images: the first four calibration files, preprocessed by inlierq's own code (the
        # preprocessing itself is compared with PIL's in test_preprocess_vs_pil.py).
        files = sorted(os.path.join(calib, f) for f in os.listdir(calib))[:4]
        xs = []
        for k, f in enumerate(files):
            npy = os.path.join(tmp, f"probe{k}.npy")
            subprocess.run([PREPROCESS_TOOL, f, "fastestdet", npy], check=True, capture_output=True)
            xs.append(np.load(npy))
        x = np.concatenate(xs, 0)
        fp = onnx.load(MODEL)
        ref_sess = rp.ort_session(MODEL, 2, opt_level="disable")
        in_name = ref_sess.get_inputs()[0].name
        ref = [np.concatenate([ref_sess.run(None, {in_name: x[i:i + 1]})[k] for i in range(len(x))], 0)
               for k in range(len(ref_sess.get_outputs()))]
        acts = enc["activation_encodings"]
        for rank in [0, 1, 2, len(sens) - 1]:
            values = sens[rank]["values"]
            path = os.path.join(tmp, f"group{rank}.onnx")
            onnx.save(with_group_quantized(fp, values, acts), path)
            sess = rp.ort_session(path, 2, opt_level="disable")
            got = [np.concatenate([sess.run(None, {in_name: x[i:i + 1]})[k] for i in range(len(x))], 0) for k in range(len(ref))]
            ours, theirs = sens[rank]["sqnr_db"], sqnr(ref, got)
            tol = 0.01 if len(values) == 1 else 0.1
            checks.check(abs(ours - theirs) <= tol,
                         f"group ranked {rank} ({len(values)} values, {values[0]}…): SQNR {ours:.3f} dB, ONNX Runtime {theirs:.3f} dB "
                         f"(±{tol:g})")

        out, enc2 = quantize(tmp, calib, "fallback", "--fallback", "2")
        dropped = set(sens[0]["values"]) | set(sens[1]["values"])
        q = onnx.load(out)
        quantized_inputs = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        # Requantizers (ort layout) follow the plan; the calibrated sites are what must survive.
        kept = {a["value"] for a in enc["meta"]["plan"]["activations"] if not a["reason"].startswith("requantized")} - dropped
        checks.check(enc2["meta"].get("fallback_groups") == 2, f"fallback_groups = {enc2['meta'].get('fallback_groups')}")
        checks.check(not (dropped & quantized_inputs) and not (dropped & set(enc2["activation_encodings"])),
                     f"the two most harmful groups ({len(dropped)} values) have no QuantizeLinear and no encoding")
        missing = [v for v in kept if v not in enc2["activation_encodings"]]
        checks.check(not missing, f"every other activation keeps its encoding (missing: {missing[:5]})")
        plan = enc2["meta"]["plan"]
        reasons = {a["value"]: a["reason"] for a in plan.get("float_activations", [])}
        checks.check(all(reasons.get(v) == "sensitivity fallback" for v in dropped),
                     f"the plan names the reason for each ({sorted(set(reasons.get(v) for v in dropped), key=str)})")

        recon = ["--method", "qdrop", "--iters", "1"]
        _, auto = quantize(tmp, calib, "w4a4_auto", *recon, preset="w4a4")
        _, none = quantize(tmp, calib, "w4a4_none", *recon, "--fallback", "0", "--sensitivity", preset="w4a4")
        fa = auto["meta"].get("fallback_auto", {})
        raised = {tuple(r["values"]): r["sqnr_db"] for r in fa.get("raised_to_8_bits", [])}
        below = {tuple(r["values"]): r["sqnr_db"] for r in none["meta"]["sensitivity"] if r["sqnr_db"] < 8}
        checks.check(raised and raised.keys() == below.keys() and all(abs(raised[k] - below[k]) < 1e-6 for k in raised),
                     f"W4A4: raised to 8 bits {[(k[0], round(v, 2)) for k, v in raised.items()]}; the 4-bit sensitivity's "
                     f"groups below 8 dB {[(k[0], round(v, 2)) for k, v in below.items()]}")
        checks.check(fa.get("floating_point") == [] and fa.get("least_at_8_bits_db", 0) >= 10,
                     f"W4A4: no group below 10 dB at 8 bits (least {fa.get('least_at_8_bits_db')}), none left in float")
        raised_values = {v for k in raised for v in k}
        acts = auto["activation_encodings"]
        image = {a["value"] for a in auto["meta"]["plan"]["activations"] if a["image"]}
        # Requantizers written after grid-preserving ops (Gather, MaxPool) share their input's group and grid.
        raised_groups = {acts[v]["group"] for v in raised_values if v in acts}
        eight = {v for v, e in acts.items() if e["group"] in raised_groups}
        wrong = [v for v, e in acts.items() if e["bitwidth"] != (8 if v in eight or v in image else 4)]
        checks.check(raised_values <= set(acts) and not wrong,
                     f"W4A4: the {len(raised_groups)} raised groups' {len(eight)} values encoded at 8 bits, the other "
                     f"{len(acts) - len(eight)} at 4 (the input at 8); wrong: {wrong[:4]}")
        reasons = {a["value"]: a["reason"] for a in auto["meta"]["plan"]["activations"]}
        checks.check(all("raised to 8 bits by the automatic fallback" in reasons.get(v, "") for v in raised_values),
                     "W4A4: the plan names the reason for each raised value")
        wrong0 = [v for v, e in none["activation_encodings"].items() if e["bitwidth"] != (8 if v in image else 4)]
        checks.check(not wrong0 and "fallback_auto" not in none["meta"], f"W4A4 --fallback 0: every activation at 4 bits ({wrong0[:4]})")
    return checks.finish()


if __name__ == "__main__":
    main()
