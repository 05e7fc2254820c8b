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
   average, everything else in FP32, which is the decision the ranking drives; and the same with the order of the
   measured costs themselves (cost per parameter), which bounds what any ranking of single weights can buy.

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


def quantize(args, model, out, extra, preset=None):
    a = os.path.abspath(args.assets)
    cmd = [CLI, "--threads", str(args.threads), "quantize", f"{a}/models/{MODELS[model][0]}", "--profile",
           MODELS[model][1], "--calib", f"{a}/coco128/images/train2017", "--preset", preset or args.preset, "--method", "mse",
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


def greedy_low(choice, harm, budget, high=8):
    """The layers the budget's greedy order leaves at low bits (as quant::assign_weight_bits: over all weight
    parameters, each layer raised if it still fits)."""
    layers = choice["layers"]
    total = choice["params"]
    low_bits = choice["average_bits_before"] * total
    order = sorted(layers, key=lambda l: -harm(l) / (l["params"] * (high - l["bits"])))
    raised, spent = set(), low_bits
    for l in order:
        add = l["params"] * (high - l["bits"])
        if spent + add <= budget * total + 1e-6:
            raised.add(l["node"])
            spent += add
    return [l["node"] for l in layers if l["node"] not in raised]


def with_fake_quant(fp32, encodings, values, path):
    """Writes the FP32 model with the named activations fake-quantized on their encodings' grids (float ops, as
    inlierq's own fake quantization: clamp(round(x / s) + z, qmin, qmax) - z, times s)."""
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    g = m.graph
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    new_nodes = []
    for v in values:
        if v not in produced:
            raise SystemExit(f"activation '{v}' is not a tensor of the FP32 model")
        e = encodings[v]
        if e.get("axis") is not None:
            raise SystemExit(f"activation '{v}': per-channel activation grids are not handled here")
        consts = {"s": e["scale"][0], "z": float(e["zero_point"][0]), "lo": float(e["qmin"]), "hi": float(e["qmax"])}
        for k, c in consts.items():
            g.initializer.append(numpy_helper.from_array(np.array(c, dtype=np.float32), f"{v}__fq_{k}"))
        q = f"{v}__fq"
        for n in g.node:
            for i, x in enumerate(n.input):
                if x == v:
                    n.input[i] = q + "_out"
        new_nodes += [
            onnx.helper.make_node("Div", [v, f"{v}__fq_s"], [q + "_d"]),
            onnx.helper.make_node("Round", [q + "_d"], [q + "_r"]),
            onnx.helper.make_node("Add", [q + "_r", f"{v}__fq_z"], [q + "_a"]),
            onnx.helper.make_node("Clip", [q + "_a", f"{v}__fq_lo", f"{v}__fq_hi"], [q + "_c"]),
            onnx.helper.make_node("Sub", [q + "_c", f"{v}__fq_z"], [q + "_u"]),
            onnx.helper.make_node("Mul", [q + "_u", f"{v}__fq_s"], [q + "_out"])]
    # Topological order: each fake-quant chain right after the node that produces its input.
    order = list(g.node)  # a copy: g.node is cleared below
    by_input = {}
    for k in range(0, len(new_nodes), 6):
        by_input[new_nodes[k].input[0]] = new_nodes[k:k + 6]
    graph_inputs = {i.name for i in g.input}
    out = [n for v, chain in by_input.items() if v in graph_inputs for n in chain]
    for n in order:
        out.append(n)
        for o in n.output:
            out += by_input.get(o, [])
    del g.node[:]
    g.node.extend(out)
    onnx.save(m, path)


def measure_activations(args, model, fp32_map):
    """The same for activation groups at --act-preset's activation bits, weights in floating point (fp32_map: the
    FP32 model's mAP, measured by measure())."""
    wd = os.path.join(args.workdir, model)
    os.makedirs(wd, exist_ok=True)
    cache = os.path.join(args.workdir, f"{model}.groups.json")
    res = json.load(open(cache)) if os.path.exists(cache) else {}
    a = os.path.abspath(args.assets)
    fp32_path = os.path.join(a, "models", MODELS[model][0])
    if "groups" not in res:
        out = os.path.join(wd, "act.onnx")
        quantize(args, model, out, ["--sensitivity"], preset=args.act_preset)
        enc = json.load(open(os.path.join(wd, "act.encodings.json")))
        res["groups"] = enc["meta"]["sensitivity"]
        res["encodings"] = {v: enc["activation_encodings"][v] for s in res["groups"] for v in s["values"]}
        json.dump(res, open(cache, "w"), indent=1)
    res["fp32_map"] = fp32_map
    fp32 = onnx.load(fp32_path)
    t0 = time.time()
    todo = [s for s in res["groups"] if "map" not in s]
    for i, s in enumerate(todo):
        path = os.path.join(wd, "group.onnx")
        with_fake_quant(fp32, res["encodings"], s["values"], path)
        s["map"] = evaluate(args, model, path, os.path.join(wd, "group.eval.log"))["map"]
        json.dump(res, open(cache, "w"), indent=1)
        rate = (time.time() - t0) / (i + 1)
        print(f"[{model} activations] {i + 1}/{len(todo)} group {s['group']}: mAP {s['map']:.4f} "
              f"(cost {res['fp32_map'] - s['map']:+.4f}), ETA {rate * (len(todo) - i - 1):.0f} s", flush=True)
    return res


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
    harms = {"sqnr_db": lambda l: 10 ** (-l["sqnr_db"] / 10), "inlier_sqnr_db": lambda l: 10 ** (-l["inlier_sqnr_db"] / 10),
             "oracle": lambda l: res["fp32_map"] - l["map"]}
    for key, harm in harms.items():
        if key in res["budget_map"]:
            continue
        keep = greedy_low(dict(res["choice"], layers=res["layers"]), harm, args.budget)
        path = os.path.join(wd, f"budget_{key}.onnx")
        with_weights(fp32, {n: low[n] for n in keep}, path)
        res["budget_map"][key] = {"low": keep, "mAP": evaluate(args, model, path, path + ".eval.log")["map"]}
        json.dump(res, open(cache, "w"), indent=1)
    return res


def activation_markdown(results, args):
    lines = ["", f"Activation groups at `--preset {args.act_preset} --method mse --sensitivity` (weights in floating "
             "point; what `--sensitivity` and the fallback measure, on the first 8 calibration images), against each "
             "group's real cost: FP32 mAP minus that of the FP32 model with only that group's activations "
             "fake-quantized on their grid (float ops inserted after each producer). Top 3: the groups each "
             "ranking would leave in floating point (`auto` may leave 3), with the sum of their measured costs; "
             "the measured-cost column is the best any ranking can pick.", "",
             "| model | groups | ρ plain | ρ inlier | top 3 by plain: cost | top 3 by inlier: cost | top 3 by measured cost |",
             "|---|---|---|---|---|---|---|"]
    for model, r in results.items():
        G = [s for s in r["groups"] if "map" in s and "inlier_sqnr_db" in s]
        cost = np.array([r["fp32_map"] - s["map"] for s in G])
        top = lambda key: sorted(range(len(G)), key=lambda i: key(i))[:3]
        row = []
        for key in (lambda i: G[i]["sqnr_db"], lambda i: G[i]["inlier_sqnr_db"], lambda i: -cost[i]):
            t = top(key)
            row.append(f"{'/'.join(str(G[i]['group']) for i in t)}: {sum(cost[i] for i in t):.4f}")
        rp = spearman(-np.array([s["sqnr_db"] for s in G]), cost)
        ri = spearman(-np.array([s["inlier_sqnr_db"] for s in G]), cost)
        lines.append(f"| {model} | {len(G)} | {rp:.3f} | {ri:.3f} | {row[0]} | {row[1]} | {row[2]} |")
    lines.append("")
    return "\n".join(lines)


def markdown(results, args):
    lines = [SECTION, "",
             f"Generated by `python3 bench/sensitivity_ranking.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` "
             f"({time.strftime('%Y-%m-%d')}). Per weight below 8 bits at `--preset {args.preset} --method mse`: its "
             "output SQNR alone, plain and inlier-weighted (what `--budget weight-bits` measures, 4 calibration images), "
             "against its real cost: FP32 mAP minus the mAP of the FP32 model with only that weight at its low-bit "
             f"grid (`inlierq eval`, {'all 500' if not args.limit else f'the first {args.limit}'} coco_val500 images). "
             "ρ: Spearman's rank correlation; harm = −SQNR, per parameter = noise power / parameters against cost / "
             "parameters (the greedy order's key). Budget: the FP32 model with the weights each ranking's greedy order "
             f"keeps at low bits under a {args.budget:g}-bit average, everything else FP32 (deterministic, no seeds); the "
             "measured-cost order ranks by the ground truth itself (cost per parameter), an upper bound no "
             "label-free ranking reaches, since single-weight costs do not add up exactly.", "",
             "| model | weights | FP32 mAP | ρ harm, plain | ρ harm, inlier | ρ per parameter, plain | ρ per parameter, inlier "
             f"| mAP at {args.budget:g} bits, plain order | mAP at {args.budget:g} bits, inlier order "
             f"| mAP at {args.budget:g} bits, measured-cost order |",
             "|---|---|---|---|---|---|---|---|---|---|"]
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
                     f"| {rho['sqnr_db'][1]:.3f} | {rho['inlier_sqnr_db'][1]:.3f} | {bm('sqnr_db')} | {bm('inlier_sqnr_db')} | {bm('oracle')} |")
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
    ap.add_argument("--act-preset", default="w4a4", help="activation groups are measured at this preset's activation bits")
    ap.add_argument("--skip-activations", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    results, groups = {}, {}
    for model in args.models.split(","):
        if args.report_only:
            for name, into in (("layers", results), ("groups", groups)):
                cache = os.path.join(args.workdir, f"{model}.{name}.json")
                if os.path.exists(cache):
                    into[model] = json.load(open(cache))
        else:
            results[model] = measure(args, model)
            if not args.skip_activations:
                groups[model] = measure_activations(args, model, results[model]["fp32_map"])
    text = markdown(results, args) + (activation_markdown(groups, args) if groups else "")
    print(text)
    write_section(args.out, SECTION, text)


if __name__ == "__main__":
    main()
