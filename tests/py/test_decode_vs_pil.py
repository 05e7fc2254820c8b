"""Image decoding (libjpeg-turbo, libpng) against PIL's Image.open(path).convert("RGB"), pixel for pixel.

1. Every shared image (coco128 and coco_val500, 628 JPEGs): identical pixels.
2. Files made here from a real image, one per format case: grayscale, CMYK, progressive, 4:4:4 and
   4:2:2 JPEG, a JPEG with an EXIF orientation tag (stored order, as PIL's Image.open), RGBA, gray+alpha,
   palette with transparency, 1-bit, 2-bit gray, 16-bit RGB and interlaced PNG: identical to PIL. 16-bit
   gray PNG: the high byte (PIL clips values above 255 instead; docs/PROFILES.md says so).
3. Truncated JPEG and PNG files fail with the file's name; headers claiming more pixels than the limit
   are refused before decoding.
4. 400 mutated files: each decodes or fails with an error naming it, and the process survives.
The decoded pixels come from tests/tools/preprocess_tool (its DECODED.npy output)."""
import json
import os
import struct
import subprocess
import tempfile

import numpy as np
from PIL import Image

from common import ASSETS, SOURCE_DIR, Checks, png_bytes

TOOL = os.environ.get("INLIERQ_PREPROCESS_TOOL", os.path.join(SOURCE_DIR, "build", "tests", "preprocess_tool"))
CHUNK = 64  # images per tool run: bounds the temporary .npy files
MUTATIONS = 400


def decode_ours(paths, tmp):
    """{path: uint8 [H, W, 3] or the error message}."""
    jobs = os.path.join(tmp, "jobs.txt")
    with open(jobs, "w") as f:
        for i, p in enumerate(paths):
            f.write(f"{p}\tfastestdet:8\t{tmp}/t{i}.npy\t{tmp}/d{i}.npy\n")
    out = subprocess.run([TOOL, "--jobs", jobs], capture_output=True, text=True, check=True)
    lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == len(paths), out.stdout + out.stderr
    result = {}
    for i, (p, line) in enumerate(zip(paths, lines)):
        if "error" in line:
            result[p] = line["error"]
        else:
            result[p] = np.load(f"{tmp}/d{i}.npy")
            os.remove(f"{tmp}/d{i}.npy")
        if os.path.exists(f"{tmp}/t{i}.npy"):
            os.remove(f"{tmp}/t{i}.npy")
    return result


def pil_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def main():
    checks = Checks()
    files = sorted(os.path.join(ASSETS, "coco128", "images", "train2017", f)
                   for f in os.listdir(os.path.join(ASSETS, "coco128", "images", "train2017")))
    files += sorted(os.path.join(ASSETS, "coco_val500", "images", f)
                    for f in os.listdir(os.path.join(ASSETS, "coco_val500", "images")))
    with tempfile.TemporaryDirectory() as tmp:
        # 1. The shared images.
        bad, worst = [], 0
        for start in range(0, len(files), CHUNK):
            ours = decode_ours(files[start:start + CHUNK], tmp)
            for p, got in ours.items():
                ref = pil_rgb(p)
                if isinstance(got, str) or got.shape != ref.shape:
                    bad.append(f"{os.path.basename(p)}: {got if isinstance(got, str) else got.shape}")
                    continue
                d = int(np.abs(got.astype(int) - ref).max())
                worst = max(worst, d)
                if d:
                    bad.append(f"{os.path.basename(p)}: max |Δ| {d}")
        checks.check(not bad, f"{len(files)} shared JPEGs decode to PIL's pixels exactly "
                     f"({len(bad)} differ; worst |Δ| {worst}){': ' + ', '.join(bad[:5]) if bad else ''}")

        # 2. One file per format case, from a real image.
        src = Image.open(files[0]).convert("RGB").crop((13, 7, 13 + 97, 7 + 61))
        rgb = np.asarray(src)
        cases = {}

        def save(name, img, **kw):
            path = os.path.join(tmp, name)
            img.save(path, **kw)
            cases[name] = path

        save("gray.jpg", src.convert("L"), quality=90)
        save("cmyk.jpg", src.convert("CMYK"), quality=90)
        save("progressive.jpg", src, quality=85, progressive=True)
        save("444.jpg", src, quality=95, subsampling=0)
        save("422.jpg", src, quality=95, subsampling=1)
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° CW to display
        save("exif_rotated.jpg", src, quality=90, exif=exif.tobytes())
        rgba = src.copy()
        rgba.putalpha(Image.fromarray((np.arange(97 * 61) % 251).reshape(61, 97).astype(np.uint8)))
        save("rgba.png", rgba)
        save("gray_alpha.png", rgba.convert("LA"))
        pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=37)
        save("palette_trns.png", pal, transparency=3)
        save("bilevel.png", src.convert("1"))
        for name, data in (("rgb16.png", png_bytes(rgb.astype(np.uint16) * 257 + 3, 16, 2)),
                           ("gray2bit.png", png_bytes((rgb[:, :, 0] >> 6).astype(np.uint8), 2, 0)),
                           ("interlaced.png", png_bytes(rgb, 8, 2, interlace=True))):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
            cases[name] = os.path.join(tmp, name)
        gray16 = (rgb[:, :, 1].astype(np.uint16) << 8) | 77
        with open(os.path.join(tmp, "gray16.png"), "wb") as f:
            f.write(png_bytes(gray16, 16, 0))
        ours = decode_ours(list(cases.values()) + [os.path.join(tmp, "gray16.png")], tmp)
        for name, path in cases.items():
            got, ref = ours[path], pil_rgb(path)
            ok = not isinstance(got, str) and got.shape == ref.shape and np.array_equal(got, ref)
            detail = got if isinstance(got, str) else (
                f"shape {got.shape}" if got.shape != ref.shape else f"max |Δ| {int(np.abs(got.astype(int) - ref).max())}")
            checks.check(ok, f"{name} ({Image.open(path).mode}): identical to PIL" + ("" if ok else f": {detail}"))
        got = ours[os.path.join(tmp, "gray16.png")]
        expect = np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
        checks.check(not isinstance(got, str) and np.array_equal(got, expect),
                     "gray16.png: the high byte of each sample, replicated to RGB")

        # 3. Truncated files and huge headers.
        with open(files[0], "rb") as f:
            jpeg = f.read()
        errors = {}
        for name, data in (("truncated.jpg", jpeg[:len(jpeg) // 2]),
                           ("truncated.png", open(cases["rgba.png"], "rb").read()[:400])):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
            errors[os.path.join(tmp, name)] = "cannot decode"
        with open(os.path.join(tmp, "huge.png"), "wb") as f:
            f.write(png_bytes(np.zeros((1, 1, 3), np.uint8), 8, 2, size=(20000, 20000)))  # header says 20000x20000
        errors[os.path.join(tmp, "huge.png")] = "refused before decoding"
        sof = jpeg.find(b"\xff\xc0")
        huge_jpeg = jpeg[:sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9:]
        with open(os.path.join(tmp, "huge.jpg"), "wb") as f:
            f.write(huge_jpeg)
        errors[os.path.join(tmp, "huge.jpg")] = "refused before decoding"
        ours = decode_ours(list(errors), tmp)
        for path, fragment in errors.items():
            got = ours[path]
            checks.check(isinstance(got, str) and fragment in got and path in got,
                         f"{os.path.basename(path)}: error naming the file, '{fragment}': {got if isinstance(got, str) else got.shape}")
        # 4. Mutated files (bit flips, truncation, inserted and overwritten bytes): each decodes or fails with
        # an error, and the process survives all of them (the fuzz benchmark runs far more under sanitizers).
        rng = np.random.default_rng(1)
        seeds = [open(cases[n], "rb").read() for n in ("progressive.jpg", "422.jpg", "cmyk.jpg", "rgba.png", "palette_trns.png",
                                                      "interlaced.png", "rgb16.png")]
        mutated = []
        for i in range(MUTATIONS):
            b = bytearray(seeds[i % len(seeds)])
            for _ in range(int(rng.integers(1, 8))):
                op, pos = int(rng.integers(0, 4)), int(rng.integers(0, len(b)))
                if op == 0:
                    b[pos] ^= 1 << int(rng.integers(0, 8))
                elif op == 1:
                    b = b[:max(1, pos)]
                elif op == 2:
                    b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
                else:
                    b[pos:pos + 4] = b"\xff\xff\xff\xff"
            path = os.path.join(tmp, f"m{i}" + (".jpg" if b[:2] == b"\xff\xd8" else ".png"))
            with open(path, "wb") as f:
                f.write(bytes(b))
            mutated.append(path)
        try:
            ours = decode_ours(mutated, tmp)
            decoded = sum(1 for v in ours.values() if not isinstance(v, str))
            named = all(isinstance(v, str) is False or os.path.basename(p) in v for p, v in ours.items())
            checks.check(named, f"{MUTATIONS} mutated JPEG/PNG files: every one decodes ({decoded}) or fails with an "
                         f"error naming it ({MUTATIONS - decoded}); no crash")
        except (subprocess.CalledProcessError, AssertionError) as e:
            checks.check(False, f"{MUTATIONS} mutated files: the decoder process failed: {str(e)[:300]}")
    checks.finish()


if __name__ == "__main__":
    main()
