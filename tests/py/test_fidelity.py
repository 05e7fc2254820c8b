"""The label-free fidelity estimate (`inlierq compare`, `quantize`'s held-out report, `--method auto`), FastestDet:

- a model against itself: agreement mAP and AP50 exactly 1 (every reference box is found at IoU 1, before any
  lower-scored box), output SQNR beyond 200 dB (no error at all);
- a W8A8 export against the FP32 model: agreement mAP equals an independent computation: both files run in
  ONNX Runtime with bench/reference_pipeline.py's own pre- and post-processing, the FP32 detections with
  score >= 0.3 become a COCO ground truth and pycocotools scores the quantized detections against it. The two
  pipelines differ by rounding flips in the quantized file, so |Δ| <= 0.03 on 24 images (on 8, an AVX-512 CPU
  measured 0.07 apart and 0.006 on 24; a wrong threshold,
  category map or box convention moves it by far more);
- `quantize` with the default method (auto) holds its fidelity images out of calibration, measures every
  calibrator, builds its later trials on the best of them (a kept fallback re-opens the choice), ends within 0.01 agreement of its best trial (a
  quantized head may cost 0.005, a fallback must gain 0.01), and reports the fidelity of the written file: the
  same numbers `inlierq compare` gives on those held-out files;
- a QDQ file whose quantizer feeds a Reshape with the batch baked in (NanoDet, separate concat scales) runs at
  batch 4;
- bias correction, checked in ONNX Runtime: on the images it measured on, what each ReLU after a quantized conv
  hands the next layer (its dequantized output) has per-channel means at least 3x closer to the FP32 model's with
  `--bias-correction on` than without; auto's last trial is the bias-corrected best, and the file says whether
  it was kept.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from common import ASSETS, CLI, MODELS, SOURCE_DIR, VAL_IMAGES, Checks, calibration_folder

sys.path.insert(0, os.path.join(SOURCE_DIR, "bench"))
import reference_pipeline as rp  # noqa: E402

MODEL = MODELS["fastestdet_352"][0]


def run_json(*args):
    r = subprocess.run([CLI, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"inlierq {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def image_folder(tmp, name, files):
    folder = os.path.join(tmp, name)
    os.makedirs(folder)
    for f in files:
        os.symlink(os.path.abspath(f), os.path.join(folder, os.path.basename(f)))
    return folder


def independent_agreement(fp32_path, quant_path, files, reference_score=0.3):
    """Agreement mAP by ONNX Runtime + the reference pipeline + pycocotools."""
    from pycocotools.coco import COCO

    rp.ORT_OPT_LEVEL = "disable"  # the QDQ file's float semantics, as inlierq's executor runs it
    sessions = [rp.ort_session(p, 1) for p in (fp32_path, quant_path)]
    images, annotations, detections = [], [], []
    for i, f in enumerate(files, start=1):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        images.append({"id": i, "file_name": os.path.basename(f), "width": rgb.shape[1], "height": rgb.shape[0]})
        for k, sess in enumerate(sessions):
            boxes, scores, labels = rp.detect_image(sess, "fastestdet", rgb)
            for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                box = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
                if k == 0 and s >= reference_score:
                    annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": rp.COCO80_IDS[c],
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
                elif k == 1:
                    detections.append({"image_id": i, "category_id": rp.COCO80_IDS[c], "bbox": box, "score": s})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": str(c)} for c in rp.COCO80_IDS]}
    gt.createIndex()
    stats, _ = rp.coco_eval(gt, detections, [im["id"] for im in images])
    return stats[0], len(annotations)


def relu_read_means(fp32_path, quant_path, files):
    """Per-channel means, over `files`, of each quantized ReLU output as the next layer reads it (ORT, float Q/DQ)."""
    import onnx
    import onnxruntime as ort

    fp, q = onnx.load(fp32_path), onnx.load(quant_path)
    relus = [n.output[0] for n in fp.graph.node if n.op_type == "Relu"]
    qvalues = {o for n in q.graph.node for o in n.output}
    pairs = [(r, r + "_dequantized") for r in relus if r + "_dequantized" in qvalues]
    xs = [rp.preprocess_fastestdet(np.asarray(Image.open(f).convert("RGB")), 352)[0] for f in files]
    means = []
    for model, names in ((fp, [a for a, _ in pairs]), (q, [b for _, b in pairs])):
        del model.graph.output[:]
        model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(n) for n in names])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runs = [sess.run(names, {sess.get_inputs()[0].name: x}) for x in xs]  # the file has batch 1
        means.append([np.mean([r[k].mean(axis=(0, 2, 3)) for r in runs], axis=0) for k in range(len(names))])
    return means, len(pairs)


def main():
    checks = Checks()
    val = [os.path.join(VAL_IMAGES, f) for f in sorted(os.listdir(VAL_IMAGES))[:24]]
    with tempfile.TemporaryDirectory() as tmp:
        folder = image_folder(tmp, "val24", val)
        same = run_json("compare", MODEL, MODEL, "--profile", "fastestdet", "--images", folder, "--json")
        checks.check(same["agreement_map"] == 1.0 and same["agreement_map50"] == 1.0 and same["output_sqnr_db"] > 200 and
                     same["reference_boxes"] > 0,
                     f"the model against itself: agreement {same['agreement_map']}, AP50 {same['agreement_map50']}, "
                     f"SQNR {same['output_sqnr_db']:.0f} dB, {same['reference_boxes']} reference boxes")

        calib = calibration_folder(tmp, 24)
        fixed = os.path.join(tmp, "minmax.onnx")
        run_json("quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8", "--preset", "w8a8",
                 "--method", "minmax", "--fidelity-images", "0", "--no-ort-latency", "-o", fixed, "--json")
        got = run_json("compare", MODEL, fixed, "--profile", "fastestdet", "--images", folder, "--json")
        ref, boxes = independent_agreement(MODEL, fixed, val)
        checks.check(got["reference_boxes"] == boxes and abs(got["agreement_map"] - ref) <= 0.03 and got["agreement_map"] < 1,
                     f"W8A8 minmax: agreement {got['agreement_map']:.4f} vs ORT + pycocotools {ref:.4f} "
                     f"({got['reference_boxes']} vs {boxes} reference boxes)")

        out = os.path.join(tmp, "auto.onnx")
        res = run_json("quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8", "--preset", "w8a8",
                       "--fidelity-images", "16", "--no-ort-latency", "-o", out, "--json")
        meta = json.load(open(out.replace(".onnx", ".encodings.json")))["meta"]
        held = meta["fidelity"]["files"]
        checks.check(len(held) == 16 and not set(held) & set(meta["calibration_files"]) and len(meta["calibration_files"]) == 8,
                     f"auto: {len(held)} held-out images, none of the {len(meta['calibration_files'])} calibrated on")
        trials = res["auto_trials"]
        first = trials[:4]
        best = max(first, key=lambda t: (t["fidelity"]["agreement_map"], t["fidelity"]["output_sqnr_db"]))
        # Without a fallback the later trials build on the best calibrator; a kept fallback re-opens the choice.
        checks.check(sorted(t["calibrator"] for t in first) == ["entropy", "minmax", "mse", "percentile"] and
                     all(t["calibrator"] == best["calibrator"] for t in trials[4:] if not t["fallback"]),
                     f"auto: every calibrator measured, later trials without a fallback build on the best ({best['calibrator']})")
        chosen = [t for t in trials if abs(t["fidelity"]["agreement_map"] - res["fidelity"]["agreement_map"]) < 1e-12]
        checks.check((res["calibrator"] == best["calibrator"] or res["fallback_groups"] > 0) and chosen and
                     all(res["fidelity"]["agreement_map"] >= t["fidelity"]["agreement_map"] - 0.01 for t in trials),
                     f"auto chose {res['calibrator']}: agreement {res['fidelity']['agreement_map']:.4f}, one of its trials and "
                     f"within 0.01 of the best of them (a quantized head may cost 0.005, a fallback must gain 0.01)")
        again = run_json("compare", MODEL, out, "--profile", "fastestdet", "--images", image_folder(tmp, "held", held), "--json")
        checks.check(abs(again["agreement_map"] - res["fidelity"]["agreement_map"]) < 1e-9 and
                     abs(again["output_sqnr_db"] - res["fidelity"]["output_sqnr_db"]) < 1e-6,
                     f"quantize's reported fidelity = compare on the held-out files: agreement "
                     f"{res['fidelity']['agreement_map']:.6f} vs {again['agreement_map']:.6f}, SQNR "
                     f"{res['fidelity']['output_sqnr_db']:.4f} vs {again['output_sqnr_db']:.4f} dB")
        meta_auto = meta["auto"]
        checks.check(trials[-1]["bias_correction"] and "+bc" in trials[-1]["config"] and
                     (res["bias_corrected_convs"] > 0) == trials[meta_auto["chosen_trial"]]["bias_correction"] and
                     ("bias_correction" in meta) == (res["bias_corrected_convs"] > 0),
                     f"auto: last trial {trials[-1]['config']}; chosen {trials[meta_auto['chosen_trial']]['config']}, "
                     f"{res['bias_corrected_convs']} convs corrected in the file")

        errors = {}
        for mode in ("off", "on"):
            f = os.path.join(tmp, f"bc_{mode}.onnx")
            run_json("quantize", MODEL, "--profile", "fastestdet", "--calib", calib, "--num-calib", "8", "--preset", "w8a8",
                     "--method", "percentile", "--bias-correction", mode, "--bias-correction-images", "8",
                     "--fidelity-images", "0", "--no-ort-latency", "-o", f, "--json")
            files = json.load(open(f.replace(".onnx", ".encodings.json")))["meta"]["calibration_files"]
            (m_fp, m_q), n = relu_read_means(MODEL, f, files)
            errors[mode] = sum(float(np.abs(a - b).sum()) for a, b in zip(m_fp, m_q))
        checks.check(n > 20 and errors["on"] * 3 < errors["off"],
                     f"bias correction in ORT: summed |mean error| of {n} quantized ReLU outputs {errors['off']:.4f} -> "
                     f"{errors['on']:.4f}")

        # NanoDet's channel shuffle reshapes with the batch baked in ([1,2,58,52,52]); with separate concat scales a
        # quantizer feeds that Reshape, and compare runs 4 images per batch: the QDQ file must keep the shapes the
        # executor needs to re-batch it.
        nano = os.path.join(tmp, "nanodet_sep.onnx")
        run_json("quantize", MODELS["nanodet_m_416"][0], "--profile", "nanodet", "--calib", calib, "--num-calib", "4",
                 "--preset", "w8a8", "--method", "minmax", "--separate-concat-scales", "--fidelity-images", "0",
                 "--no-ort-latency", "-o", nano, "--json")
        four = image_folder(tmp, "val4", val[:4])
        got = run_json("compare", MODELS["nanodet_m_416"][0], nano, "--profile", "nanodet", "--images", four, "--json")
        checks.check(got["images"] == 4 and 0 < got["agreement_map"] < 1,
                     f"NanoDet with separate concat scales at batch 4: agreement {got['agreement_map']:.4f}")
    checks.finish()


if __name__ == "__main__":
    main()
