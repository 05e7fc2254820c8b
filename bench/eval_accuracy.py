"""FP32 COCO accuracy and evaluation time on coco_val500: `inlierq eval` vs the independent reference
pipeline (bench/reference_pipeline.py: PIL + numpy + ONNX Runtime + pycocotools), same thread count.

Usage: python3 bench/eval_accuracy.py [--threads 2] [--repeats 2] [--limit 0] [--models yolox,nanodet,fastestdet,yolov5]
                                      [--out docs/RESULTS.md] [--no-write]

Each model is evaluated `repeats` times by each pipeline, alternating (reference, inlierq, reference, ...),
each run in its own process. Reported per pipeline: mAP@[.5:.95] and AP50 (identical across repeats) and
the median time over the repeats of
  - "eval s": the pipeline's own count — the per-image loop (decode, preprocess, inference, decoding,
    NMS) plus the COCO evaluation, without process start-up and model loading;
  - "process s": the wall time of the whole process.
The ratio is inlierq / reference on "eval s". The section "FP32 accuracy on coco_val500" of --out is
replaced (or appended) with the table and the exact command.
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

CLI = os.environ.get("INLIERQ_CLI", os.path.join(ROOT, "build", "inlierq"))
SECTION = "## FP32 accuracy on coco_val500"


def run_json(cmd, env=None):
    env = env or os.environ.copy()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def ours(model, args):
    val = os.path.join(args.assets, "coco_val500")
    cmd = [CLI, "--threads", str(args.threads), "eval", os.path.join(args.assets, "models", ref.MODELS[model][0]),
           "--profile", model, "--images", os.path.join(val, "images"),
           "--annotations", os.path.join(val, "instances_val500.json"), "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    env = os.environ.copy()
    if args.no_spin:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return run_json(cmd, env)


def reference(model, args):
    cmd = [sys.executable, os.path.join(HERE, "reference_pipeline.py"), "--model", model, "--threads", str(args.threads),
           "--assets", args.assets, "--json"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.no_spin:
        cmd.append("--no-spin")
    return run_json(cmd)


def versions(mods=("onnxruntime", "numpy", "PIL", "pycocotools")):
    out = {}
    for mod in mods:
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = "missing"
    if out.get("pycocotools") == "?":
        try:
            from importlib.metadata import version

            out["pycocotools"] = version("pycocotools")
        except Exception:
            pass
    return out


def fmt_times(samples):
    return "/".join(f"{s:.1f}" for s in samples)


def markdown(rows, args, meta):
    cmd = "python3 bench/eval_accuracy.py" + "".join(
        f" {k} {v}" for k, v in (("--threads", args.threads), ("--repeats", args.repeats)))
    if args.limit:
        cmd += f" --limit {args.limit}"
    if args.models != "yolox,nanodet,fastestdet,yolov5":
        cmd += f" --models {args.models}"
    if args.no_spin:
        cmd += " --no-spin"
    if args.section_suffix:
        cmd += f" --section-suffix '{args.section_suffix}'"
    lines = [
        SECTION + args.section_suffix,
        "",
        f"Measured {meta['date']} with `{cmd}` on {meta['machine']} ({meta['cpus']} CPUs; load average "
        f"{meta['load_before']} before, {meta['load_after']} after, at most {meta['load_max']} between runs). ONNX Runtime {meta['versions']['onnxruntime']}, "
        f"numpy {meta['versions']['numpy']}, Pillow {meta['versions']['PIL']}, pycocotools "
        f"{meta['versions']['pycocotools']}. {meta['images']} images, {args.threads} threads on both sides.",
        "",
        "The reference is `bench/reference_pipeline.py`: an independent implementation of the models' documented",
        "pre- and post-processing (PIL decoding, OpenCV-exact INTER_LINEAR resize in numpy, ONNX Runtime on the CPU,",
        "numpy decoding, class-wise NMS, top 100, score > 0.01) scored with pycocotools' COCOeval. mAP is",
        "AP@[.5:.95], area all, maxDets 100. Times: \"eval s\" is each pipeline's own count (per-image loop plus",
        "COCO evaluation, no start-up or model loading), the median of the repeats (each repeat listed);",
        "\"process s\" is the whole process's wall time (median). Ratio = inlierq / reference eval s.",
        "",
        "| model | mAP inlierq | mAP reference | Δ | AP50 inlierq | AP50 reference | eval s inlierq | eval s reference | ratio | process s inlierq / reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['ours_map']:.4f} | {r['ref_map']:.4f} | {r['ours_map'] - r['ref_map']:+.4f} | "
            f"{r['ours_map50']:.4f} | {r['ref_map50']:.4f} | {r['ours_s']:.1f} ({fmt_times(r['ours_samples'])}) | "
            f"{r['ref_s']:.1f} ({fmt_times(r['ref_samples'])}) | {r['ratio']:.2f} | "
            f"{r['ours_proc']:.1f} / {r['ref_proc']:.1f} |")
    lines += ["", meta.get("note", "").strip(), ""] if meta.get("note") else [""]
    return "\n".join(lines)


def write_section(path, title, text):
    """Replaces the section headed exactly `title` (up to the next '## ' heading), or appends it."""
    old = open(path).read() if os.path.exists(path) else "# Results\n"
    found = re.compile("^" + re.escape(title) + "[ \t]*$", re.M).search(old)
    if not found:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        m = re.compile(r"^## ", re.M).search(old, found.end())
        new = old[:found.start()] + text + ("\n" + old[m.start():] if m else "")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(new.rstrip("\n") + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N images (0 = all 500)")
    ap.add_argument("--models", default="yolox,nanodet,fastestdet,yolov5")
    ap.add_argument("--assets", default=ref.ASSETS)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--no-spin", action="store_true",
                    help="idle worker threads sleep instead of spinning: OMP_WAIT_POLICY=PASSIVE for inlierq, "
                         "session.intra_op.allow_spinning=0 for ONNX Runtime")
    ap.add_argument("--section-suffix", default="", help="appended to the section title (e.g. ', no spinning')")
    ap.add_argument("--note", default="", help="a paragraph to put under the table")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not write --out")
    args = ap.parse_args()
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {platform.system()}",
            "cpus": os.cpu_count(), "load_before": f"{os.getloadavg()[0]:.1f}", "versions": versions(),
            "note": args.note}
    rows, loads = [], []
    for model in args.models.split(","):
        o_runs, r_runs = [], []
        for i in range(args.repeats):
            r_runs.append(reference(model, args))
            o_runs.append(ours(model, args))
            loads.append(os.getloadavg()[0])
            print(f"{model} #{i + 1}: reference {r_runs[-1][0]['seconds']:.1f} s (process {r_runs[-1][1]:.1f}), "
                  f"inlierq {o_runs[-1][0]['seconds']:.1f} s (process {o_runs[-1][1]:.1f}); load {loads[-1]:.1f}",
                  file=sys.stderr, flush=True)
        o, r = o_runs[0][0], r_runs[0][0]
        for runs in (o_runs, r_runs):  # the detections are deterministic: every repeat scores the same
            assert all(abs(x[0]["map"] - runs[0][0]["map"]) < 1e-12 for x in runs), "mAP changed between repeats"
        row = {"model": model, "ours_map": o["map"], "ours_map50": o["map50"], "ref_map": r["map"], "ref_map50": r["map50"],
               "ours_samples": [x[0]["seconds"] for x in o_runs], "ref_samples": [x[0]["seconds"] for x in r_runs],
               "ours_proc": statistics.median(x[1] for x in o_runs), "ref_proc": statistics.median(x[1] for x in r_runs),
               "ref_stages": r_runs[0][0].get("stage_seconds"), "images": o["images"]}
        row["ours_s"], row["ref_s"] = statistics.median(row["ours_samples"]), statistics.median(row["ref_samples"])
        row["ratio"] = row["ours_s"] / row["ref_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        meta["images"] = o["images"]
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    meta["load_max"] = f"{max(loads):.1f}"
    text = markdown(rows, args, meta)
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION + args.section_suffix, text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
