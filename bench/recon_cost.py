"""Cost of one block-reconstruction iteration, per phase, next to a plain FP forward + backward of each unit.

Usage: python3 bench/recon_cost.py [--models fastestdet,nanodet,yolox] [--iters 30] [--recon-batch 8]
           [--num-calib 16] [--preset w4a4] [--method qdrop] [--threads 1,2] [--before-cli PATH]
           [--workdir /tmp/inlierq_recon_cost] [--out docs/BENCHMARKS.md] [--report-only]

Each run is `inlierq --threads T quantize MODEL --profile P --calib coco128/images/train2017 --num-calib N
--preset w4a4 --method qdrop --iters I --recon-batch B --recon-timing --no-ort-latency -o OUT --force`. The
encodings' per-unit `phase_ms` (mean milliseconds per training iteration, CPU wall clock) are summed over
the units:

- data: mini-batch gather from the caches, QDrop's FP/quantized input mixing;
- soft weights: AdaRound's soft weights, their backward (the shards' summed gradients through h(V)) and the
  rounding regulariser;
- forward: the unit's forward, minus the activation fake-quant it calls (own column);
- loss, backward (the fused fake-quant backward inside it also has its own column), optimizer (Adam,
  step clamp, progress);
- total: wall time per iteration. With shards on two threads the shard phases (data, forward, fake-quant,
  loss, backward) are CPU time summed over the shards, so they add up to more than the wall time.

"FP fwd+bwd" is `--recon-timing`'s yardstick: a plain FP forward + backward of the same unit at the same
batch through ATen autograd (FP weights as leaves, MSE, no quantizer), median of 7, at the process's
intra-op thread count. "ms per 1k it" = total × 1,000 / 1,000: seconds for 1,000 iterations of every unit.

--before-cli runs an older build the same way without --recon-timing (it has no phase timing) and reads its
reconstruction seconds from --json.

Targets (issue 12, item 1): total ≤ 2 × FP fwd+bwd on every model (same thread count), and ≥ 1.5×
speed-up of the total from 1 to 2 threads. The section "Cost of a reconstruction iteration" of --out is
replaced (or appended); raw rows stay in --workdir/rows.jsonl.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from eval_accuracy import write_section  # noqa: E402
from recon_results import CLI, MODELS as RESULT_MODELS  # noqa: E402

ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))
SECTION = "## Cost of a reconstruction iteration"
MODELS = {m: RESULT_MODELS[m] for m in ("fastestdet", "nanodet", "yolox")}  # cheapest first
PHASES = ["data", "soft_weights", "forward", "fake_quant", "loss", "backward", "fake_quant_backward", "optimizer",
          "total", "fp_reference"]


def run(cli, model, threads, args, timing):
    onnx, profile = MODELS[model]
    out = os.path.join(args.workdir, f"{model}_t{threads}_{'new' if timing else 'before'}.onnx")
    cmd = [cli, "--threads", str(threads), "quantize", os.path.join(ASSETS, "models", onnx), "--profile", profile,
           "--calib", os.path.join(ASSETS, "coco128", "images", "train2017"), "--num-calib", str(args.num_calib),
           "--preset", args.preset, "--method", args.method, "--iters", str(args.iters), "--recon-batch",
           str(args.recon_batch), "--no-ort-latency", "-o", out, "--force", "--json"]
    if timing:
        cmd.append("--recon-timing")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    js = json.loads(p.stdout.strip().splitlines()[-1])
    enc = json.load(open(out.replace(".onnx", ".encodings.json")))
    rec = enc["meta"]["reconstruction"]
    row = {"model": model, "threads": threads, "cli": "new" if timing else "before", "iters": args.iters,
           "batch": args.recon_batch, "num_calib": args.num_calib, "preset": args.preset, "method": args.method,
           "units": rec["units"], "recon_s": js["reconstruction_seconds"], "wall_s": time.time() - t0,
           "command": " ".join(cmd)}
    if timing:
        sums = {k: 0.0 for k in PHASES}
        for r in rec["reports"]:
            for k in PHASES:
                sums[k] += r["phase_ms"][k]
        row["phase_ms"] = sums
    return row


def table(rows):
    by = {(r["model"], r["threads"], r["cli"]): r for r in rows}
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    lines = ["| model | threads | " + " | ".join(p.replace("_", " ") for p in PHASES[:-2]) +
             " | **total** | FP fwd+bwd | total / FP | ms per 1k it (s) |", "|---" * (len(PHASES) + 4) + "|"]
    verdicts = []
    for m in models:
        for t in (1, 2):
            r = by.get((m, t, "new"))
            if not r:
                continue
            ph = r["phase_ms"]
            ratio = ph["total"] / ph["fp_reference"] if ph["fp_reference"] else float("nan")
            lines.append(f"| {m} | {t} | " + " | ".join(f"{ph[p]:.1f}" for p in PHASES[:-2]) +
                         f" | **{ph['total']:.1f}** | {ph['fp_reference']:.1f} | {ratio:.2f} | {ph['total']:.0f} |")
            verdicts.append((m, t, ratio))
    out = ["\n".join(lines), ""]
    sp = []
    for m in models:
        a, b = by.get((m, 1, "new")), by.get((m, 2, "new"))
        if a and b:
            sp.append(f"| {m} | {a['phase_ms']['total']:.1f} | {b['phase_ms']['total']:.1f} | "
                      f"{a['phase_ms']['total'] / b['phase_ms']['total']:.2f}× |")
    if sp:
        out += ["Speed-up from 1 to 2 threads (total ms per iteration, all units):", "",
                "| model | 1 thread | 2 threads | speed-up |", "|---|---|---|---|"] + sp + [""]
    bf = []
    for m in models:
        for t in (1, 2):
            old, new = by.get((m, t, "before")), by.get((m, t, "new"))
            if old and new:
                bf.append(f"| {m} | {t} | {1e3 * old['recon_s'] / old['iters']:.0f} | "
                          f"{1e3 * new['recon_s'] / new['iters']:.0f} | "
                          f"{old['recon_s'] / new['recon_s']:.2f}× |")
    if bf:
        out += ["Before and after (whole reconstruction, unit caches and per-unit evaluation included; ms per "
                "iteration summed over the units = reconstruction seconds / iterations per unit):", "",
                "| model | threads | before | after | speed-up |", "|---|---|---|---|---|"] + bf + [""]
    v = [f"- {m}, {t} thread{'s' if t > 1 else ''}: total / FP fwd+bwd = {r:.2f} "
         f"({'met' if r <= 2 else 'missed'}, target ≤ 2)" for m, t, r in verdicts]
    for m in models:
        a, b = by.get((m, 1, "new")), by.get((m, 2, "new"))
        if a and b:
            s = a["phase_ms"]["total"] / b["phase_ms"]["total"]
            v.append(f"- {m}: 1 → 2 threads {s:.2f}× ({'met' if s >= 1.5 else 'missed'}, target ≥ 1.5×)")
    return "\n".join(out + ["**Verdicts.**", ""] + v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="fastestdet,nanodet,yolox")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--recon-batch", type=int, default=8)
    ap.add_argument("--num-calib", type=int, default=16)
    ap.add_argument("--preset", default="w4a4")
    ap.add_argument("--method", default="qdrop")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--before-cli", default="")
    ap.add_argument("--workdir", default="/tmp/inlierq_recon_cost")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows_path = os.path.join(args.workdir, "rows.jsonl")
    if not args.report_only:
        rows = []
        for m in args.models.split(","):
            for t in (int(x) for x in args.threads.split(",")):
                rows.append(run(CLI, m, t, args, True))
                print(json.dumps({k: rows[-1][k] for k in ("model", "threads", "recon_s")}), flush=True)
                if args.before_cli:
                    rows.append(run(args.before_cli, m, t, args, False))
                    print(json.dumps({k: rows[-1][k] for k in ("model", "threads", "cli", "recon_s")}), flush=True)
        with open(rows_path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    rows = [json.loads(line) for line in open(rows_path)]
    r0 = rows[0]
    load = os.getloadavg()[0]
    text = (f"{SECTION}\n\n"
            f"`python3 bench/recon_cost.py --iters {r0['iters']} --recon-batch {r0['batch']} --num-calib "
            f"{r0['num_calib']}{' --before-cli OLD/inlierq' if any(r['cli'] == 'before' for r in rows) else ''}` "
            f"({r0['preset'].upper()} {r0['method']}, coco128 calibration images; mean ms per training iteration, "
            f"summed over all units of the model; 2-core VM, load average {load:.1f} when the table was written). "
            "Columns: see the script's docstring. With 2 threads the shard phases are CPU time summed over the "
            "two shards; total is wall time.\n\n" + table(rows) + "\n")
    write_section(args.out, SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
