"""JPEG decode time on the shared images: inlierq's decoder (libjpeg-turbo) against stb_image (the decoder it
replaced, compiled into bench_decode) and PIL, in the same run.

Usage: python3 bench/decode_speed.py [--rounds 3] [--out docs/BENCHMARKS.md] [--no-write]

bench_decode (bench/decode_speed.cpp) decodes every .jpg/.png of coco128 and coco_val500 from memory to RGB,
alternating inlierq's decode_image and stb_image, and reports the median over rounds of each total; PIL's
Image.open(BytesIO).convert("RGB") is timed the same way here. One thread each. The section "Image
decoding" of --out is replaced (or appended)."""
import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from PIL import Image, features

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from eval_accuracy import write_section  # noqa: E402

ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))
BENCH = os.environ.get("INLIERQ_BENCH_DECODE", os.path.join(ROOT, "build", "bench", "bench_decode"))
SECTION = "## Image decoding"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dirs = [os.path.join(ASSETS, "coco128", "images"), os.path.join(ASSETS, "coco_val500", "images")]
    load = os.getloadavg()[0]
    ours = json.loads(subprocess.run([BENCH, *dirs, "--rounds", str(args.rounds)], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    files = sorted(os.path.join(r, f) for d in dirs for r, _, fs in os.walk(d) for f in fs if f.endswith((".jpg", ".png")))
    data = [open(f, "rb").read() for f in files]
    pil = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for b in data:
            Image.open(io.BytesIO(b)).convert("RGB")
        pil.append(time.perf_counter() - t0)
    n = ours["files"]
    assert n == len(files), (n, len(files))
    ms = lambda s: 1000 * s / n  # noqa: E731
    rows = [("inlierq (libjpeg-turbo, libpng)", ours["inlierq_s"]), ("stb_image (before)", ours["stb_s"]),
            ("PIL " + Image.__version__ + f" (libjpeg-turbo {features.version_feature('libjpeg_turbo')})", statistics.median(pil))]
    text = "\n".join([
        SECTION, "",
        f"`python3 bench/decode_speed.py --rounds {args.rounds}`, measured {time.strftime('%Y-%m-%d')} on "
        f"{platform.machine()} {platform.system()} ({os.cpu_count()} CPUs, load average {load:.1f} before): "
        f"{n} JPEGs ({ours['bytes'] / 1e6:.1f} MB) of coco128 and coco_val500, decoded from memory to RGB, one "
        f"thread, median over {args.rounds} rounds. inlierq decodes to exactly PIL's pixels "
        "(tests/py/test_decode_vs_pil.py); stb_image differed by up to 4 grey levels.", "",
        "| decoder | total s | ms per image | vs inlierq |", "|---|---|---|---|"]
        + [f"| {name} | {s:.2f} | {ms(s):.2f} | {s / ours['inlierq_s']:.2f}× |" for name, s in rows]) + "\n"
    print(text)
    if not args.no_write:
        write_section(args.out, SECTION, text)


if __name__ == "__main__":
    sys.exit(main())
