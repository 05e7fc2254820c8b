"""Quantization results on coco_val500: inlierq W8A8 / W4A8 / W4A4 vs FP32 and vs ONNX Runtime's quantizer.

inlierq is run with four calibration methods at three presets; the peer is ONNX Runtime's static quantizer
(bench/ort_peer.py), W8A8 only.

Usage: python3 bench/quant_results.py [--models yolox,nanodet,fastestdet] [--configs w8a8,w4a8,w4a4]
           [--methods minmax,percentile,entropy,mse] [--ort-methods minmax,entropy,percentile]
           [--limit 0] [--threads 2] [--repeats 1] [--num-calib 64] [--also-ort-eval]
           [--workdir /tmp/inlierq_quant_results] [--out docs/RESULTS.md] [--no-write]
           [--no-inlierq] [--no-ort] [--resume] [--allow-failures] [--section-suffix ', YOLOv5n']

Per model, every row is evaluated by the same evaluator, `inlierq eval` (COCO mAP@[.5:.95] and AP50 on
the first --limit images of coco_val500, all 500 by default):
  - FP32: the shared model itself;
  - inlierq: `inlierq quantize MODEL --profile P --calib coco128/images/train2017 --num-calib 64
    --preset w8a8|w4a8|w4a4 --method minmax|percentile|entropy|mse -o OUT --force --json` (inlierq picks
    the first 64 images by file name itself);
  - ORT: `python3 bench/ort_peer.py --model M --method minmax|entropy|percentile -o OUT` (QDQ, per-channel
    int8 weights, uint8 activations, the same 64 images preprocessed as the reference pipeline does).
With --also-ort-eval each quantized model is also evaluated by bench/reference_pipeline.py --onnx (ONNX
Runtime executing the QDQ graph with its integer kernels), shown in an extra column.

"calib s" is each quantizer's own count of its calibration + export wall time (inlierq's JSON "seconds";
ort_peer's "seconds": image decoding and preprocessing, ORT's pre-processing, calibration and
quantize_static), the median over --repeats runs (each listed); the models of the last repeat are
evaluated. Quantizer runs are strictly serial, one process at a time, each in its own process; the CLI
sets OMP_WAIT_POLICY=PASSIVE itself unless the variable is set (left as it is here).

Targets (computed from the measured rows; MET / MISSED):
  - best inlierq W8A8 mAP loss vs FP32 <= 0.003;
  - best inlierq W8A8 mAP >= best ORT W8A8 mAP;
  - inlierq / ORT calibration time <= 0.5 for each method both have (minmax, entropy, percentile), W8A8.

The section "Quantization: W8A8 / W4A8 / W4A4 on coco_val500" of --out is replaced (or appended).
Produced models and a rows.jsonl log stay in --workdir (never in the repository); --resume reuses the rows
of an earlier run there that were made with the same settings.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference_pipeline as ref  # noqa: E402
from eval_accuracy import versions as eval_versions, write_section  # noqa: E402

CLI = os.environ.get("INLIERQ_CLI", os.path.join(ROOT, "build", "inlierq"))
SECTION = "## Quantization: W8A8 / W4A8 / W4A4 on coco_val500"
CONFIGS = ("w8a8", "w4a8", "w4a4")
METHODS = ("minmax", "percentile", "entropy", "mse", "mse+fb1")
ORT_METHODS = ("minmax", "entropy", "percentile")
LOSS_TARGET = 0.003
TIME_RATIO_TARGET = 0.5
ORT_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class StepError(RuntimeError):
    pass


def run_json(cmd, log_path=None):
    """Runs cmd; returns (last stdout line as JSON, process wall seconds). Raises StepError on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if log_path:
        with open(log_path, "w") as f:
            f.write("$ " + " ".join(cmd) + f"\n# rc {proc.returncode}, {wall:.1f} s\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise StepError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
    try:
        return json.loads(lines[-1]), wall
    except (IndexError, ValueError):
        raise StepError(f"no JSON on the last stdout line of: {' '.join(cmd)}\n{proc.stdout[-1500:]}")


def cli_has_quantize():
    try:
        out = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^\s+quantize\b", out, re.M) is not None


def model_path(args, model):
    return os.path.join(args.assets, "models", ref.MODELS[model][0])


def inlierq_eval(args, model, onnx_path, log_path):
    val = os.path.join(args.assets, "coco_val500")
    cmd = [CLI, "--threads", str(args.threads), "eval", onnx_path, "--profile", model,
           "--images", os.path.join(val, "images"), "--annotations", os.path.join(val, "instances_val500.json"),
           "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    r, _ = run_json(cmd, log_path)
    for k in ("map", "map50", "images"):
        if k not in r:
            raise StepError(f"inlierq eval JSON lacks {k!r}: {r}")
    return r


def ort_eval(args, model, onnx_path, log_path):
    cmd = [sys.executable, os.path.join(HERE, "reference_pipeline.py"), "--model", model, "--onnx", onnx_path,
           "--threads", str(args.threads), "--assets", args.assets, "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    r, _ = run_json(cmd, log_path)
    return r


def inlierq_quantize(args, model, config, method, out, log_path):
    calib = os.path.join(args.assets, "coco128", "images", "train2017")
    cmd = [CLI, "--threads", str(args.threads), "quantize", model_path(args, model), "--profile", model,
           "--calib", calib, "--num-calib", str(args.num_calib), "--preset", config] + method_args(method) + [
           "-o", out, "--force", "--json"]
    r, wall = run_json(cmd, log_path)
    if "seconds" not in r:
        raise StepError(f"inlierq quantize JSON lacks 'seconds': {r}")
    if not os.path.isfile(out):
        raise StepError(f"inlierq quantize wrote no {out}")
    return r, wall


# Method variants: "<calibrator>[+option...]" with options fbN (--fallback N: the N most harmful
# activation quantizer groups left in floating point by the sensitivity analysis), wmm (--weight-method
# minmax instead of the default mse) and sep (--separate-concat-scales).
VARIANT_RE = re.compile(r"(minmax|percentile|entropy|mse)(\+(fb\d+|wmm|sep))*")


def method_args(method):
    base, *opts = method.split("+")
    args = ["--method", base]
    for o in opts:
        if o.startswith("fb"):
            args += ["--fallback", o[2:]]
        elif o == "wmm":
            args += ["--weight-method", "minmax"]
        elif o == "sep":
            args += ["--separate-concat-scales"]
        else:
            raise StepError(f"unknown method option {o!r} in {method!r}")
    return args


def ort_quantize(args, model, method, out, log_path):
    cmd = [sys.executable, os.path.join(HERE, "ort_peer.py"), "--model", model, "--method", method, "-o", out,
           "--num-calib", str(args.num_calib), "--threads", str(args.threads), "--assets", args.assets]
    if args.ort_skip_optimization:
        cmd.append("--skip-optimization")
    return run_json(cmd, log_path)


def settings_key(args):
    # Rows from runs that differ only in --repeats or --also-ort-eval stay comparable (each row lists its
    # own timing samples and has an ORT column or not), so they may be combined with --resume.
    return {"limit": args.limit, "threads": args.threads, "num_calib": args.num_calib,
            "ort_skip_optimization": args.ort_skip_optimization, "assets": os.path.abspath(args.assets)}


def failed(r):
    return bool(r.get("error") or r.get("eval_error") or r.get("ort_eval_error"))


def first_line(text):
    """The most telling line of an error: an 'unsupported op' or 'error:' line if any, else the first."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in lines:
        if "unsupported" in l.lower() or l.lower().startswith("error"):
            return l[:200]
    return lines[0][:200] if lines else "?"


def load_previous(args):
    path = os.path.join(args.workdir, "rows.jsonl")
    rows = {}
    if args.resume and os.path.exists(path):
        for line in open(path):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("settings") == settings_key(args) and not failed(r):
                rows[(r["model"], r["config"], r["tool"], r["method"])] = r
    return rows


def make_row(args, model, config, tool, method, loads):
    """Quantizes (repeats times, serially) and evaluates one row; returns its dict (with 'error' on failure)."""
    tag = f"{model}_{config}_{tool}_{method}"
    out = os.path.join(args.workdir, f"{tag}.onnx")
    logs = os.path.join(args.workdir, "logs")
    row = {"model": model, "config": config, "tool": tool, "method": method, "settings": settings_key(args)}
    try:
        if tool == "fp32":
            out = model_path(args, model)
        else:
            samples, walls, infos = [], [], []
            for i in range(args.repeats):
                log = os.path.join(logs, f"{tag}.quantize{i + 1}.log")
                if tool == "inlierq":
                    info, wall = inlierq_quantize(args, model, config, method, out, log)
                else:
                    info, wall = ort_quantize(args, model, method, out, log)
                samples.append(float(info["seconds"]))
                walls.append(wall)
                infos.append(info)
                loads.append(os.getloadavg()[0])
                print(f"  {tag} #{i + 1}: {samples[-1]:.1f} s (process {wall:.1f} s); load {loads[-1]:.1f}",
                      file=sys.stderr, flush=True)
            row.update(calib_samples=samples, calib_s=statistics.median(samples), process_s=statistics.median(walls),
                       quantizer=infos[-1])
        row["onnx"] = out
        try:
            e = inlierq_eval(args, model, out, os.path.join(logs, f"{tag}.eval.log"))
            row.update(map=e["map"], map50=e["map50"], images=e["images"], eval_s=e.get("seconds"))
        except StepError as err:  # e.g. an op of ORT's output that inlierq cannot run; the row stays
            row["eval_error"] = str(err)
        if args.also_ort_eval:
            try:
                o = ort_eval(args, model, out, os.path.join(logs, f"{tag}.ort_eval.log"))
                row.update(ort_map=o["map"], ort_map50=o["map50"])
            except StepError as err:
                row["ort_eval_error"] = str(err)
        loads.append(os.getloadavg()[0])
    except StepError as err:
        row["error"] = str(err)
    return row


def versions():
    return eval_versions(("onnxruntime", "onnx", "numpy", "PIL", "pycocotools"))


def git_state():
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except OSError:
        return "?"


# ---- the report ------------------------------------------------------------------------------------

def fmt_samples(samples):
    return "/".join(f"{s:.1f}" for s in samples)


def tool_label(r):
    if r["tool"] == "fp32":
        return "—"
    if r["tool"] == "ort":
        return f"ORT {ORT_NAMES.get(r['method'], r['method'])}"
    return f"inlierq {r['method']}"


def targets(rows, model):
    """The per-model target lines, from the measured rows only."""
    ok = [r for r in rows if r["model"] == model and "map" in r]
    fp32 = next((r for r in ok if r["tool"] == "fp32"), None)
    ours = [r for r in ok if r["tool"] == "inlierq" and r["config"] == "w8a8"]
    peer = [r for r in ok if r["tool"] == "ort" and r["config"] == "w8a8"]
    # Calibration times do not depend on the evaluation: any row whose quantizer ran.
    timed = [r for r in rows if r["model"] == model and r["config"] == "w8a8" and "calib_s" in r]
    lines = []
    best = max(ours, key=lambda r: r["map"]) if ours else None
    best_peer = max(peer, key=lambda r: r["map"]) if peer else None
    if best and fp32:
        loss = fp32["map"] - best["map"]
        lines.append(f"W8A8 loss vs FP32 (best inlierq: {best['method']}) {loss:+.4f} "
                     f"(target ≤ {LOSS_TARGET}): **{'MET' if loss <= LOSS_TARGET else 'MISSED'}**")
    else:
        lines.append("W8A8 loss vs FP32: not measured")
    if best and best_peer:
        d = best["map"] - best_peer["map"]
        lines.append(f"best inlierq W8A8 ({best['method']}, {best['map']:.4f}) vs best ORT W8A8 "
                     f"({ORT_NAMES[best_peer['method']]}, {best_peer['map']:.4f}): {d:+.4f} "
                     f"(target ≥ 0): **{'MET' if d >= 0 else 'MISSED'}**")
    else:
        lines.append("inlierq vs ORT at W8A8: not measured"
                     + (" (no ORT model scored by inlierq eval)" if best and not best_peer else ""))
    # Secondary: the same comparison with ONNX Runtime executing both QDQ models (--also-ort-eval).
    o_ort = [r for r in rows if r["model"] == model and r["tool"] == "inlierq" and r["config"] == "w8a8"
             and "ort_map" in r]
    p_ort = [r for r in rows if r["model"] == model and r["tool"] == "ort" and "ort_map" in r]
    if o_ort and p_ort:
        a, b = max(o_ort, key=lambda r: r["ort_map"]), max(p_ort, key=lambda r: r["ort_map"])
        lines.append(f"under ORT execution: best inlierq W8A8 {a['ort_map']:.4f} ({a['method']}) vs best ORT "
                     f"{b['ort_map']:.4f} ({ORT_NAMES[b['method']]})")
    for m in ORT_METHODS:
        o = next((r for r in timed if r["tool"] == "inlierq" and r["method"] == m), None)
        p = next((r for r in timed if r["tool"] == "ort" and r["method"] == m), None)
        if o and p:
            ratio = o["calib_s"] / p["calib_s"]
            lines.append(f"calibration time {m}: inlierq {o['calib_s']:.1f} s / ORT {p['calib_s']:.1f} s = "
                         f"{ratio:.2f} (target ≤ {TIME_RATIO_TARGET}): "
                         f"**{'MET' if ratio <= TIME_RATIO_TARGET else 'MISSED'}**")
    return lines


def markdown(rows, args, meta):
    cmd = "python3 bench/quant_results.py"
    defaults = {"--models": "yolox,nanodet,fastestdet", "--configs": ",".join(CONFIGS), "--methods": ",".join(METHODS),
                "--ort-methods": ",".join(ORT_METHODS), "--limit": 0, "--threads": 2, "--repeats": 1,
                "--num-calib": 64}
    for k, v in (("--models", args.models), ("--configs", args.configs), ("--methods", args.methods),
                 ("--ort-methods", args.ort_methods), ("--limit", args.limit), ("--threads", args.threads),
                 ("--repeats", args.repeats), ("--num-calib", args.num_calib)):
        if v != defaults[k]:
            cmd += f" {k} {v}"
    for flag, on in (("--also-ort-eval", args.also_ort_eval), ("--no-inlierq", args.no_inlierq),
                     ("--no-ort", args.no_ort), ("--ort-skip-optimization", args.ort_skip_optimization)):
        if on:
            cmd += f" {flag}"
    if args.section_suffix:
        cmd += f" --section-suffix '{args.section_suffix}'"
    v = meta["versions"]
    images = next((r["images"] for r in rows if r.get("images")), "?")
    lines = [
        SECTION + args.section_suffix,
        "",
        f"Measured {meta['date']} with `{cmd}` on {meta['machine']} ({meta['cpus']} CPUs; load average "
        f"{meta['load_before']} before, {meta['load_after']} after, at most {meta['load_max']} between runs), "
        f"inlierq {meta['git']}, ONNX Runtime {v['onnxruntime']}, onnx {v['onnx']}, numpy {v['numpy']}, "
        f"Pillow {v['PIL']}, pycocotools {v['pycocotools']}. {images} images of coco_val500, "
        f"{args.threads} threads everywhere.",
        "",
        f"Every model, FP32 or quantized, is scored by the same evaluator, `inlierq eval` (COCO mAP@[.5:.95] and",
        f"AP50, pycocotools-exact). Calibration: the first {args.num_calib} images (by file name) of",
        "coco128/images/train2017, batch 1. inlierq: `inlierq quantize --preset P --method M`. ORT:",
        "`bench/ort_peer.py`, ONNX Runtime's `quantize_static`",
        "(QDQ, per-channel symmetric int8 weights, asymmetric uint8 activations, reduce_range off, ORT's default",
        "calibrator settings) after `quant_pre_process`"
        + (" with `skip_optimization=True`" if args.ort_skip_optimization else "")
        + "; the model is first given opset 13 and its initializers",
        "are removed from the graph inputs (NanoDet), without which ORT's output does not load.",
        "\"calib s\" is each quantizer's own wall-time count of calibration + export (ORT: image decoding and",
        "preprocessing included, as for inlierq), median of the repeats (each listed); ΔmAP is against the FP32",
        "row of the same model.",
        "",
    ]
    head = "| model | config | quantizer | mAP | AP50 | ΔmAP vs FP32 | calib s |"
    sep = "|---|---|---|---|---|---|---|"
    if args.also_ort_eval:
        head += " mAP (ORT execution) |"
        sep += "---|"
    lines += [head, sep]
    failures = []
    for model in args.models.split(","):
        mrows = [r for r in rows if r["model"] == model]
        fp32 = next((r for r in mrows if r["tool"] == "fp32" and "map" in r), None)
        for r in mrows:
            cfg = "FP32" if r["tool"] == "fp32" else r["config"].upper()
            if failed(r):
                failures.append(r)
            calib = f"{r['calib_s']:.1f} ({fmt_samples(r['calib_samples'])})" if "calib_s" in r else ""
            if r.get("error"):
                cells = ["quantize failed", "", "", calib]
            elif "map" not in r:
                cells = ["eval failed", "", "", calib]
            else:
                delta = f"{r['map'] - fp32['map']:+.4f}" if fp32 and r["tool"] != "fp32" else ""
                cells = [f"{r['map']:.4f}", f"{r['map50']:.4f}", delta, calib]
            line = f"| {model} | {cfg} | {tool_label(r)} | " + " | ".join(cells) + " |"
            if args.also_ort_eval:
                line += (f" {r['ort_map']:.4f} |" if "ort_map" in r else
                         (" failed |" if r.get("ort_eval_error") else "  |"))
            lines.append(line)
    lines += ["", "Targets (from the rows above):", ""]
    for model in args.models.split(","):
        lines.append(f"- {model}:")
        lines += [f"  - {t}" for t in targets(rows, model)]
    peer = [r for r in rows if r["tool"] == "ort" and "quantizer" in r]
    if peer:
        q = peer[0]["quantizer"]
        lines += ["", f"ORT peer details: pre_process ok for "
                  + ", ".join(f"{r['model']}/{r['method']}: {r['quantizer'].get('pre_process_ok')}" for r in peer)
                  + f"; calibration session {q.get('threads')} intra-op threads."]
        rss = ", ".join(f"{r['model']}/{r['method']} {r['quantizer'].get('peak_rss_mb', 0) / 1024:.1f}" for r in peer)
        lines.append(f"Peak memory of the ORT quantizer process (GiB): {rss}.")
    if failures:
        def why(r):
            what = ("quantize", r.get("error")) if r.get("error") else \
                ("inlierq eval", r.get("eval_error")) if r.get("eval_error") else ("ORT eval", r.get("ort_eval_error"))
            return f"{r['model']} {r['config'].upper()} {tool_label(r)}: {what[0]}: {first_line(what[1])}"
        lines += ["", "Failed steps (logs in --workdir/logs): " + "; ".join(why(r) for r in failures) + "."]
    if meta.get("note"):
        lines += ["", meta["note"].strip()]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="yolox,nanodet,fastestdet")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--methods", default=",".join(METHODS), help="inlierq calibration methods")
    ap.add_argument("--ort-methods", default=",".join(ORT_METHODS), help="ORT peer methods (W8A8)")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on the first N images (0 = all 500)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="quantizer runs per row (calib s = median)")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--assets", default=ref.ASSETS)
    ap.add_argument("--workdir", default="/tmp/inlierq_quant_results", help="quantized models and logs")
    ap.add_argument("--also-ort-eval", action="store_true",
                    help="also evaluate every model with bench/reference_pipeline.py --onnx (ORT execution)")
    ap.add_argument("--no-inlierq", action="store_true", help="skip the inlierq quantize rows")
    ap.add_argument("--no-ort", action="store_true", help="skip the ORT peer rows")
    ap.add_argument("--ort-skip-optimization", action="store_true",
                    help="ORT peer: quant_pre_process(skip_optimization=True), not ORT's default; its only "
                         "effect here is no SpaceToDepth fusion in YOLOX (an op inlierq eval may lack)")
    ap.add_argument("--resume", action="store_true", help="reuse --workdir/rows.jsonl rows made with the same settings")
    ap.add_argument("--allow-failures", action="store_true", help="write --out even if some rows failed")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: build the section from the rows already in --workdir/rows.jsonl")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write --out")
    ap.add_argument("--note", default="", help="a paragraph to put under the table")
    ap.add_argument("--section-suffix", default="",
                    help="appended to the section title, so that a run over other models gets its own section")
    args = ap.parse_args()

    models = args.models.split(",")
    for m in models:
        if m not in ref.MODELS:
            ap.error(f"unknown model {m!r} (choose from {', '.join(ref.MODELS)})")
    configs = [c.lower() for c in args.configs.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    ort_methods = [m for m in args.ort_methods.split(",") if m]
    for vals, allowed, name in ((configs, CONFIGS, "--configs"), (methods, METHODS, "--methods"),
                                (ort_methods, ORT_METHODS, "--ort-methods")):
        # "<method>+fbN": an inlierq method with --fallback N
        bad = [v for v in vals if v not in allowed
               and not (allowed is METHODS and VARIANT_RE.fullmatch(v))]
        if bad:
            ap.error(f"{name}: unknown {bad} (choose from {', '.join(allowed)})")
    if args.workdir and os.path.abspath(args.workdir).startswith(os.path.abspath(ROOT) + os.sep):
        ap.error("--workdir must be outside the repository")
    if not os.path.isfile(CLI):
        sys.exit(f"{CLI} not found: build inlierq first (scripts/setup.sh) or set INLIERQ_CLI")
    want_inlierq = not args.no_inlierq and configs and methods
    if want_inlierq and not cli_has_quantize():
        sys.exit(f"{CLI} has no 'quantize' command yet (not listed by '{CLI} --help'). Build the version that "
                 f"has it, or run with --no-inlierq for the FP32 and ORT rows only.")
    os.makedirs(os.path.join(args.workdir, "logs"), exist_ok=True)

    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.system()}",
            "cpus": os.cpu_count(), "load_before": f"{os.getloadavg()[0]:.1f}", "versions": versions(),
            "git": git_state(), "note": args.note}
    previous = load_previous(args)
    plan = []
    for model in models:
        plan.append((model, "fp32", "fp32", "fp32"))
        if want_inlierq:
            plan += [(model, c, "inlierq", m) for c in configs for m in methods]
        if not args.no_ort:
            plan += [(model, "w8a8", "ort", m) for m in ort_methods]
    rows, loads = [], []
    log_path = os.path.join(args.workdir, "rows.jsonl")
    if args.report_only:
        # Every row of --workdir/rows.jsonl made with these settings, in plan order, then the other
        # method variants found there; nothing is run.
        args.resume = True
        previous = load_previous(args)
        def order(k):
            model, config, tool, method = k
            return (models.index(model), {"fp32": 0, "inlierq": 1, "ort": 2}[tool],
                    CONFIGS.index(config) if config in CONFIGS else -1,
                    METHODS.index(method) if method in METHODS else len(METHODS), method)
        plan = sorted((k for k in previous if k[0] in models), key=order)
    for i, key in enumerate(plan):
        if key in previous:
            row = previous[key]
            print(f"[{i + 1}/{len(plan)}] {' '.join(key)}: reused from {log_path}", file=sys.stderr, flush=True)
        else:
            print(f"[{i + 1}/{len(plan)}] {' '.join(key)}", file=sys.stderr, flush=True)
            row = make_row(args, *key, loads)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        for k in ("error", "eval_error", "ort_eval_error"):
            if row.get(k):
                print(f"  FAILED ({k}): {row[k][:2000]}", file=sys.stderr, flush=True)
        if "map" in row or "ort_map" in row or "calib_s" in row:
            parts = [f"mAP {row['map']:.4f} AP50 {row['map50']:.4f}" if "map" in row else "",
                     f"calib {row['calib_s']:.1f} s" if "calib_s" in row else "",
                     f"ORT execution mAP {row['ort_map']:.4f}" if "ort_map" in row else ""]
            print("  " + ", ".join(p for p in parts if p), file=sys.stderr, flush=True)
        rows.append(row)
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    meta["load_max"] = f"{max(loads):.1f}" if loads else meta["load_after"]
    text = markdown(rows, args, meta)
    print(text)
    bad = [r for r in rows if failed(r)]
    if not args.no_write:
        if bad and not args.allow_failures:
            print(f"{len(bad)} row(s) failed: {args.out} not written (--allow-failures writes it anyway)",
                  file=sys.stderr)
        else:
            write_section(args.out, SECTION + args.section_suffix, text)
            print(f"wrote {args.out}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
