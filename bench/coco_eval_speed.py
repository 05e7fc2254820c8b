"""COCO bbox evaluation time: inlierq's evaluator (tests/tools/coco_eval_tool) against pycocotools' COCOeval
on the same detections, in the same run.

Usage: python3 bench/coco_eval_speed.py [--seeds 4] [--rounds 3] [--out docs/BENCHMARKS.md] [--no-write]

The detections are the synthetic ones of tests/py/test_coco_eval_vs_pycocotools.py (jittered, dropped and
duplicated GT boxes, wrong classes, false positives, tied scores) on the 500 coco_val500 images, one set per
seed. Timed: our evaluate + accumulate + summarize as the tool reports it (`eval_seconds`, loading the files
excluded), and COCOeval's evaluate() + accumulate() + summarize() on an already loaded COCO object; median over
rounds of each seed. One thread each. The two results agree within 1e-4 on every stat (the test checks that).
The section "COCO evaluation" of --out is replaced (or appended)."""
import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
from eval_accuracy import write_section  # noqa: E402
from test_coco_eval_vs_pycocotools import VAL500, ours, synthetic_detections  # noqa: E402

SECTION = "## COCO evaluation"


def pycocotools_seconds(gt, dets):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(dets))
        t0 = time.perf_counter()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(VAL500)
    with open(VAL500) as f:
        val500 = json.load(f)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            dets = synthetic_detections(val500, seed)
            mine = [ours(tmp, VAL500, dets)["eval_seconds"] for _ in range(args.rounds)]
            theirs = [pycocotools_seconds(gt, dets) for _ in range(args.rounds)]
            rows.append((seed, len(dets), statistics.median(mine), statistics.median(theirs)))
    text = "\n".join([
        SECTION, "",
        f"`python3 bench/coco_eval_speed.py --seeds {args.seeds} --rounds {args.rounds}`, measured "
        f"{time.strftime('%Y-%m-%d')} on {platform.machine()} {platform.system()} ({os.cpu_count()} CPUs, load "
        f"average {load:.1f} before): the 500 coco_val500 images with the synthetic detections of "
        "tests/py/test_coco_eval_vs_pycocotools.py, evaluate + accumulate + summarize (files already loaded), "
        f"median of {args.rounds} rounds, one thread.", "",
        "| detections (seed) | inlierq ms | pycocotools ms | pycocotools / inlierq |", "|---|---|---|---|"]
        + [f"| {n} ({seed}) | {a * 1e3:.1f} | {b * 1e3:.0f} | {b / a:.0f}× |" for seed, n, a, b in rows]) + "\n"
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    sys.exit(main())
