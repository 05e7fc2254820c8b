// quantize: flags → pipeline::QuantizeJob, and printing of the job's stages (include/inlierq/pipeline.h).
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <memory>

#include "cli.h"

namespace inlierq::cli {

namespace {

struct QuantizeArgs {
  pipeline::QuantizeJob job;
  bool as_json = false;
  std::vector<std::function<void()>> named;  // the named flags' resolvers (add_named_option)
};

void print_stage(pipeline::Stage stage, const pipeline::QuantizeResult& r, const pipeline::QuantizeJob& job) {
  using pipeline::Stage;
  switch (stage) {
    case Stage::Sensitivity: {
      fmt::print(stderr, "most harmful activation quantizers alone (output SQNR over {} images):\n", r.sensitivity_images);
      for (size_t i = 0; i < r.sensitivity.size() && i < 8; ++i) {
        std::string vals;
        for (const auto& v : r.sensitivity[i].values) vals += (vals.empty() ? "" : ",") + v;
        fmt::print(stderr, "  {:>6.1f} dB  {}\n", r.sensitivity[i].sqnr_db, vals);
      }
      if (r.fallback_groups)
        fmt::print(stderr, "[fallback] {} activation quantizer group(s) left in floating point\n", r.fallback_groups);
      break;
    }
    case Stage::Reconstruct:
      fmt::print(stderr, "[recon] {} units in {:.1f} s (peak activation cache {:.0f} MB{})\n", r.units, r.recon_seconds,
                 r.peak_cache_mb, r.spilled_mb > 0 ? fmt::format(", {:.0f} MB spilled to disk", r.spilled_mb) : std::string());
      break;
    case Stage::Export: {
      const auto& p = r.plan;
      fmt::print("export: layout {}, {:.2f} MB ({:.2f} MB FP32), {:.0f} % of compute MACs in integer kernels ({} compute nodes in "
                 "floating point: {})\n",
                 quant::layout_name(p.layout), r.bytes / 1e6, r.fp32_bytes / 1e6, 100 * r.integer_mac_fraction,
                 p.float_nodes.size(), p.float_nodes.empty() ? std::string("none") : p.float_reasons.front() + ", ...");
      fmt::print("weights stored as {}\n", r.weight_storage);
      if (r.budget_met)
        fmt::print("budget {}: {}\n", job.budget.to_string(),
                   *r.budget_met ? "met" : "NOT met by any configuration tried; wrote the closest (encodings: meta.auto.trials)");
      if (r.fidelity) {
        const auto& f = *r.fidelity;
        fmt::print("label-free fidelity on {} held-out calibration images ({} FP32 boxes with score >= {:g}): agreement mAP {}, "
                   "output SQNR {:.2f} dB\n",
                   f.images, f.reference_boxes, f.reference_score,
                   f.agreement_map >= 0 ? fmt::format("{:.4f} (AP50 {:.4f})", f.agreement_map, f.agreement_map50) : "undefined",
                   f.output_sqnr_db);
      }
      break;
    }
    case Stage::Write: {
      const auto& lat = r.ort_latency;
      if (lat.contains("quantized_ms"))
        fmt::print("ONNX Runtime (CPU, 1 thread, median of {} runs): FP32 {:.2f} ms, quantized {:.2f} ms ({:.2f}× FP32)\n",
                   lat.value("runs", 0), lat["fp32_ms"].get<double>(), lat["quantized_ms"].get<double>(), lat["ratio"].get<double>());
      else if (lat.is_object())
        fmt::print("ONNX Runtime latency: skipped ({})\n", lat.value("skipped", std::string("?")));
      fmt::print("wrote {} (opset {}), {}{}\n", r.out_onnx, r.opset, r.out_encodings, r.out_trt.empty() ? "" : ", " + r.out_trt);
      const auto& s = r.seconds;
      fmt::print("{}: {} on {} images, W{}A{}, {:.2f} s (model load + preparation {:.2f} s, images {:.2f} s, "
                 "calibration{} {:.2f} s{}, export {:.2f} s)\n",
                 r.reconstruction ? "reconstruction" : "calibration", r.method == "auto" ? "auto (" + r.init_method + ")" : r.method,
                 r.calibration_images, r.weight_bits, r.act_bits,
                 s.total, s.prepare, s.images, job.fallback > 0 || job.sensitivity || !r.sensitivity.empty() ? " + sensitivity" : "", s.calibration,
                 r.reconstruction ? fmt::format(", reconstruction {:.2f} s", s.reconstruction) : std::string(), s.export_and_write);
      break;
    }
    case Stage::Evaluate: {
      const auto& e = *r.evaluation;
      const std::string q = fmt::format("W{}A{}", r.weight_bits, r.act_bits);
      fmt::print("\n{:<10} {:>8} {:>8} {:>8}   ({} images of {})\n", "model", "mAP", "AP50", "AP75", e.images, e.annotations);
      fmt::print("{:<10} {:>8.4f} {:>8.4f} {:>8.4f}\n", "FP32", e.fp32.stats[0], e.fp32.stats[1], e.fp32.stats[2]);
      fmt::print("{:<10} {:>8.4f} {:>8.4f} {:>8.4f}   ({} calibration, Δ mAP {:+.4f})\n", q, e.quantized.stats[0],
                 e.quantized.stats[1], e.quantized.stats[2], r.method, e.quantized.stats[0] - e.fp32.stats[0]);
      break;
    }
    case Stage::Report:
      fmt::print("report: {}\n", r.out_report);
      break;
    default:
      break;
  }
}

nlohmann::json result_json(const pipeline::QuantizeResult& r, const pipeline::QuantizeJob& job) {
  nlohmann::json j{{"output", r.out_onnx}, {"encodings", r.out_encodings},
                   {"trt_cache", r.out_trt.empty() ? nlohmann::json() : nlohmann::json(r.out_trt)},
                   {"method", r.method}, {"wbits", r.weight_bits}, {"abits", r.act_bits},
                   {"calibration_images", r.calibration_images}, {"weight_quantizers", r.plan.weights.size()},
                   {"activation_quantizers", r.plan.activations.size()}, {"fallback", job.fallback == pipeline::QuantizeJob::kFallbackAuto ? nlohmann::json("auto") : nlohmann::json(job.fallback)},
                   {"layout", quant::layout_name(r.plan.layout)}, {"bytes", r.bytes},
                   {"integer_mac_fraction", r.integer_mac_fraction}, {"ort_latency", r.ort_latency},
                   {"budget_met", r.budget_met ? nlohmann::json(*r.budget_met) : nlohmann::json()},
                   {"seconds", r.seconds.total}, {"report", r.out_report}, {"fallback_groups", r.fallback_groups},
                   {"bias_corrected_convs", r.bias_corrected_convs}, {"calibrator", r.init_method},
                   {"average_weight_bits", r.average_weight_bits}};
  if (r.fidelity) j["fidelity"] = r.fidelity->to_json();
  if (!r.auto_trials.is_null()) j["auto_trials"] = r.auto_trials;
  if (r.reconstruction) {
    j["reconstruction_seconds"] = r.seconds.reconstruction;
    j["init_method"] = r.init_method;
    j["iters"] = r.iters;
    j["seed"] = job.seed;
    j["peak_cache_mb"] = r.peak_cache_mb;
  }
  if (r.evaluation) {
    j["fp32_map"] = r.evaluation->fp32.stats[0];
    j["fp32_map50"] = r.evaluation->fp32.stats[1];
    j["map"] = r.evaluation->quantized.stats[0];
    j["map50"] = r.evaluation->quantized.stats[1];
    j["eval_images"] = r.evaluation->images;
  }
  return j;
}

int run(QuantizeArgs& a, int threads) {
  for (const auto& resolve : a.named) resolve();
  auto& job = a.job;
  job.recon.threads = threads;
  pipeline::Events ev = console_events();
  auto last = std::chrono::steady_clock::now() - std::chrono::seconds(10);
  const bool tty = isatty(2) != 0;
  std::string method = job.method;  // what runs: `auto` resolves to a reconstruction method below 8 bits
  ev.recon_progress = [&](const recon::ReconOptions::Progress& p) {
    if (std::chrono::steady_clock::now() - last < std::chrono::milliseconds(tty ? 250 : 10000) && p.iter != p.iters) return;
    last = std::chrono::steady_clock::now();
    const int eta = static_cast<int>(p.eta_seconds);
    fmt::print(stderr, "{}{}{} unit {}/{} '{}' iter {}/{} loss {:.4g}  ETA {}:{:02d}:{:02d}{}", tty ? "\r\033[K" : "", method,
               p.passes > 1 ? fmt::format(" pass {}/{}", p.pass, p.passes) : "", p.unit, p.units, p.unit_name, p.iter, p.iters,
               p.loss, eta / 3600, eta / 60 % 60, eta % 60, tty ? "" : "\n");
  };
  ev.stage_done = [&](pipeline::Stage s, const pipeline::QuantizeResult& r) {
    method = r.method;
    print_stage(s, r, job);
  };
  const pipeline::QuantizeResult r = pipeline::quantize(job, ev);
  if (!r.completed) {
    fmt::print(stderr, "[recon] stopped after {} units as asked; checkpoint in {} (continue with --resume)\n", r.units_done,
               r.checkpoint_dir);
    return 4;
  }
  if (a.as_json) std::cout << result_json(r, job).dump() << std::endl;
  return 0;
}

}  // namespace

Command add_quantize(CLI::App& app, const int& threads) {
  auto a = std::make_shared<QuantizeArgs>();
  auto& q = a->job;
  auto& rc = q.recon;
  auto* sub = app.add_subcommand("quantize", "calibrate and write a QDQ ONNX model, its encodings and a TensorRT cache");
  sub->add_option("model", q.model, "FP32 ONNX model")->required();
  sub->add_option("--profile", q.profile, profile_help())->required();
  sub->add_option("--calib", q.calib_dir, "folder of calibration images (unlabeled)")->required();
  sub->add_option("--num-calib", q.num_calib, "number of calibration images (first N by path)")->default_val(64);
  sub->add_option("--preset", q.preset, "w8a8 | w4a8 | w4a4 | w2a4 (any wNaM)");
  sub->add_option("--wbits", q.weight_bits, "weight bits (2..8)");
  sub->add_option("--abits", q.act_bits, "activation bits (2..8)");
  const auto bar = [](const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : " | ") + n;
    return s;
  };
  const auto recon_methods = recon::all_reconstruction_methods();
  sub->add_option("--method", q.method, "auto (default; at 8 bits: every calibrator, weight method and concat policy, and a fallback of the most harmful quantizers, chosen by the fidelity on held-out images; below 8-bit weights or activations: inlierq) | " + bar(quant::calibration_methods()) + " (calibrators) | " + bar(recon_methods) + " (reconstruction)")
      ->default_val("auto");
  sub->add_option("--init-method", q.init_method, "with " + bar(recon_methods) + ": activation range initialisation (" +
                                                      bar(quant::calibration_methods()) + ")")->default_val("mse");
  auto* iters_opt = sub->add_option("--iters", rc.iters, "reconstruction iterations per unit (AdaRound pass / QDrop joint pass)")->default_val(rc.iters);
  sub->add_option("--time-limit", q.time_limit_min, "reconstruction: choose the iterations per unit so that the whole command takes about this many minutes (replaces --iters; the count is printed)")->excludes(iters_opt);
  sub->add_option("--recon-batch", rc.batch, "calibration samples per reconstruction iteration")->default_val(rc.batch);
  sub->add_option("--lr-round", rc.rounding.lr, "Adam learning rate of the rounding logits V")->default_val(rc.rounding.lr);
  sub->add_option("--lr-act", rc.steps.lr, "Adam learning rate of 4-bit activation steps (QDrop; cosine decay); b-bit steps learn at lr·2^(4-b)")->default_val(rc.steps.lr);
  sub->add_option("--round-lambda", rc.rounding.lambda, "weight of AdaRound's rounding regulariser")->default_val(rc.rounding.lambda);
  sub->add_option("--beta-start", rc.rounding.beta_start, "AdaRound β at the end of the warm-up")->default_val(rc.rounding.beta_start);
  sub->add_option("--beta-end", rc.rounding.beta_end, "AdaRound β at the last iteration")->default_val(rc.rounding.beta_end);
  sub->add_option("--warmup", rc.rounding.warmup, "fraction of iterations without the rounding regulariser")->default_val(rc.rounding.warmup);
  sub->add_option("--rec-p", rc.rec_p, "Lp norm of the reconstruction loss (rounding / joint pass)")->default_val(rc.rec_p);
  sub->add_option("--brecq-act-iters", rc.brecq_act_iters, "BRECQ pass 2: activation-step iterations per unit")->default_val(rc.brecq_act_iters);
  sub->add_option("--brecq-lr-act", rc.steps.brecq_lr, "BRECQ pass 2: learning rate of 4-bit activation steps (b-bit: lr·2^(4-b))")->default_val(rc.steps.brecq_lr);
  a->named.push_back(add_named_option(sub, "--step-update", rc.steps.update, recon::step_update_names(),
                                      "how Adam moves the activation steps: absolute (on s, as the references; lr in units of s) "
                                      "or log (on log s; lr is the relative change per iteration)"));
  sub->add_option("--brecq-act-p", rc.brecq_act_p, "BRECQ pass 2: Lp norm of the loss")->default_val(rc.brecq_act_p);
  sub->add_option("--drop-prob", rc.qdrop.drop_prob, "QDrop: probability that an activation element is quantized during training")->default_val(rc.qdrop.drop_prob);
  sub->add_option("--input-mix", rc.qdrop.input_mix, "QDrop: probability that a unit-input element comes from the quantized prefix (else FP)")->default_val(rc.qdrop.input_mix);
  const recon::ReconMethod& inlierq = *recon::find_reconstruction_method("inlierq");
  sub->add_option("--base", q.base, "with --method inlierq: the reconstruction it builds on (" + bar(inlierq.bases) + ")")
      ->default_val(inlierq.bases.front());
  a->named.push_back(add_named_option(sub, "--saliency", rc.inlier_split.saliency, inlier::saliency_names(),
                                      "InlierQ per-volume saliency: Σ g², ‖g‖ or Σ |g·z|"));
  a->named.push_back(add_named_option(sub, "--inlier-weighting", rc.inlier_split.weighting, inlier::weighting_names(),
                                      "InlierQ weights: the posterior, posterior > 0.5, or the --inlier-quantile highest "
                                      "scores with no mixture"));
  sub->add_option("--inlier-quantile", rc.inlier_split.quantile,
                  "with --inlier-weighting quantile: the fraction of volumes kept as inliers")->default_val(rc.inlier_split.quantile);
  a->named.push_back(add_named_option(sub, "--inlier-init", rc.inlier_init, recon::inlier_init_names(), "InlierQ range init"));
  sub->add_flag("!--no-inlier-fisher", rc.inlier_fisher, "InlierQ: F = 1 instead of (|g|+1)² in the weighted loss");
  sub->add_option("--em-iters", rc.inlier_split.em_max_iters, "InlierQ EM: maximum iterations")->default_val(rc.inlier_split.em_max_iters);
  sub->add_option("--em-tol", rc.inlier_split.em_tolerance, "InlierQ EM: relative log-likelihood change to stop")->default_val(rc.inlier_split.em_tolerance);
  sub->add_option("--em-var-floor", rc.inlier_split.em_variance_floor, "InlierQ EM: variance floor (× score variance)")->default_val(rc.inlier_split.em_variance_floor);
  sub->add_option("--em-min-prior", rc.inlier_split.em_min_prior, "InlierQ EM: uniform weights when the inlier prior is below p or above 1−p")->default_val(rc.inlier_split.em_min_prior);
  sub->add_option("--em-min-separation", rc.inlier_split.em_min_separation, "InlierQ EM: uniform weights when the means are closer (pooled sds)")->default_val(rc.inlier_split.em_min_separation);
  sub->add_flag("--fisher", rc.fisher, "weight the reconstruction error by (|g|+1)², g = gradient of the label-free top-K heatmap loss (BRECQ's Fisher option)");
  sub->add_option("--topk", rc.heatmap_loss.topk, "K of the top-K heatmap loss (Fisher weighting)")->default_val(rc.heatmap_loss.topk);
  a->named.push_back(add_named_option(sub, "--aux-loss", rc.heatmap_loss.aux_loss, inlier::aux_loss_names(), "top-K loss"));
  a->named.push_back(add_named_option(sub, "--topk-selection", rc.heatmap_loss.topk_selection, inlier::topk_selection_names(),
                                      "which heatmap entries are the top K"));
  sub->add_option("--recon-shards", rc.shards, "split each mini-batch into N shards run on separate threads (0 = 2 on CPU, 1 on CUDA); results depend on N, not on --threads")->default_val(rc.shards);
  sub->add_option("--holdout", rc.holdout, "calibration images held out of reconstruction training; each unit keeps its start state unless the learned one is better on them (-1 = 1/8 of the set)")->default_val(rc.holdout);
  sub->add_flag("--recon-timing", rc.measure_fp_reference, "also time a plain FP forward+backward of every unit (per-phase costs are in --json and the encodings)");
  sub->add_option("--max-unit-convs", rc.max_block_compute, "blocks with more compute nodes are split into layers")->default_val(rc.max_block_compute);
  sub->add_option("--max-cache-mb", rc.cache.max_mb, "activation cache budget; beyond it caches go float16, then to disk")->default_val(rc.cache.max_mb);
  sub->add_option("--cache-dir", rc.cache.spill_dir, "where activation caches over budget are spilled (default: temp dir)");
  sub->add_option("--checkpoint-dir", q.checkpoint_dir, "reconstruction checkpoint (default OUT.ckpt; removed when the run finishes)");
  sub->add_flag("--resume", q.resume, "continue an interrupted reconstruction from its checkpoint");
  sub->add_option("--stop-after-units", rc.checkpoint.stop_after_units, "stop after N reconstructed units, as if interrupted (testing)")->group("");
  sub->add_option("--weight-method", q.weight_method, "weight scale initialisation: mse | minmax")->default_val("mse");
  sub->add_option("--percentile", q.percentile, "percentile calibrator: keep [100-p, p] %")->default_val(99.99);
  sub->add_option("--seed", q.seed, "random seed of reconstruction (mini-batches, QDrop masks); recorded otherwise");
  sub->add_option("-o,--output", q.out, "output QDQ model (OUT.onnx; writes OUT.encodings.json, OUT.trt.cache)")->required();
  sub->add_option("--exclude", q.exclude, "node (or value) names kept in floating point");
  sub->add_option("--config", q.config, "JSON with per-node bit overrides / exclusions");
  sub->add_flag("--quantize-head", q.quantize_head, "quantize the detection head too (prediction layers' weights at 8 bit)");
  sub->add_flag("--act-symmetric", q.act_symmetric, "symmetric activation grids (TensorRT-style)");
  sub->add_flag("--weight-asymmetric", q.weight_asymmetric,
                "per-channel weight grids with a zero point, as BRECQ and QDrop use (TensorRT needs symmetric weights)");
  sub->add_flag("--separate-concat-scales", q.separate_concat_scales, "give each Concat input its own scale");
  sub->add_flag("--auto-group-calibrators", q.auto_group_calibrators,
                "--method auto: also try each other calibrator on each of the 6 most harmful activation groups (kept when "
                "the held-out agreement gains 0.005; off by default: on the shared models it raised agreement on three and lowered "
                "real mAP, docs/QUANTIZATION.md)");
  sub->add_flag("--float-head-input", q.float_head_input,
                "block layout: leave activations that only floating-point nodes read (the float head's input) "
                "unquantized, as QDrop's COCO code does");
  sub->add_flag("!--no-ort-latency", q.ort_latency,
                "skip the quick ONNX Runtime latency of FP32 vs the exported file (run when python3 can import onnxruntime)");
  a->named.push_back(add_named_option(sub, "--weight-type", q.weight_type, pipeline::weight_type_names(),
                                      "how weight codes are stored: int8, uint8 (zero point 128; ONNX Runtime's U8U8 kernels, "
                                      "which do not saturate on CPUs without VNNI) or auto (--layout ort: int8 for the convs where "
                                      "ONNX Runtime's u8s8 kernels stay exact on CPUs without VNNI, measured on 8 calibration "
                                      "images, uint8 for the rest; block: int8, for TensorRT)"));
  a->named.push_back(add_named_option(sub, "--layout", q.layout, quant::layout_names(),
                                      "where activation Q/DQ go: ort (every op with an integer kernel reads and writes int8, the "
                                      "layout ONNX Runtime fuses), block (block outputs only, after the activation and residual "
                                      "Add) or auto (ort with 8-bit activations, block below)"));
  a->named.push_back(add_named_option(sub, "--bias-correction", q.bias_correction, pipeline::bias_correction_names(),
                                      "empirical bias correction: each quantized conv's bias absorbs the mean error (against FP32, "
                                      "on calibration images) of what the next layer reads; auto lets --method auto keep it "
                                      "when the held-out fidelity improves (off with other methods)"));
  sub->add_option("--bias-correction-images", q.bias_correction_images, "calibration images bias correction measures on, in one batch")
      ->default_val(q.bias_correction_images);
  sub->add_option("--batch", q.batch, "calibration batch size")->default_val(8);
  sub->add_option("--fidelity-images", q.fidelity_images, "calibration-folder images held out of calibration for the label-free fidelity estimate (agreement mAP against the FP32 detections, output SQNR) that auto chooses by and the report shows: the next ones after --num-calib (0 = none)")->default_val(q.fidelity_images);
  sub->add_option("--reference-score", q.fidelity_reference_score, "fidelity estimate: FP32 detections at or above this score are the ground truth")->default_val(q.fidelity_reference_score);
  auto budget = std::make_shared<std::string>();
  sub->add_option("--budget", *budget,
                  "what the result must stay within, comma-separated: int8-macs=F (--method auto: at least this share of the "
                  "conv MACs in ONNX Runtime's integer 8-bit kernels, 0..1), latency=X (--method auto: ONNX Runtime latency "
                  "at most X times FP32's, 1 thread, measured for every trial; needs python3 with onnxruntime), "
                  "weight-bits=B (any method: the weights that hurt the outputs most per bit go from the preset's bits to "
                  "8 while the average over all weight parameters stays <= B, e.g. --preset w4a8 --budget weight-bits=5)");
  a->named.push_back([budget, &q] {
    if (!budget->empty()) q.budget = pipeline::parse_budget(*budget);
  });
  a->named.push_back(add_named_option(sub, "--sensitivity-error", q.sensitivity_error, quant::sensitivity_error_names(),
                                      "what ranks weights for --budget weight-bits: the plain output error, or InlierQ's "
                                      "inlier-weighted one (the profile's heatmap; docs/QUANTIZATION.md 4d)"));
  auto fallback = std::make_shared<std::string>("auto");
  sub->add_option("--fallback", *fallback,
                  "leave the N activation quantizer groups that alone hurt the outputs most in floating point, or auto: "
                  "--method auto's own search; with reconstruction, the groups an 8-bit grid alone takes below 10 dB "
                  "output SQNR; with a calibrator, none")
      ->default_str("auto");
  a->named.push_back([fallback, &q] {
    if (*fallback == "auto") {
      q.fallback = pipeline::QuantizeJob::kFallbackAuto;
      return;
    }
    size_t used = 0;
    int n = -1;
    try {
      n = std::stoi(*fallback, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != fallback->size() || n < 0)
      throw Error("--fallback: expected auto or a number of groups ≥ 0, got '" + *fallback + "'");
    q.fallback = n;
  });
  sub->add_flag("--sensitivity", q.sensitivity, "print the per-quantizer sensitivity (also done by --fallback)");
  sub->add_option("--sensitivity-images", q.sensitivity_images, "calibration images used for the sensitivity analysis")->default_val(8);
  sub->add_option("--eval-images", q.eval_images, "evaluate FP32 and quantized mAP on these images");
  sub->add_option("--eval-annotations", q.eval_annotations, "COCO instances JSON for --eval-images");
  sub->add_option("--eval-limit", q.eval_limit, "evaluate the first N images only");
  sub->add_option("--device", q.device, "cpu or cuda[:N]");
  sub->add_flag("--force", q.force, "overwrite existing outputs");
  sub->add_flag("--json", a->as_json, "print one JSON object as the last line");
  return {sub, [a, &threads] { return run(*a, threads); }};
}

}  // namespace inlierq::cli
