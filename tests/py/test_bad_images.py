"""Real-world image folders: files that do not decode are skipped by name, and the run goes on.

1. quantize on a calibration folder with 8 good JPEGs, a truncated JPEG, random bytes named .png, a CMYK
   JPEG, a grayscale JPEG and a 16-bit PNG: exit 0; the truncated and random files are named in warnings,
   in the encodings (skipped_images) and in the report; the 11 decodable images are used and the shortfall
   against --num-calib is a warning that says how many.
2. eval with one annotated image truncated: it is skipped with a warning and left out of the evaluation
   (images = N - 1); an annotated image that does not exist is an error naming it.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

from common import ASSETS, MODELS, Checks, png_bytes, run_cli

COCO128 = os.path.join(ASSETS, "coco128", "images", "train2017")
VAL = os.path.join(ASSETS, "coco_val500")


def main():
    checks = Checks()
    good = sorted(f for f in os.listdir(COCO128) if f.endswith(".jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        calib = os.path.join(tmp, "calib")
        os.makedirs(calib)
        for f in good[:8]:
            shutil.copy(os.path.join(COCO128, f), calib)
        with open(os.path.join(COCO128, good[8]), "rb") as f:
            jpeg = f.read()
        with open(os.path.join(calib, "truncated_0001.jpg"), "wb") as f:
            f.write(jpeg[:len(jpeg) // 3])
        with open(os.path.join(calib, "random.png"), "wb") as f:
            f.write(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        src = Image.open(os.path.join(COCO128, good[9])).convert("RGB")
        src.convert("CMYK").save(os.path.join(calib, "cmyk.jpg"), quality=90)
        src.convert("L").save(os.path.join(calib, "gray.jpg"), quality=90)
        with open(os.path.join(calib, "deep16.png"), "wb") as f:
            f.write(png_bytes(np.asarray(src.resize((160, 120))).astype(np.uint16) * 257, 16, 2))

        out = os.path.join(tmp, "q.onnx")
        p = run_cli("quantize", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--calib", calib, "--preset", "w8a8",
                    "--no-ort-latency", "-o", out, check=False)
        checks.check(p.returncode == 0 and os.path.exists(out),
                     f"quantize on a folder with broken files exits 0 (rc={p.returncode}){'' if p.returncode == 0 else ': ' + p.stderr[-500:]}")
        warned = [l for l in p.stderr.splitlines() if l.startswith("warning: cannot decode") and l.endswith("; skipped")]
        checks.check(len(warned) == 2 and any("truncated_0001.jpg" in l for l in warned) and any("random.png" in l for l in warned),
                     f"the truncated JPEG and the random file are named in warnings: {warned}")
        checks.check("only 11 decodable images; calibrating on 11 (asked for 64)" in p.stderr,
                     "the shortfall against --num-calib says how many images were used")
        if p.returncode == 0:
            meta = json.load(open(out.replace(".onnx", ".encodings.json")))["meta"]
            skipped = meta.get("skipped_images", [])
            checks.check(len(skipped) == 2 and len(meta["calibration_files"]) == 11
                         and any(f.endswith("cmyk.jpg") for f in meta["calibration_files"])
                         and any(f.endswith("deep16.png") for f in meta["calibration_files"]),
                         f"encodings: 11 calibration files (CMYK, gray and 16-bit among them), 2 skipped: {skipped}")
            report = open(out.replace(".onnx", ".report.html")).read()
            checks.check("Calibration images skipped" in report and "truncated_0001.jpg" in report,
                         "the report lists the skipped files")

        # eval: a truncated annotated image is skipped; a missing one is an error.
        ann = json.load(open(os.path.join(VAL, "instances_val500.json")))
        images = sorted(ann["images"], key=lambda im: im["id"])[:3]
        ids = {im["id"] for im in images}
        ann["images"] = images
        ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in ids]
        ev_dir = os.path.join(tmp, "val")
        os.makedirs(ev_dir)
        for im in images:
            shutil.copy(os.path.join(VAL, "images", im["file_name"]), ev_dir)
        cut = os.path.join(ev_dir, images[1]["file_name"])
        with open(cut, "rb") as f:
            data = f.read()
        with open(cut, "wb") as f:
            f.write(data[:len(data) // 2])
        ann_path = os.path.join(tmp, "ann.json")
        json.dump(ann, open(ann_path, "w"))
        e = run_cli("eval", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--images", ev_dir,
                    "--annotations", ann_path, "--json", check=False)
        summary = json.loads(e.stdout.strip().splitlines()[-1]) if e.returncode == 0 else {}
        checks.check(e.returncode == 0 and summary.get("images") == 2 and len(summary.get("skipped_images", [])) == 1
                     and images[1]["file_name"] in e.stderr,
                     f"eval skips the truncated image by name and evaluates the other 2 (rc={e.returncode}, "
                     f"images={summary.get('images')}, stderr: {e.stderr.strip()[-300:]})")
        os.remove(os.path.join(ev_dir, images[2]["file_name"]))
        e = run_cli("eval", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--images", ev_dir,
                    "--annotations", ann_path, check=False)
        checks.check(e.returncode != 0 and images[2]["file_name"] in e.stderr and "does not exist" in e.stderr,
                     f"eval with an annotated image missing is an error naming it (rc={e.returncode}): {e.stderr.strip()[-300:]}")
    checks.finish()


if __name__ == "__main__":
    main()
