"""Outputs under adverse conditions: each case gives a clear error, and the user's existing files are never
lost or left half-written.

1. A file-size limit below the model's size (RLIMIT_FSIZE, as a full disk; mounting a small tmpfs needs
   privileges CI does not have): exit 1 naming the file and the reason; the earlier OUT.onnx is unchanged
   and no temporary file is left.
2. An output folder that does not exist, or cannot be written: an error before any work.
3. Two runs writing the same output at once: the second is refused, naming the first one's pid, and the
   first finishes.
"""
import os
import resource
import subprocess
import tempfile
import time

from common import CLI, MODELS, Checks, calibration_folder


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(tmp, 4)
        out_dir = os.path.join(tmp, "out")
        os.makedirs(out_dir)
        out = os.path.join(out_dir, "q.onnx")
        base = ["quantize", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--calib", calib, "--preset", "w8a8",
                "--no-ort-latency"]
        first = subprocess.run([CLI, *base, "-o", out], capture_output=True, text=True)
        checks.check(first.returncode == 0, f"a first run writes q.onnx (rc={first.returncode})")
        before = {f: open(os.path.join(out_dir, f), "rb").read() for f in os.listdir(out_dir)}

        limit = 64 * 1024  # below the model's ~0.4 MB
        limited = subprocess.run([CLI, *base, "-o", out, "--force"], capture_output=True, text=True,
                                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
        after = {f: open(os.path.join(out_dir, f), "rb").read() for f in os.listdir(out_dir)}
        checks.check(limited.returncode == 1 and "File too large" in limited.stderr and "q.onnx" in limited.stderr,
                     f"file-size limit: exit {limited.returncode}, the error names the file and the reason: "
                     f"{limited.stderr.strip().splitlines()[-1] if limited.stderr.strip() else ''}")
        checks.check(after == before, f"the earlier outputs are byte-identical and nothing else is left "
                     f"({sorted(set(after) - set(before))} new)")

        for what, target, needle in (("missing folder", os.path.join(tmp, "nope", "q.onnx"), "does not exist"),
                                     ("a file as folder", os.path.join(calib, os.listdir(calib)[0], "q.onnx"), "not a folder"),
                                     ("read-only folder", "/proc/q.onnx", "cannot write into the folder '/proc'")):
            t0 = time.time()
            r = subprocess.run([CLI, *base, "-o", target], capture_output=True, text=True)
            checks.check(r.returncode == 1 and needle in r.stderr and "calibrate" not in r.stderr,
                         f"{what}: exit {r.returncode} before any work ({time.time() - t0:.1f} s): "
                         f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")

        # Two runs on the same output: the reconstruction keeps the first one busy long enough.
        shared = os.path.join(tmp, "shared.onnx")
        recon = [a for a in base if a != "w8a8" and a != "--preset"] + ["--preset", "w4a4", "--method", "qdrop", "--iters", "60",
                                                                       "--recon-batch", "2", "--holdout", "0"]
        a = subprocess.Popen([CLI, *recon, "-o", shared], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not os.path.exists(shared + ".lock") and a.poll() is None and time.time() - t0 < 60:
            time.sleep(0.02)
        b = subprocess.run([CLI, *recon, "-o", shared, "--force"], capture_output=True, text=True)
        a.communicate(timeout=300)
        checks.check(b.returncode == 1 and "another inlierq run" in b.stderr and str(a.pid) in b.stderr,
                     f"a second run on the same output is refused, naming the first: "
                     f"{b.stderr.strip().splitlines()[-1] if b.stderr.strip() else ''}")
        checks.check(a.returncode == 0 and os.path.exists(shared) and not os.path.exists(shared + ".lock"),
                     f"the first run finishes and removes its lock (rc={a.returncode})")
    checks.finish()


if __name__ == "__main__":
    main()
