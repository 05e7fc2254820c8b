#pragma once
// The quantize job as a library call: a typed job in, named stages with progress events, a typed result
// out. The CLI's `quantize` command is flag parsing around quantize() and printing of its events; another
// program can embed the same job. Torch-free.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/coco_eval.h"
#include "inlierq/detect.h"
#include "inlierq/quant.h"
#include "inlierq/recon.h"

namespace inlierq::pipeline {

// ---- label-free fidelity (docs/QUANTIZATION.md §6): how closely a quantized model follows its FP32 model on
// unlabelled images.
struct FidelityOptions {
  float reference_score = 0.3f;  // FP32 detections at or above this score are the ground truth
  size_t batch = 4;
  std::string device = "cpu";
  int64_t topk = 100;            // K of the heatmap loss
  std::function<void(size_t done, size_t total)> progress;  // images done by the current pass
};
struct Fidelity {
  size_t images = 0, reference_boxes = 0;
  float reference_score = 0;
  // The quantized model's detections scored (COCO AP@[.5:.95] and AP50) against the FP32 model's detections
  // at or above reference_score as ground truth; 1 when the two agree. -1 when no FP32 box reaches the score.
  double agreement_map = -1, agreement_map50 = -1;
  double output_sqnr_db = 0;  // all graph outputs: 10·log10(Σ fp² / Σ (q − fp)²) over the images
  // InlierQ's top-K auxiliary heatmap loss (ALGORITHMS.md §6.2), mean per image; -1 without a heatmap.
  double heatmap_loss_fp32 = -1, heatmap_loss = -1;
  nlohmann::json to_json() const;
};
// The FP32 model's outputs and detections on a fixed set of preprocessed images, computed once; measure()
// runs a quantized (QDQ) graph of the same model on them.
class FidelityReference {
 public:
  FidelityReference(const Graph& fp32, const ModelProfile& profile, std::vector<TensorData> inputs,
                    std::vector<InputTransform> transforms, const FidelityOptions& opts = {});
  ~FidelityReference();
  Fidelity measure(const Graph& quantized) const;
  size_t images() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// How exported weight codes are stored: int8, or uint8 with zero point 128 (ONNX Runtime's U8U8 kernels); auto:
// uint8 in the ort layout, int8 in the block layout (TensorRT).
enum class WeightType { Auto, Int8, Uint8 };
const NameTable<WeightType>& weight_type_names();
// Empirical bias correction (docs/QUANTIZATION.md §3a): auto (a step of `--method auto`, kept when the held-out
// fidelity says so; off with a fixed method), on, off.
enum class BiasCorrectionMode { Auto, On, Off };
const NameTable<BiasCorrectionMode>& bias_correction_names();

// `--budget` (docs/QUANTIZATION.md §4b): the speed the user accepts, which `--method auto` must stay within while it
// looks for the most accurate configuration. A zero field sets no limit.
struct Budget {
  double min_int8_macs = 0;  // share of the compute MACs that ONNX Runtime runs in integer 8-bit kernels, 0..1
  double max_latency = 0;    // ONNX Runtime latency at 1 thread over the FP32 model's, measured per trial
  // Average bits over the quantized weight parameters: low-bit weights raised to 8 bits within it, before any
  // calibration or reconstruction (quant::assign_weight_bits); any method.
  double max_weight_bits = 0;
  bool empty() const { return !constrains_trials() && max_weight_bits <= 0; }
  // What `--method auto`'s trials are chosen within (the weight bits are fixed before the trials).
  bool constrains_trials() const { return min_int8_macs > 0 || max_latency > 0; }
  std::string to_string() const;  // as parse_budget reads it ("" when empty)
  nlohmann::json to_json() const;
};
// "int8-macs=0.9", "latency=0.8", "weight-bits=5", comma-separated; Error naming the bad item otherwise.
Budget parse_budget(const std::string& spec);

struct QuantizeJob {
  std::string model, profile, calib_dir;
  std::string out;  // OUT.onnx; OUT.encodings.json, OUT.trt.cache and OUT.report.html go next to it
  // Precision: a "wNaM" preset, or both bit widths.
  std::string preset;
  int weight_bits = 0, act_bits = 0;
  // `auto` (at 8 bits: the calibration configuration that follows the FP32 model best on the held-out images, see
  // fidelity_images; below 8-bit weights or activations, where calibration alone loses most of the accuracy:
  // `inlierq`), a calibrator (minmax | percentile | entropy | mse) or a reconstruction method (adaround |
  // brecq | qdrop | inlierq, which is InlierQ on `base`); reconstruction starts from `init_method`'s ranges.
  std::string method = "auto", init_method = "mse", weight_method = "mse", base = "qdrop";
  double percentile = 99.99;
  size_t num_calib = 64;
  // Images of the calibration folder never calibrated on: the label-free fidelity estimate is measured on them
  // (and `auto` chooses by it). The next ones after the first num_calib; when the folder has fewer, the last
  // quarter of those it has (at most this many; none below 16 images). 0: none.
  size_t fidelity_images = 16;
  float fidelity_reference_score = 0.3f;
  int auto_max_fallback = 3;  // `auto`: activation groups it may leave in floating point
  bool auto_group_calibrators = false;  // `auto`: also try another calibrator per harmful group (measured worse)
  Budget budget;              // `auto` only
  // What ranks weights for --budget weight-bits: plain output SQNR, or InlierQ's inlier-weighted one (needs the
  // profile's heatmap; both are always measured and recorded when it has one). docs/QUANTIZATION.md §4d.
  quant::SensitivityError sensitivity_error = quant::SensitivityError::Output;
  int batch = 8;
  uint64_t seed = 0;
  std::string device = "cpu";
  BiasCorrectionMode bias_correction = BiasCorrectionMode::Auto;
  size_t bias_correction_images = 32;  // the first calibration images, in one batch
  // Placement and export.
  quant::QdqLayout layout = quant::QdqLayout::Auto;
  // auto: the ORT layout stores int8 weights where ONNX Runtime's U8S8 kernels are exact on every x86 CPU and
  // uint8 (zero point 128) elsewhere, measured on the first kU8S8Images calibration images; block: int8.
  WeightType weight_type = WeightType::Auto;
  static constexpr size_t kU8S8Images = 8;
  static constexpr double kU8S8MinSqnrDb = 40.0;
  std::string config;
  std::vector<std::string> exclude;
  bool act_symmetric = false, quantize_head = false, separate_concat_scales = false;
  // Per-channel weight grids with a zero point (as BRECQ and QDrop use); TensorRT accepts only symmetric ones.
  bool weight_asymmetric = false;
  // Block layout: activations that only floating-point nodes read (the float head's input) stay unquantized.
  bool float_head_input = false;
  // Sensitivity analysis and fallback: K > 0 leaves the K most harmful activation groups in floating point (with
  // `auto`, replacing its own search), 0 none. kFallbackAuto: `auto`'s search; with reconstruction, the groups no
  // 8-bit grid holds (quant::eight_bit_sensitivity below kUnrepresentableDb) and, below 8-bit activations, 8 bits
  // for the groups that alone take the outputs below kLowBitHarmfulDb at the plan's bits; with a calibrator, none.
  static constexpr int kFallbackAuto = -1;
  static constexpr double kUnrepresentableDb = 10.0;
  static constexpr double kLowBitHarmfulDb = 8.0;
  int fallback = kFallbackAuto;
  size_t sensitivity_images = 8;
  bool sensitivity = false;
  // Reconstruction.
  recon::ReconOptions recon;  // method and inlier are set from `method` and `base`
  double time_limit_min = 0;
  std::string checkpoint_dir;  // default OUT.ckpt
  bool resume = false;
  // Optional evaluation of FP32 and quantized mAP.
  std::string eval_images, eval_annotations;
  size_t eval_limit = 0;
  bool ort_latency = true;  // a quick ONNX Runtime latency of FP32 vs the written file (python3 + onnxruntime)
  bool force = false;       // overwrite existing outputs / start over from an old checkpoint
};

enum class Stage { Load, Plan, Images, Calibrate, Sensitivity, Reconstruct, Export, Write, Evaluate, Report };
const char* stage_name(Stage s);

struct SensitivityEntry {
  std::vector<std::string> values;
  double sqnr_db = 0;
};

struct Evaluation {
  coco::EvalResult fp32, quantized;
  size_t images = 0;
  std::string annotations;
};

struct QuantizeResult {
  bool completed = false;  // false: reconstruction stopped by recon.checkpoint.stop_after_units (the checkpoint is kept)
  std::string out_onnx, out_encodings, out_trt, out_report, checkpoint_dir;  // out_trt empty below 8-bit activations
  int weight_bits = 0, act_bits = 0;
  std::string profile;              // the model profile's name
  std::string method, init_method;  // init_method: the calibrator that set the ranges
  // Reconstruction's automatic fallback: the groups left in floating point (their SQNR alone at 8 bits) and those
  // raised to 8 bits (their SQNR alone at the plan's bits).
  std::vector<SensitivityEntry> fallback_auto, raised_to_8_bits;
  bool reconstruction = false;
  size_t calibration_images = 0;
  std::vector<std::string> calibration_files, skipped_images;
  std::vector<std::string> fidelity_files;  // the held-out images of the fidelity estimate
  std::optional<Fidelity> fidelity;          // of the written file on those images
  nlohmann::json auto_trials;                // `auto`: every configuration measured, with its fidelity
  std::optional<bool> budget_met;            // `auto` with an int8-macs or latency --budget: whether the choice is within it
  nlohmann::json weight_bits_budget;         // --budget weight-bits: quant::WeightBitsChoice::to_json() and its images
  double average_weight_bits = 0;            // over the quantized weight parameters of the written file
  quant::QuantPlan plan;  // the final plan (after fallback and requantizers)
  std::vector<SensitivityEntry> sensitivity;  // most harmful first; empty unless asked
  size_t sensitivity_images = 0;              // calibration images it was measured on
  size_t fallback_groups = 0;
  size_t bias_corrected_convs = 0;  // convs whose bias absorbed their output's mean error (0: no bias correction)
  // Reconstruction.
  size_t units = 0, units_done = 0;
  int64_t iters = 0;
  double recon_seconds = 0, peak_cache_mb = 0, spilled_mb = 0;
  std::optional<recon::ReconResult> recon;  // per-unit reports, InlierQ's fits and ranges (saliency_maps moved out)
  // Export.
  int opset = 0;
  uint64_t bytes = 0, fp32_bytes = 0;
  std::string weight_storage;  // how the exported weights are stored (int8, or uint8 with its zero points)
  double integer_mac_fraction = 0;
  nlohmann::json ort_latency;  // see ort_latency(); null when not run
  std::optional<Evaluation> evaluation;
  struct Seconds {
    double prepare = 0, images = 0, calibration = 0, reconstruction = 0, export_and_write = 0, total = 0;
  } seconds;
  nlohmann::json encodings_meta;  // what OUT.encodings.json and the report record about the run
};

struct Events {
  // Progress of a counted loop (images, calibration passes, sensitivity groups, evaluation). `elapsed`: seconds
  // since the loop began; `unit`: what done and total count ("images", "groups"). Every call is also a point where
  // an interrupt (SIGINT/SIGTERM) stops the job.
  std::function<void(const std::string& what, size_t done, size_t total, double elapsed, const std::string& unit)> progress;
  std::function<void(const recon::ReconOptions::Progress&)> recon_progress;
  std::function<void(const std::string& line)> log;      // status lines ("[plan] ...")
  std::function<void(const std::string& line)> warning;  // skipped images, fallbacks to defaults
  // After each stage, with the result so far (the fields of that stage and of the ones before are set).
  std::function<void(Stage, const QuantizeResult&)> stage_done;
};

// Validates the job before any work (unknown names, conflicting options, outputs that exist without
// `force`, an output equal to the input), then runs the stages. Throws inlierq::Error naming the problem;
// Interrupted on SIGINT/SIGTERM, with a message saying how to resume.
QuantizeResult quantize(const QuantizeJob& job, const Events& events = {});

// (weight bits, activation bits) from a "wNaM" preset or from both widths; Error otherwise.
std::pair<int, int> resolve_bits(const std::string& preset, int weight_bits, int act_bits);
// Placement options of a job: widths, head and concat policy, exclusions, and the --config overrides file.
quant::PlacementOptions placement_options(const QuantizeJob& job);
bool is_reconstruction_method(const std::string& method);
// The reconstruction options of a job: `inlierq` becomes InlierQ on `base`.
recon::ReconOptions reconstruction_options(const QuantizeJob& job);

// COCO evaluation of the first `limit` images (ascending id, 0 = all) of gt found in images_dir. A missing
// file is an error (the annotations name it); one that exists but does not decode is skipped by name and
// left out of the evaluation.
struct FolderEvaluation {
  coco::EvalResult result;
  std::vector<coco::Detection> detections;
  std::vector<std::string> skipped;  // "cannot decode image 'path': reason"
  size_t images = 0;
  double seconds = 0;
};
FolderEvaluation evaluate_folder(Detector& detector, const coco::Dataset& gt, const std::string& images_dir, size_t limit,
                                 const std::string& label, const Events& events = {});

// {"fp32_ms", "quantized_ms", "ratio", "threads", "runs", "onnxruntime"} (medians of alternating runs, one
// thread), or {"skipped": "<why>"} when python3 or onnxruntime is missing or the run fails. The interpreter
// is $INLIERQ_PYTHON, else python3 (inlierq itself does not link ONNX Runtime).
nlohmann::json ort_latency(const std::string& fp32_model, const std::string& quantized_model, int runs = 20);

}  // namespace inlierq::pipeline
