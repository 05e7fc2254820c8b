"""FP32 forward latency per image, inlierq vs ONNX Runtime, measured in the same run.

Usage: python3 bench/run_latency.py [--runs 30] [--rounds 3] [--out docs/BENCHMARKS.md]
Each configuration is measured in `rounds` alternating rounds (ORT, inlierq, ORT, ...), each
reporting the median of `runs` forwards; the table gives the median over rounds and the ratio."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
sys.path.insert(0, HERE)
from common import MODELS  # noqa: E402

BENCH = os.environ.get("INLIERQ_BENCH", os.path.join(ROOT, "build", "bench", "bench_latency"))


def ort_median(path, threads, runs, warmup=3):
    from export_latency import session, time_runs

    return statistics.median(time_runs(session(path, threads), runs, warmup))


def ours_median(path, threads, runs):
    out = subprocess.run([BENCH, path, "--threads", str(threads), "--runs", str(runs)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    rows = []
    for name, (path, _) in MODELS.items():
        for t in [int(x) for x in args.threads.split(",")]:
            ort_ms, our_ms = [], []
            for _ in range(args.rounds):
                ort_ms.append(ort_median(path, t, args.runs))
                our_ms.append(ours_median(path, t, args.runs))
            o, q = statistics.median(ort_ms), statistics.median(our_ms)
            rows.append((name, t, q, o, q / o))
            print(f"{name:16s} threads={t} inlierq {q:7.2f} ms  ORT {o:7.2f} ms  ratio {q / o:.2f}", flush=True)
    table = ["| model | threads | inlierq (ms) | ONNX Runtime (ms) | ratio |", "|---|---|---|---|---|"]
    table += [f"| {n} | {t} | {q:.2f} | {o:.2f} | {r:.2f} |" for n, t, q, o, r in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
