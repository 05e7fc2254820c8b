"""mAP against iterations per unit for block reconstruction: does the budget converge?

Usage: python3 bench/recon_curve.py [--models fastestdet] [--presets w4a4] [--methods qdrop,adaround]
           [--iters 100,500,2000] [--seeds 0] [--recon-batch 8] [--lr-scale 10] [--num-calib 64] [--limit 0]
           [--threads 2] [--max-cache-mb MB] [--extra='FLAGS'] [--workdir /tmp/inlierq_recon_curve] [--out docs/RESULTS.md] [--report-only]
           [--note-file bench/recon_curve_note.md]

Each point is `inlierq --threads T quantize MODEL --profile P --calib coco128/images/train2017 --num-calib N
--preset C --method M --seed S --iters I --recon-batch B --lr-round/--lr-act/--brecq-lr-act (reference ×
--lr-scale) --no-ort-latency -o OUT --force --json`, then `inlierq eval OUT` on coco_val500 (all 500 images
unless --limit). Wall time is the quantize command's. Points already in --workdir/rows.jsonl with the same
settings are not run again, so a curve can grow over several sittings.

The section "Reconstruction budget: mAP against iterations per unit" of --out is replaced (or appended).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from eval_accuracy import write_section  # noqa: E402
from recon_results import CLI, MODELS, REFERENCE_LR, calibrator_table  # noqa: E402

ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))
SECTION = "## Reconstruction budget: mAP against iterations per unit"


def key(r):
    return (r["model"], r["preset"], r["method"], r["iters"], r["seed"], r["batch"], r["lr_scale"], r["num_calib"],
            r["limit"], r["threads"], r.get("max_cache_mb", 0), r.get("extra", ""))


def point(args, model, preset, method, iters, seed):
    onnx, profile = MODELS[model]
    tag = "".join(c if c.isalnum() else "_" for c in args.extra).strip("_")
    out = os.path.join(args.workdir, f"{model}_{preset}_{method}_it{iters}_s{seed}{'_' + tag if tag else ''}.onnx")
    cmd = [CLI, "--threads", str(args.threads), "quantize", os.path.join(ASSETS, "models", onnx), "--profile", profile,
           "--calib", os.path.join(ASSETS, "coco128", "images", "train2017"), "--num-calib", str(args.num_calib),
           "--preset", preset, "--method", method, "--seed", str(seed), "--iters", str(iters), "--recon-batch",
           str(args.recon_batch), "--no-ort-latency", "-o", out, "--force", "--json"]
    extra = shlex.split(args.extra)
    for flag, lr in REFERENCE_LR.items():
        if flag not in extra:  # a learning rate in --extra replaces the scaled reference
            cmd += [flag, f"{lr * args.lr_scale:g}"]
    if args.max_cache_mb:
        cmd += ["--max-cache-mb", str(args.max_cache_mb)]
    cmd += extra
    t0 = time.time()
    # GNU time reports the quantize process's peak resident memory (its last stderr line).
    q = subprocess.run(["/usr/bin/time", "-f", "peak_rss_kb=%M", *cmd], capture_output=True, text=True)
    wall = time.time() - t0
    if q.returncode != 0:
        sys.exit(f"quantize failed ({q.returncode}): {' '.join(cmd)}\n{q.stderr[-2000:]}")
    rss = [l for l in q.stderr.splitlines() if l.startswith("peak_rss_kb=")]
    peak_rss_mb = int(rss[-1].split("=")[1]) / 1024 if rss else None
    ev = [CLI, "eval", out, "--profile", profile, "--images", os.path.join(ASSETS, "coco_val500", "images"),
          "--annotations", os.path.join(ASSETS, "coco_val500", "instances_val500.json"), "--json"]
    if args.limit:
        ev += ["--limit", str(args.limit)]
    e = subprocess.run(ev, capture_output=True, text=True)
    if e.returncode != 0:
        sys.exit(f"eval failed ({e.returncode}): {' '.join(ev)}\n{e.stderr[-2000:]}")
    res = json.loads(e.stdout.strip().splitlines()[-1])
    enc = json.load(open(out.replace(".onnx", ".encodings.json")))
    reports = enc["meta"]["reconstruction"]["reports"]
    return {"model": model, "preset": preset, "method": method, "iters": iters, "seed": seed,
            "batch": args.recon_batch, "lr_scale": args.lr_scale, "num_calib": args.num_calib, "limit": args.limit,
            "threads": args.threads, "max_cache_mb": args.max_cache_mb, "extra": args.extra, "peak_rss_mb": peak_rss_mb,
            "map": res["map"], "map50": res["map50"], "wall_s": wall,
            "kept_start": sum(1 for r in reports if r.get("kept_start")), "unit_passes": len(reports),
            "command": " ".join(cmd)}


def table(rows, best, fp32):
    groups = {}
    for r in rows:
        lr = f", lr × {r['lr_scale']:g}" if r["lr_scale"] != rows[0]["lr_scale"] else ""
        label = r["method"] + (f", --max-cache-mb {r['max_cache_mb']}" if r.get("max_cache_mb") else "") + \
            (f", `{r['extra']}`" if r.get("extra") else "") + lr
        groups.setdefault((r["model"], r["preset"], label), {}).setdefault(r["iters"], []).append(r)
    iters = sorted({r["iters"] for r in rows})
    head = "| model | preset | method | " + " | ".join(f"{i} it" for i in iters) + " |"
    lines = [head, "|---" * (3 + len(iters)) + "|"]
    for (m, p, me), by in sorted(groups.items()):
        cells = []
        for i in iters:
            rs = by.get(i)
            if not rs:
                cells.append("")
                continue
            maps = [r["map"] for r in rs]
            mean = statistics.mean(maps)
            sd = f" ± {statistics.stdev(maps):.4f}" if len(maps) > 1 else f" ({len(maps)} seed)"
            wall = statistics.mean(r["wall_s"] for r in rs)
            kept = sum(r["kept_start"] for r in rs) / len(rs)
            b, f = best.get((m, p)), fp32.get(m)
            rec = f", {100 * (mean - b[0]) / (f - b[0]):.0f} %" if b and f and f > b[0] else ""
            rss = [r["peak_rss_mb"] for r in rs if r.get("peak_rss_mb")]
            mem = f", {max(rss) / 1024:.1f} GiB" if rss else ""
            cells.append(f"{mean:.4f}{sd}{rec}, {wall / 60:.1f} min{mem}{f', {kept:.0f} kept' if kept else ''}")
        lines.append(f"| {m} | {p.upper()} | {me} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="fastestdet")
    ap.add_argument("--presets", default="w4a4")
    ap.add_argument("--methods", default="qdrop,adaround")
    ap.add_argument("--iters", default="100,500,2000")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--recon-batch", type=int, default=8)
    ap.add_argument("--lr-scale", type=float, default=10.0)
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-cache-mb", type=int, default=0, help="passed to quantize (0: its default)")
    ap.add_argument("--extra", default="", help="more quantize flags for every point (part of the row's key and label)")
    ap.add_argument("--workdir", default="/tmp/inlierq_recon_curve")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--note-file", default="", help="markdown appended to the section (provenance, verdicts)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows_path = os.path.join(args.workdir, "rows.jsonl")
    rows = [json.loads(line) for line in open(rows_path)] if os.path.exists(rows_path) else []
    if not args.report_only:
        have = {key(r) for r in rows}
        for model in args.models.split(","):
            for preset in args.presets.split(","):
                for method in args.methods.split(","):
                    for it in (int(x) for x in args.iters.split(",")):
                        for seed in (int(x) for x in args.seeds.split(",")):
                            probe = {"model": model, "preset": preset, "method": method, "iters": it, "seed": seed,
                                     "batch": args.recon_batch, "lr_scale": args.lr_scale, "num_calib": args.num_calib,
                                     "limit": args.limit, "threads": args.threads, "max_cache_mb": args.max_cache_mb,
                                     "extra": args.extra}
                            if key(probe) in have:
                                continue
                            r = point(args, model, preset, method, it, seed)
                            rows.append(r)
                            with open(rows_path, "a") as f:
                                f.write(json.dumps(r) + "\n")
                            print(json.dumps({k: r[k] for k in ("model", "preset", "method", "iters", "seed", "map", "wall_s")}),
                                  flush=True)
    r0 = rows[0]
    best, fp32 = calibrator_table(args.out)
    base = "; ".join(f"{m} {p.upper()}: best calibrator {best[(m, p)][1]} {best[(m, p)][0]:.4f}, FP32 {fp32[m]:.4f}"
                     for (m, p) in sorted({(r["model"], r["preset"]) for r in rows}) if (m, p) in best and m in fp32)
    text = (f"{SECTION}\n\n"
            f"`python3 bench/recon_curve.py --models {','.join(sorted({r['model'] for r in rows}))} --presets "
            f"{','.join(sorted({r['preset'] for r in rows}))} --methods {','.join(sorted({r['method'] for r in rows}))} "
            f"--iters {','.join(str(i) for i in sorted({r['iters'] for r in rows}))} --seeds {','.join(str(i) for i in sorted({r['seed'] for r in rows}))} --recon-batch {r0['batch']} "
            f"--lr-scale {r0['lr_scale']:g} --threads {r0['threads']}` (64 coco128 calibration images, 8 of them held out "
            f"for the per-unit check; all 500 coco_val500 images, `inlierq eval`; learning rates = reference × "
            f"{r0['lr_scale']:g}). Each cell: mAP (mean ± std over the seeds run), wall time "
            f"of the quantize command on 2 cores, its peak resident memory where recorded, and how many unit passes kept "
            f"their start state; models and points were run over several sittings, not every point at every seed. The percentage is the share of the best calibrator's loss recovered, "
            f"(method − best calibrator) / (FP32 − best calibrator), with both from the calibration table of "
            f"this file ({base}).\n\n" + table(rows, best, fp32) + "\n")
    if args.note_file:
        text += "\n" + open(args.note_file).read().strip() + "\n"
    write_section(args.out, SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
