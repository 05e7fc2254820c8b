"""The rejected alternative to measured int8 storage: make ONNX Runtime's u8s8 pair saturation impossible by
construction. A pair of uint8 codes (≤ 255) times int8 weights a, b of the same sign stays inside int16 for every
input exactly when |a| + |b| ≤ 128; this script moves each violating pair of neighbouring weights of a W8A8 export
onto that line (the smallest L2 change, in integer codes), stores all conv weights as int8, and scores the file
with the independent reference pipeline on this CPU. docs/QUANTIZATION.md §2a ("Weight storage").

Usage: python3 bench/u8s8_pair_constraint.py --model fastestdet --onnx W8A8.onnx [-o CONSTRAINED.onnx] [--limit 0]
(W8A8.onnx: an `inlierq quantize --preset w8a8 --weight-type uint8` export.)
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_pipeline as ref  # noqa: E402

LIMIT = 128  # 255 · 128 = 32640 ≤ 32767


def project_pairs(k):
    """k: [rows, N] int codes, pairs (2i, 2i+1) along axis 1, changed in place; returns the pairs moved."""
    a, b = k[:, 0::2], k[:, 1::2]
    excess = np.abs(a) + np.abs(b) - LIMIT
    bad = (np.sign(a) == np.sign(b)) & (excess > 0)
    k[:, 0::2] = a - np.sign(a) * np.where(bad, (excess + 1) // 2, 0)
    k[:, 1::2] = b - np.sign(b) * np.where(bad, excess // 2, 0)
    return int(bad.sum())


def constrain(model):
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    moved = weights = 0
    for n in model.graph.node:
        dq = producer.get(n.input[1]) if n.op_type == "Conv" else None
        if not dq or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q, z = numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[2]])
        if q.dtype != np.uint8 or not np.all(z == 128):
            continue
        w = q.astype(np.int64) - 128
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        o, cg = w.shape[:2]
        taps = int(np.prod(w.shape[2:]))
        if not (cg == 1 and o == group):  # depthwise kernels widen to 32 bits: nothing to constrain
            t = np.transpose(w.reshape(o, cg, taps), (0, 2, 1))  # [O, taps, Cg]
            for _ in range(8):  # channel pairs per tap, then im2col pairs (differ for odd Cg), until both hold
                pad = cg % 2
                rows = np.concatenate([t, np.zeros((o, taps, pad), np.int64)], 2).reshape(o * taps, -1)
                m1 = project_pairs(rows)
                t = rows.reshape(o, taps, cg + pad)[:, :, :cg].copy()
                flat = t.reshape(o, -1)
                flat = np.concatenate([flat, np.zeros((o, flat.shape[1] % 2), np.int64)], 1)
                m2 = project_pairs(flat)
                t = flat[:, :taps * cg].reshape(o, taps, cg)
                moved += m1 + m2
                if m1 + m2 == 0:
                    break
            w = np.transpose(t, (0, 2, 1)).reshape(w.shape)
        weights += w.size
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(w.astype(np.int8), dq.input[0]))
        inits[dq.input[2]].CopyFrom(numpy_helper.from_array(np.zeros(z.shape, np.int8), dq.input[2]))
    return moved, weights


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(ref.MODELS))
    ap.add_argument("--onnx", required=True)
    ap.add_argument("-o", "--out")
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    m = onnx.load(args.onnx)
    moved, weights = constrain(m)
    out = args.out or os.path.join(tempfile.mkdtemp(), "constrained.onnx")
    onnx.save(m, out)
    before = ref.run_model(args.model, limit=args.limit, onnx_path=args.onnx)["map"]
    after = ref.run_model(args.model, limit=args.limit, onnx_path=out)["map"]
    print(f"{args.model}: {moved} weight pairs moved ({100 * 2 * moved / weights:.2f} % of {weights} conv weights); "
          f"mAP {before:.4f} -> {after:.4f} (ORT on this CPU)")


if __name__ == "__main__":
    main()
