// The quantize job (include/inlierq/pipeline.h): validation, then the stages load → plan → images →
// calibrate → sensitivity → reconstruct → export → write → evaluate → report.
#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "inlierq/dataset.h"
#include "inlierq/error.h"
#include "inlierq/inlier.h"
#include "inlierq/interrupt.h"
#include "inlierq/onnx_io.h"
#include "inlierq/pipeline.h"
#include "inlierq/preprocess.h"
#include "inlierq/report.h"
#include "inlierq/runtime.h"
#include "inlierq/transforms.h"
#include "pipeline/auto_choice.h"
#include "pipeline/budget.h"
#include "pipeline/progress.h"
#include "quant/calibrators.h"
#include "util/atomic_file.h"

namespace inlierq::pipeline {

namespace fs = std::filesystem;

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::Load: return "load";
    case Stage::Plan: return "plan";
    case Stage::Images: return "images";
    case Stage::Calibrate: return "calibrate";
    case Stage::Sensitivity: return "sensitivity";
    case Stage::Reconstruct: return "reconstruct";
    case Stage::Export: return "export";
    case Stage::Write: return "write";
    case Stage::Evaluate: return "evaluate";
    case Stage::Report: return "report";
  }
  return "?";
}

std::pair<int, int> resolve_bits(const std::string& preset, int weight_bits, int act_bits) {
  if (!preset.empty()) {
    if (weight_bits || act_bits) throw Error("give either --preset or --wbits/--abits, not both");
    int w = 0, x = 0;
    char tail = 0;
    if (std::sscanf(preset.c_str(), "w%da%d%c", &w, &x, &tail) != 2 || w < 2 || w > 8 || x < 2 || x > 8)
      throw Error("unknown preset '" + preset + "' (expected wNaM with N, M in 2..8, e.g. w8a8, w4a8, w4a4, w2a4)");
    return {w, x};
  }
  if (!weight_bits || !act_bits) throw Error("give --preset (e.g. w8a8) or both --wbits and --abits");
  return {weight_bits, act_bits};
}

quant::PlacementOptions placement_options(const QuantizeJob& job) {
  const auto [wbits, abits] = resolve_bits(job.preset, job.weight_bits, job.act_bits);
  quant::PlacementOptions po;
  po.weight_bits = wbits;
  po.act_bits = abits;
  po.act_symmetric = job.act_symmetric;
  po.weight_symmetric = !job.weight_asymmetric;
  po.quantize_head = job.quantize_head;
  po.share_concat_scales = !job.separate_concat_scales;
  po.float_inputs_of_float_nodes = job.float_head_input;
  if (job.float_head_input && (job.layout == quant::QdqLayout::Ort || (job.layout == quant::QdqLayout::Auto && abits >= 8)))
    throw Error("--float-head-input applies to the block layout (below 8-bit activations, or --layout block); "
                "the ort layout quantizes every compute output");
  po.layout = job.layout;
  po.exclude = job.exclude;
  if (!job.config.empty()) {
    std::ifstream f(job.config);
    if (!f) throw Error("cannot open quantization config '" + job.config + "'");
    try {
      po.overrides = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      throw Error(job.config + ": not valid JSON: " + e.what());
    }
  }
  return po;
}

const NameTable<WeightType>& weight_type_names() {
  static const NameTable<WeightType> t{{{WeightType::Auto, "auto"}, {WeightType::Int8, "int8"}, {WeightType::Uint8, "uint8"}}};
  return t;
}

const NameTable<BiasCorrectionMode>& bias_correction_names() {
  static const NameTable<BiasCorrectionMode> t{
      {{BiasCorrectionMode::Auto, "auto"}, {BiasCorrectionMode::On, "on"}, {BiasCorrectionMode::Off, "off"}}};
  return t;
}

bool is_reconstruction_method(const std::string& method) { return recon::find_reconstruction_method(method) != nullptr; }

recon::ReconOptions reconstruction_options(const QuantizeJob& job) {
  recon::ReconOptions ro = job.recon;
  ro.method = job.method;
  const recon::ReconMethod* m = recon::find_reconstruction_method(job.method);
  if (m && !m->bases.empty()) {
    if (std::find(m->bases.begin(), m->bases.end(), job.base) == m->bases.end())
      throw Error("--base must be " + quant::join_names(m->bases) + " with --method " + m->name + ", got '" + job.base + "'");
    ro.method = job.base;
    ro.inlier = m->inlier;
  }
  return ro;
}

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

std::string strip_onnx_suffix(const std::string& path) {
  const std::string ext = ".onnx";
  return path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0
             ? path.substr(0, path.size() - ext.size())
             : path;
}

// Outputs of the last `count` units: the feature maps next to the head, where the posterior is most telling.
std::vector<std::string> last_unit_outputs(const std::vector<recon::Unit>& units, size_t count) {
  std::vector<std::string> v;
  for (size_t i = units.size() > count ? units.size() - count : 0; i < units.size(); ++i) v.push_back(units[i].outputs.front());
  return v;
}

void say(const std::function<void(const std::string&)>& f, const std::string& line) {
  if (f) f(line);
}

// Everything that can be refused without loading the model: names, option combinations, output paths.
struct Paths {
  std::string onnx, encodings, trt, report, checkpoint;
};

Paths validate(const QuantizeJob& job, const std::string& act_method, bool recon_method) {
  const auto methods = quant::calibration_methods();
  const auto recon_methods = recon::all_reconstruction_methods();
  const bool auto_method = act_method == "auto" && !recon_method;
  if (!auto_method && std::find(methods.begin(), methods.end(), act_method) == methods.end())
    throw Error(recon_method ? "unknown --init-method '" + act_method + "' (expected " + quant::join_names(methods) + ")"
                             : "unknown method '" + job.method + "' (expected auto; a calibration method: " +
                                   quant::join_names(methods, "") + "; or a reconstruction method: " +
                                   quant::join_names(recon_methods, "") + ")");
  if (auto_method && job.fidelity_images == 0)
    throw Error("--method auto chooses by the fidelity on held-out images; --fidelity-images 0 leaves none");
  if (job.auto_group_calibrators && (!auto_method || recon_method))
    throw Error("--auto-group-calibrators is a step of --method auto's 8-bit search; --method " + job.method + " has no such search");
  if (job.budget.constrains_trials() && !auto_method)
    throw Error("--budget " + job.budget.to_string() + ": int8-macs and latency are what --method auto searches within; --method " +
                job.method + " makes no choices to fit them (weight-bits works with every method)");
  if (!(job.fidelity_reference_score > 0 && job.fidelity_reference_score < 1))
    throw Error("--reference-score must be in (0, 1)");
  if (job.bias_correction == BiasCorrectionMode::On && recon_method)
    throw Error("--bias-correction on applies to calibration (--method auto or a calibrator); --method " + job.method +
                " reconstructs the weights against the FP32 outputs itself");
  if (job.bias_correction != BiasCorrectionMode::Off && job.bias_correction_images == 0)
    throw Error("--bias-correction-images must be at least 1");
  if (job.weight_asymmetric && job.weight_type == WeightType::Int8)
    throw Error("--weight-asymmetric stores weight codes as uint8 with per-channel zero points; --weight-type int8 needs symmetric weights");
  if (job.weight_method != "mse" && job.weight_method != "minmax")
    throw Error("unknown weight calibration method '" + job.weight_method + "' (expected mse or minmax)");
  if (job.num_calib == 0) throw Error("--num-calib must be at least 1");
  if (job.fallback < 0 && job.fallback != QuantizeJob::kFallbackAuto) throw Error("--fallback must be ≥ 0 (or auto)");
  if (!job.eval_images.empty() != !job.eval_annotations.empty())
    throw Error("--eval-images and --eval-annotations go together");
  const std::string base = strip_onnx_suffix(job.out);
  Paths p{base + ".onnx", base + ".encodings.json", base + ".trt.cache", base + ".report.html",
          job.checkpoint_dir.empty() ? base + ".ckpt" : job.checkpoint_dir};
  if (fs::absolute(p.onnx).lexically_normal() == fs::absolute(job.model).lexically_normal())
    throw Error("-o would overwrite the input model '" + job.model + "'");
  for (const auto& f : {p.onnx, p.encodings, p.trt, p.report}) ensure_writable(f, job.force);
  ensure_output_folder(p.onnx);
  return p;
}

void check_checkpoint_options(const QuantizeJob& job, const Paths& p, bool recon_method) {
  if (recon_method && !job.resume && fs::exists(fs::path(p.checkpoint) / "state.json")) {
    if (!job.force)
      throw Error("a checkpoint of an interrupted run exists in '" + p.checkpoint +
                  "'; pass --resume to continue it or --force to start over");
    fs::remove_all(p.checkpoint);
  }
  if (recon_method) recon::validate_options(reconstruction_options(job));
  if (job.resume && !recon_method) throw Error("--resume applies to --method " + quant::join_names(recon::all_reconstruction_methods()));
  if (job.time_limit_min < 0) throw Error("--time-limit must be > 0 minutes");
  if (job.time_limit_min > 0 && !recon_method) throw Error("--time-limit applies to --method " + quant::join_names(recon::all_reconstruction_methods()));
  if (job.resume) {
    const auto state = fs::path(p.checkpoint) / "state.json";
    std::ifstream f(state);
    if (!f) throw Error("--resume: no checkpoint in '" + p.checkpoint + "'");
    // Unreadable state fails now, not after calibration (reconstruct() checks the contents against the run).
    try {
      const nlohmann::json state_json = nlohmann::json::parse(f);
      (void)state_json;
    } catch (const std::exception& e) {
      throw Error(state.string() + ": corrupt checkpoint: " + e.what());
    }
  }
}

// In the ORT layout every compute node with quantized weights that ONNX Runtime will still run in floating point
// is a deliberate choice the plan must name: the head's prediction layers (weights quantized, outputs kept in
// float) and consumers of activations left in floating point by a fallback or an exclusion.
// integer_set: quant::integer_compute_nodes of the plan.
void list_float_compute(const std::set<std::string>& integer_set, quant::QuantPlan& plan) {
  if (plan.layout != quant::QdqLayout::Ort) return;
  for (const auto& a : plan.activations)
    if (a.bits != 8) return;  // sub-8-bit grids stop ORT's fusion everywhere (their Clip)
  const std::set<std::string> listed(plan.float_nodes.begin(), plan.float_nodes.end());
  const std::set<std::string> head(plan.head_nodes.begin(), plan.head_nodes.end());
  const std::string fallback = plan.float_activations.empty() ? "" : " (" + plan.float_activation_reasons.front() + ")";
  for (const auto& w : plan.weights) {
    if (integer_set.count(w.node) || listed.count(w.node)) continue;
    plan.float_nodes.push_back(w.node);
    plan.float_reasons.push_back(head.count(w.node) ? "detection head: weights quantized, output kept in floating point"
                                                    : "weights quantized; its input or output is not on an 8-bit grid" + fallback);
  }
}

// A scale group in one line: a Concat's shared group can hold a dozen values.
std::string group_label(const std::vector<std::string>& values) {
  if (values.size() <= 3) return quant::join_names(values);
  return fmt::format("{} and the {} other values sharing its scale", values.front(), values.size() - 1);
}

// Symmetric weight codes stored as uint8 at zero point 128 before export_qdq picks the convs where int8 is exact.
bool stores_unsigned_weights(const QuantizeJob& job, const quant::QuantPlan& plan) {
  return job.weight_type == WeightType::Uint8 || (job.weight_type == WeightType::Auto && plan.layout == quant::QdqLayout::Ort);
}

bool int8_is_exact(const quant::U8S8Check& c) { return c.depthwise || c.accumulator_sqnr_db >= QuantizeJob::kU8S8MinSqnrDb; }

// The QDQ file of a plan as the job stores its weights. `--weight-type auto` with the ORT layout: int8 weights (ORT's
// faster U8S8 kernels, and VNNI's) for the convs where they are exact on every x86 CPU — depthwise convs, and convs
// whose int16 pair saturation without VNNI stays negligible on `probe` — and uint8 at zero point 128 (U8U8
// kernels, never saturating) for the rest; `checks` gets the measurements. docs/QUANTIZATION.md §2a.
Graph export_qdq(const Graph& g, const quant::QuantPlan& plan, const quant::Encodings& enc, const QuantizeJob& job,
                 const std::vector<TensorData>& probe, std::vector<quant::U8S8Check>* checks = nullptr,
                 std::set<std::string>* stored_int8 = nullptr) {
  quant::ExportOptions xo;
  xo.unsigned_weights = stores_unsigned_weights(job, plan);
  Graph qdq = quant::make_qdq_graph(g, plan, enc, xo);
  if (job.weight_type == WeightType::Auto && xo.unsigned_weights && !job.weight_asymmetric) {
    std::vector<quant::U8S8Check> measured = quant::check_u8s8_saturation(qdq, probe);
    std::set<std::string> exact;
    for (const auto& c : measured)
      if (int8_is_exact(c)) exact.insert(c.conv);
    const std::set<std::string> stored = quant::store_conv_weights_signed(qdq, exact);
    if (checks) *checks = std::move(measured);
    if (stored_int8) *stored_int8 = stored;
  }
  return qdq;
}

// The storage export_qdq chose, for the log and the encodings. A conv measured exact whose weight it shares with
// one that is not keeps uint8, and is listed with the uint8 ones.
void record_weight_storage(const std::vector<quant::U8S8Check>& checks, const std::set<std::string>& stored_int8, size_t images,
                           quant::Encodings& enc, QuantizeResult& res) {
  nlohmann::json int8 = nlohmann::json::array(), kept = nlohmann::json::array();
  size_t depthwise = 0;
  for (const auto& c : checks) {
    if (stored_int8.count(c.conv)) {
      int8.push_back(c.conv);
      depthwise += c.depthwise;
    } else {
      kept.push_back({{"conv", c.conv}, {"accumulator_sqnr_db", c.accumulator_sqnr_db},
                      {"saturated_pairs", c.saturated_pairs}, {"pairs", c.pairs}});
    }
  }
  res.weight_storage = fmt::format("int8 for {} of {} convs ({} depthwise), uint8 at zero point 128 for {} whose int16 pair "
                                   "saturation without VNNI would cost accuracy",
                                   int8.size(), checks.size(), depthwise, kept.size());
  enc.meta["u8s8_check"] = {{"rule", fmt::format("int8 where the accumulator SQNR under int16 pair saturation is >= {} dB "
                                                 "(depthwise: always)", QuantizeJob::kU8S8MinSqnrDb)},
                            {"images", images}, {"int8", int8}, {"uint8", kept}};
}

// InlierQ's volume weights at the outputs for the inlier-weighted sensitivity figure (docs/QUANTIZATION.md §4d); none
// without the profile's heatmap (ranking by them then was refused at load).
quant::OutputWeights output_weights_for_sensitivity(const Graph& g, const std::vector<TensorData>& probe,
                                                    const ModelProfile& profile, const QuantizeJob& job) {
  if (!profile.declares_heatmap()) return {};
  inlier::HeatmapLossOptions loss = job.recon.heatmap_loss;
  loss.heatmap = profile.heatmap;
  return inlier::output_inlier_weights(g, probe, loss, job.recon.inlier_split, job.device);
}

// Reconstruction's automatic fallback (docs/RECONSTRUCTION.md, "Automatic fallback"), from each activation group
// quantized alone (weights and every other activation in floating point) on the first sensitivity_images images:
// - below 8-bit activations, a group that alone takes the outputs below kLowBitHarmfulDb at the plan's bits is
//   raised to 8 bits: on YOLOX-Nano W4A4 three such groups (5-7 dB; the next is 10 dB) make reconstruction collapse;
// - a group that alone takes the outputs below kUnrepresentableDb even at 8 bits stays in floating point: its
//   channels span incompatible ranges (YOLOX-Nano's stem output, 7 dB at 8 bits; every group of the other shared
//   models measures at least 13 dB).
// Raised groups are calibrated again at 8 bits on all calibration images.
void auto_fallback_for_reconstruction(const Graph& g, const std::vector<TensorData>& inputs, const quant::CalibrationOptions& co,
                                      const QuantizeJob& job, const Events& ev, quant::QuantPlan& plan, quant::Encodings& enc,
                                      QuantizeResult& res) {
  const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + std::min(inputs.size(), job.sensitivity_images));
  const auto now = ProgressReporter::clock::now;
  int least_bits = 8;
  for (const auto& a : plan.activations) least_bits = std::min(least_bits, a.bits);

  std::vector<int> drop;
  ProgressReporter p8(ev, "fallback: each quantizer group alone at 8 bits", plan.num_groups, now(), "groups");
  const auto sens8 = quant::eight_bit_sensitivity(g, plan, probe, co, [&](size_t d, size_t) { p8.update(d); });
  for (const auto& s : sens8) {
    if (!(s.sqnr_db < QuantizeJob::kUnrepresentableDb)) break;
    drop.push_back(s.group);
    res.fallback_auto.push_back({s.values, s.sqnr_db});
    say(ev.log, fmt::format("[fallback] auto: {} left in floating point (alone at 8 bits the outputs' SQNR is {:.1f} dB, "
                            "below {:.0f}; --fallback 0 keeps it)",
                            group_label(s.values), s.sqnr_db, QuantizeJob::kUnrepresentableDb));
  }
  std::set<int> raise;
  if (least_bits < 8) {
    ProgressReporter pb(ev, fmt::format("fallback: each quantizer group alone at {} bits", least_bits), plan.num_groups, now(), "groups");
    const auto sens = quant::activation_sensitivity(g, plan, enc, probe, co.device, [&](size_t d, size_t) { pb.update(d); });
    for (const auto& s : sens) {
      if (!(s.sqnr_db < QuantizeJob::kLowBitHarmfulDb)) break;
      if (std::find(drop.begin(), drop.end(), s.group) != drop.end()) continue;
      raise.insert(s.group);
      res.raised_to_8_bits.push_back({s.values, s.sqnr_db});
      say(ev.log, fmt::format("[fallback] auto: {} raised to 8 bits (alone at {} bits the outputs' SQNR is {:.1f} dB, below "
                              "{:.0f}; --fallback 0 keeps it at {} bits)",
                              group_label(s.values), least_bits, s.sqnr_db, QuantizeJob::kLowBitHarmfulDb, least_bits));
    }
  }
  if (!raise.empty()) {
    for (auto& a : plan.activations)
      if (raise.count(a.group)) {
        a.bits = 8;
        a.reason += ", raised to 8 bits by the automatic fallback";
      }
    enc = quant::calibrate(g, plan, inputs, co);
  }
  const auto entries = [](const std::vector<SensitivityEntry>& v, const char* db_key) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& e : v) j.push_back({{"values", e.values}, {db_key, e.sqnr_db}});
    return j;
  };
  enc.meta["fallback_auto"] = {
      {"rule", fmt::format("floating point where a group alone takes the outputs below {:.0f} dB SQNR at 8 bits; 8 bits where "
                           "it does so below {:.0f} dB at the plan's bits",
                           QuantizeJob::kUnrepresentableDb, QuantizeJob::kLowBitHarmfulDb)},
      {"images", probe.size()},
      {"least_at_8_bits_db", sens8.empty() ? nlohmann::json() : nlohmann::json(sens8.front().sqnr_db)},
      {"floating_point", entries(res.fallback_auto, "sqnr_db_at_8_bits")},
      {"raised_to_8_bits", entries(res.raised_to_8_bits, "sqnr_db")}};
  if (!drop.empty()) quant::drop_activation_groups(plan, enc, drop, "automatic fallback: no 8-bit grid holds it");
  res.fallback_groups = drop.size();
  enc.meta["fallback_groups"] = drop.size();
  res.plan = plan;
}

// `auto` below 8 bits is InlierQ: every calibrator alone loses most of the accuracy there (docs/RESULTS.md: the best
// of them keeps 0.0001-0.018 mAP at W4A4 and W4A8), so there is nothing worth choosing among.
QuantizeJob resolve_auto_method(const QuantizeJob& job, const Events& ev) {
  const auto [wbits, abits] = resolve_bits(job.preset, job.weight_bits, job.act_bits);
  if (job.method != "auto" || (wbits >= 8 && abits >= 8)) return job;
  if (job.budget.constrains_trials())
    throw Error("--budget " + job.budget.to_string() + ": below 8 bits --method auto reconstructs with inlierq, which has no "
                "trials to choose within int8-macs or latency (that search is for 8-bit calibration; weight-bits works here)");
  QuantizeJob r = job;
  // InlierQ scores positions by the profile's heatmap; a profile without one gets InlierQ's base alone.
  const bool heatmap = load_profile(job.profile).declares_heatmap();
  r.method = heatmap ? "inlierq" : job.base;
  say(ev.log, fmt::format("[auto] W{}A{}: calibration alone loses most of the accuracy below 8 bits, so --method auto "
                          "reconstructs with {}; --method mse (or another calibrator) calibrates only",
                          wbits, abits, heatmap ? "inlierq (on " + r.base + ")" : r.base + " (the profile declares no heatmap for inlierq)"));
  return r;
}

}  // namespace

// Images each weight's harm is measured on by the weight-bits budget (as --method auto's sensitivity ranking: 4 rank
// the layers; one forward pass per weight).
constexpr size_t kWeightBitsImages = 4;

QuantizeResult quantize(const QuantizeJob& requested, const Events& ev) {
  const auto t0 = clock_type::now();
  QuantizeResult res;
  const auto stage_done = [&](Stage s) {
    if (ev.stage_done) ev.stage_done(s, res);
  };
  std::tie(res.weight_bits, res.act_bits) = resolve_bits(requested.preset, requested.weight_bits, requested.act_bits);
  const QuantizeJob job = resolve_auto_method(requested, ev);
  res.reconstruction = is_reconstruction_method(job.method);
  res.method = job.method;
  res.init_method = res.reconstruction ? job.init_method : job.method;
  const Paths paths = validate(job, res.init_method, res.reconstruction);
  const OutputLock lock(paths.onnx);  // held until the job returns
  check_checkpoint_options(job, paths, res.reconstruction);
  res.out_onnx = paths.onnx, res.out_encodings = paths.encodings, res.out_report = paths.report;
  res.checkpoint_dir = paths.checkpoint;
  const auto out_dir = fs::path(paths.onnx).parent_path();
  if (!out_dir.empty()) make_output_dir(out_dir.string());

  // ---- load
  const ModelProfile profile = load_profile(job.profile);
  if (job.sensitivity_error == quant::SensitivityError::Inlier && !profile.declares_heatmap())
    throw Error("--sensitivity-error inlier needs the model profile's heatmap (profile '" + profile.name + "' has none)");
  const Graph original = load_onnx(job.model);
  ModelSummary summary = summarize(original);
  if (!summary.unsupported.empty())
    throw Error(job.model + ": node '" + summary.unsupported[0]->name + "' uses unsupported op '" + summary.unsupported[0]->op_type + "'");
  PrepareReport prep;
  const Graph g = prepare_for_quantization(original, job.model, &prep);
  res.seconds.prepare = seconds_since(t0);
  stage_done(Stage::Load);

  // ---- plan
  quant::PlacementOptions placement = placement_options(job);
  quant::QuantPlan plan = quant::derive_plan(g, placement);
  if (job.budget.max_weight_bits > 0) quant::check_weight_bits_budget(g, plan, job.budget.max_weight_bits);  // before any work
  res.plan = plan;
  say(ev.log, fmt::format("[plan] {} weight and {} activation quantizers ({} scale groups); {} compute nodes in floating point",
                          plan.weights.size(), plan.activations.size(), plan.num_groups, plan.float_nodes.size()));
  stage_done(Stage::Plan);

  // ---- images: the first N of the folder that decode, in sorted path order; others are skipped by name.
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms_of_inputs;
  ImageFolder folder;
  {
    ProgressReporter progress(ev, "load calibration images", job.num_calib + job.fidelity_images);
    folder = load_image_folder(job.calib_dir, job.num_calib + job.fidelity_images, [&](size_t i, const std::string&, Image&& img) {
      Preprocessed pp = preprocess(img, profile.preprocess);
      inputs.push_back(std::move(pp.tensor));
      transforms_of_inputs.push_back(pp.transform);
      progress.update(i + 1);
    });
  }
  for (const auto& w : folder.warnings) say(ev.warning, w + "; skipped");
  // The held-out images: after the first num_calib, or the last quarter of a smaller folder.
  const size_t loaded = inputs.size();
  size_t held_out = 0;
  if (job.fidelity_images > 0) {
    if (loaded >= job.num_calib + job.fidelity_images) held_out = job.fidelity_images;
    else if (loaded >= 16) held_out = std::min(job.fidelity_images, loaded / 4);
  }
  const size_t calibrated = std::min(job.num_calib, loaded - held_out);
  std::vector<TensorData> held_inputs(std::make_move_iterator(inputs.begin() + calibrated),
                                      std::make_move_iterator(inputs.begin() + calibrated + held_out));
  std::vector<InputTransform> held_transforms(transforms_of_inputs.begin() + calibrated,
                                              transforms_of_inputs.begin() + calibrated + held_out);
  res.fidelity_files.assign(folder.paths.begin() + calibrated, folder.paths.begin() + calibrated + held_out);
  inputs.resize(calibrated);
  transforms_of_inputs.resize(calibrated);
  // The images the weight storage is measured on (export_qdq), by the export and by --budget latency's trials.
  const std::vector<TensorData> storage_probe(inputs.begin(), inputs.begin() + std::min(inputs.size(), QuantizeJob::kU8S8Images));
  folder.paths.resize(calibrated);
  if (calibrated < job.num_calib)
    say(ev.warning, fmt::format("{} has only {} decodable images; calibrating on {} (asked for {}){}", job.calib_dir, loaded,
                                calibrated, job.num_calib,
                                held_out ? fmt::format(" and holding out {} for the fidelity estimate (--fidelity-images 0 "
                                                       "calibrates on all)", held_out)
                                         : std::string()));
  if (job.fidelity_images > 0 && held_out == 0)
    say(ev.warning, fmt::format("no held-out images for the fidelity estimate (the folder has {} images; it needs 16, or "
                                "--num-calib + --fidelity-images)", loaded));
  res.calibration_images = inputs.size();
  res.calibration_files = folder.paths;
  res.skipped_images = folder.warnings;
  res.seconds.images = seconds_since(t0) - res.seconds.prepare;
  stage_done(Stage::Images);

  // ---- weight bits within the budget: which low-bit weights go to 8 bits, before anything is calibrated on them
  if (job.budget.max_weight_bits > 0) {
    std::set<std::string> fixed;  // explicit per-node bits in --config stay as the user gave them
    if (placement.overrides.is_object() && placement.overrides.contains("nodes"))
      for (const auto& [name, o] : placement.overrides["nodes"].items())
        if (o.contains("weight_bits")) fixed.insert(name);
    const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + std::min<size_t>(inputs.size(), kWeightBitsImages));
    std::optional<ProgressReporter> wp;  // its total is known at the first report
    const auto wstart = ProgressReporter::clock::now();
    const quant::OutputWeights inlier_weights = output_weights_for_sensitivity(g, probe, profile, job);
    const auto choice = quant::assign_weight_bits(g, plan, probe, job.budget.max_weight_bits, job.weight_method, job.device, fixed, 8,
                                                  [&](size_t d, size_t n) {
                                                    if (!wp) wp.emplace(ev, "weight-bits budget (one weight at a time)", n, wstart, "forward passes");
                                                    wp->update(d);
                                                  },
                                                  inlier_weights, job.sensitivity_error);
    placement.budget_weight_bits = choice.node_bits;
    plan = quant::derive_plan(g, placement);
    res.plan = plan;
    res.weight_bits_budget = choice.to_json();
    res.weight_bits_budget["images"] = probe.size();
    const double before = choice.frontier.front().sqnr_db, after = choice.frontier.back().sqnr_db;
    say(ev.log, fmt::format("[budget] weight-bits={}: {} of {} low-bit weights raised to 8 bits, average {:.2f} -> {:.2f} bits; "
                            "output SQNR with the weights alone quantized {:.2f} -> {:.2f} dB on {} calibration images",
                            job.budget.max_weight_bits, choice.node_bits.size(), choice.layers.size(), choice.average_bits_before,
                            choice.average_bits, before, after, probe.size()));
  }

  // ---- calibrate
  std::unique_ptr<FidelityReference> reference;
  if (held_out > 0) {
    FidelityOptions fo;
    fo.device = job.device;
    fo.reference_score = job.fidelity_reference_score;
    fo.topk = job.recon.heatmap_loss.topk;
    fo.progress = [](size_t, size_t) { throw_if_interrupted(); };
    reference = std::make_unique<FidelityReference>(g, profile, std::move(held_inputs), std::move(held_transforms), fo);
  }
  const bool auto_method = job.method == "auto";
  if (auto_method && !reference) {
    say(ev.warning, "--method auto needs held-out images; calibrating with minmax instead");
    res.init_method = "minmax";
  }
  quant::CalibrationOptions co;
  co.method = res.init_method;
  co.weight_method = job.weight_method;
  co.percentile = job.percentile;
  co.batch = job.batch;
  co.device = job.device;
  co.input_names = folder.paths;
  std::unique_ptr<ProgressReporter> pass_progress;
  int current_pass = 0;
  // The first report of a pass comes after its first batch: the pass began at the previous report.
  auto pass_start = clock_type::now();
  std::string calibrating = res.init_method;
  co.progress = [&](int pass, int passes, size_t done, size_t total) {
    if (pass != current_pass) {
      current_pass = pass;
      pass_progress = std::make_unique<ProgressReporter>(ev, fmt::format("calibrate {} pass {}/{}", calibrating, pass, passes),
                                                         total, pass_start);
    }
    pass_progress->update(done);
    pass_start = clock_type::now();
  };
  quant::Encodings enc;
  quant::QuantPlan final_plan = plan;
  quant::BiasCorrection bias_correction;  // chosen by auto, or asked for with --bias-correction on
  if (auto_method && reference) {
    AutoChoiceInputs ai;
    ai.graph = &g;
    ai.placement = placement;
    ai.choose_group_calibrators = job.auto_group_calibrators;
    ai.weight_method = job.weight_method;
    ai.reference = reference.get();
    ai.device = job.device;
    ai.max_fallback = job.fallback == QuantizeJob::kFallbackAuto ? job.auto_max_fallback : 0;
    ai.budget = job.budget;
    ai.budget.max_weight_bits = 0;  // already spent on the plan
    if (job.budget.max_latency > 0) {
      const fs::path probe = fs::temp_directory_path() / ("inlierq_latency_probe_" + std::to_string(::getpid()) + ".onnx");
      ai.latency_ratio = [&job, probe](const Graph& qdq) {
        save_onnx(qdq, probe.string());
        const nlohmann::json lat = ort_latency(job.model, probe.string(), 40);
        std::error_code ec;
        fs::remove(probe, ec);
        if (!lat.contains("ratio"))
          throw Error("--budget " + job.budget.to_string() + ": cannot measure the latency (" + lat.value("skipped", std::string("no ratio")) +
                      "); it needs python3 with onnxruntime ($INLIERQ_PYTHON)");
        return lat["ratio"].get<double>();
      };
      ai.export_qdq = [&job, &storage_probe](const Graph& graph, const quant::QuantPlan& plan, const quant::Encodings& encodings) {
        return export_qdq(graph, plan, encodings, job, storage_probe);
      };
    }
    // Four images, half the cost of the explicit --fallback's eight: on YOLOX-Nano they give the same three most
    // harmful groups (1177, 687, 861), and a wrong rank only costs a rejected trial.
    ai.sensitivity_inputs.assign(inputs.begin(), inputs.begin() + std::min<size_t>(inputs.size(), 4));
    ai.calibrate = [&](const quant::QuantPlan& p, const std::vector<std::string>& calibrators, const std::string& weight_method) {
      quant::CalibrationOptions c = co;
      c.weight_method = weight_method;
      calibrating = quant::join_names(calibrators, "") + (weight_method == "minmax" ? " (minmax weights)" : "");
      current_pass = 0;
      pass_start = clock_type::now();
      auto e = quant::calibrate_methods(g, p, inputs, c, calibrators);
      pass_progress.reset();
      return e;
    };
    if (job.bias_correction == BiasCorrectionMode::Auto)
      ai.bias_inputs.assign(inputs.begin(), inputs.begin() + std::min(inputs.size(), job.bias_correction_images));
    AutoChoice choice = choose_calibration(ai, ev);
    bias_correction = std::move(choice.bias_correction);
    enc = std::move(choice.enc);
    final_plan = std::move(choice.plan);
    res.init_method = choice.calibrator;
    res.auto_trials = choice.trials;
    res.fallback_groups = choice.fallback_groups;
    for (const auto& s : choice.sensitivity) res.sensitivity.push_back(s);
    res.sensitivity_images = choice.sensitivity.empty() ? 0 : ai.sensitivity_inputs.size();
    enc.meta["method"] = "auto";
    enc.meta["auto"] = {{"calibrator", choice.calibrator}, {"weight_method", choice.weight_method},
                        {"separate_concat_scales", choice.separate_concat_scales}, {"quantize_head", choice.quantize_head},
                        {"fallback_groups", choice.fallback_groups}, {"group_calibrators", choice.group_calibrators},
                        {"trials", choice.trials}, {"chosen_trial", choice.chosen_trial}, {"held_out_images", res.fidelity_files}};
    if (job.budget.constrains_trials()) {
      enc.meta["auto"]["budget"] = ai.budget.to_json();
      enc.meta["auto"]["within_budget"] = choice.within_budget;
      res.budget_met = choice.within_budget;
    }
    res.plan = final_plan;
    if (!res.sensitivity.empty()) stage_done(Stage::Sensitivity);
  } else {
    enc = quant::calibrate(g, plan, inputs, co);
    pass_progress.reset();
    if (res.reconstruction && job.fallback == QuantizeJob::kFallbackAuto)
      auto_fallback_for_reconstruction(g, inputs, co, job, ev, final_plan, enc, res);
  }
  if (job.fallback > 0 || job.sensitivity) {
    const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + std::min(inputs.size(), job.sensitivity_images));
    ProgressReporter sp(ev, "sensitivity (one quantizer group at a time)", final_plan.num_groups, ProgressReporter::clock::now(), "groups");
    auto sens = quant::activation_sensitivity(g, final_plan, enc, probe, job.device, [&](size_t d, size_t) { sp.update(d); },
                                              output_weights_for_sensitivity(g, probe, profile, job));
    if (job.sensitivity_error == quant::SensitivityError::Inlier)
      std::stable_sort(sens.begin(), sens.end(), [](const auto& a, const auto& b) { return a.inlier_sqnr_db < b.inlier_sqnr_db; });
    res.sensitivity.clear();
    nlohmann::json js = nlohmann::json::array();
    for (const auto& s : sens) {
      res.sensitivity.push_back({s.values, s.sqnr_db});
      js.push_back({{"values", s.values}, {"group", s.group}, {"sqnr_db", s.sqnr_db}});
      if (!std::isnan(s.inlier_sqnr_db)) js.back()["inlier_sqnr_db"] = s.inlier_sqnr_db;
    }
    enc.meta["sensitivity"] = js;
    res.sensitivity_images = probe.size();
    std::vector<int> drop;
    for (int i = 0; i < job.fallback && i < static_cast<int>(sens.size()); ++i) drop.push_back(sens[i].group);
    if (!drop.empty()) quant::drop_activation_groups(final_plan, enc, drop, "sensitivity fallback");
    res.fallback_groups = drop.size();
    enc.meta["fallback_groups"] = drop.size();
    res.plan = final_plan;
    res.encodings_meta = enc.meta;
    stage_done(Stage::Sensitivity);
  }
  const size_t bias_images = std::min(inputs.size(), job.bias_correction_images);
  if (job.bias_correction == BiasCorrectionMode::On) {
    ProgressReporter bp(ev, "bias correction", 1, ProgressReporter::clock::now(), "passes");
    bias_correction = quant::compute_bias_correction(g, final_plan, enc, {inputs.begin(), inputs.begin() + bias_images}, job.device);
    bp.update(1);
  }
  if (!bias_correction.shifts.empty()) {
    double sum = 0;
    for (const auto& [n, s] : bias_correction.shifts) sum += s.relative;
    const double mean_rel = sum / bias_correction.shifts.size();
    enc.meta["bias_correction"] = {{"convs", bias_correction.shifts.size()}, {"images", bias_images},
                                   {"mean_relative_shift", mean_rel}};
    say(ev.log, fmt::format("[bias] corrected {} convs on {} calibration images (shift RMS {:.3f} of the output's spread, mean)",
                            bias_correction.shifts.size(), bias_images, mean_rel));
  }
  res.bias_corrected_convs = bias_correction.shifts.size();
  res.seconds.calibration = seconds_since(t0) - res.seconds.prepare - res.seconds.images;
  res.encodings_meta = enc.meta;
  stage_done(Stage::Calibrate);

  // ---- reconstruct
  Graph quantized_weights = g;  // reconstruction writes hardened weights here
  quant::apply_bias_correction(quantized_weights, bias_correction);
  const double t_calibrated = seconds_since(t0);
  double t_reconstructed = t_calibrated;
  std::vector<inlier::SaliencyMaps> recon_maps;  // the report's pictures, when reconstruction's gradients give them
  if (res.reconstruction) {
    recon::ReconOptions ro = reconstruction_options(job);
    ro.heatmap_loss.heatmap = profile.heatmap;
    ro.seed = job.seed;
    ro.device = job.device;
    ro.checkpoint.dir = paths.checkpoint;
    ro.checkpoint.resume = job.resume;
    // A resumed run must see the same model, plan, bits and calibration images.
    ro.checkpoint.fingerprint = nlohmann::json{{"model", fs::absolute(job.model).string()}, {"model_bytes", fs::file_size(job.model)},
                                    {"plan", final_plan.to_json()}, {"files", folder.paths}, {"init", res.init_method},
                                    {"weight_method", job.weight_method}}.dump();
    ro.progress = ev.recon_progress;
    ro.log = ev.log;
    if (profile.heatmap.contains("sources")) ro.picture_units = 2, ro.picture_images = 3;
    if (job.time_limit_min > 0) {
      // The limit covers the whole job: what calibration took is spent; export and the report take ~2 %.
      ro.time_limit_s = std::max(1.0, job.time_limit_min * 60 * 0.98 - seconds_since(t0));
      say(ev.log, fmt::format("[recon] {}: time limit {:g} min ({:.0f} s left for reconstruction), batch {}, seed {}", job.method,
                              job.time_limit_min, ro.time_limit_s, ro.batch, ro.seed));
    } else {
      say(ev.log, fmt::format("[recon] {}: {} iterations per unit, batch {}, seed {}", job.method, ro.iters, ro.batch, ro.seed));
    }
    recon::ReconResult rr;
    try {
      rr = recon::reconstruct(quantized_weights, final_plan, enc, inputs, ro);
    } catch (const Interrupted& e) {
      const bool have = fs::exists(fs::path(paths.checkpoint) / "state.json");
      throw Interrupted(e.signal(), have ? fmt::format("interrupted by {}; the checkpoint in {} keeps the finished units: run the "
                                                       "same command with --resume to continue", Interrupted::signal_name(e.signal()),
                                                       paths.checkpoint)
                                         : fmt::format("interrupted by {} before the first unit finished (no checkpoint yet)",
                                                       Interrupted::signal_name(e.signal())));
    }
    res.units = rr.units.size();
    res.units_done = rr.reports.size();
    if (!rr.completed) return res;  // stopped after recon.checkpoint.stop_after_units: the checkpoint is kept
    recon_maps = std::move(rr.saliency_maps);
    rr.saliency_maps.clear();
    nlohmann::json rj = rr.to_json();
    rj["method"] = job.method;
    rj["init_method"] = res.init_method;
    rj["iters"] = rr.iters;
    if (job.time_limit_min > 0) rj["time_limit_min"] = job.time_limit_min;
    rj["batch"] = ro.batch;
    rj["seed"] = ro.seed;
    rj["max_cache_mb"] = ro.cache.max_mb;
    rj["unit_list"] = recon::units_json(rr.units);
    res.iters = rr.iters;
    res.recon_seconds = rr.seconds;
    res.peak_cache_mb = rr.peak_cache_bytes / 1048576.0;
    res.spilled_mb = rr.spilled_bytes / 1048576.0;
    enc.meta["reconstruction"] = rj;
    res.recon = std::move(rr);
    t_reconstructed = seconds_since(t0);
    res.seconds.reconstruction = t_reconstructed - t_calibrated;
    stage_done(Stage::Reconstruct);
  }
  res.completed = true;

  // ---- export
  enc.meta["model"] = job.model;
  enc.meta["profile"] = profile.name;
  res.profile = profile.name;
  enc.meta["preset"] = fmt::format("w{}a{}", res.weight_bits, res.act_bits);
  enc.meta["calibration_folder"] = job.calib_dir;
  enc.meta["calibration_files"] = folder.paths;
  enc.meta["skipped_images"] = folder.warnings;
  enc.meta["seed"] = job.seed;
  enc.meta["folded_batchnorms"] = prep.folded_batchnorms;
  enc.meta["opset"] = {{"original", prep.original_opset}, {"exported", prep.opset}};
  const size_t requantizers = quant::add_requantizers(quantized_weights, final_plan, enc);
  enc.meta["requantizers"] = requantizers;
  const auto integer_list = quant::integer_compute_nodes(quantized_weights, final_plan);
  const std::set<std::string> integer_nodes(integer_list.begin(), integer_list.end());
  list_float_compute(integer_nodes, final_plan);
  enc.meta["plan"] = final_plan.to_json();
  res.plan = final_plan;
  res.average_weight_bits = quant::average_weight_bits(g, final_plan);
  enc.meta["average_weight_bits"] = res.average_weight_bits;
  if (!res.weight_bits_budget.is_null()) enc.meta["weight_bits_budget"] = res.weight_bits_budget;
  res.integer_mac_fraction = integer_mac_fraction(g, integer_nodes);
  std::vector<quant::U8S8Check> u8s8;
  std::set<std::string> stored_int8;
  Graph qdq = export_qdq(quantized_weights, final_plan, enc, job, storage_probe, &u8s8, &stored_int8);
  if (!u8s8.empty()) record_weight_storage(u8s8, stored_int8, storage_probe.size(), enc, res);
  else res.weight_storage = job.weight_asymmetric                          ? "uint8, per-channel zero points"
                            : stores_unsigned_weights(job, final_plan) ? "uint8, zero point + 128"
                                                                       : "int8";
  enc.meta["weight_storage"] = res.weight_storage;
  if (reference) {
    res.fidelity = reference->measure(qdq);
    enc.meta["fidelity"] = res.fidelity->to_json();
    enc.meta["fidelity"]["files"] = res.fidelity_files;
  }
  save_onnx(qdq, paths.onnx);
  res.opset = qdq.opset;
  res.bytes = fs::file_size(paths.onnx);
  res.fp32_bytes = fs::file_size(job.model);
  enc.meta["export"] = {{"layout", quant::layout_name(final_plan.layout)}, {"weight_storage", enc.meta["weight_storage"]},
                        {"bytes", res.bytes}, {"fp32_bytes", res.fp32_bytes}, {"integer_mac_fraction", res.integer_mac_fraction},
                        {"float_nodes", final_plan.float_nodes.size()}};
  res.encodings_meta = enc.meta;
  stage_done(Stage::Export);
  if (job.ort_latency) {
    res.ort_latency = ort_latency(job.model, paths.onnx);
    enc.meta["export"]["ort_latency"] = res.ort_latency;
  }

  // ---- write
  write_file_atomically(paths.encodings, quant::encodings_json(enc).dump(1) + "\n");
  bool wrote_trt = false;
  for (const auto& [n, ae] : enc.activations) wrote_trt |= ae.bits == 8;
  if (wrote_trt) write_file_atomically(paths.trt, quant::tensorrt_cache(enc));
  res.out_trt = wrote_trt ? paths.trt : "";
  if (res.reconstruction) {
    std::error_code ec;
    fs::remove_all(paths.checkpoint, ec);  // the run finished; its outputs are written
  }
  res.seconds.total = seconds_since(t0);
  res.seconds.export_and_write = res.seconds.total - t_reconstructed;
  res.encodings_meta = enc.meta;
  stage_done(Stage::Write);

  // From here on the model, encodings and cache are written: an interrupt must not say otherwise.
  try {
    throw_if_interrupted();  // e.g. a Ctrl-C during the ORT latency subprocess, which shares the terminal
    // ---- evaluate
    if (!job.eval_images.empty()) {
      coco::Dataset gt = coco::load_dataset(job.eval_annotations);
      DetectorOptions dopts;
      dopts.session.device = job.device;
      Detector fp(g, profile, dopts);
      FolderEvaluation e_fp = evaluate_folder(fp, gt, job.eval_images, job.eval_limit, "eval FP32", ev);
      Detector qd(qdq, profile, dopts);
      FolderEvaluation e_q = evaluate_folder(qd, gt, job.eval_images, job.eval_limit,
                                             fmt::format("eval W{}A{}", res.weight_bits, res.act_bits), ev);
      res.evaluation = Evaluation{e_fp.result, e_q.result, e_q.images, job.eval_annotations};
      stage_done(Stage::Evaluate);
    }

    // ---- report: saliency pictures of a few calibration images at the units next to the head.
    std::vector<report::Figure> figures;
    if (profile.heatmap.contains("sources")) {
      try {
        // InlierQ's own gradients and fits over the whole calibration set when it ran; otherwise a pass of their own.
        std::vector<inlier::SaliencyMaps> maps = std::move(recon_maps);
        size_t shown = maps.empty() ? std::min<size_t>(3, inputs.size()) : maps.front().saliency.size();
        if (maps.empty()) {
          const auto units = recon::derive_units(g, final_plan);
          inlier::HeatmapLossOptions loss = job.recon.heatmap_loss;
          loss.heatmap = profile.heatmap;
          const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + static_cast<long>(shown));
          maps = inlier::saliency_maps(g, last_unit_outputs(units, 2), probe, loss, job.recon.inlier_split, job.device);
        }
        std::vector<InputTransform> transforms(transforms_of_inputs.begin(), transforms_of_inputs.begin() + static_cast<long>(shown));
        const std::vector<std::string> shown_paths(folder.paths.begin(), folder.paths.begin() + static_cast<long>(shown));
        for (auto& [caption, img] : report::saliency_figures(maps, shown_paths, transforms, 320))
          figures.push_back({caption, encode_png(img)});
      } catch (const std::exception& e) {
        say(ev.warning, fmt::format("no saliency figures in the report: {}", e.what()));
      }
    }
    enc.meta["stage_seconds"] = {{"load + prepare", res.seconds.prepare}, {"images", res.seconds.images},
                                 {"calibration", res.seconds.calibration}, {"reconstruction", res.seconds.reconstruction},
                                 {"export", res.seconds.export_and_write}};
    enc.meta["method"] = job.method;
    res.encodings_meta = enc.meta;
    write_file_atomically(paths.report, report::quantize_report_html(job, res, figures));
  } catch (const Interrupted& e) {
    throw Interrupted(e.signal(),
                      fmt::format("interrupted by {} after {}, {}{} were written; the evaluation and the report were not",
                                  Interrupted::signal_name(e.signal()), res.out_onnx, res.out_encodings,
                                  res.out_trt.empty() ? "" : " and " + res.out_trt),
                      true);
  }
  res.encodings_meta = enc.meta;
  stage_done(Stage::Report);
  return res;
}

}  // namespace inlierq::pipeline
