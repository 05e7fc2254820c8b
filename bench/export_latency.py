"""What the exported W8A8 models cost to run: ONNX Runtime latency, file size, the fraction of conv MACs ONNX
Runtime runs in integer kernels, and mAP, for FP32, inlierq's export and ONNX Runtime's own quantize_static
export of every shared model, measured side by side in one run.

Usage:
  python3 bench/export_latency.py [--models yolox,nanodet,fastestdet] [--configs fp32,inlierq,inlierq_block,ort]
                                  [--threads 1,2] [--runs 30] [--rounds 3] [--limit 0] [--no-map]
                                  [--workdir /tmp/inlierq_export_latency] [--out docs/RESULTS.md] [--no-write]

Configurations (each a file of the same model):
  fp32           the shared model as it is;
  inlierq        `inlierq quantize --preset w8a8` with every other option at its default;
  inlierq_block  the same with `--layout block` (the Q/DQ layout before the ORT layout existed);
  ort            bench/ort_peer.py: onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights,
                 uint8 activations, MinMax) on the same 64 calibration images;
  nncf           bench/nncf_peer.py: NNCF's nncf.quantize at its defaults on the same 64 images, run by the
                 python of its own environment (--nncf-python; bash bench/setup_peers.sh makes it).
Extra inlierq variants: NAME=ARGS, e.g. --configs "fp32,inlierq,mse=--method mse" (ARGS split on spaces; a
--preset in ARGS replaces the default w8a8).

Latency: ONNX Runtime CPU sessions at the default optimisation level, intra_op_num_threads = T,
inter_op_num_threads = 1, one random input, 3 warm-up runs, then `runs` timed runs; the rounds alternate over
the configurations (fp32, inlierq, ..., fp32, inlierq, ...) so that load on the machine hits every file alike,
and the table gives the median over all timed runs of all rounds and the ratio against FP32 measured in the same run.
int8 MACs: the session's optimised graph (ORT_ENABLE_EXTENDED, saved with optimized_model_filepath) is read back;
the MACs of the Conv nodes that became QLinearConv (node names are kept), over the MACs of every Conv of the
FP32 model (output elements x input channels per group x kernel size, shapes by ONNX shape inference).
mAP: bench/reference_pipeline.py's independent ORT + pycocotools pipeline on coco_val500 (ORT at 2 threads,
default optimisations: the integer kernels the latency is measured with).
"""
import argparse
import collections
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference_pipeline as ref  # noqa: E402
from eval_accuracy import versions, write_section  # noqa: E402

CLI = os.environ.get("INLIERQ_CLI", os.path.join(ROOT, "build", "inlierq"))
PROFILES = {m: m for m in ref.MODELS}  # the built-in profiles are named like the reference models
SECTION = "## Exported W8A8 models in ONNX Runtime: latency, size, integer MACs"
BUILTIN = {"inlierq": [], "inlierq_block": ["--layout", "block"]}


def model_file(args, model):
    return os.path.join(args.assets, "models", ref.MODELS[model][0])


def calib_dir(args):
    return os.path.join(args.assets, "coco128", "images", "train2017")


def make_file(args, model, config, extra):
    """Path of the ONNX file of this configuration (quantizing it if needed) and the quantizer's seconds."""
    if config == "fp32":
        return model_file(args, model), None
    out = os.path.join(args.workdir, f"{model}_{config}.onnx")
    t0 = time.perf_counter()
    if config == "ort":
        cmd = [sys.executable, os.path.join(HERE, "ort_peer.py"), "--model", model, "--method", "minmax", "-o", out,
               "--assets", args.assets, "--threads", "2"]
    elif config == "nncf":
        if not os.path.exists(args.nncf_python):
            raise RuntimeError(f"{args.nncf_python}: no NNCF environment (bash bench/setup_peers.sh makes it)")
        cmd = [args.nncf_python, os.path.join(HERE, "nncf_peer.py"), "--model", model, "-o", out, "--assets", args.assets]
    else:
        cmd = [CLI, "--threads", "2", "quantize", model_file(args, model), "--profile", PROFILES[model],
               "--calib", calib_dir(args), "--num-calib", "64", *([] if "--preset" in extra else ["--preset", "w8a8"]), "-o", out, "--force",
               *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out, time.perf_counter() - t0


def session(path, threads, opt_level=None, optimized_path=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if opt_level is not None:
        so.graph_optimization_level = opt_level
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def conv_macs(path):
    """MACs of every Conv of the model, by node name."""
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(path))
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[v.name] = dims
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    macs = {}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = inits.get(n.input[1])
        out = shapes.get(n.output[0])
        if w is None or out is None:
            raise ValueError(f"{path}: no static shape for Conv '{n.name}'")
        macs[n.name] = int(np.prod(out)) * int(np.prod(w[1:]))
    return macs


def integer_fraction(fp32_macs, path):
    """(fraction of the FP32 model's conv MACs in QLinearConv, op histogram of ORT's optimised graph)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt = os.path.join(tmp, "optimized.onnx")
        session(path, 1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, opt)
        g = onnx.load(opt).graph
    ops = collections.Counter(n.op_type for n in g.node)
    int8 = sum(fp32_macs.get(n.name, 0) for n in g.node if n.op_type == "QLinearConv")
    return int8 / sum(fp32_macs.values()), dict(ops)


def time_runs(sess, runs, warmup=3):
    inp = sess.get_inputs()[0]
    x = (np.random.RandomState(0).rand(*[d if isinstance(d, int) else 1 for d in inp.shape]) * 255).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {inp.name: x})
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


PROFILE_SECTION = "## Where the time goes: ONNX Runtime per-op profile of the W8A8 exports"


def op_profile(path, runs=30, threads=1):
    """ORT's own profiler: kernel time per op type, ms per run, and node counts."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = (np.random.RandomState(0).rand(*[d if isinstance(d, int) else 1 for d in inp.shape]) * 255).astype(np.float32)
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        events = json.load(open(sess.end_profiling()))
    time_us, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    return {op: (us / runs / 1000, nodes[op] // runs) for op, us in time_us.items()}


def profile_markdown(models, configs, args, meta):
    lines = [PROFILE_SECTION, "",
             f"Measured {meta['date']} with `python3 bench/export_latency.py{meta['argv']}` on {meta['machine']} "
             f"({meta['cpus']} CPUs, {cpu_flags()}), inlierq {meta['git']}, {meta['versions']}: ORT's profiler "
             "(`enable_profiling`), 30 runs at 1 thread after session creation, kernel time per op type in ms per run "
             "(node count in brackets), the eight largest per file; files from the run above (--workdir).", ""]
    for model in models:
        lines += [f"**{model}**", "", "| file | total | largest ops |", "|---|---|---|"]
        for name, _ in configs:
            path = model_file(args, model) if name == "fp32" else os.path.join(args.workdir, f"{model}_{name}.onnx")
            if not os.path.exists(path):
                continue
            prof = op_profile(path)
            total = sum(ms for ms, _ in prof.values())
            top = sorted(prof.items(), key=lambda kv: -kv[1][0])[:8]
            lines.append(f"| {name} | {total:.2f} ms | " + ", ".join(f"{op} {ms:.2f} ({n})" for op, (ms, n) in top) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown(rows, args, meta):
    lines = [SECTION, "",
             f"Measured {meta['date']} with `python3 bench/export_latency.py{meta['argv']}` on {meta['machine']} "
             f"({meta['cpus']} CPUs; load average {meta['load_before']} before, {meta['load_after']} after), "
             f"inlierq {meta['git']}, {meta['versions']}." + (" " + meta["runs_note"] if meta.get("runs_note") else ""),
             "",
             "Each model as FP32, as inlierq's default W8A8 export (`inlierq quantize --preset w8a8`, nothing else: "
             "`--method auto`, docs/QUANTIZATION.md §4a), "
             + ("as the same with `--layout block` (block-output Q/DQ only: the export before the ORT layout), "
                if "inlierq_block" in args.configs.split(",") else "") +
             "as ONNX Runtime's `quantize_static` (`bench/ort_peer.py --method minmax`)"
             + (" and as NNCF's `nncf.quantize` at its defaults (`bench/nncf_peer.py`)" if "nncf" in args.configs.split(",") else "")
             + ", all calibrated on the first 64 "
             "coco128 images. Latency: ONNX Runtime CPU, median of "
             f"{args.rounds} alternating rounds × {args.runs} runs per file and thread count; ratio against the FP32 "
             "file in the same run. int8 MACs: share of the FP32 model's conv MACs that ONNX Runtime's optimised "
             "graph runs as QLinearConv. mAP: the independent ORT + pycocotools pipeline "
             f"(`bench/reference_pipeline.py --onnx`) on {meta['images']} coco_val500 images, ORT executing the file "
             "with its integer kernels. ORT's export stores int8 weights; on a CPU without VNNI its U8S8 kernels "
             "saturate and lose accuracy, which inlierq avoids by storing int8 weights only where it measured them "
             "exact and uint8 (U8U8 kernels) elsewhere (docs/QUANTIZATION.md §2a); "
             f"this CPU: {cpu_flags()}.", ""]
    note = os.path.join(HERE, "export_latency_note.md")
    if os.path.exists(note):
        lines += [open(note).read().strip(), ""]
    extra = [c.partition("=") for c in args.configs.split(",") if "=" in c]
    if extra:
        lines += ["Further files: " + "; ".join(f"**{n}** = the default command plus `{a}`" for n, _, a in extra) + ".", ""]
    ts = [int(t) for t in args.threads.split(",")]
    head = "| model | file | size (MB) | int8 conv MACs | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} (ms, × FP32)" for t in ts)
    head += " | mAP | ΔmAP |"
    lines += [head, "|" + "---|" * (6 + len(ts))]
    fp32_map = {r["model"]: r.get("map") for r in rows if r["config"] == "fp32"}
    for r in rows:
        fp = next(x for x in rows if x["model"] == r["model"] and x["config"] == "fp32")
        cells = [r["model"], r["config"], f"{r['size_mb']:.2f}", f"{100 * r['int8_fraction']:.0f} %"]
        for t in ts:
            ms, base = r["latency_ms"][str(t)], fp["latency_ms"][str(t)]
            cells.append(f"{ms:.1f} ({ms / base:.2f}×)")
        if r.get("map") is not None:
            cells.append(f"{r['map']:.4f}")
            d = r["map"] - fp32_map[r["model"]] if fp32_map.get(r["model"]) is not None else None
            cells.append("" if r["config"] == "fp32" or d is None else f"{d:+.4f}")
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets of the default W8A8 export (issue 17; 1 thread): latency ≤ 0.8× FP32 (FastestDet: ≤ ORT's export), "
              "≤ 1.1× ORT `quantize_static`'s export, mAP within 0.003 of FP32:", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["config"]: r for r in rows if r["model"] == model}
        if not {"fp32", "inlierq", "ort"} <= set(by):
            continue
        ours, fp, peer = by["inlierq"], by["fp32"], by["ort"]
        t = ts[0]
        vs_fp = ours["latency_ms"][str(t)] / fp["latency_ms"][str(t)]
        vs_peer = ours["latency_ms"][str(t)] / peer["latency_ms"][str(t)]
        speed_ok = vs_peer <= 1.0 if model == "fastestdet" else vs_fp <= 0.8
        acc = "" if ours.get("map") is None else (
            f"ΔmAP {ours['map'] - fp['map']:+.4f} ({'met' if abs(ours['map'] - fp['map']) <= 0.003 else 'missed'})")
        lines.append(f"- {model}: {vs_fp:.2f}× FP32 ({'met' if speed_ok else 'missed'}), {vs_peer:.2f}× ORT's export "
                     f"({'met' if vs_peer <= 1.1 else 'missed'}), {acc}")
    lines += ["", "ORT's optimised graph, op counts (the nodes left in floating point are the deliberate ones listed in "
              "each export's `encodings.json` → `meta.plan.float_nodes`):", ""]
    for r in rows:
        if r["config"] == "fp32":
            continue
        top = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1])
                        if k in ("QLinearConv", "Conv", "FusedConv", "QLinearSigmoid", "QLinearMul", "QLinearAdd",
                                 "QLinearConcat", "QuantizeLinear", "DequantizeLinear", "QuickGelu", "Mul", "Sigmoid"))
        lines.append(f"- {r['model']} {r['config']}: {top}")
    return "\n".join(lines) + "\n"


def cpu_flags():
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "flags unknown"
    vnni = [f for f in flags if "vnni" in f]
    return "VNNI (" + ", ".join(vnni) + ")" if vnni else ("AVX2, no VNNI" if "avx2" in flags else "no AVX2")


def git_state():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="yolox,nanodet,fastestdet")
    ap.add_argument("--configs", default="fp32,inlierq,inlierq_block,ort")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="mAP on the first N val images (0 = all 500)")
    ap.add_argument("--no-map", action="store_true")
    ap.add_argument("--nncf-python", default=os.path.join(HERE, ".venv-nncf", "bin", "python"),
                    help="the python of the NNCF environment (config nncf)")
    ap.add_argument("--assets", default=ref.ASSETS)
    ap.add_argument("--workdir", default="/tmp/inlierq_export_latency")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--op-profile", action="store_true",
                    help="only profile the files of --workdir per op (ORT's profiler) and write that section")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the section from --workdir/rows.jsonl (the last row per model and file), measuring nothing")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    configs = []
    for c in args.configs.split(","):
        name, _, extra = c.partition("=")
        if name not in ("fp32", "ort", "nncf") and name not in BUILTIN and not extra:
            ap.error(f"unknown configuration '{c}'")
        configs.append((name, shlex.split(extra) if extra else BUILTIN.get(name, [])))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.system()}",
            "cpus": os.cpu_count(), "load_before": f"{os.getloadavg()[0]:.1f}", "versions": versions(),
            "git": git_state(), "argv": "".join(" " + shlex.quote(a) for a in sys.argv[1:])}
    rows = []
    if args.op_profile:
        text = profile_markdown(args.models.split(","), configs, args, meta)
        print(text)
        if not args.no_write:
            write_section(args.out, PROFILE_SECTION, text)
        return 0
    if args.report_only:
        last = {}
        for line in open(os.path.join(args.workdir, "rows.jsonl")):
            r = json.loads(line)
            last[(r["model"], r["config"])] = r
        rows = [last[(m, c)] for m in args.models.split(",") for c, _ in configs if (m, c) in last]
        if rows and "meta" in rows[0]:
            meta = dict(rows[0]["meta"])
            meta.setdefault("load_after", "(not recorded)")
            runs = {}
            for r in rows:
                m = r.get("meta", {})
                runs.setdefault((m.get("git"), m.get("argv")), []).append(f"{r['model']} {r['config']}")
            if len(runs) > 1:  # rows measured by several runs: say which run measured which rows
                meta["runs_note"] = "Rows of several runs (`--report-only`), by commit and arguments: " + "; ".join(
                    f"{g}, `{a.strip()}`: {', '.join(v)}" for (g, a), v in runs.items()) + "."
        else:
            meta["argv"] = meta["argv"].replace(" --report-only", "")
            meta["git"] += " (rows measured earlier; their commit was not recorded)"
            meta["load_after"] = "(not recorded)"
        meta["images"] = rows[0].get("images", "no") if rows else 0
        text = markdown(rows, args, meta)
        print(text)
        if not args.no_write:
            write_section(args.out, SECTION, text)
        return 0
    gt = None if args.no_map else ref.load_gt(os.path.join(args.assets, "coco_val500", "instances_val500.json"))
    for model in args.models.split(","):
        fp32_macs = conv_macs(model_file(args, model))
        files = []
        for name, extra in configs:
            path, secs = make_file(args, model, name, extra)
            frac, ops = integer_fraction(fp32_macs, path)
            files.append({"model": model, "config": name, "file": path, "quantize_s": secs,
                          "size_mb": os.path.getsize(path) / 1e6, "int8_fraction": frac, "ops": ops, "latency_ms": {}})
            print(f"{model} {name}: {files[-1]['size_mb']:.2f} MB, int8 conv MACs {100 * frac:.0f} %", file=sys.stderr, flush=True)
        for t in [int(x) for x in args.threads.split(",")]:
            samples = {f["config"]: [] for f in files}
            sessions = {f["config"]: session(f["file"], t) for f in files}
            for _ in range(args.rounds):
                for f in files:
                    samples[f["config"]] += time_runs(sessions[f["config"]], args.runs)
            for f in files:
                f["latency_ms"][str(t)] = statistics.median(samples[f["config"]])
                print(f"{model} {f['config']} {t} thread(s): {f['latency_ms'][str(t)]:.2f} ms", file=sys.stderr, flush=True)
        if not args.no_map:
            for f in files:
                r = ref.run_model(model, limit=args.limit, threads=2, assets=args.assets, gt=gt,
                                  onnx_path=None if f["config"] == "fp32" else f["file"])
                f["map"], f["images"] = r["map"], r["images"]
                print(f"{model} {f['config']}: mAP {f['map']:.4f}", file=sys.stderr, flush=True)
        for f in files:
            f["meta"] = meta  # the run's date, commit, versions: --report-only rebuilds the header from them
        rows += files
        with open(os.path.join(args.workdir, "rows.jsonl"), "a") as fh:
            for f in files:
                fh.write(json.dumps(f) + "\n")
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    meta["images"] = rows[0].get("images", "no") if rows else 0
    text = markdown(rows, args, meta)
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION, text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
