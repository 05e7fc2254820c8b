"""Runs are reproducible: the same inputs, seed and thread count give byte-identical files (the model, the
TensorRT cache), for calibration and for reconstruction. Another thread count changes the float rounding
of ATen's convolutions, so the activation ranges move by a rounding error and a reconstruction that starts
from them drifts a little further (docs/QUANTIZATION.md, "Determinism"): the test bounds how much."""
import json
import os
import subprocess
import tempfile

from common import CLI, MODELS, Checks, calibration_folder

# Calibration: a rounding error in the histograms; reconstruction learns the scales from there. The QDrop
# run uses the references' step rates: at the CPU default (1e-2, 250x larger) Adam's sign-like steps turn
# that rounding error into moves of ~lr per iteration, like a change of seed (docs/RECONSTRUCTION.md, "Defaults").
THREAD_SCALE_TOL = {"w8a8 entropy": 1e-5, "w4a4 qdrop": 0.02}


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(tmp, 6)
        model = MODELS["fastestdet_352"][0]
        runs = {
            "w8a8 entropy": ["--preset", "w8a8", "--method", "entropy"],
            "w4a4 qdrop": ["--preset", "w4a4", "--method", "qdrop", "--iters", "15", "--recon-batch", "2", "--seed", "3",
                           "--lr-round", "1e-3", "--lr-act", "4e-5"],
        }
        for name, flags in runs.items():
            files = {}
            for tag, threads in (("a", "2"), ("b", "2"), ("c", "1")):
                out = os.path.join(tmp, f"{name.replace(' ', '_')}_{tag}.onnx")
                r = subprocess.run([CLI, "--threads", threads, "quantize", model, "--profile", "fastestdet", "--calib", calib,
                                    *flags, "--no-ort-latency", "-o", out], capture_output=True, text=True)
                if r.returncode != 0:
                    checks.check(False, f"{name} --threads {threads}: quantize failed (rc={r.returncode}): {r.stderr[-300:]}")
                    break
                files[tag] = [open(out, "rb").read()]
                cache = out.replace(".onnx", ".trt.cache")
                if os.path.exists(cache):
                    files[tag].append(open(cache, "rb").read())
                enc = json.load(open(out.replace(".onnx", ".encodings.json")))["activation_encodings"]
                files[tag + "_scales"] = {k: v["scale"][0] for k, v in enc.items()}
            if len(files) == 6:
                checks.check(files["a"] == files["b"], f"{name}: two runs at 2 threads write byte-identical files")
                sa, sc = files["a_scales"], files["c_scales"]
                rel = max(abs(sa[k] - sc[k]) / sa[k] for k in sa)
                limit = THREAD_SCALE_TOL[name]
                checks.check(sa.keys() == sc.keys() and rel <= limit,
                             f"{name}: at 1 thread the activation scales move by at most {rel:.2e} relative (≤ {limit:g}); "
                             f"files {'identical' if files['a'] == files['c'] else 'differ'}")
    checks.finish()


if __name__ == "__main__":
    main()
