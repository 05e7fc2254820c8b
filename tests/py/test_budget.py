"""`quantize --budget` (docs/QUANTIZATION.md §4b), FastestDet W8A8 on 8 calibration and 16 held-out images:

- int8-macs=0.95 (the unbudgeted choice has 93 %, its head in floating point): the written file meets it by
  inlierq's count and by an independent one, the conv MACs that ONNX Runtime's own optimised graph runs as
  QLinearConv (bench/export_latency.py's rule), within half a percent of each other; every trial is marked within
  the budget exactly when its count reaches 0.95; the chosen trial is within the budget and within 0.01 agreement
  of the best trial that is (a fallback must gain 0.01, a quantized head may cost 0.005);
- latency=0.01 (no W8A8 file is 100× faster than FP32): the run still writes a file, says the budget is not met,
  every trial has a measured latency ratio, and, as latency does not rank trials outside the budget (too noisy),
  the one chosen is the most faithful trial.
- weight-bits=5 at W4A8 (`--method mse`, so no reconstruction): the 4- and 8-bit weights of the written file, read
  from its DequantizeLinear codes (a 4-bit weight's codes lie in [-8, 7], an 8-bit one's reach beyond in every
  layer), average ≤ 5 bits over the weight parameters, agree with the encodings layer by layer and with quantize's
  `average_weight_bits`, and the raised layers are those the budget's record marks.
No wall time is asserted: latencies are compared only with each other, from the same run.
"""
import json
import math
import os

import numpy as np
import onnx
from onnx import numpy_helper
import subprocess
import sys
import tempfile

from common import CLI, MODELS, SOURCE_DIR, Checks, calibration_folder

sys.path.insert(0, os.path.join(SOURCE_DIR, "bench"))
import export_latency as el  # noqa: E402

MODEL = MODELS["fastestdet_352"][0]


def quantize(calib, out, *extra):
    args = [CLI, "quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8",
            "--fidelity-images", "16", "--preset", "w8a8", "--no-ort-latency", "-o", out, "--json", *extra]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    meta = json.load(open(out.replace(".onnx", ".encodings.json")))["meta"]
    return json.loads(r.stdout.strip().splitlines()[-1]), meta["auto"]


def weight_bits_in_file(path):
    """Conv weight tensor -> (parameters, 4 or 8) from the file's weight DequantizeLinear codes."""
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in dq:
            continue
        d = dq[n.input[1]]
        codes = inits[d.input[0]].astype(np.int64)
        zp = inits[d.input[2]].astype(np.int64) if len(d.input) > 2 and d.input[2] in inits else np.zeros(1, np.int64)
        zp = zp.reshape((-1,) + (1,) * (codes.ndim - 1)) if zp.size > 1 else zp
        q = codes - zp
        out[d.output[0]] = (int(q.size), 4 if q.min() >= -8 and q.max() <= 7 else 8)
    return out


def check_weight_bits(checks, calib, tmp):
    out = os.path.join(tmp, "wb5.onnx")
    args = [CLI, "quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8", "--fidelity-images", "16",
            "--preset", "w4a8", "--method", "mse", "--budget", "weight-bits=5", "--no-ort-latency", "-o", out, "--json"]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    enc = json.load(open(out.replace(".onnx", ".encodings.json")))
    file_bits = weight_bits_in_file(out)
    params = sum(n for n, _ in file_bits.values())
    average = sum(n * b for n, b in file_bits.values()) / params
    eight = {t for t, (_, b) in file_bits.items() if b == 8}
    enc_bits = {t: e["bitwidth"] for t, e in enc["param_encodings"].items() if t in file_bits}
    record = enc["meta"]["weight_bits_budget"]
    raised = {l["tensor"] for l in record["layers"] if l["raised"]}
    low = {l["tensor"] for l in record["layers"]}
    first = {w["tensor"] for w in enc["meta"]["plan"]["weights"] if w["reason"] == "first layer"}
    checks.check(len(file_bits) == len(enc_bits) and all(enc_bits[t] == b for t, (_, b) in file_bits.items()),
                 f"weight-bits=5: the file's {len(file_bits)} conv weights carry the encodings' bit widths "
                 f"({len(eight)} at 8 bits)")
    checks.check(average <= 5 + 1e-9 and abs(average - res["average_weight_bits"]) < 1e-9 and average > 4.5,
                 f"weight-bits=5: {average:.3f} bits on average in the file (quantize says {res['average_weight_bits']:.3f})")
    checks.check(raised and eight == raised | first and not (raised - low),
                 f"weight-bits=5: the {len(raised)} raised layers and the first layer are the file's 8-bit weights")
    inlier = [l.get("inlier_sqnr_db") for l in record["layers"]]
    checks.check(record["ranked_by"] == "output" and all(v is not None and math.isfinite(v) for v in inlier)
                 and any(abs(v - l["sqnr_db"]) > 0.01 for v, l in zip(inlier, record["layers"])),
                 "weight-bits=5: every layer also has its inlier-weighted SQNR (the profile's heatmap), not the plain "
                 "one, and the plain one ranks by default")


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(tmp, 24)
        check_weight_bits(checks, calib, tmp)
        out = os.path.join(tmp, "b95.onnx")
        res, auto = quantize(calib, out, "--budget", "int8-macs=0.95")
        trials, chosen = auto["trials"], auto["trials"][auto["chosen_trial"]]
        ort_share, _ = el.integer_fraction(el.conv_macs(MODEL), out)
        checks.check(res["budget_met"] is True and auto["within_budget"] and res["integer_mac_fraction"] >= 0.95 and
                     ort_share >= 0.95 and abs(ort_share - res["integer_mac_fraction"]) <= 0.005,
                     f"int8-macs=0.95 met: inlierq counts {100 * res['integer_mac_fraction']:.1f} %, ONNX Runtime's optimised "
                     f"graph {100 * ort_share:.1f} %")
        marked = [t["within_budget"] == (t["integer_mac_fraction"] >= 0.95 - 1e-12) for t in trials]
        within = [t for t in trials if t["within_budget"]]
        best = max(t["fidelity"]["agreement_map"] for t in within)
        checks.check(all(marked) and chosen["within_budget"] and chosen["fidelity"]["agreement_map"] >= best - 0.01,
                     f"{len(within)} of {len(trials)} trials within the budget; chose {chosen['config']} "
                     f"(agreement {chosen['fidelity']['agreement_map']:.4f}, best within {best:.4f})")

        out = os.path.join(tmp, "lat.onnx")
        res, auto = quantize(calib, out, "--budget", "latency=0.01")
        trials, chosen = auto["trials"], auto["trials"][auto["chosen_trial"]]
        ratios = [t.get("latency_ratio", -1) for t in trials]
        best = max(t["fidelity"]["agreement_map"] for t in trials)
        checks.check(os.path.exists(out) and res["budget_met"] is False and not auto["within_budget"] and
                     all(r > 0 for r in ratios) and chosen["fidelity"]["agreement_map"] == best,
                     f"latency=0.01 unreachable: written, reported as not met, {len(ratios)} trials timed; chose the most "
                     f"faithful ({chosen['config']}, agreement {best:.4f}, {chosen['latency_ratio']:.2f}× FP32)")
    checks.finish()


if __name__ == "__main__":
    main()
