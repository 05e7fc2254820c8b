"""Image preprocessing (preprocess_tool) against references on 3 real coco128 images:
PIL Image.resize(BILINEAR) for the "pil" convention, an OpenCV-convention bilinear written here in numpy
for the "cv2" convention (≤ 1 gray level: OpenCV rounds in fixed point, this reference in float), and,
when the system has libopencv_imgproc, OpenCV's own resize through its C API (bit-exact expected).
Each image is decoded once with PIL and saved as PNG, so resize error is measured apart from the
JPEG decoder (libjpeg-turbo on both sides: identical pixels, checked here and in test_decode_vs_pil.py)."""
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import PIL
from PIL import Image

from common import ASSETS, SOURCE_DIR, Checks

TOOL = os.environ.get("INLIERQ_PREPROCESS_TOOL", os.path.join(SOURCE_DIR, "build", "tests", "preprocess_tool"))
IMAGES = ["000000000009", "000000000025", "000000000036"]  # 640x480, 640x426, 481x640 (portrait)
PIL_EXACT = int(PIL.__version__.split(".")[0]) >= 13  # older Pillow orders its two passes differently
DECODER_MAX = 0  # libjpeg-turbo on both sides
NANODET_MEAN = np.array([103.53, 116.28, 123.675], np.float32)
NANODET_STD = np.array([57.375, 57.12, 58.395], np.float32)


def cv2_taps(n_in, n_out):
    """OpenCV INTER_LINEAR source taps: centre (d + 0.5)·in/out − 0.5, edges replicate."""
    f = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32).astype(np.float64)
    s = np.floor(f)
    t = f - s
    s = s.astype(np.int64)
    t[s < 0] = 0
    t[s >= n_in - 1] = 0
    s = np.clip(s, 0, n_in - 1)
    return s, np.minimum(s + 1, n_in - 1), t


def resize_cv2_numpy(img, w, h):
    if img.shape[:2] == (h, w):
        return img.copy()
    x0, x1, tx = cv2_taps(img.shape[1], w)
    y0, y1, ty = cv2_taps(img.shape[0], h)
    a = img.astype(np.float64)
    rows = a[:, x0] * (1 - tx)[None, :, None] + a[:, x1] * tx[None, :, None]
    out = rows[y0] * (1 - ty)[:, None, None] + rows[y1] * ty[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def load_opencv():
    """cv2.resize without opencv-python: libopencv_imgproc's C API (cvResize), or None."""
    core, imgproc = ctypes.util.find_library("opencv_core"), ctypes.util.find_library("opencv_imgproc")
    if not core or not imgproc:
        return None
    try:
        core, imgproc = ctypes.CDLL(core), ctypes.CDLL(imgproc)
        create, set_data, release, resize = core.cvCreateMatHeader, core.cvSetData, core.cvReleaseMat, imgproc.cvResize
    except (OSError, AttributeError):
        return None
    create.restype = ctypes.c_void_p
    create.argtypes = [ctypes.c_int] * 3
    set_data.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    release.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    resize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]

    def cv_resize(img, w, h):
        src = np.ascontiguousarray(img)
        dst = np.zeros((h, w, 3), np.uint8)
        mats = []
        for arr in (src, dst):
            m = create(arr.shape[0], arr.shape[1], 16)  # CV_8UC3
            set_data(m, arr.ctypes.data, arr.shape[1] * 3)
            mats.append(m)
        resize(mats[0], mats[1], 1)  # CV_INTER_LINEAR
        for m in mats:
            release(ctypes.byref(ctypes.c_void_p(m)))
        return dst

    return cv_resize


def letterbox(rgb, size, resize, pad, centred):
    """YOLOX's rule: r = min(H/h, W/w), resized to (int(w·r), int(h·r)), pasted on a pad canvas."""
    h, w = rgb.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(w * r), int(h * r)
    ox, oy = ((size - nw) // 2, (size - nh) // 2) if centred else (0, 0)
    canvas = np.full((size, size, 3), pad, np.float32)
    canvas[oy : oy + nh, ox : ox + nw] = resize(rgb, nw, nh)
    return canvas, (nw, nh, ox, oy)


def pil_resize(rgb, w, h):
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def nchw_bgr(hwc):
    return np.ascontiguousarray(hwc[:, :, ::-1].transpose(2, 0, 1)[None]).astype(np.float32)


def main():
    checks = Checks()
    cv_resize = load_opencv()
    print("OpenCV C API:", "found" if cv_resize else "not found (real-OpenCV checks skipped)")
    rgb_spec = lambda w, h, interp: json.dumps(
        {"width": w, "height": h, "interp": interp, "channel_order": "rgb", "layout": "nhwc"})
    worst = {}

    def record(key, diff):
        worst[key] = max(worst.get(key, 0.0), float(diff))

    with tempfile.TemporaryDirectory() as tmp:
        path = lambda name, tag: os.path.join(tmp, f"{name}_{tag}.npy")
        jobs, refs = [], {}
        for name in IMAGES:
            jpg = os.path.join(ASSETS, "coco128", "images", "train2017", name + ".jpg")
            rgb = np.asarray(Image.open(jpg).convert("RGB"))
            png = os.path.join(tmp, name + ".png")
            Image.fromarray(rgb).save(png)
            refs[name] = rgb
            h, w = rgb.shape[:2]
            out = lambda tag: path(name, tag)
            jobs += [
                (jpg, rgb_spec(w, h, "pil"), out("jpg_identity"), out("decoded")),
                (png, rgb_spec(416, 416, "pil"), out("pil_416")),
                (png, rgb_spec(800, 300, "pil"), out("pil_800x300")),
                (png, json.dumps({"preset": "yolox", "interp": "pil"}), out("pil_yolox")),
                (png, rgb_spec(352, 352, "cv2"), out("cv2_352")),
                (png, rgb_spec(800, 300, "cv2"), out("cv2_800x300")),
                (png, "yolox", out("yolox")),
                (png, "nanodet", out("nanodet")),
                (png, "fastestdet", out("fastestdet")),
                (jpg, "yolox", out("yolox_jpg")),
            ]
        with open(os.path.join(tmp, "jobs.txt"), "w") as f:
            f.writelines("\t".join(j) + "\n" for j in jobs)
        proc = subprocess.run([TOOL, "--jobs", os.path.join(tmp, "jobs.txt")], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"preprocess_tool failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        lines = proc.stdout.splitlines()
        transform = {job[2]: json.loads(line)["transform"] for job, line in zip(jobs, lines)}

        for name in IMAGES:
            rgb = refs[name]
            h, w = rgb.shape[:2]
            load = lambda tag: np.load(path(name, tag))
            diff = lambda a, b: np.abs(a.astype(np.float64) - b.astype(np.float64)).max()
            tag = f"{name} ({w}x{h})"

            # Decoder: ours vs PIL on the same JPEG; also through the whole yolox pipeline.
            dec = load("decoded").astype(np.int32)
            d = np.abs(dec - rgb)
            record("decoder max", d.max())
            checks.check(dec.shape == rgb.shape and d.max() <= DECODER_MAX,
                         f"{tag}: ours vs PIL JPEG decode: max {d.max()}, mean {d.mean():.3f} gray levels")
            checks.check(np.array_equal(load("jpg_identity")[0], dec), f"{tag}: same-size resize is the identity")

            # "pil" convention vs PIL itself.
            for t, (ww, hh) in (("pil_416", (416, 416)), ("pil_800x300", (800, 300))):
                m = diff(load(t)[0], pil_resize(rgb, ww, hh))
                record("pil max", m)
                checks.check(m == 0 if PIL_EXACT else m <= 1, f"{tag}: pil resize to {ww}x{hh} vs PIL: max {m:g}")
            ref, _ = letterbox(rgb, 416, pil_resize, 114, centred=False)
            m = diff(load("pil_yolox"), nchw_bgr(ref))
            record("pil max", m)
            checks.check(m == 0 if PIL_EXACT else m <= 1, f"{tag}: pil letterbox (yolox layout) vs PIL: max {m:g}")

            # "cv2" convention vs the numpy reference (≤ 1) and vs OpenCV (exact).
            for t, (ww, hh) in (("cv2_352", (352, 352)), ("cv2_800x300", (800, 300))):
                ours = load(t)[0]
                m = diff(ours, resize_cv2_numpy(rgb, ww, hh))
                record("cv2 vs numpy max", m)
                checks.check(m <= 1, f"{tag}: cv2 resize to {ww}x{hh} vs numpy OpenCV convention: max {m:g}")
                if cv_resize:
                    m = diff(ours, cv_resize(rgb, ww, hh))
                    record("cv2 vs OpenCV max", m)
                    checks.check(m == 0, f"{tag}: cv2 resize to {ww}x{hh} vs OpenCV cvResize: max {m:g}")

            # The three presets, end to end (BGR, NCHW, normalisation, padding), from the PNG.
            resizers = [("numpy", resize_cv2_numpy, 1)] + ([("OpenCV", cv_resize, 0)] if cv_resize else [])
            for rname, rs, levels in resizers:
                ref, (nw, nh, ox, oy) = letterbox(rgb, 416, rs, 114, centred=False)
                m = diff(load("yolox"), nchw_bgr(ref))
                record(f"yolox vs {rname} max", m)
                checks.check(m <= levels, f"{tag}: yolox preset vs {rname} letterbox: max {m:g} levels")

                ref, (nw, nh, ox, oy) = letterbox(rgb, 416, rs, 0, centred=True)
                norm = (ref[:, :, ::-1] - NANODET_MEAN) / NANODET_STD
                pad = np.ones((416, 416), bool)
                pad[oy : oy + nh, ox : ox + nw] = False
                norm[pad] = 0  # NanoDet pads after normalisation
                m = diff(load("nanodet"), np.ascontiguousarray(norm.transpose(2, 0, 1)[None]))
                tol = levels / NANODET_STD.min() + 1e-4
                checks.check(m <= tol, f"{tag}: nanodet preset vs {rname}: max {m:.5f} (≤ {tol:.5f})")

                ref = rs(rgb, 352, 352).astype(np.float32) / 255.0
                m = diff(load("fastestdet"), nchw_bgr(ref))
                tol = levels / 255.0 + 1e-6
                checks.check(m <= tol, f"{tag}: fastestdet preset vs {rname}: max {m:.6f} (≤ {tol:.6f})")

            t = transform[path(name, "nanodet")]
            checks.check((t["offset_x"], t["offset_y"], t["resized_width"], t["resized_height"]) == (ox, oy, nw, nh),
                         f"{tag}: nanodet transform: offset ({t['offset_x']:g}, {t['offset_y']:g}), size {nw}x{nh}")
            t = transform[path(name, "yolox")]
            r = min(416 / h, 416 / w)
            checks.check(abs(t["scale_x"] - int(w * r) / w) < 1e-6 and abs(t["scale_y"] - int(h * r) / h) < 1e-6
                         and (t["orig_width"], t["orig_height"]) == (w, h),
                         f"{tag}: yolox transform scale {t['scale_x']:.6f} x {t['scale_y']:.6f} (r = {r:.6f})")

            # Whole pipeline from the JPEG: decoder differences only, the resize does not amplify them.
            ref, _ = letterbox(rgb, 416, cv_resize or resize_cv2_numpy, 114, centred=False)
            m = diff(load("yolox_jpg"), nchw_bgr(ref))
            record("yolox from JPEG vs PIL-decoded reference max", m)
            checks.check(m <= DECODER_MAX + (0 if cv_resize else 1),
                         f"{tag}: yolox preset from JPEG vs PIL-decoded reference: max {m:g} levels")

    print("worst differences:", json.dumps(worst))
    checks.finish()


if __name__ == "__main__":
    main()
