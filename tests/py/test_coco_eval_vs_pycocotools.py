"""The C++ COCO bbox evaluator (driven through tests/tools/coco_eval_tool) equals pycocotools' COCOeval
within 1e-4 on all 12 stats and on per-class AP: (a) on the real val500 GT with synthetic detections
(jittered, dropped and duplicated GT boxes, wrong classes, random false positives, scores with exact
ties, one image over the 100-detection cap), full set and an image subset; (b) on crafted GT with crowd
regions, empty images, classes without GT, exact-threshold IoUs and area-range boundaries."""
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from common import ASSETS, SOURCE_DIR, Checks

TOL = 1e-4
TOOL = os.environ.get("INLIERQ_COCO_TOOL", os.path.join(SOURCE_DIR, "build", "tests", "coco_eval_tool"))
VAL500 = os.path.join(ASSETS, "coco_val500", "instances_val500.json")
NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def reference(gt_path, dets, img_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")  # loadRes edits the dicts
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, 2]  # area all, maxDets 100
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[int(cat)] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return [float(s) for s in ev.stats], per_class, text.getvalue()


def ours(tmp, gt_path, dets, img_ids=None):
    dt_path = os.path.join(tmp, "dt.json")
    with open(dt_path, "w") as f:
        json.dump(dets, f)
    cmd = [TOOL, "--gt", gt_path, "--dt", dt_path]
    if img_ids is not None:
        ids_path = os.path.join(tmp, "ids.json")
        with open(ids_path, "w") as f:
            json.dump(img_ids, f)
        cmd += ["--img-ids", ids_path]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout)


def compare(checks, what, tmp, gt_path, dets, img_ids=None):
    stats, per_class, text = reference(gt_path, dets, img_ids)
    got = ours(tmp, gt_path, dets, img_ids)
    diffs = {n: abs(got[n] - s) for n, s in zip(NAMES, stats)}
    got_pc = {c["category_id"]: c["AP"] for c in got["per_class"]}
    same_classes = set(got_pc) == set(per_class)
    pc_diff = max((abs(got_pc[c] - a) for c, a in per_class.items()), default=0.0) if same_classes else float("inf")
    worst = max(diffs, key=diffs.get)
    checks.check(max(diffs.values()) <= TOL,
                 f"{what}: 12 stats, max |d| = {diffs[worst]:.1e} ({worst}); AP = {got['AP']:.4f} vs {stats[0]:.4f}")
    checks.check(pc_diff <= TOL, f"{what}: per-class AP of {len(per_class)} classes, max |d| = {pc_diff:.1e}")
    checks.check(got["summary"] == text, f"{what}: summary text identical to COCOeval.summarize()")
    # Speed is measured by bench/coco_eval_speed.py (docs/BENCHMARKS.md), not asserted here.
    print(f"{what}: {got['num_detections']} detections on {got['num_images']} images, {got['eval_seconds'] * 1e3:.1f} ms")
    return max(max(diffs.values()), pc_diff)


def jitter(rng, bbox, sigma):
    x, y, w, h = bbox
    dx, dy, dw, dh = rng.normal(0.0, sigma, 4) * [w, h, w, h]
    return [float(x + dx), float(y + dy), float(max(w + dw, 0.5)), float(max(h + dh, 0.5))]


def random_box(rng, width, height):
    w = float(rng.uniform(2, width * 0.6))
    h = float(rng.uniform(2, height * 0.6))
    return [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h]


def tie_prone(rng, scores):
    """Rounds a third of the scores to one decimal so exact ties occur within and across images."""
    s = np.array(scores, dtype=float)
    tied = rng.random(len(s)) < 0.35
    s[tied] = np.round(s[tied], 1)
    return [float(v) for v in s]


def synthetic_detections(gt, seed):
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    size = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue  # missed object
        for _ in range(1 + (rng.random() < 0.15)):  # sometimes a duplicate
            cat = a["category_id"] if rng.random() > 0.05 else int(rng.choice(cat_ids))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": jitter(rng, a["bbox"], rng.uniform(0.01, 0.3)), "score": rng.uniform(0.2, 1)})
    for img, (w, h) in size.items():
        for _ in range(rng.poisson(5)):
            dets.append({"image_id": img, "category_id": int(rng.choice(cat_ids)), "bbox": random_box(rng, w, h),
                         "score": rng.uniform(0, 0.8)})
    # One image and class with more than maxDets=100 detections.
    crowded = gt["annotations"][int(rng.integers(len(gt["annotations"])))]
    w, h = size[crowded["image_id"]]
    for _ in range(130):
        box = jitter(rng, crowded["bbox"], 0.2) if rng.random() < 0.3 else random_box(rng, w, h)
        dets.append({"image_id": crowded["image_id"], "category_id": crowded["category_id"], "bbox": box,
                     "score": rng.uniform(0, 1)})
    order = rng.permutation(len(dets))  # file order breaks ties inside an image
    dets = [dets[i] for i in order]
    for d, s in zip(dets, tie_prone(rng, [d["score"] for d in dets])):
        d["score"] = s
    return dets


def random_world(seed):
    """Small GT with crowd regions (val500 has none), 'area' fields that disagree with the box,
    images without GT, a class without GT; detections with ties and hits on crowds."""
    rng = np.random.default_rng(seed)
    W, H = 320, 240
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in range(1, 31)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5, 9)]  # 9 never gets GT
    anns, dets = [], []
    for im in images[:25]:  # images 26..30 have no GT
        for _ in range(rng.integers(0, 6)):
            bbox = random_box(rng, W, H) if rng.random() < 0.5 else [float(v) for v in rng.uniform(0, 60, 4) + [0, 0, 2, 2]]
            crowd = int(rng.random() < 0.15)
            area = bbox[2] * bbox[3] * (rng.uniform(0.4, 1.0) if rng.random() < 0.5 else 1.0)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": int(rng.choice([1, 2, 5])),
                         "bbox": bbox, "area": float(area), "iscrowd": crowd})
    for a in anns:
        x, y, w, h = a["bbox"]
        for _ in range(rng.integers(0, 4) if a["iscrowd"] else rng.integers(0, 2) + (rng.random() < 0.7)):
            # Inside a crowd region: a small box anywhere in it; otherwise a jittered copy.
            box = ([float(x + rng.uniform(0, w * 0.7)), float(y + rng.uniform(0, h * 0.7)), float(w * 0.3), float(h * 0.3)]
                   if a["iscrowd"] else jitter(rng, a["bbox"], rng.uniform(0.0, 0.25)))
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box})
    for im in images[:28]:  # images 29, 30: neither GT nor detections
        for _ in range(rng.poisson(2)):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice([1, 2, 5, 9])), "bbox": random_box(rng, W, H)})
    dets = [dets[i] for i in rng.permutation(len(dets))]
    scores = rng.choice([0.3, 0.5, 0.7, 0.9], len(dets)) if seed % 2 else tie_prone(rng, rng.random(len(dets)))
    for d, s in zip(dets, scores):
        d["score"] = float(s)
    return {"images": images, "categories": cats, "annotations": anns}, dets


def crafted():
    """Hand-placed boundary cases: IoU exactly .5/.75, areas exactly 32² and 96², crowd absorbing several
    detections, a detection straddling a crowd, zero-size and duplicate detections, equal-IoU GT."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in (3, 7, 11, 12, 20)]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "no_gt"}]
    gt = [  # image_id, category_id, bbox, area, iscrowd
        (3, 1, [0, 0, 10, 10], 100, 0), (3, 1, [100, 100, 200, 200], 40000, 1), (3, 1, [50, 0, 32, 32], 1024, 0),
        (3, 2, [0, 200, 96, 96], 9216, 0), (3, 2, [0, 200, 96, 96], 500, 0),  # same box, different area fields
        (7, 1, [10, 10, 40, 40], 1600, 0), (7, 2, [300, 300, 20, 20], 400, 0),  # image 7: no detections
        (11, 1, [5, 5, 50, 50], 2500, 0), (11, 1, [0, 0, 300, 300], 90000, 1),
    ]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": ar, "iscrowd": cr}
            for i, (im, c, b, ar, cr) in enumerate(gt)]
    dets = [  # image_id, category_id, bbox, score
        (3, 1, [0, 0, 10, 5], 0.9), (3, 1, [0, 0, 10, 7.5], 0.9),  # IoU exactly .5 and .75, tied
        (3, 1, [120, 120, 20, 20], 0.95), (3, 1, [150, 150, 20, 20], 0.95), (3, 1, [95, 95, 20, 20], 0.99),
        (3, 1, [50, 0, 32, 32], 0.6), (3, 1, [50, 0, 0, 32], 0.6),  # exact 32x32 hit, zero-width box
        (3, 2, [0, 200, 96, 96], 0.8), (3, 2, [0, 200, 96, 96], 0.8), (3, 2, [2, 202, 90, 90], 0.7),
        (3, 3, [0, 0, 50, 50], 0.99),  # class without GT
        (11, 1, [5, 5, 50, 50], 0.5), (11, 1, [10, 10, 40, 40], 0.5), (11, 1, [200, 200, 30, 30], 0.5),
        (12, 1, [0, 0, 30, 30], 0.9), (12, 2, [0, 0, 30, 30], 0.5),  # image 12 has no GT
        (20, 3, [1, 1, 5, 5], 0.4),
    ]
    dets = [{"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in dets]
    return {"images": images, "categories": cats, "annotations": anns}, dets


def main():
    checks = Checks()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        with open(VAL500) as f:
            val500 = json.load(f)
        img_ids = sorted(im["id"] for im in val500["images"])
        for seed in range(4):
            dets = synthetic_detections(val500, seed)
            worst = max(worst, compare(checks, f"val500 seed {seed}", tmp, VAL500, dets))
        subset = [int(i) for i in np.random.default_rng(9).choice(img_ids, 150, replace=False)]
        worst = max(worst, compare(checks, "val500 150-image subset", tmp, VAL500, synthetic_detections(val500, 9), subset))

        for name, (gt, dets), ids in [("crafted", crafted(), None), ("crafted subset {3,7,12}", crafted(), [3, 7, 12])] + [
            (f"random crowd world seed {s}", random_world(s), None) for s in range(6)
        ]:
            gt_path = os.path.join(tmp, "gt.json")
            with open(gt_path, "w") as f:
                json.dump(gt, f)
            worst = max(worst, compare(checks, name, tmp, gt_path, dets, ids))
    print(f"largest difference from pycocotools: {worst:.1e}")
    checks.finish()


if __name__ == "__main__":
    main()
