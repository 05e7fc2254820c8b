#!/usr/bin/env python3
"""Fuzzing at scale under AddressSanitizer + UndefinedBehaviorSanitizer (issue 16).

Builds the sanitizer preset (build-asan) unless --no-build, writes small seed files, runs the fuzz driver
(tests/tools/fuzz_tool.cpp) over them in --jobs parallel shards, and renders docs/FUZZING.md from the
results. Mutant i of a kind is a pure function of (--seed, i), so a finding replays alone with
`build-asan/tests/inlierq_fuzz KIND --first I --count I+1 --seed S SEEDS...` (the command is in the log).

  python3 bench/fuzz.py                      # the full counts (about 30 min on 2 cores, after the build)
  python3 bench/fuzz.py --scale 0.01         # a quick pass
  python3 bench/fuzz.py --report-only        # re-render docs/FUZZING.md from WORK/results.jsonl

Seeds: the four shared detectors; JPEG/PNG/BMP files in every colour type the decoders handle, made
from a COCO image (64x48 so mutants are fast, plus one full-size photo); the built-in profiles paired
with their models; an 8-image subset of coco_val500's annotations and a results file made from it.
"""
import argparse
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))
MODELS = {"yolox": "yolox_nano.onnx", "nanodet": "nanodet_m_416.onnx", "fastestdet": "fastestdet_352.onnx",
          "yolov5": "yolov5n.onnx"}
TIMEOUT_S = 4 * 3600  # per shard; the full models shard takes ~26 min under ASan here
COUNTS = {"models": 100_000, "images": 100_000, "profiles": 6_000, "annotations": 3_000, "detections": 3_000}


def make_image_seeds(d):
    from PIL import Image
    src = sorted(os.listdir(os.path.join(ASSETS, "coco128", "images", "train2017")))[0]
    full_path = os.path.join(ASSETS, "coco128", "images", "train2017", src)
    photo = Image.open(full_path).convert("RGB")
    small = photo.resize((64, 48))
    out = [full_path]

    def save(name, img, **kw):
        path = os.path.join(d, name)
        img.save(path, **kw)
        out.append(path)

    save("baseline.jpg", small, quality=90)
    save("progressive.jpg", small, quality=75, progressive=True)
    save("subsampled_420.jpg", small, quality=60, subsampling=2)
    save("gray.jpg", small.convert("L"))
    save("cmyk.jpg", small.convert("CMYK"))
    save("rgb.png", small)
    save("gray.png", small.convert("L"))
    save("palette.png", small.convert("P"))
    save("rgba.png", small.convert("RGBA"))
    save("gray16.png", small.convert("I;16"))
    save("la.png", small.convert("LA"))
    save("rgb.bmp", small)
    save("palette.bmp", small.convert("P"))
    # A 16-bit RGB and an interlaced PNG, written by hand (PIL writes neither).
    import struct
    import zlib

    def png(path, w, h, bit_depth, color_type, raw_rows, interlace=0):
        def chunk(t, data):
            return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
        ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, interlace)
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw_rows)) +
                    chunk(b"IEND", b""))
        out.append(path)

    px = small.tobytes()
    w, h = small.size
    rows16 = b"".join(b"\x00" + b"".join(bytes([v, v]) for v in px[y * w * 3:(y + 1) * w * 3]) for y in range(h))
    png(os.path.join(d, "rgb16.png"), w, h, 16, 2, rows16)
    # Adam7 with 8x8 pixels: pass images of 1x1, 1x1, 2x1, 2x2, 4x2, 4x4, 8x4 pixels, each row filter 0.
    tiny = small.resize((8, 8))
    tp = tiny.load()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        for y in range(y0, 8, dy):
            raw += b"\x00" + b"".join(bytes(tp[x, y]) for x in range(x0, 8, dx))
    png(os.path.join(d, "interlaced.png"), 8, 8, 8, 2, raw, interlace=1)
    return out


def make_coco_seeds(d):
    with open(os.path.join(ASSETS, "coco_val500", "instances_val500.json")) as f:
        full = json.load(f)
    crowd_images = sorted({a["image_id"] for a in full["annotations"] if a.get("iscrowd")})[:2]
    keep = [im["id"] for im in full["images"][:6]] + crowd_images
    subset = {"images": [im for im in full["images"] if im["id"] in keep],
              "annotations": [a for a in full["annotations"] if a["image_id"] in keep],
              "categories": full["categories"]}
    ann = os.path.join(d, "annotations_small.json")
    with open(ann, "w") as f:
        json.dump(subset, f)
    dets = []
    for k, a in enumerate(subset["annotations"]):
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + (k % 5) - 2, y + (k % 3) - 1, w * (1 + 0.05 * (k % 4)), h], "score": 0.05 + 0.9 * ((k * 37) % 100) / 100})
    det = os.path.join(d, "detections_small.json")
    with open(det, "w") as f:
        json.dump(dets, f)
    return ann, det


def seeds_for(kind, work):
    models = [os.path.join(ASSETS, "models", m) for m in MODELS.values()]
    if kind == "models":
        return models, []
    if kind == "images":
        d = os.path.join(work, "images")
        os.makedirs(d, exist_ok=True)
        return make_image_seeds(d), []
    if kind == "profiles":
        return [f"{os.path.join(ROOT, 'profiles', p + '.json')}={os.path.join(ASSETS, 'models', m)}"
                for p, m in MODELS.items()], []
    ann, det = make_coco_seeds(work)
    if kind == "annotations":
        return [ann], []
    return [det], ["--annotations", ann]


def run_shard(tool, kind, first, count, seed, seeds, extra, work, runs):
    cmd = [tool, kind, "--first", str(first), "--count", str(count), "--seed", str(seed), "--runs", str(runs),
           "--tmp", work] + extra + seeds
    env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"),
               UBSAN_OPTIONS=os.environ.get("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1"), OMP_NUM_THREADS="1")
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        return {"kind": kind, "first": first, "count": count, "seed": seed, "tried": 0, "seconds": time.time() - t0,
                "findings": [f"shard timed out after {TIMEOUT_S} s (a hanging mutant); last stderr: "
                             f"{(e.stderr or b'')[-1000:]!r}"], "command": " ".join(shlex.quote(c) for c in cmd), "exit": None}
    row = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            row = json.loads(line)
            break
    if row is None:  # a crash or sanitizer report: the driver printed the mutant before dying
        died = [ln for ln in proc.stderr.splitlines() if "fuzz: died on" in ln or "FINDING" in ln]
        row = {"kind": kind, "first": first, "count": count, "seed": seed, "tried": 0, "findings":
               [(died[-1] if died else "exit %d" % proc.returncode) + " | " + proc.stderr[-3000:]], "seconds": time.time() - t0}
    row["command"] = " ".join(shlex.quote(c) for c in cmd)
    row["exit"] = proc.returncode
    # LeakSanitizer reports at exit, after the summary line: any exit other than 0 (clean) or 1 (findings
    # listed) is a finding too.
    if proc.returncode not in (0, 1) and row.get("tried"):
        row.setdefault("findings", []).append(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return row


def render(rows, path):
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    lines = ["# Fuzzing", "",
             "Generated by `python3 bench/fuzz.py` (tables from WORK/results.jsonl; `--report-only` re-renders).",
             "Each mutant is a seed file with one to four deterministic edits (byte-level: bit flips, truncation,",
             "insertion, deletion, overwrites, interesting integers; field-level: ONNX nodes, attributes,",
             "initializers, shapes and opsets, or JSON values, keys and arrays). Each must be accepted or rejected",
             "with `inlierq::Error`; anything else (another exception, a crash, an AddressSanitizer or",
             "UndefinedBehaviorSanitizer report) is a finding. Every finding so far is fixed and has a",
             "regression test; see the list below the table.", "",
             "| input | what runs on each mutant | mutants | accepted | rejected | went deep | forward runs | sanitizers | findings | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    what = {"models": "load_onnx_bytes, summarize, derive_plan (+ forward passes)",
            "images": "probe_image, decode_image, preprocess",
            "profiles": "load/parse_profile, preprocess, make_decoder, decode, NMS, heatmap + top-K loss",
            "annotations": "parse_dataset, evaluate",
            "detections": "parse_detections, evaluate"}
    for kind in ["models", "images", "profiles", "annotations", "detections"]:
        rs = by_kind.get(kind)
        if not rs:
            continue
        s = lambda k: sum(r.get(k, 0) for r in rs)  # noqa: E731
        sans = sorted({r.get("sanitizers", "?") for r in rs})
        findings = sum(len(r.get("findings", [])) for r in rs)
        lines.append(f"| {kind} | {what[kind]} | {s('tried'):,} | {s('accepted'):,} | {s('rejected'):,} | {s('deep'):,} | "
                     f"{s('forward_runs'):,} | {', '.join(sans)} | {findings} | {max(r.get('seconds', 0) for r in rs):.0f} |")
    lines += ["", "\"went deep\": parsed, then passed on to the stages after parsing. Seconds: the slowest shard",
              "(shards run in parallel).", "", "## Most frequent rejections", ""]
    for kind in ["models", "images", "profiles", "annotations", "detections"]:
        rs = by_kind.get(kind)
        if not rs:
            continue
        reasons = {}
        for r in rs:
            for k, v in r.get("reasons", {}).items():
                reasons[k] = reasons.get(k, 0) + v
        merged = {}
        for k, v in reasons.items():  # messages start with the seed's path; its file name is enough
            k = re.sub(r"^\S*/([^/\s]+?):", r"\1:", k.strip())
            merged[k] = merged.get(k, 0) + v
        top = sorted(merged.items(), key=lambda kv: -kv[1])[:6]
        lines.append(f"- **{kind}:** " + "; ".join(f"{v:,}× `{k.strip()}`" for k, v in top))
    lines += ["", "## Findings", ""]
    all_findings = [(r["kind"], f, r["command"]) for r in rows for f in r.get("findings", [])]
    if not all_findings:
        lines.append("None in the run above.")
    for kind, f, cmd in all_findings:
        lines.append(f"- {kind}: `{f[:300]}` (shard: `{cmd[:200]}`)")
    with open(os.path.join(ROOT, "bench", "fuzz_note.md")) as f:
        lines += ["", f.read().strip()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build-asan"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--work", default="/tmp/inlierq_fuzz")
    ap.add_argument("--kinds", default=",".join(COUNTS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every mutant count")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--runs", type=int, default=200, help="forward passes of surviving model mutants, per shard")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "FUZZING.md"))
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    results = os.path.join(a.work, "results.jsonl")
    if a.report_only:
        with open(results) as f:
            render([json.loads(ln) for ln in f if ln.strip()], a.out)
        return 0
    if not a.no_build:
        subprocess.run(["cmake", "--preset", "asan"], cwd=ROOT, check=True)
        subprocess.run(["cmake", "--build", a.build_dir, "-j2", "--target", "inlierq_fuzz"], cwd=ROOT, check=True)
    tool = os.path.join(a.build_dir, "tests", "inlierq_fuzz")
    kinds = a.kinds.split(",")
    # Earlier rows of the kinds being rerun are replaced; the others are kept.
    rows = []
    if os.path.exists(results):
        with open(results) as f:
            rows = [r for r in (json.loads(ln) for ln in f if ln.strip()) if r["kind"] not in kinds]
    for kind in kinds:
        seeds, extra = seeds_for(kind, a.work)
        total = max(1, int(COUNTS[kind] * a.scale))
        bounds = [total * j // a.jobs for j in range(a.jobs + 1)]
        t0 = time.time()
        with ThreadPoolExecutor(a.jobs) as pool:
            shard_rows = list(pool.map(lambda j: run_shard(tool, kind, bounds[j], bounds[j + 1], a.seed, seeds, extra,
                                                           a.work, a.runs), range(a.jobs)))
        for r in shard_rows:
            r["count"] = r["count"] - r["first"]
        found = sum(len(r.get("findings", [])) for r in shard_rows)
        print(f"{kind}: {total} mutants in {time.time() - t0:.0f} s, {found} findings", flush=True)
        for r in shard_rows:
            for f in r.get("findings", []):
                print("  " + f[:2000], flush=True)
        rows += shard_rows
        with open(results, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    render(rows, a.out)
    return 1 if any(r.get("findings") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
