"""How well the label-free fidelity estimate ranks W8A8 configurations against real mAP.

Usage:
  python3 bench/fidelity_rank.py [--models yolox,nanodet,fastestdet,yolov5] [--configs NAME=ARGS;...]
                                 [--threads 1] [--compare-images 48] [--workdir /tmp/inlierq_fidelity_rank]
                                 [--out docs/RESULTS.md] [--no-write] [--report-only]

For every model and configuration (`inlierq quantize --preset w8a8 ARGS`, calibrated on the first 64 coco128
images):
  - the estimate `quantize` itself reports: agreement mAP and output SQNR on its 16 held-out calibration-folder
    images (coco128 images 65-80; `auto` also chooses by it);
  - `inlierq compare` on 48 further coco128 images (81-128), never seen by any configuration: a larger sample of
    the same estimate;
  - real mAP: `inlierq eval` on all 500 coco_val500 images (the evaluator checked against pycocotools).
Rank correlation: Spearman's rho between each estimate and real mAP over the configurations of a model (ties get
average ranks). Results are kept in WORKDIR/results.json; a rerun skips the rows already there.
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reference_pipeline as ref  # noqa: E402
from eval_accuracy import write_section  # noqa: E402

CLI = os.environ.get("INLIERQ_CLI", os.path.join(ROOT, "build", "inlierq"))
SECTION = "## Label-free fidelity against real mAP (W8A8)"
DEFAULT_CONFIGS = ("minmax=--method minmax;percentile=--method percentile;entropy=--method entropy;mse=--method mse;"
                   "mse+fb1=--method mse --fallback 1;mse+fb2=--method mse --fallback 2;"
                   "minmax+wmm+sep=--method minmax --weight-method minmax --separate-concat-scales;auto=")


def parse_configs(text):
    out = []
    for item in text.split(";"):
        if not item.strip():
            continue
        name, _, args = item.partition("=")
        out.append((name.strip(), shlex.split(args)))
    return out


def run_json(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def spearman(xs, ys):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r
    if len(xs) < 3:
        return float("nan")
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx > 0 and vy > 0 else float("nan")


def compare_folder(args):
    """coco128 images 81..(80 + compare_images) as symlinks, so that `compare --images` sees only them."""
    src = os.path.join(args.assets, "coco128", "images", "train2017")
    files = sorted(f for f in os.listdir(src) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    dst = os.path.join(args.workdir, "compare_images")
    os.makedirs(dst, exist_ok=True)
    for f in files[80:80 + args.compare_images]:
        link = os.path.join(dst, f)
        if not os.path.lexists(link):
            os.symlink(os.path.join(os.path.abspath(src), f), link)
    return dst


def measure(args, model, name, extra, folder):
    mfile = os.path.join(args.assets, "models", ref.MODELS[model][0])
    out = os.path.join(args.workdir, f"{model}_{name}.onnx")
    threads = ["--threads", str(args.threads)]
    q, q_wall = run_json([CLI] + threads + ["quantize", mfile, "--profile", model, "--calib",
                                            os.path.join(args.assets, "coco128", "images", "train2017"), "--preset", "w8a8",
                                            "-o", out, "--force", "--no-ort-latency", "--json"] + extra)
    e, _ = run_json([CLI] + threads + ["eval", out, "--profile", model, "--images",
                                       os.path.join(args.assets, "coco_val500", "images"), "--annotations",
                                       os.path.join(args.assets, "coco_val500", "instances_val500.json"), "--json"])
    c, _ = run_json([CLI] + threads + ["compare", mfile, out, "--profile", model, "--images", folder, "--limit",
                                       str(args.compare_images), "--json"])
    f = q.get("fidelity", {})
    return {"model": model, "config": name, "args": extra, "map": e["map"], "map50": e["map50"],
            "heldout_agreement": f.get("agreement_map"), "heldout_agreement50": f.get("agreement_map50"),
            "heldout_sqnr": f.get("output_sqnr_db"), "heldout_images": f.get("images"),
            "compare_agreement": c["agreement_map"], "compare_agreement50": c["agreement_map50"],
            "compare_sqnr": c["output_sqnr_db"], "compare_images": c["images"], "calibrator": q.get("calibrator"),
            "fallback_groups": q.get("fallback_groups"), "integer_mac_fraction": q.get("integer_mac_fraction"),
            "quantize_s": q_wall}


def fp32_map(args, model):
    mfile = os.path.join(args.assets, "models", ref.MODELS[model][0])
    e, _ = run_json([CLI, "--threads", str(args.threads), "eval", mfile, "--profile", model, "--images",
                     os.path.join(args.assets, "coco_val500", "images"), "--annotations",
                     os.path.join(args.assets, "coco_val500", "instances_val500.json"), "--json"])
    return e["map"]


def report(args, db):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} with `python3 bench/fidelity_rank.py {args.cmdline}` on {platform.machine()} "
             f"Linux ({os.cpu_count()} CPUs), inlierq {commit}; rows from {', '.join(sorted(set(r['commit'] for r in db['rows'])))}. "
             "Each configuration is `inlierq quantize --preset w8a8 ARGS` calibrated on the first 64 coco128 images. "
             "Held-out: the estimate `quantize` reports on its 16 held-out calibration-folder images (coco128 65-80; `auto` "
             "chooses by it). Compare: `inlierq compare` on 48 further coco128 images (81-128). Agreement = mAP@[.5:.95] of "
             "the quantized detections against the FP32 detections with score ≥ 0.3; SQNR = all graph outputs. Real mAP: "
             "`inlierq eval` on the 500 coco_val500 images. ρ = Spearman rank correlation with real mAP over a model's rows.", ""]
    lines += ["| model | config | chosen / fallback | real mAP | Δ FP32 | held-out agreement (AP50) | held-out SQNR dB | "
              "compare agreement (AP50) | int8 MACs | quantize s |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for model in args.models:
        rows = [r for r in db["rows"] if r["model"] == model]
        if not rows:
            continue
        fp = db["fp32"].get(model)
        for r in rows:
            lines.append(f"| {model} | {r['config']} | {r['calibrator']} / {r['fallback_groups']} | {r['map']:.4f} | "
                         f"{r['map'] - fp:+.4f} | {r['heldout_agreement']:.4f} ({r['heldout_agreement50']:.4f}) | "
                         f"{r['heldout_sqnr']:.2f} | {r['compare_agreement']:.4f} ({r['compare_agreement50']:.4f}) | "
                         f"{100 * r['integer_mac_fraction']:.0f} % | {r['quantize_s']:.0f} |")
        real = [r["map"] for r in rows]
        rho = {k: spearman([r[k] for r in rows], real) for k in
               ("heldout_agreement", "heldout_agreement50", "heldout_sqnr", "compare_agreement", "compare_agreement50",
                "compare_sqnr")}
        summary.append((model, fp, len(rows), rho))
    lines += ["", "| model | FP32 mAP | rows | ρ held-out agreement | ρ held-out AP50 | ρ held-out SQNR | ρ compare agreement | "
              "ρ compare AP50 | ρ compare SQNR |", "|---|---|---|---|---|---|---|---|---|"]
    for model, fp, n, rho in summary:
        lines.append(f"| {model} | {fp:.4f} | {n} | " + " | ".join(f"{rho[k]:+.2f}" for k in (
            "heldout_agreement", "heldout_agreement50", "heldout_sqnr", "compare_agreement", "compare_agreement50",
            "compare_sqnr")) + " |")
    note = os.path.join(HERE, "fidelity_rank_note.md")
    if os.path.exists(note):
        lines += ["", open(note).read().strip()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION, text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolox,nanodet,fastestdet,yolov5")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare-images", type=int, default=48)
    ap.add_argument("--assets", default=ref.ASSETS)
    ap.add_argument("--workdir", default="/tmp/inlierq_fidelity_rank")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.cmdline = " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.models = args.models.split(",")
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "results.json")
    db = json.load(open(path)) if os.path.exists(path) else {"rows": [], "fp32": {}}
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not args.report_only:
        folder = compare_folder(args)
        for model in args.models:
            if model not in db["fp32"]:
                db["fp32"][model] = fp32_map(args, model)
            for name, extra in parse_configs(args.configs):
                if any(r["model"] == model and r["config"] == name for r in db["rows"]):
                    continue
                t0 = time.perf_counter()
                row = measure(args, model, name, extra, folder)
                row["commit"] = commit
                db["rows"].append(row)
                with open(path + ".tmp", "w") as f:
                    json.dump(db, f, indent=1)
                os.replace(path + ".tmp", path)
                print(f"{model} {name}: mAP {row['map']:.4f}, held-out agreement {row['heldout_agreement']:.4f}, "
                      f"compare agreement {row['compare_agreement']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    report(args, db)


if __name__ == "__main__":
    main()
