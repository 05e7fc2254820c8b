"""Bad input to the CLI: every case exits non-zero (never by a signal) with a short message on stderr that
names the problem, and no Python-style traceback or 'internal error'. Uses tiny models built here so that
it does not depend on which ops the executor supports yet."""
import json
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

from common import CLI, MODELS, Checks, run_cli


def tiny_model(path, custom_op=False):
    """x[1,3,8,8] -> Conv 'conv0' -> Relu 'relu0' (or com.example.FancyOp 'fancy0') -> y."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.random.default_rng(0).standard_normal(108).astype(np.float32))
    conv = helper.make_node("Conv", ["x", "w"], ["h"], name="conv0", pads=[1, 1, 1, 1])
    act = (helper.make_node("FancyOp", ["h"], ["y"], name="fancy0", domain="com.example") if custom_op
           else helper.make_node("Relu", ["h"], ["y"], name="relu0"))
    graph = helper.make_graph([conv, act], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=7), path)


def main():
    checks = Checks()

    def expect_error(what, args, needles, rc=None):
        p = run_cli(*args, check=False)
        problems = []
        if p.returncode < 0:
            problems.append(f"killed by signal {-p.returncode}")
        elif p.returncode == 0:
            problems.append("exit code 0")
        elif rc is not None and p.returncode != rc:
            problems.append(f"exit code {p.returncode}, expected {rc}")
        for bad in ("Traceback", "internal error", "terminate called", "Segmentation"):
            if bad in p.stderr:
                problems.append(f"'{bad}' on stderr")
        missing = [n for n in needles if n not in p.stderr]
        if missing:
            problems.append(f"stderr lacks {missing}")
        if len([l for l in p.stderr.splitlines() if l.strip()]) > 4:
            problems.append("more than 4 lines on stderr")
        shown = p.stderr.strip()[:400] if problems else (p.stderr.strip().splitlines() or [""])[0]
        checks.check(not problems, f"{what}: rc={p.returncode} {'; '.join(problems)}| {shown}")
        return p

    with tempfile.TemporaryDirectory() as tmp:
        def path(name):
            return os.path.join(tmp, name)

        def write(name, data):
            with open(path(name), "wb") as f:
                f.write(data)
            return path(name)

        def npy(name, arr):
            np.save(path(name), arr)
            return path(name)

        model, custom = path("tiny.onnx"), path("custom.onnx")
        tiny_model(model)
        tiny_model(custom, custom_op=True)
        with open(MODELS["yolox_nano"][0], "rb") as f:
            yolox = f.read()
        rng = np.random.default_rng(1)
        good = npy("good.npy", rng.random((1, 3, 8, 8), dtype=np.float32))

        # inspect: unreadable models
        expect_error("inspect missing file", ["inspect", path("nope.onnx")], ["nope.onnx", "cannot open"], rc=1)
        expect_error("inspect empty file", ["inspect", write("empty.onnx", b"")], ["empty.onnx", "not a valid ONNX model"], rc=1)
        expect_error("inspect garbage", ["inspect", write("garbage.onnx", rng.bytes(5000))], ["garbage.onnx", "not a valid ONNX model"], rc=1)
        expect_error("inspect truncated yolox", ["inspect", write("half.onnx", yolox[: len(yolox) // 2])], ["half.onnx", "truncated"], rc=1)
        expect_error("inspect a directory", ["inspect", tmp], [tmp], rc=1)
        expect_error("inspect unsupported op", ["inspect", custom], ["fancy0", "FancyOp", "unsupported"], rc=2)
        p = run_cli("inspect", "--json", custom, check=False)
        try:
            import json
            listed = json.loads(p.stdout)["unsupported"]
        except ValueError:
            listed = None
        checks.check(p.returncode == 2 and listed == [{"node": "fancy0", "op": "FancyOp", "domain": "com.example"}],
                     f"inspect --json lists the unsupported node (rc={p.returncode}, {listed})")
        checks.check(run_cli("inspect", model, check=False).returncode == 0, "inspect of the valid tiny model exits 0")

        # infer: bad inputs
        out = path("out")
        base = ["infer", model, "--output-dir", out]
        expect_error("infer wrong input name", base + ["--input", f"images={good}"], ["unknown input 'images'", "'x'"], rc=1)
        expect_error("infer wrong shape", base + ["--input", "x=" + npy("s.npy", np.zeros((1, 3, 9, 8), np.float32))],
                     ["input 'x'", "[1,3,9,8]", "[1,3,8,8]"], rc=1)
        expect_error("infer wrong rank", base + ["--input", "x=" + npy("r.npy", np.zeros((3, 8, 8), np.float32))],
                     ["input 'x'", "[3,8,8]"], rc=1)
        expect_error("infer int64 input", base + ["--input", "x=" + npy("i.npy", np.zeros((1, 3, 8, 8), np.int64))],
                     ["input 'x'", "int64", "float32"], rc=1)
        expect_error("infer float64 input", base + ["--input", "x=" + npy("d.npy", np.zeros((1, 3, 8, 8)))],
                     ["input 'x'", "float64"], rc=1)
        expect_error("infer complex .npy", base + ["--input", "x=" + npy("c.npy", np.zeros((1, 3, 8, 8), np.complex64))],
                     ["c.npy", "unsupported .npy dtype"], rc=1)
        expect_error("infer big-endian .npy", base + ["--input", "x=" + npy("be.npy", np.zeros((1, 3, 8, 8), ">f4"))],
                     ["be.npy", "unsupported .npy dtype"], rc=1)
        expect_error("infer Fortran-order .npy", base + ["--input", "x=" + npy("fo.npy", np.asfortranarray(np.zeros((1, 3, 8, 8), np.float32)))],
                     ["fo.npy", "Fortran"], rc=1)
        expect_error("infer text file as input", base + ["--input", "x=" + write("t.txt", b"1 2 3\n")], ["t.txt", "not a .npy file"], rc=1)
        expect_error("infer ONNX file as input", base + ["--input", f"x={model}"], ["tiny.onnx", "not a .npy file"], rc=1)
        expect_error("infer missing input file", base + ["--input", "x=" + path("none.npy")], ["none.npy", "cannot open"], rc=1)
        with open(good, "rb") as f:
            good_bytes = f.read()
        expect_error("infer truncated .npy", base + ["--input", "x=" + write("tr.npy", good_bytes[:-100])], ["tr.npy", "truncated"], rc=1)
        huge = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4000000000, 4000000000, 4000000000), }"
        huge = b"\x93NUMPY\x01\x00" + len(huge + b"\n").to_bytes(2, "little") + huge + b"\n" + b"\0" * 64
        expect_error("infer .npy with absurd shape", base + ["--input", "x=" + write("huge.npy", huge)], ["huge.npy"], rc=1)
        nan = np.zeros((1, 3, 8, 8), np.float32)
        nan[0, 1, 2, 3] = np.nan
        expect_error("infer NaN input", base + ["--input", "x=" + npy("nan.npy", nan)], ["input 'x'", "NaN"], rc=1)
        expect_error("infer missing --input", base, ["--input"])
        expect_error("infer malformed --input", base + ["--input", good], ["NAME=FILE.npy"], rc=1)
        expect_error("infer input given twice", base + ["--input", f"x={good}", "--input", f"x={good}"], ["'x'", "twice"], rc=1)
        expect_error("infer unsupported op", ["infer", custom, "--output-dir", out, "--input", f"x={good}"], ["fancy0", "FancyOp"], rc=1)
        expect_error("infer unknown device", base + ["--input", f"x={good}", "--device", "tpu"], ["tpu"], rc=1)
        expect_error("infer non-CPU/CUDA device", base + ["--input", f"x={good}", "--device", "xla"], ["xla"], rc=1)
        expect_error("infer output dir is a file", ["infer", model, "--output-dir", good, "--input", f"x={good}"], ["good.npy"], rc=1)

        # infer: refuses to overwrite without --force
        ok = run_cli(*base, "--input", f"x={good}", check=False)
        checks.check(ok.returncode == 0 and os.path.exists(os.path.join(out, "y.npy")), f"infer on valid input exits 0 (rc={ok.returncode} {ok.stderr.strip()})")
        before = os.stat(os.path.join(out, "y.npy")).st_mtime_ns if ok.returncode == 0 else None
        expect_error("infer refuses to overwrite", base + ["--input", f"x={good}"], ["y.npy", "already exists", "--force"], rc=1)
        after = os.stat(os.path.join(out, "y.npy")).st_mtime_ns if ok.returncode == 0 else None
        checks.check(before == after, "the refused run left the existing output untouched")
        forced = run_cli(*base, "--input", f"x={good}", "--force", check=False)
        checks.check(forced.returncode == 0, f"infer --force overwrites (rc={forced.returncode})")
        leftovers = [f for f in os.listdir(out) if ".tmp." in f]
        checks.check(not leftovers, f"no temporary files left in the output dir ({leftovers})")
        # quantize: argument and input errors, all before any calibration work
        fd = MODELS["fastestdet_352"][0]
        calib_dir = os.path.join(tmp, "calib")
        os.makedirs(calib_dir)
        good_img = os.path.join(os.path.dirname(MODELS["fastestdet_352"][0]), "..", "coco128", "images", "train2017")
        first_jpg = sorted(f for f in os.listdir(good_img) if f.endswith(".jpg"))[0]
        with open(os.path.join(good_img, first_jpg), "rb") as f:
            jpg = f.read()
        empty_dir = os.path.join(tmp, "empty_calib")
        os.makedirs(empty_dir)
        broken_dir = os.path.join(tmp, "broken_calib")
        os.makedirs(broken_dir)
        with open(os.path.join(broken_dir, "a.jpg"), "wb") as f:
            f.write(b"not a jpeg")
        with open(os.path.join(calib_dir, "one.jpg"), "wb") as f:
            f.write(jpg)
        qout = path("q.onnx")
        qbase = ["quantize", fd, "--profile", "fastestdet", "--calib", calib_dir, "-o", qout]
        expect_error("quantize unknown preset", qbase + ["--preset", "w9a8"], ["w9a8", "preset"], rc=1)
        expect_error("quantize preset and bits", qbase + ["--preset", "w8a8", "--wbits", "4", "--abits", "4"], ["--preset", "--wbits"], rc=1)
        expect_error("quantize no bits", qbase, ["--preset"], rc=1)
        expect_error("quantize bits out of range", qbase + ["--wbits", "1", "--abits", "8"], ["2..8"], rc=1)
        expect_error("quantize unknown method", qbase + ["--preset", "w8a8", "--method", "kl"], ["'kl'", "calibration method"], rc=1)
        expect_error("quantize auto without held-out images", qbase + ["--preset", "w8a8", "--method", "auto", "--fidelity-images", "0"],
                     ["--method auto", "--fidelity-images 0"], rc=1)
        expect_error("quantize unknown budget key", qbase + ["--preset", "w8a8", "--budget", "size=3"], ["--budget", "'size'", "int8-macs"], rc=1)
        expect_error("quantize budget not a number", qbase + ["--preset", "w8a8", "--budget", "int8-macs=most"], ["int8-macs=most", "not a number"], rc=1)
        expect_error("quantize bias correction with reconstruction", qbase + ["--preset", "w4a8", "--method", "qdrop", "--bias-correction", "on"],
                     ["--bias-correction on", "--method qdrop"], rc=1)
        expect_error("quantize unknown bias correction", qbase + ["--preset", "w8a8", "--bias-correction", "always"],
                     ["--bias-correction", "always", "auto, on or off"], rc=1)
        expect_error("quantize no bias correction images", qbase + ["--preset", "w8a8", "--bias-correction-images", "0"],
                     ["--bias-correction-images", "at least 1"], rc=1)
        expect_error("quantize budget out of range", qbase + ["--preset", "w8a8", "--budget", "int8-macs=1.5"], ["int8-macs=1.5", "(0, 1]"], rc=1)
        expect_error("quantize budget without auto", qbase + ["--preset", "w8a8", "--method", "minmax", "--budget", "latency=0.8"],
                     ["--budget", "--method minmax"], rc=1)
        expect_error("quantize weight-bits budget out of range", qbase + ["--preset", "w4a8", "--budget", "weight-bits=9"],
                     ["weight-bits=9", "[2, 8]"], rc=1)
        expect_error("quantize weight-bits budget below the plan's", qbase + ["--preset", "w8a8", "--method", "minmax", "--budget", "weight-bits=5"],
                     ["weight-bits=5", "already average 8.00 bits"], rc=1)
        expect_error("quantize group calibrators without auto", qbase + ["--preset", "w8a8", "--method", "minmax", "--auto-group-calibrators"],
                     ["--auto-group-calibrators", "--method minmax"], rc=1)
        expect_error("quantize budget below 8 bits", qbase + ["--preset", "w4a4", "--budget", "int8-macs=0.9"],
                     ["int8-macs=0.9", "below 8 bits", "inlierq"], rc=1)
        expect_error("quantize fallback neither auto nor a count", qbase + ["--preset", "w8a8", "--fallback", "some"],
                     ["--fallback", "auto", "'some'"], rc=1)
        expect_error("quantize bad reference score", qbase + ["--preset", "w8a8", "--reference-score", "1.5"], ["--reference-score"], rc=1)
        expect_error("compare bad reference score", ["compare", fd, fd, "--profile", "fastestdet", "--images", calib_dir,
                                                     "--reference-score", "0"], ["--reference-score"], rc=1)
        expect_error("compare missing image folder", ["compare", fd, fd, "--profile", "fastestdet", "--images", path("nodir")],
                     ["nodir"], rc=1)
        expect_error("compare against another network", ["compare", fd, MODELS["yolox_nano"][0], "--profile", "fastestdet",
                                                         "--images", calib_dir], ["quantized model has no output"], rc=1)
        expect_error("quantize unknown weight method", qbase + ["--preset", "w8a8", "--weight-method", "kl"], ["'kl'", "weight"], rc=1)
        expect_error("quantize unknown layout", qbase + ["--preset", "w8a8", "--layout", "nhwc"], ["'nhwc'", "auto, ort or block"], rc=1)
        expect_error("quantize unknown sensitivity error", qbase + ["--preset", "w8a8", "--sensitivity-error", "median"],
                     ["'median'", "output or inlier"], rc=1)
        with open(os.path.join(os.environ.get("INLIERQ_SOURCE_DIR", "."), "profiles", "fastestdet.json")) as f:
            no_heatmap = json.load(f)
        del no_heatmap["heatmap"]
        no_heatmap["name"] = "fastestdet_no_heatmap"
        expect_error("quantize inlier sensitivity without a heatmap",
                     ["quantize", fd, "--profile", write("no_heatmap.json", json.dumps(no_heatmap).encode()), "--calib", calib_dir,
                      "-o", qout, "--preset", "w4a8", "--method", "minmax", "--budget", "weight-bits=5", "--sensitivity-error", "inlier"],
                     ["--sensitivity-error inlier", "heatmap", "fastestdet_no_heatmap"], rc=1)
        expect_error("quantize unknown weight type", qbase + ["--preset", "w8a8", "--weight-type", "int4"], ["'int4'", "int8 or uint8"], rc=1)
        expect_error("quantize negative time limit", qbase + ["--preset", "w4a4", "--method", "qdrop", "--time-limit", "-1"], ["--time-limit"], rc=1)
        expect_error("quantize time limit without reconstruction", qbase + ["--preset", "w4a4", "--method", "mse", "--time-limit", "5"],
                     ["--time-limit", "qdrop"], rc=1)
        expect_error("quantize time limit and iterations", qbase + ["--preset", "w4a4", "--method", "qdrop", "--time-limit", "5", "--iters", "10"],
                     ["--time-limit", "--iters"])
        expect_error("quantize unknown step update", qbase + ["--preset", "w4a4", "--method", "qdrop", "--step-update", "relative"],
                     ["--step-update", "'relative'", "absolute or log"], rc=1)
        expect_error("quantize inlier quantile out of range", qbase + ["--preset", "w4a4", "--method", "inlierq", "--inlier-weighting",
                                                                "quantile", "--inlier-quantile", "1.5"], ["--inlier-quantile", "(0, 1]"], rc=1)
        expect_error("quantize float head input in the ort layout", qbase + ["--preset", "w8a8", "--float-head-input"],
                     ["--float-head-input", "block layout"], rc=1)
        expect_error("quantize asymmetric int8 weights", qbase + ["--preset", "w4a4", "--weight-asymmetric", "--weight-type", "int8"],
                     ["--weight-asymmetric", "--weight-type int8"], rc=1)
        expect_error("quantize negative threads", ["--threads", "-1"] + qbase + ["--preset", "w4a4", "--method", "qdrop"], ["--threads"], rc=1)
        expect_error("quantize bad holdout", qbase + ["--preset", "w4a4", "--method", "qdrop", "--holdout", "-2"], ["--holdout"], rc=1)
        expect_error("quantize bad shard count", qbase + ["--preset", "w4a4", "--method", "qdrop", "--recon-shards", "100"], ["--recon-shards"], rc=1)
        expect_error("quantize zero calibration images", qbase + ["--preset", "w8a8", "--num-calib", "0"], ["--num-calib"], rc=1)
        expect_error("quantize negative fallback", qbase + ["--preset", "w8a8", "--fallback", "-1"], ["--fallback"], rc=1)
        expect_error("quantize unknown profile", ["quantize", fd, "--profile", "nosuch", "--calib", calib_dir, "-o", qout,
                                                  "--preset", "w8a8"], ["nosuch"], rc=1)
        expect_error("quantize missing calib dir", ["quantize", fd, "--profile", "fastestdet", "--calib", path("nodir"), "-o", qout,
                                                    "--preset", "w8a8"], ["nodir"], rc=1)
        expect_error("quantize empty calib dir", ["quantize", fd, "--profile", "fastestdet", "--calib", empty_dir, "-o", qout,
                                                  "--preset", "w8a8"], ["empty_calib"], rc=1)
        expect_error("quantize unreadable calib images", ["quantize", fd, "--profile", "fastestdet", "--calib", broken_dir,
                                                          "-o", qout, "--preset", "w8a8"], ["a.jpg"], rc=1)
        expect_error("quantize unknown --exclude", qbase + ["--preset", "w8a8", "--exclude", "Conv_999"], ["Conv_999"], rc=1)
        expect_error("quantize bad --config", qbase + ["--preset", "w8a8", "--config", write("bad.json", b"{nope")], ["bad.json", "JSON"], rc=1)
        expect_error("quantize config with unknown key", qbase + ["--preset", "w8a8", "--config",
                                                                  write("k.json", b'{"nodes": {"Conv_0": {"bits": 4}}}')],
                     ["Conv_0", "'bits'"], rc=1)
        expect_error("quantize eval images without annotations", qbase + ["--preset", "w8a8", "--eval-images", calib_dir],
                     ["--eval-annotations"], rc=1)
        expect_error("quantize onto its own input", ["quantize", fd, "--profile", "fastestdet", "--calib", calib_dir, "-o", fd,
                                                     "--preset", "w8a8"], ["overwrite the input model"], rc=1)
        expect_error("quantize corrupt model", ["quantize", write("bad.onnx", b"garbage" * 100), "--profile", "fastestdet",
                                                "--calib", calib_dir, "-o", qout, "--preset", "w8a8"], ["bad.onnx"], rc=1)
        okq = run_cli(*qbase, "--preset", "w8a8", "--num-calib", "1", check=False)
        checks.check(okq.returncode == 0 and all(os.path.exists(path(f)) for f in ("q.onnx", "q.encodings.json", "q.trt.cache", "q.report.html")),
                     f"quantize on one calibration image writes the model, encodings, TensorRT cache and report (rc={okq.returncode} {okq.stderr.strip()[-300:]})")
        stamp = os.stat(qout).st_mtime_ns if okq.returncode == 0 else None
        expect_error("quantize refuses to overwrite", qbase + ["--preset", "w8a8"], ["q.onnx", "already exists", "--force"], rc=1)
        checks.check(stamp == (os.stat(qout).st_mtime_ns if okq.returncode == 0 else None), "the refused quantize left q.onnx untouched")
        expect_error("inspect --plan unknown preset", ["inspect", fd, "--plan", "--preset", "x"], ["preset"], rc=1)
        expect_error("inspect --plan unknown layout", ["inspect", fd, "--plan", "--layout", "nchw"], ["'nchw'", "auto, ort or block"], rc=1)
        plan = run_cli("inspect", fd, "--plan", "--profile", "fastestdet", check=False)
        checks.check(plan.returncode == 0 and "activation quantizers" in plan.stdout and "detection head" in plan.stdout,
                     f"inspect --plan prints the plan (rc={plan.returncode})")
        units = run_cli("inspect", fd, "--units", "--preset", "w4a4", check=False)
        checks.check(units.returncode == 0 and "reconstruction units" in units.stdout and "block" in units.stdout,
                     f"inspect --units prints the units (rc={units.returncode})")

        # saliency pictures
        one_jpg = os.path.join(calib_dir, "one.jpg")
        sal = run_cli("saliency", fd, "--profile", "fastestdet", one_jpg, "-o", path("sal"), check=False)
        made = sorted(os.listdir(path("sal"))) if os.path.isdir(path("sal")) else []
        checks.check(sal.returncode == 0 and "saliency.json" in made and sum(f.endswith(".png") for f in made) == 3
                     and sum(f.endswith(".svg") for f in made) == 3,
                     f"saliency writes 3 overlays, 3 histograms and saliency.json (rc={sal.returncode} {made})")
        expect_error("saliency unknown unit", ["saliency", fd, "--profile", "fastestdet", one_jpg, "-o", path("sal2"), "--unit", "Conv_999"],
                     ["Conv_999", "--unit"], rc=1)
        expect_error("saliency refuses to overwrite", ["saliency", fd, "--profile", "fastestdet", one_jpg, "-o", path("sal")],
                     ["already exists", "--force"], rc=1)
        expect_error("inlierq unknown base", ["quantize", fd, "--profile", "fastestdet", "--calib", calib_dir, "-o", path("i.onnx"),
                                             "--preset", "w4a4", "--method", "inlierq", "--base", "adaround"], ["--base"], rc=1)

        # reconstruction: option errors, interruption, refusal to restart over a checkpoint, resume
        rout = path("r.onnx")
        rbase = ["quantize", fd, "--profile", "fastestdet", "--calib", calib_dir, "-o", rout, "--preset", "w4a4",
                 "--method", "qdrop", "--iters", "2", "--recon-batch", "1"]
        expect_error("recon unknown init method", rbase + ["--init-method", "kl"], ["--init-method", "'kl'"], rc=1)
        expect_error("recon drop probability out of range", rbase + ["--drop-prob", "2"], ["--drop-prob"], rc=1)
        expect_error("recon unknown aux loss", rbase + ["--fisher", "--aux-loss", "l1"], ["--aux-loss", "'l1'"], rc=1)
        for flags, needle in ((["--recon-batch", "0"], "--recon-batch"), (["--iters", "-1"], "--iters"),
                              (["--brecq-act-iters", "-1"], "--brecq-act-iters"), (["--warmup", "1"], "--warmup"),
                              (["--topk", "0"], "--topk"), (["--topk-selection", "any"], "--topk-selection"),
                              (["--max-unit-convs", "0"], "--max-unit-convs"), (["--em-min-prior", "0.7"], "--em-min-prior")):
            expect_error(f"recon {' '.join(flags)}", rbase[:rbase.index("--iters")] + flags, [needle], rc=1)
        ibase = rbase[:rbase.index("--method")] + ["--method", "inlierq", "--iters", "2", "--recon-batch", "1"]
        for flags, needle in ((["--saliency", "abs"], "--saliency"), (["--inlier-weighting", "x"], "--inlier-weighting"),
                              (["--inlier-init", "x"], "--inlier-init")):
            expect_error(f"inlierq {' '.join(flags)}", ibase + flags, [needle, "'"], rc=1)
        expect_error("recon resume without checkpoint", rbase + ["--resume"], ["--resume", "no checkpoint"], rc=1)
        stopped = run_cli(*rbase, "--stop-after-units", "3", check=False)
        checks.check(stopped.returncode == 4 and os.path.exists(path("r.ckpt/state.json")) and not os.path.exists(rout),
                     f"an interrupted reconstruction leaves a checkpoint and no model (rc={stopped.returncode} {stopped.stderr.strip()[-200:]})")
        expect_error("recon refuses to start over a checkpoint", rbase, ["checkpoint", "--resume", "--force"], rc=1)
        state = path("r.ckpt/state.json")
        saved = open(state, "rb").read() if os.path.exists(state) else b""
        with open(state, "wb") as f:
            f.write(b"{not json")
        expect_error("recon resume from a corrupt checkpoint", rbase + ["--resume"], ["state.json", "corrupt checkpoint"], rc=1)
        with open(state, "wb") as f:
            f.write(saved)
        resumed = run_cli(*rbase, "--resume", check=False)
        enc = {}
        if resumed.returncode == 0:
            import json
            with open(path("r.encodings.json")) as f:
                enc = json.load(f)
        reports = enc.get("meta", {}).get("reconstruction", {}).get("reports", [])
        checks.check(resumed.returncode == 0 and os.path.exists(rout) and not os.path.exists(path("r.ckpt")) and len(reports) == 20
                     and "resuming" in resumed.stderr,
                     f"--resume finishes the run, reports all 20 units and removes the checkpoint (rc={resumed.returncode} "
                     f"{resumed.stderr.strip()[-200:]})")
    checks.finish()


if __name__ == "__main__":
    if not os.path.exists(CLI):
        raise SystemExit(f"CLI binary not found at {CLI}; set INLIERQ_CLI")
    main()
