"""Which output error ranks weights better for `--budget weight-bits`: plain output SQNR, or InlierQ's inlier-weighted
one (docs/QUANTIZATION.md §4d)? Measured against each weight's real cost in mAP.

Usage: python3 bench/sensitivity_ranking.py [--models fastestdet,nanodet] [--preset w4a8] [--threads 2]
           [--limit 0] [--workdir /tmp/inlierq_sensitivity_ranking] [--out docs/RESULTS.md] [--report-only]

Per model:
1. `inlierq quantize MODEL --preset PRESET --method mse --bias-correction off --budget weight-bits=8 -o A.onnx` records,
   for every weight below 8 bits, both SQNRs of the outputs with only that weight quantized (encodings:
   meta.weight_bits_budget.layers; 4 calibration images, activations in float). Budget 8 raises them all, so the
   file itself is not used.
2. `inlierq quantize MODEL --preset PRESET --method mse --bias-correction off -o B.onnx`: the same grids, exported; each
   conv's low-bit weight is read back from the DequantizeLinear that feeds it (codes, scale, zero point).
3. Ground truth, per weight: the FP32 model with only that weight replaced by its dequantized low-bit copy, scored by
   `inlierq eval` on coco_val500 (all 500 images unless --limit); cost = FP32 mAP - that mAP.
4. Spearman's rho between each SQNR's harm (-SQNR) and the cost, and between harm per parameter (what the budget's
   greedy order uses: noise power / parameters) and cost per parameter. Higher rho ranks better. Also: the mAP of
   the FP32 model with the weights the budget's greedy order (each ranking) would keep at low bits under a 5-bit
   average, everything else in FP32, which is the decision the ranking drives.

The section "Weight sensitivity: plain against inlier-weighted output error" of --out is replaced (or appended).
Per-layer results stay in --workdir (MODEL.layers.json) and are reused.
"""
import argparse
import json
import os
import shlex
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from eval_accuracy import write_section  # noqa: E402
from recon_results import CLI, MODELS, evaluate, last_json, run_measured  # noqa: E402

SECTION = "## Weight sensitivity: plain against inlier-weighted output error"
ASSETS = os.path.join(ROOT, "..", "shared", "assets")


def quantize(args, model, out, extra):
    a = os.path.abspath(args.assets)
    cmd = [CLI, "--threads", str(args.threads), "quantize", f"{a}/models/{MODELS[model][0]}", "--profile",
           MODELS[model][1], "--calib", f"{a}/coco128/images/train2017", "--preset", args.preset, "--method", "mse",
           "--bias-correction", "off", "-o", out, "--force", "--json"] + extra
    rc, stdout, _, _ = run_measured(cmd, out + ".log")
    if rc != 0:
        raise SystemExit(f"quantize failed (rc {rc}), see {out}.log")
    return last_json(stdout)


def dequantized_conv_weights(path):
    """Conv node name -> its weight as the QDQ file computes it (float32)."""
    m = onnx.load(path)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    dq = {n.output[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in dq:
            continue
        d = dq[n.input[1]]
        if d.input[0] not in init:
            continue
        q = init[d.input[0]].astype(np.float64)
        scale = init[d.input[1]].astype(np.float64)
        zp = init[d.input[2]].astype(np.float64) if len(d.input) > 2 and d.input[2] else np.zeros_like(scale)
        axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        out[n.name] = ((q - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    return out


def with_weights(fp32, conv_weights, path):
    """Writes the FP32 model with the named convs' weights replaced."""
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    convs = {n.name: n for n in m.graph.node if n.op_type == "Conv"}
    inits = {i.name: i for i in m.graph.initializer}
    for node, w in conv_weights.items():
        name = convs[node].input[1]
        old = numpy_helper.to_array(inits[name])
        if old.shape != w.shape:
            raise SystemExit(f"{node}: FP32 weight {old.shape} against the QDQ file's {w.shape} (folded BN?)")
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(m, path)


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def greedy_low(choice, key, budget, high=8):
    """The layers the budget's greedy order leaves at low bits (as quant::assign_weight_bits: over all weight
    parameters, each layer raised if it still fits)."""
    layers = choice["layers"]
    total = choice["params"]
    low_bits = choice["average_bits_before"] * total
    noise = lambda l: 10 ** (-l[key] / 10)
    order = sorted(layers, key=lambda l: -noise(l) / (l["params"] * (high - l["bits"])))
    raised, spent = set(), low_bits
    for l in order:
        add = l["params"] * (high - l["bits"])
        if spent + add <= budget * total + 1e-6:
            raised.add(l["node"])
            spent += add
    return [l["node"] for l in layers if l["node"] not in raised]


def measure(args, model):
    wd = os.path.join(args.workdir, model)
    os.makedirs(wd, exist_ok=True)
    cache = os.path.join(args.workdir, f"{model}.layers.json")
    res = json.load(open(cache)) if os.path.exists(cache) else {}
    if "layers" not in res:
        quantize(args, model, os.path.join(wd, "all8.onnx"), ["--budget", "weight-bits=8"])
        enc = json.load(open(os.path.join(wd, "all8.encodings.json")))
        res["choice"] = {k: v for k, v in enc["meta"]["weight_bits_budget"].items() if k != "layers"}
        res["layers"] = enc["meta"]["weight_bits_budget"]["layers"]
        res["low"] = quantize(args, model, os.path.join(wd, "low.onnx"), [])
        json.dump(res, open(cache, "w"), indent=1)
    fp32 = onnx.load(os.path.join(os.path.abspath(args.assets), "models", MODELS[model][0]))
    low = dequantized_conv_weights(os.path.join(wd, "low.onnx"))
    if "fp32_map" not in res:
        res["fp32_map"] = evaluate(args, model, os.path.join(os.path.abspath(args.assets), "models", MODELS[model][0]),
                                   os.path.join(wd, "fp32.eval.log"))["map"]
    t0 = time.time()
    todo = [l for l in res["layers"] if "map" not in l]
    for i, l in enumerate(todo):
        node = l["node"]
        if node not in low:
            raise SystemExit(f"{model}: no low-bit weight for conv '{node}' in {wd}/low.onnx")
        path = os.path.join(wd, "one.onnx")
        with_weights(fp32, {node: low[node]}, path)
        l["map"] = evaluate(args, model, path, os.path.join(wd, "one.eval.log"))["map"]
        json.dump(res, open(cache, "w"), indent=1)
        rate = (time.time() - t0) / (i + 1)
        print(f"[{model}] {i + 1}/{len(todo)} {node}: mAP {l['map']:.4f} (cost {res['fp32_map'] - l['map']:+.4f}), "
              f"ETA {rate * (len(todo) - i - 1):.0f} s", flush=True)
    res.setdefault("budget_map", {})
    for key in ("sqnr_db", "inlier_sqnr_db"):
        if key in res["budget_map"]:
            continue
        keep = greedy_low(dict(res["choice"], layers=res["layers"]), key, args.budget)
        path = os.path.join(wd, f"budget_{key}.onnx")
        with_weights(fp32, {n: low[n] for n in keep}, path)
        res["budget_map"][key] = {"low": keep, "mAP": evaluate(args, model, path, path + ".eval.log")["map"]}
        json.dump(res, open(cache, "w"), indent=1)
    return res


def markdown(results, args):
    lines = [SECTION, "",
             f"Generated by `python3 bench/sensitivity_ranking.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` "
             f"({time.strftime('%Y-%m-%d')}). Per weight below 8 bits at `--preset {args.preset} --method mse`: its "
             "output SQNR alone, plain and inlier-weighted (what `--budget weight-bits` measures, 4 calibration images), "
             "against its real cost: FP32 mAP minus the mAP of the FP32 model with only that weight at its low-bit "
             f"grid (`inlierq eval`, {'all 500' if not args.limit else f'the first {args.limit}'} coco_val500 images). "
             "ρ: Spearman's rank correlation; harm = −SQNR, per parameter = noise power / parameters against cost / "
             "parameters (the greedy order's key). Budget: the FP32 model with the weights each ranking's greedy order "
             f"keeps at low bits under a {args.budget:g}-bit average, everything else FP32 (deterministic, no seeds).", "",
             "| model | weights | FP32 mAP | ρ harm, plain | ρ harm, inlier | ρ per parameter, plain | ρ per parameter, inlier "
             f"| mAP at {args.budget:g} bits, plain order | mAP at {args.budget:g} bits, inlier order |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, r in results.items():
        L = [l for l in r["layers"] if "map" in l and "inlier_sqnr_db" in l]
        cost = np.array([r["fp32_map"] - l["map"] for l in L])
        params = np.array([l["params"] for l in L], dtype=float)
        rho = {}
        for key in ("sqnr_db", "inlier_sqnr_db"):
            s = np.array([l[key] for l in L])
            rho[key] = (spearman(-s, cost), spearman(10 ** (-s / 10) / params, cost / params))
        b = r.get("budget_map", {})
        bm = lambda k: f"{b[k]['mAP']:.4f} ({len(b[k]['low'])} low)" if k in b else ""
        lines.append(f"| {model} | {len(L)} | {r['fp32_map']:.4f} | {rho['sqnr_db'][0]:.3f} | {rho['inlier_sqnr_db'][0]:.3f} "
                     f"| {rho['sqnr_db'][1]:.3f} | {rho['inlier_sqnr_db'][1]:.3f} | {bm('sqnr_db')} | {bm('inlier_sqnr_db')} |")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="fastestdet,nanodet")
    ap.add_argument("--preset", default="w4a8")
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--assets", default=ASSETS)
    ap.add_argument("--workdir", default="/tmp/inlierq_sensitivity_ranking")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results = {}
    for model in args.models.split(","):
        if args.report_only:
            cache = os.path.join(args.workdir, f"{model}.layers.json")
            if os.path.exists(cache):
                results[model] = json.load(open(cache))
        else:
            results[model] = measure(args, model)
    text = markdown(results, args)
    print(text)
    write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
