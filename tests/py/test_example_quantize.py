"""examples/quantize.cpp (build/examples/example_quantize) quantizes a tiny synthetic detector through the
public API alone: it includes only inlierq/ headers and no torch header (checked here; the target has no
private include path, so a private header would not compile), writes a QDQ OUT.onnx with its encodings,
and ONNX Runtime runs the file with finite outputs.
"""
import os
import re
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from common import SOURCE_DIR, Checks
from test_poison_numbers import SIZE, build, calibration_and_profile

EXAMPLE = os.environ.get("INLIERQ_EXAMPLE", os.path.join(SOURCE_DIR, "build", "examples", "example_quantize"))


def main():
    checks = Checks()
    with open(os.path.join(SOURCE_DIR, "examples", "quantize.cpp")) as f:
        includes = re.findall(r'#include\s+[<"]([^>"]+)[>"]', f.read())
    private = [i for i in includes if "/" in i and not i.startswith("inlierq/")]
    checks.check(not private and not any(i.startswith(("ATen", "torch", "c10")) for i in includes),
                 f"the example includes only public inlierq/ and standard headers ({includes})")
    with tempfile.TemporaryDirectory() as tmp:
        calib, profile = calibration_and_profile(tmp, seed=3)
        rng = np.random.default_rng(3)
        model = os.path.join(tmp, "tiny.onnx")
        build(model, "rules")
        out = os.path.join(tmp, "tiny_q.onnx")
        r = subprocess.run([EXAMPLE, model, calib, out, profile], capture_output=True, text=True)
        checks.check(r.returncode == 0 and "wrote" in r.stdout and "stage report done" in r.stderr,
                     f"example_quantize exits 0 and reports its stages (rc={r.returncode}) {r.stdout.strip()} {r.stderr[-300:]}")
        if r.returncode == 0:
            q = onnx.load(out)
            nq = sum(n.op_type == "QuantizeLinear" for n in q.graph.node)
            checks.check(nq > 0 and q.opset_import[0].version == 13 and os.path.exists(os.path.join(tmp, "tiny_q.encodings.json")),
                         f"OUT.onnx is QDQ at opset 13 ({nq} QuantizeLinear) with its encodings")
            y = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(
                None, {"x": rng.random((1, 3, SIZE, SIZE), dtype=np.float32)})[0]
            checks.check(bool(np.all(np.isfinite(y))), f"ONNX Runtime runs it: output {y.shape}, finite")
        bad = subprocess.run([EXAMPLE, model], capture_output=True, text=True)
        checks.check(bad.returncode == 2 and "usage" in bad.stderr, f"wrong arguments: exit {bad.returncode} with usage")
    return checks.finish()


if __name__ == "__main__":
    main()
