"""Shared helpers for the Python tests: paths, the CLI, and simple model-input preparation."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

SOURCE_DIR = os.environ.get("INLIERQ_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ASSETS = os.environ.get("INLIERQ_ASSETS", os.path.join(SOURCE_DIR, "..", "shared", "assets"))
CLI = os.environ.get("INLIERQ_CLI", os.path.join(SOURCE_DIR, "build", "inlierq"))
MODELS = {
    "yolox_nano": (os.path.join(ASSETS, "models", "yolox_nano.onnx"), 416),
    "nanodet_m_416": (os.path.join(ASSETS, "models", "nanodet_m_416.onnx"), 416),
    "fastestdet_352": (os.path.join(ASSETS, "models", "fastestdet_352.onnx"), 352),
    "yolov5n": (os.path.join(ASSETS, "models", "yolov5n.onnx"), 640),
}
VAL_IMAGES = os.path.join(ASSETS, "coco_val500", "images")


def calibration_folder(tmp, n, name="calib"):
    """A folder under tmp holding copies of the first n coco128 training images; returns its path."""
    import shutil

    src = os.path.join(ASSETS, "coco128", "images", "train2017")
    folder = os.path.join(tmp, name)
    os.makedirs(folder)
    for f in sorted(f for f in os.listdir(src) if f.endswith(".jpg"))[:n]:
        shutil.copy(os.path.join(src, f), folder)
    return folder


def png_bytes(arr, bit_depth, color_type, interlace=False, size=None):
    """A minimal PNG writer (PIL cannot write 16-bit RGB, 2-bit gray or interlaced files). size=(w, h)
    overrides the header's dimensions (for a file that lies about its size)."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    channels = {0: 1, 2: 3}[color_type]

    def pack_rows(a):
        rows = []
        for y in range(a.shape[0]):
            row = a[y].reshape(-1)
            if bit_depth == 16:
                data = row.astype(">u2").tobytes()
            elif bit_depth == 8:
                data = row.astype(np.uint8).tobytes()
            else:  # sub-byte gray
                per = 8 // bit_depth
                padded = np.zeros(-(-len(row) // per) * per, np.uint8)
                padded[:len(row)] = row
                v = padded.reshape(-1, per)
                data = bytes(int(sum(int(x) << (8 - bit_depth * (k + 1)) for k, x in enumerate(g))) for g in v)
            rows.append(b"\x00" + data)
        return b"".join(rows)

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(pack_rows(arr[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                       if arr[y0::dy, x0::dx].size)
    else:
        raw = pack_rows(arr)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    hw, hh = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", hw, hh, bit_depth, color_type, 0, 0, 1 if interlace else 0)
    assert arr.reshape(h, w, -1).shape[2] == channels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def real_images(n):
    files = sorted(f for f in os.listdir(VAL_IMAGES) if f.endswith(".jpg"))[:n]
    return [os.path.join(VAL_IMAGES, f) for f in files]


def image_tensor(path, size, scale=1.0):
    """Plain resize to size×size, BGR, NCHW float32: enough to give the network real activations."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)[:, :, ::-1] * scale
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def run_cli(*args, check=True):
    proc = subprocess.run([CLI, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"inlierq {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ort_session(model_path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])


class Checks:
    """Collects pass/fail lines and prints the 'N passed, N failed' closing line."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what):
        print(("PASS " if ok else "FAIL ") + what, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed or not self.passed else 0)
