"""`inlierq infer` on the shared detectors with real images agrees with ONNX Runtime:
max |Δ| / max |reference| ≤ 1e-4 for every output, at batch 1 and at batch 2."""
import os
import tempfile

import numpy as np

from common import MODELS, Checks, image_tensor, ort_session, real_images, run_cli

TOL = 1e-4


def main():
    checks = Checks()
    images = real_images(2)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, size) in MODELS.items():
            sess = ort_session(path)
            in_name = sess.get_inputs()[0].name
            out_names = [o.name for o in sess.get_outputs()]
            scale = 1.0 if name == "yolox_nano" else 1.0 / 255
            batch = np.concatenate([image_tensor(p, size, scale) for p in images])
            refs = [sess.run(None, {in_name: batch[i : i + 1]}) for i in range(len(images))]
            for n in (1, 2):
                x = batch[:n]
                npy = os.path.join(tmp, f"{name}_{n}.npy")
                np.save(npy, x)
                out_dir = os.path.join(tmp, f"{name}_out{n}")
                run_cli("infer", path, "--input", f"{in_name}={npy}", "--output-dir", out_dir)
                for k, out in enumerate(out_names):
                    got = np.load(os.path.join(out_dir, out.replace("/", "_") + ".npy"))
                    ref = np.concatenate([r[k] for r in refs[:n]])
                    if got.shape != ref.shape:
                        checks.check(False, f"{name} batch {n} output {out}: shape {got.shape} != {ref.shape}")
                        continue
                    rel = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
                    checks.check(rel <= TOL, f"{name} batch {n} output {out}: max|d|/max|ref| = {rel:.2e}")
    checks.finish()


if __name__ == "__main__":
    main()
