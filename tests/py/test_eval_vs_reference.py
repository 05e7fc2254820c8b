"""`inlierq eval` against the independent reference pipeline (bench/reference_pipeline.py: PIL + numpy +
ONNX Runtime + pycocotools, no inlierq code) on the first 12 images of coco_val500, for the four bundled
detectors. Both sides run one thread: this is an accuracy test, and one thread keeps it quick on a busy
machine.

1. On the JPEGs: (a) mAP@[.5:.95] within 0.001; (b) per image, every one of the reference's 10 best
   detections has a counterpart among ours with the same category, IoU >= 0.95 and |score difference|
   <= 0.01. Both sides decode with libjpeg-turbo (identical pixels, tests/py/test_decode_vs_pil.py).
2. On PNG copies of the same images as PIL decoded them: the same checks, through the PNG decoder.
"""
import json
import math
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from common import ASSETS, SOURCE_DIR, Checks, run_cli

sys.path.insert(0, os.path.join(SOURCE_DIR, "bench"))
import reference_pipeline as ref  # noqa: E402

LIMIT = 12
TOP = 10
MAP_TOL = 0.001
IOU_MIN = 0.95
SCORE_TOL = 0.01
JPEG_MISS_FRACTION = 0.0
VAL = os.path.join(ASSETS, "coco_val500")
ANNOTATIONS = os.path.join(VAL, "instances_val500.json")


def xyxy(d):
    x, y, w, h = d["bbox"]
    return np.array([x, y, x + w, y + h], np.float64)


def by_image(dets):
    out = {}
    for d in dets:
        out.setdefault(d["image_id"], []).append(d)
    return out


def ours(model, images_dir, annotations, out):
    proc = run_cli("--threads", "1", "eval", os.path.join(ASSETS, "models", ref.MODELS[model][0]), "--profile", model,
                   "--images", images_dir, "--annotations", annotations, "--limit", str(LIMIT), "--results", out, "--json")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out) as f:
        return summary, by_image(json.load(f))


def match_top(theirs, mine):
    """For each image, the reference's TOP best detections against ours: (total, misses, worst IoU, worst |Δscore|)."""
    misses, worst_iou, worst_ds, total = [], 1.0, 0.0, 0
    for image_id, rdets in sorted(theirs.items()):
        cand = mine.get(image_id, [])
        boxes = np.array([xyxy(c) for c in cand]).reshape(-1, 4)
        for rd in sorted(rdets, key=lambda x: -x["score"])[:TOP]:
            total += 1
            same = [i for i, c in enumerate(cand) if c["category_id"] == rd["category_id"]]
            best = None  # the same-category box with the highest IoU among those with a close score
            if same:
                ious = ref.iou_one_to_many(xyxy(rd), boxes[same])
                for j in np.argsort(-ious):
                    ds = abs(cand[same[j]]["score"] - rd["score"])
                    if ds <= SCORE_TOL:
                        best = (float(ious[j]), ds)
                        break
            if best is None or best[0] < IOU_MIN:
                misses.append(f"image {image_id} category {rd['category_id']} score {rd['score']:.3f} box "
                              f"{[round(float(v), 1) for v in xyxy(rd)]}: "
                              + ("no same-class box with a close score" if best is None else f"best IoU {best[0]:.3f}"))
            else:
                worst_iou, worst_ds = min(worst_iou, best[0]), max(worst_ds, best[1])
    return total, misses, worst_iou, worst_ds


def main():
    checks = Checks()
    gt = ref.load_gt(ANNOTATIONS)
    with tempfile.TemporaryDirectory() as tmp:
        # PNG copies of the first LIMIT images as PIL decodes them, with a matching annotation file.
        png_dir = os.path.join(tmp, "png")
        os.makedirs(png_dir)
        with open(ANNOTATIONS) as f:
            ann = json.load(f)
        for im in ref.first_images(gt, LIMIT):
            Image.open(os.path.join(VAL, "images", im["file_name"])).convert("RGB").save(
                os.path.join(png_dir, os.path.splitext(im["file_name"])[0] + ".png"))
        for im in ann["images"]:
            im["file_name"] = os.path.splitext(im["file_name"])[0] + ".png"
        png_ann = os.path.join(tmp, "png.json")
        with open(png_ann, "w") as f:
            json.dump(ann, f)

        for model in ref.MODELS:
            r = ref.run_model(model, LIMIT, threads=1, gt=gt)
            theirs = by_image(r["results"])
            for tag, images_dir, annotations in (("jpeg", os.path.join(VAL, "images"), ANNOTATIONS),
                                                 ("png", png_dir, png_ann)):
                summary, mine = ours(model, images_dir, annotations, os.path.join(tmp, f"{model}_{tag}.json"))
                d = abs(summary["map"] - r["map"])
                checks.check(summary["images"] == LIMIT and d <= MAP_TOL,
                             f"{model} [{tag}]: mAP ours {summary['map']:.4f} vs reference {r['map']:.4f} "
                             f"(|Δ| {d:.4f} ≤ {MAP_TOL}) on {summary['images']} images")
                total, misses, worst_iou, worst_ds = match_top(theirs, mine)
                allowed = math.floor(JPEG_MISS_FRACTION * total) if tag == "jpeg" else 0
                checks.check(total > 0 and len(misses) <= allowed,
                             f"{model} [{tag}]: {total - len(misses)}/{total} of the reference's top-{TOP} detections "
                             f"have a counterpart (same class, IoU ≥ {IOU_MIN}, |Δscore| ≤ {SCORE_TOL}; "
                             f"{allowed} may miss); worst matched IoU {worst_iou:.4f}, |Δscore| {worst_ds:.4f}")
                for m in misses[:5]:
                    print("     unmatched:", m)
    checks.finish()


if __name__ == "__main__":
    main()
