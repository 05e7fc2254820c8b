"""Independent FP32 reference pipeline: PIL + numpy + ONNX Runtime + pycocotools (no inlierq code).

Usage:
  python3 bench/reference_pipeline.py [--model yolox|nanodet|fastestdet|yolov5|all] [--limit N] [--threads T]
                                      [--results OUT.json] [--json] [--assets DIR] [--no-spin]
                                      [--yolox-box-scale ratio|resized] [--onnx MODEL.onnx]

For each model it evaluates COCO AP@[.5:.95] on the first N images of coco_val500 by ascending image
id: decode the JPEG with PIL (Image.open(...).convert('RGB')), preprocess in numpy (the resize reproduces
OpenCV's INTER_LINEAR uint8 arithmetic exactly, as the models' cv2-based demos resize), run ONNX Runtime on
the CPU with intra_op_num_threads=T, decode the raw outputs in numpy, map the boxes back to the original
image (clipped to it), class-wise greedy NMS, keep the 100 best per image (score > 0.01), and score them
with pycocotools' COCOeval. The reported time covers the per-image loop (decode, preprocess,
inference, post-processing) plus the COCO evaluation, not the session creation — the same span as
`inlierq eval`'s "seconds".

--onnx (with a single --model) evaluates another ONNX file, e.g. a quantized (QDQ) export of that model,
with the named model's pre- and post-processing; ONNX Runtime runs the QDQ graph as it is.

Every convention is taken from ../shared/assets/README.md (the models' documentation) and from the
models' published demo code it points to; where that documentation leaves a detail open, the choice
is named in a comment next to the code.
"""
import argparse
import contextlib
import heapq
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(ROOT, "..", "shared", "assets"))

SCORE_THRESHOLD = 0.01
MAX_DETECTIONS = 100
# COCO category id of each of the 80 model classes (assets README: [1..11,13..25,27,28,31..44,46..65,67,70,72..82,84..90]).
COCO80_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
              + [67, 70] + list(range(72, 83)) + list(range(84, 91)))
assert len(COCO80_IDS) == 80

YOLOX_BOX_SCALE = "ratio"  # "ratio" (documented) or "resized"; see preprocess_yolox

MODELS = {
    # name: (file, input size, NMS IoU)
    "yolox": ("yolox_nano.onnx", 416, 0.65),
    "nanodet": ("nanodet_m_416.onnx", 416, 0.6),
    "fastestdet": ("fastestdet_352.onnx", 352, 0.45),
    "yolov5": ("yolov5n.onnx", 640, 0.65),
}


# ---- preprocessing ---------------------------------------------------------------------------------

def _linear_taps(n_in, n_out, clamp_coordinate):
    """OpenCV INTER_LINEAR source taps along one axis: centre (d + 0.5)·in/out − 0.5, computed in float32 as
    OpenCV does, the two nearest source pixels (no antialiasing), edges replicated. Weights are 11-bit
    fixed point, rounded half to even (cvRound). OpenCV clamps the coordinate for columns (weight 0 on the
    outside pixel) but only the index for rows."""
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = (f - i0.astype(np.float32)).astype(np.float32)
    if clamp_coordinate:
        f[i0 < 0] = 0
        i0[i0 < 0] = 0
        f[i0 >= n_in - 1] = 0
        i0[i0 >= n_in - 1] = n_in - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), w0, w1


def resize_bilinear(img, w, h, exact=True):
    """uint8 HWC → uint8 h×w×C with OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing).
    exact=True reproduces OpenCV's uint8 fixed-point arithmetic (an exact horizontal pass with 11-bit
    weights, then the vertical pass of its SIMD kernel: drop 4 bits, 16-bit multiply-high, (v + 2) >> 2),
    which truncates a little: plain float interpolation rounded to the nearest level (exact=False) is on
    average ~0.1 level brighter, enough to move these small detectors' scores by ~0.01."""
    if img.shape[0] == h and img.shape[1] == w:
        return img
    C = img.shape[2]
    x0, x1, wx0, wx1 = _linear_taps(img.shape[1], w, True)
    y0, y1, wy0, wy1 = _linear_taps(img.shape[0], h, False)
    # Channel-interleaved rows: column x, channel c is element x·C + c.
    ch = np.arange(C)
    x0, x1 = (x0[:, None] * C + ch).reshape(-1), (x1[:, None] * C + ch).reshape(-1)
    wx0, wx1 = np.repeat(wx0, C), np.repeat(wx1, C)
    need = np.union1d(y0, y1)  # horizontal pass only on the rows the vertical pass reads
    a = img.reshape(img.shape[0], -1)[need]
    if not exact:
        rows = np.empty((img.shape[0], w * C))
        rows[need] = a[:, x0] * (wx0 / 2048) + a[:, x1] * (wx1 / 2048)
        out = rows[y0] * (wy0 / 2048)[:, None] + rows[y1] * (wy1 / 2048)[:, None]
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8).reshape(h, w, C)
    # int32 suffices: 255·2048·2 < 2^31, and (255·2048 >> 4)·2048 < 2^31.
    # (In-place steps: this runs once per image and should not dominate the reference's time.)
    rows = np.empty((img.shape[0], w * C), np.int32)
    r0 = np.take(a, x0, axis=1).astype(np.int32)
    r0 *= wx0.astype(np.int32)
    r1 = np.take(a, x1, axis=1).astype(np.int32)
    r1 *= wx1.astype(np.int32)
    r0 += r1
    r0 >>= 4
    rows[need] = r0
    v = np.take(rows, y0, axis=0)
    v *= wy0.astype(np.int32)[:, None]
    v >>= 16
    v1 = np.take(rows, y1, axis=0)
    v1 *= wy1.astype(np.int32)[:, None]
    v1 >>= 16
    v += v1
    v += 2
    v >>= 2
    np.clip(v, 0, 255, out=v)
    return v.astype(np.uint8).reshape(h, w, C)


def letterbox_size(h, w, size):
    # YOLOX's rule (also used for NanoDet's letterbox): r = min(S/h, S/w), new size (int(w·r), int(h·r)).
    r = min(size / h, size / w)
    return r, int(w * r), int(h * r)


def preprocess_yolox(rgb, size):
    """Assets README: BGR, 0..255 float, letterbox r = min(416/h, 416/w), bilinear, top-left, pad 114."""
    h, w = rgb.shape[:2]
    r, nw, nh = letterbox_size(h, w, size)
    x = np.full((1, 3, size, size), 114.0, np.float32)
    x[0, :, :nh, :nw] = resize_bilinear(rgb, nw, nh)[:, :, ::-1].transpose(2, 0, 1)  # BGR, NCHW
    # Boxes are mapped back by dividing by r, as documented ("boxes /r") and as YOLOX's demo and COCO
    # evaluator do (YOLOX also trains on labels·r). YOLOX_BOX_SCALE = "resized" divides by the resize
    # actually done instead, int(w·r)/w and int(h·r)/h, which is up to one input pixel below r.
    if YOLOX_BOX_SCALE == "resized":
        return x, {"sx": nw / w, "sy": nh / h, "ox": 0.0, "oy": 0.0}
    return x, {"sx": r, "sy": r, "ox": 0.0, "oy": 0.0}


NANODET_MEAN = np.array([103.53, 116.28, 123.675], np.float32)  # BGR order
NANODET_STD = np.array([57.375, 57.12, 58.395], np.float32)


def preprocess_nanodet(rgb, size):
    """Assets README: BGR, (x − mean) / std, letterbox centred, pad 0 after normalisation."""
    h, w = rgb.shape[:2]
    # The README does not give the letterbox's size rule; this uses YOLOX's int(w·r) × int(h·r), and
    # centred offsets rounded down ((S − new) // 2), like the NanoDet demo's int((S − new) · 0.5).
    _, nw, nh = letterbox_size(h, w, size)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    bgr = resize_bilinear(rgb, nw, nh)[:, :, ::-1].transpose(2, 0, 1)
    tensor = np.zeros((1, 3, size, size), np.float32)
    tensor[0, :, oy:oy + nh, ox:ox + nw] = (bgr - NANODET_MEAN[:, None, None]) / NANODET_STD[:, None, None]
    # Undo with the resize actually done (the demo's ratio = original / resized size).
    return tensor, {"sx": nw / w, "sy": nh / h, "ox": float(ox), "oy": float(oy)}


def preprocess_fastestdet(rgb, size):
    """Assets README: BGR, /255, plain resize to 352×352 (no letterbox)."""
    h, w = rgb.shape[:2]
    x = np.empty((1, 3, size, size), np.float32)
    x[0] = resize_bilinear(rgb, size, size)[:, :, ::-1].transpose(2, 0, 1)
    x /= 255.0
    return x, {"sx": size / w, "sy": size / h, "ox": 0.0, "oy": 0.0}


def preprocess_yolov5(rgb, size):
    """Assets README: RGB, /255, letterbox r = min(640/h, 640/w), new size round(w·r) × round(h·r), bilinear,
    centred, pad 114. As YOLOv5's letterbox(): Python's round() (ties to even), and the offsets
    round(d/2 − 0.1) for a padding of d pixels, which is d // 2."""
    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    x = np.full((1, 3, size, size), 114.0 / 255.0, np.float32)
    x[0, :, oy:oy + nh, ox:ox + nw] = resize_bilinear(rgb, nw, nh).transpose(2, 0, 1) / np.float32(255.0)
    # Boxes are mapped back as documented: subtract the pad offset, divide by r. (YOLOv5's scale_coords
    # subtracts the unrounded (640 − w·r)/2 instead, at most half a pixel away.)
    return x, {"sx": r, "sy": r, "ox": float(ox), "oy": float(oy)}


# ---- decoding (boxes in network-input pixels, xyxy; scores; labels) ----------------------------------

def decode_yolox(outputs, size):
    """[1, 3549, 85]: per cell dx, dy, log w, log h, objectness (sigmoid), 80 class scores (sigmoid).
    xy = (dxy + grid)·stride, wh = exp(lwh)·stride, score = obj · max cls (one class per anchor, as in
    YOLOX's COCO evaluation; inlierq's yolox profile says the same with class_mode "best")."""
    p = outputs[0][0].astype(np.float32)
    grids, strides = [], []
    for s in (8, 16, 32):
        n = size // s
        xv, yv = np.meshgrid(np.arange(n), np.arange(n))  # row-major cells, x fastest
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    grid = np.concatenate(grids).astype(np.float32)
    stride = np.concatenate(strides).astype(np.float32)
    assert grid.shape[0] == p.shape[0], (grid.shape, p.shape)
    xy = (p[:, :2] + grid) * stride
    wh = np.exp(p[:, 2:4]) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    cls = p[:, 5:]
    labels = cls.argmax(1)
    scores = p[:, 4] * cls[np.arange(len(cls)), labels]
    keep = scores > SCORE_THRESHOLD
    return boxes[keep], scores[keep], labels[keep]


def decode_nanodet(outputs, size):
    """NanoDet-m GFL head: per stride 8/16/32 class scores [1, N, 80] (sigmoid) and box distributions
    [1, N, 32] (4 sides × 8 bins): softmax over the bins → expected bin · stride = distance from the cell
    centre (x·s + (s − 1)/2, as documented), boxes clipped to the input. Every class whose score passes
    the threshold gives a detection (NanoDet's multiclass NMS). inlierq's nanodet profile makes the same
    two choices (center "legacy", class_mode "all"); this follows the documentation, not that profile."""
    by_n = {}
    for o in outputs:
        o = o[0]
        by_n.setdefault(o.shape[0], {})["scores" if o.shape[1] == 80 else "dist"] = o.astype(np.float32)
    all_boxes, all_scores = [], []
    for s in (8, 16, 32):
        n = -(-size // s)  # ceil, as the NanoDet demo's feature-map size
        lv = by_n[n * n]
        d = lv["dist"].reshape(-1, 4, 8)
        d = np.exp(d - d.max(-1, keepdims=True))
        d = (d / d.sum(-1, keepdims=True)) @ np.arange(8, dtype=np.float32) * s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cx = (xv.reshape(-1) * s + (s - 1) / 2.0).astype(np.float32)
        cy = (yv.reshape(-1) * s + (s - 1) / 2.0).astype(np.float32)
        b = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)
        all_boxes.append(np.clip(b, 0, size))
        all_scores.append(lv["scores"])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    pos, cls = np.nonzero(scores > SCORE_THRESHOLD)
    return boxes[pos], scores[pos, cls], cls


def decode_fastestdet(outputs, size):
    """FastestDet [1, 85, 22, 22]: ch0 objectness (sigmoid in the graph), ch1-2 cell offsets and ch3-4 box
    size relative to the image, ch5.. class softmax (in the graph). The graph ends in raw convolution
    outputs for ch1-4, so tanh (offsets) and sigmoid (sizes) are applied here, as in FastestDet's demo:
    cx = (gx + tanh(dx)) / W, w = sigmoid(dw); score = obj^0.6 · max cls^0.4, one class per cell."""
    p = outputs[0][0].astype(np.float32)
    gh, gw = p.shape[1:]
    f = p.reshape(p.shape[0], -1).T  # [cells, 85], row-major cells
    gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    cx = (gx.reshape(-1) + np.tanh(f[:, 1])) / gw
    cy = (gy.reshape(-1) + np.tanh(f[:, 2])) / gh
    bw, bh = 1 / (1 + np.exp(-f[:, 3])), 1 / (1 + np.exp(-f[:, 4]))
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) * size  # relative → input pixels
    cls = f[:, 5:]
    labels = cls.argmax(1)
    scores = np.power(np.maximum(f[:, 0], 0), 0.6) * np.power(np.maximum(cls[np.arange(len(cls)), labels], 0), 0.4)
    keep = scores > SCORE_THRESHOLD
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep]


YOLOV5_CLASS_MODE = "all"  # "all" (every class above the threshold, YOLOv5 val.py's multi_label) or "best"


def decode_yolov5(outputs, size):
    """[1, 25200, 85], decoded in the graph: cx, cy, w, h in network-input pixels, objectness (sigmoid),
    80 class scores (sigmoid); score = obj · cls. Every class whose score passes the threshold gives a
    detection, as YOLOv5's COCO evaluation (val.py, multi_label=True); inlierq's yolov5 profile says the
    same with class_mode "all"."""
    p = outputs[0][0].astype(np.float32)
    xy, wh = p[:, :2], p[:, 2:4]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
    scores = p[:, 4:5] * p[:, 5:]
    if YOLOV5_CLASS_MODE == "best":
        labels = scores.argmax(1)
        s = scores[np.arange(len(scores)), labels]
        keep = s > SCORE_THRESHOLD
        return boxes[keep], s[keep], labels[keep]
    pos, cls = np.nonzero(scores > SCORE_THRESHOLD)
    return boxes[pos], scores[pos, cls], cls


PIPELINES = {
    "yolox": (preprocess_yolox, decode_yolox),
    "nanodet": (preprocess_nanodet, decode_nanodet),
    "fastestdet": (preprocess_fastestdet, decode_fastestdet),
    "yolov5": (preprocess_yolov5, decode_yolov5),
}


# ---- post-processing -------------------------------------------------------------------------------

def to_original(boxes, t, w, h):
    """Network-input xyxy → original-image pixels (undo the letterbox offset and the scale), clipped to the image."""
    off = np.array([t["ox"], t["oy"], t["ox"], t["oy"]], np.float64)
    scale = np.array([t["sx"], t["sy"], t["sx"], t["sy"]], np.float64)
    return np.clip((boxes.astype(np.float64) - off) / scale, 0, np.array([w, h, w, h], np.float64))


def iou_one_to_many(b, bs):
    iw = np.minimum(b[2], bs[:, 2]) - np.maximum(b[0], bs[:, 0])
    ih = np.minimum(b[3], bs[:, 3]) - np.maximum(b[1], bs[:, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (b[2] - b[0]) * (b[3] - b[1]) + (bs[:, 2] - bs[:, 0]) * (bs[:, 3] - bs[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def class_wise_nms(boxes, scores, labels, iou_thr, max_det):
    """Greedy NMS within each class, highest score first (IoU > iou_thr suppresses), keeping the max_det
    best survivors over all classes. Classes are merged lazily by their best remaining score, so work
    stops once max_det boxes are kept (the result equals per-class NMS followed by a top-max_det cut)."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    # Grouped by class, each class by descending score (ties: lower index first); heads are compared by
    # (−score, index), the same order as one stable sort of all candidates by score.
    # (label + (1 − score) is exact in float64 for float32 scores in (0, 1]: one stable sort does both keys.)
    grouped = np.argsort(labels + (1.0 - scores.astype(np.float64)), kind="stable")
    starts = np.flatnonzero(np.diff(labels[grouped])) + 1
    queues = dict(enumerate(np.split(grouped, starts)))
    key = lambda i: (-float(scores[i]), int(i))
    heap = [(key(q[0]), c) for c, q in queues.items()]
    heapq.heapify(heap)
    keep = []
    while heap and len(keep) < max_det:
        _, c = heapq.heappop(heap)
        q = queues[c]
        i, rest = q[0], q[1:]
        keep.append(i)
        rest = rest[iou_one_to_many(boxes[i], boxes[rest]) <= iou_thr]
        queues[c] = rest
        if rest.size:
            heapq.heappush(heap, (key(rest[0]), c))
    return np.array(keep, np.int64)


# ---- the pipeline ----------------------------------------------------------------------------------

# ONNX Runtime graph optimisation level for all sessions: "all" (ORT's default) or "basic"/"disable".
# With "all", ORT fuses QDQ models into integer kernels (QLinearConv, ...); "disable" runs
# QuantizeLinear/DequantizeLinear as written, i.e. the ONNX reference semantics of the file.
ORT_OPT_LEVEL = os.environ.get("INLIERQ_ORT_OPT", "all")


def ort_session(path, threads, spin=True, opt_level=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    level = opt_level or ORT_OPT_LEVEL
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    so.intra_op_num_threads = threads
    if not spin:  # idle worker threads sleep instead of spinning (kinder to a busy machine)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # NanoDet's export lists initializers as inputs: one warning each
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def load_gt(annotations):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotations)


def first_images(gt, limit):
    imgs = sorted(gt.dataset["images"], key=lambda im: im["id"])
    return imgs[:limit] if limit else imgs


def detect_image(sess, model, rgb, times=None):
    """Detections for one RGB uint8 image: (boxes xyxy in original pixels [K,4], scores [K], labels [K]).
    times, if given, accumulates seconds per stage (preprocess, inference, postprocess)."""
    _, size, nms_iou = MODELS[model]
    pre, dec = PIPELINES[model]
    t0 = time.perf_counter()
    x, t = pre(rgb, size)
    t1 = time.perf_counter()
    outputs = sess.run(None, {sess.get_inputs()[0].name: x})
    t2 = time.perf_counter()
    boxes, scores, labels = dec(outputs, size)
    boxes = to_original(boxes, t, rgb.shape[1], rgb.shape[0])
    k = class_wise_nms(boxes, scores, labels, nms_iou, MAX_DETECTIONS)
    if times is not None:
        t3 = time.perf_counter()
        for key, dt in (("preprocess", t1 - t0), ("inference", t2 - t1), ("postprocess", t3 - t2)):
            times[key] = times.get(key, 0.0) + dt
    return boxes[k], scores[k], labels[k]


def coco_eval(gt, dets, image_ids):
    """pycocotools COCOeval (bbox): the 12 standard stats."""
    from pycocotools.cocoeval import COCOeval

    if not dets:
        return [0.0] * 12, ""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    text = "\n".join(l for l in buf.getvalue().splitlines() if "Average" in l)
    return [float(v) for v in ev.stats], text


def run_model(model, limit=0, threads=2, assets=ASSETS, gt=None, spin=True, onnx_path=None):
    """Evaluates one model; returns a dict with stats, detections (COCO results format) and seconds.
    onnx_path, if given, replaces the model's file (same pre- and post-processing), e.g. a QDQ export."""
    val = os.path.join(assets, "coco_val500")
    gt = gt or load_gt(os.path.join(val, "instances_val500.json"))
    images = first_images(gt, limit)
    path = onnx_path or os.path.join(assets, "models", MODELS[model][0])
    sess = ort_session(path, threads, spin)
    # ORT lists only the inputs without an initializer (NanoDet's export also lists its weights as graph
    # inputs, each backed by an initializer): exactly one, the image, must remain.
    if len(sess.get_inputs()) != 1:
        raise ValueError(f"{path}: expected one non-initializer input (the image), got "
                         f"{[i.name for i in sess.get_inputs()]}")
    t0 = time.perf_counter()
    dets, times = [], {"decode": 0.0}
    for im in images:
        td = time.perf_counter()
        rgb = np.asarray(Image.open(os.path.join(val, "images", im["file_name"])).convert("RGB"))
        times["decode"] += time.perf_counter() - td
        boxes, scores, labels = detect_image(sess, model, rgb, times)
        for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            dets.append({"image_id": im["id"], "category_id": COCO80_IDS[c],
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    t_loop = time.perf_counter() - t0
    stats, text = coco_eval(gt, dets, [im["id"] for im in images])
    seconds = time.perf_counter() - t0
    return {"model": model, "file": onnx_path or MODELS[model][0], "images": len(images), "detections": len(dets),
            "map": stats[0], "map50": stats[1], "map75": stats[2], "stats": stats, "summary": text,
            "seconds": seconds, "loop_seconds": t_loop, "eval_seconds": seconds - t_loop,
            "stage_seconds": times, "threads": threads, "results": dets}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", choices=list(MODELS) + ["all"])
    ap.add_argument("--limit", type=int, default=0, help="first N images by ascending id (0 = all)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--assets", default=ASSETS)
    ap.add_argument("--results", help="write the COCO-format detections here (with --model all: a JSON object per model)")
    ap.add_argument("--json", action="store_true", help="print one JSON line per model")
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime: session.intra_op.allow_spinning=0")
    ap.add_argument("--yolox-box-scale", choices=["ratio", "resized"], default="ratio",
                    help="map YOLOX boxes back with r (documented) or with the resize actually done")
    ap.add_argument("--yolov5-class-mode", choices=["all", "best"], default="all",
                    help="YOLOv5: every class above the threshold (val.py's multi_label) or the best class per anchor")
    ap.add_argument("--onnx", help="evaluate this ONNX file (e.g. a QDQ model) with --model's pre- and "
                    "post-processing; needs a single --model")
    args = ap.parse_args()
    if args.onnx and args.model == "all":
        ap.error("--onnx needs a single --model (" + ", ".join(MODELS) + ")")
    if args.onnx and not os.path.isfile(args.onnx):
        ap.error(f"--onnx: no such file: {args.onnx}")
    global YOLOX_BOX_SCALE, YOLOV5_CLASS_MODE
    YOLOX_BOX_SCALE = args.yolox_box_scale
    YOLOV5_CLASS_MODE = args.yolov5_class_mode
    gt = load_gt(os.path.join(args.assets, "coco_val500", "instances_val500.json"))
    models = list(MODELS) if args.model == "all" else [args.model]
    all_results = {}
    for m in models:
        r = run_model(m, args.limit, args.threads, args.assets, gt, spin=not args.no_spin, onnx_path=args.onnx)
        all_results[m] = r.pop("results")
        if args.json:
            r.pop("summary")
            print(json.dumps(r), flush=True)
        else:
            print(f"{m} ({r['file']}): {r['images']} images, {r['detections']} detections, "
                  f"{r['threads']} threads, {r['seconds']:.2f} s (COCOeval {r['eval_seconds']:.2f} s; "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in r["stage_seconds"].items()) + ")")
            print(r["summary"])
            print(f"  mAP@[.5:.95] {r['map']:.4f}  AP50 {r['map50']:.4f}", flush=True)
    if args.results:
        with open(args.results, "w") as f:
            json.dump(all_results if args.model == "all" else all_results[models[0]], f)


if __name__ == "__main__":
    sys.exit(main())
