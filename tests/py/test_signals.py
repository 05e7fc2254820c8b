"""Interruption with real signals: SIGINT and SIGTERM stop a run at its next safe point, exit with 128 + the
signal number and write nothing; a reconstruction keeps the checkpoint of its finished units, says how to
resume, and --resume then writes a model byte-identical to an uninterrupted run. SIGKILL at the worst
moment of a checkpoint write (new weights on disk, state not yet replaced) leaves the previous checkpoint
loadable. A second signal ends the process at once. A signal after quantize has written its outputs (during
--eval-images) says which files were written instead of "nothing was written"."""
import json
import os
import signal
import subprocess
import tempfile
import time

from common import ASSETS, CLI, MODELS, Checks, calibration_folder

VAL = os.path.join(ASSETS, "coco_val500")


def start(args, env=None):
    return subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(path) or proc.poll() is not None:
            return os.path.exists(path)
        time.sleep(0.02)
    return False


def main():
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_folder(tmp, 8)

        def recon_args(out):
            return ["quantize", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--calib", calib, "--preset", "w4a4",
                    "--method", "qdrop", "--iters", "60", "--recon-batch", "2", "--holdout", "0", "--no-ort-latency",
                    "-o", out]

        reference = os.path.join(tmp, "ref.onnx")
        r = subprocess.run([CLI, *recon_args(reference)], capture_output=True, text=True)
        checks.check(r.returncode == 0, f"uninterrupted reconstruction (rc={r.returncode})")
        ref_bytes = open(reference, "rb").read() if r.returncode == 0 else b""

        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
            out = os.path.join(tmp, f"{name}.onnx")
            state = out.replace(".onnx", ".ckpt") + "/state.json"
            p = start(recon_args(out))
            reached = wait_for(state, p)
            p.send_signal(sig)
            _, err = p.communicate(timeout=120)
            ok = (reached and p.returncode == 128 + sig and not os.path.exists(out) and "--resume" in err
                  and f"interrupted by {name}" in err)
            checks.check(ok, f"{name} during reconstruction: exit {p.returncode} (expected {128 + sig}), no model, "
                         f"the message says how to resume: {err.strip().splitlines()[-1] if err.strip() else ''}")
            try:
                json.load(open(state))
                loadable = True
            except (OSError, ValueError):
                loadable = False
            checks.check(loadable, f"{name}: the checkpoint state is intact")
            if sig == signal.SIGTERM:
                res = subprocess.run([CLI, *recon_args(out), "--resume"], capture_output=True, text=True)
                same = res.returncode == 0 and os.path.exists(out) and open(out, "rb").read() == ref_bytes
                checks.check(same, f"{name}: --resume writes a model byte-identical to the uninterrupted run (rc={res.returncode})")

        # SIGKILL while the 3rd checkpoint is written: the 2nd stays loadable and --resume finishes alike.
        out = os.path.join(tmp, "killed.onnx")
        p = start(recon_args(out), env={"INLIERQ_TEST_KILL_IN_CHECKPOINT": "3"})
        p.communicate(timeout=300)
        ckpt = out.replace(".onnx", ".ckpt")
        st = json.load(open(os.path.join(ckpt, "state.json"))) if os.path.exists(os.path.join(ckpt, "state.json")) else {}
        checks.check(p.returncode == -signal.SIGKILL and st.get("units_done") == 2 and not os.path.exists(out),
                     f"SIGKILL inside the 3rd checkpoint write: killed (rc={p.returncode}), state still names 2 finished "
                     f"units ({st.get('units_done')}), files {sorted(os.listdir(ckpt)) if os.path.isdir(ckpt) else None}")
        res = subprocess.run([CLI, *recon_args(out), "--resume"], capture_output=True, text=True)
        checks.check(res.returncode == 0 and open(out, "rb").read() == ref_bytes and not os.path.exists(ckpt),
                     f"--resume after the kill finishes with the same model and removes the checkpoint (rc={res.returncode} "
                     f"{res.stderr.strip()[-200:]})")

        # Outside reconstruction: SIGTERM stops eval between images, and nothing is written.
        results = os.path.join(tmp, "dets.json")
        p = start(["eval", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--images", os.path.join(VAL, "images"),
                   "--annotations", os.path.join(VAL, "instances_val500.json"), "--results", results])
        first = p.stderr.readline()  # the first progress line: the handlers are in place and images are flowing
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        err = first + err
        checks.check(p.returncode == 128 + signal.SIGTERM and not os.path.exists(results),
                     f"SIGTERM during eval: exit {p.returncode}, no results file: {err.strip().splitlines()[-1] if err.strip() else ''}")

        # After quantize has written its outputs (here: during --eval-images), SIGINT says which files exist.
        out = os.path.join(tmp, "evaluated.onnx")
        p = start(["quantize", MODELS["fastestdet_352"][0], "--profile", "fastestdet", "--calib", calib, "--preset", "w8a8",
                   "--no-ort-latency", "-o", out, "--eval-images", os.path.join(VAL, "images"), "--eval-annotations",
                   os.path.join(VAL, "instances_val500.json")])
        seen = ""
        while p.poll() is None:
            line = p.stderr.readline()
            seen += line
            if "[eval FP32]" in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        err = seen + err
        last = err.strip().splitlines()[-1] if err.strip() else ""
        checks.check(p.returncode == 128 + signal.SIGINT and os.path.exists(out) and "were written" in last
                     and "nothing was written" not in last,
                     f"SIGINT during quantize's evaluation: exit {p.returncode}, OUT.onnx kept, the message says so: {last}")

    checks.finish()


if __name__ == "__main__":
    main()
