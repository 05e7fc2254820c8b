#pragma once
// Block reconstruction (ALGORITHMS.md §4–5): reconstruction units derived from the graph, AdaRound,
// BRECQ and QDrop over cached activations. Torch-free.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/graph.h"
#include "inlierq/inlier.h"
#include "inlierq/inlier_options.h"
#include "inlierq/names.h"
#include "inlierq/quant.h"

namespace inlierq::recon {

// ---- units ------------------------------------------------------------------------------------------
// A contiguous run of the graph's topological order. Blocks are single-entry single-exit regions that
// contain a merge (residual Add, CSP/shuffle Concat); everything else is one unit per compute layer
// (the layer-wise fallback). Units may have several inputs and outputs (necks).
struct Unit {
  std::string name;                 // first compute node's name (or first node's)
  std::string kind;                 // "block" or "layer"
  std::vector<std::string> nodes;   // in topological order
  std::vector<std::string> inputs;  // values read from earlier units or the network input
  std::vector<std::string> outputs; // values read by later units, the head or the graph outputs
  int compute_nodes = 0;            // Conv / ConvTranspose / Gemm / MatMul
};

struct UnitOptions {
  int max_block_compute = 12;  // merge regions with more compute nodes fall back to layers
  bool layerwise = false;      // one unit per compute layer (AdaRound's granularity)
};

// Units over the part of the graph that precedes the floating-point tail (detection head and decoding):
// every quantized compute node, everything they depend on. Throws Error when the graph cannot be split.
std::vector<Unit> derive_units(const Graph& g, const quant::QuantPlan& plan, const UnitOptions& opts = {});
nlohmann::json units_json(const std::vector<Unit>& units);
std::string format_units(const std::vector<Unit>& units);

// ---- reconstruction ---------------------------------------------------------------------------------
// How Adam moves a learned activation step: on s itself (the references), or on log s.
enum class StepUpdate { Absolute, Log };
// InlierQ's range initialisation: the mse search or min/max over inlier volumes, or the calibrator's ranges.
enum class InlierInit { MseInlier, MinmaxInlier, None };
const NameTable<StepUpdate>& step_update_names();
const NameTable<InlierInit>& inlier_init_names();

// AdaRound's learned rounding (ALGORITHMS §4).
struct AdaRoundOptions {
  double lr = 1e-2;  // Adam on the rounding logits V (--lr-round)
  double lambda = 0.01, beta_start = 20, beta_end = 2, warmup = 0.2;
};
// Learned activation steps (LSQ, cosine decay to 0). The rates are those of 4-bit steps; a b-bit step learns at
// lr·2^(4-b) with the absolute update.
struct StepLearningOptions {
  double lr = 1e-2;        // QDrop's joint pass (--lr-act)
  double brecq_lr = 4e-3;  // BRECQ's pass 2 (--brecq-lr-act)
  // absolute: Adam on the step s (the references; an update moves s by about lr whatever its size).
  // log: Adam on log s, so lr is the relative change per iteration, the same for 8-bit and 4-bit steps.
  StepUpdate update = StepUpdate::Absolute;
};
struct QDropOptions {
  double drop_prob = 0.5;  // probability that an activation element is quantized in training
  double input_mix = 0.5;  // probability that a unit input element comes from the quantized prefix
};
// Caches: FP inputs/outputs and quantized-prefix inputs of the live units.
struct CacheOptions {
  size_t max_mb = 3072;
  std::string spill_dir;  // where caches over budget go (default: system temp directory)
};
struct CheckpointOptions {
  std::string dir;  // written after every finished unit when set
  bool resume = false;
  // Identifies the run for --resume (model, plan, calibration files); mismatches refuse to resume.
  std::string fingerprint;
  // Stops (as if interrupted) after this many finished units, counted over all passes; -1 = never.
  int64_t stop_after_units = -1;
};

struct ReconOptions {
  std::string method = "qdrop";  // adaround | brecq | qdrop
  // Defaults sized for a small CPU (docs/RECONSTRUCTION.md, "Defaults"): the references run 20000 iterations
  // at batch 32 with lr 1e-3 (V) and 4e-5 (QDrop steps); on FastestDet W4A4 QDrop, 500 iterations at batch 8
  // with the rates below recovered as much as 2000 (48 % of the calibrator's loss) and 4e-5 × 10 far less.
  int64_t iters = 500;           // per unit (AdaRound pass / QDrop joint pass)
  // > 0: choose the iterations per unit (replacing `iters`; BRECQ's pass 2 keeps its ratio to it) so that
  // reconstruct() returns within this many seconds, from the units' measured costs. Chosen once, logged.
  double time_limit_s = 0;
  // Without a time limit, the costs behind the first estimate and the ETA are measured too (8 iterations of
  // every unit, state restored) when that is at most 5 % of `iters`; false: predicted from the FP cost only.
  // Results do not depend on it (tested).
  bool measure_costs = true;
  int batch = 8;                 // calibration samples per iteration
  uint64_t seed = 0;
  AdaRoundOptions rounding;
  StepLearningOptions steps;
  int64_t brecq_act_iters = 125;  // a quarter of `iters`, as the references (5000 of 20000)
  double brecq_act_p = 2.4;   // Lp of BRECQ pass 2's loss
  double rec_p = 2.0;         // Lp of the rounding / joint pass loss
  QDropOptions qdrop;
  // Fisher weighting (BRECQ's option, usable with every method): the squared error of every output element
  // is multiplied by (|g| + 1)², g = gradient of the label-free top-K heatmap loss w.r.t. that element,
  // computed once on the FP model. Needs the profile's heatmap definition.
  bool fisher = false;
  inlier::HeatmapLossOptions heatmap_loss;  // the profile's heatmap, K, loss form (Fisher and InlierQ)
  // InlierQ (ALGORITHMS §6) on top of the method: per-volume saliency from the same gradients, a
  // two-component EM per unit output, inlier-weighted reconstruction loss and inlier-aware ranges.
  bool inlier = false;
  inlier::InlierSplitOptions inlier_split;  // saliency, weighting, EM
  InlierInit inlier_init = InlierInit::MseInlier;
  // InlierQ: the saliency and posterior pictures of the last `picture_units` units' first outputs on the first
  // `picture_images` images, from the gradients the inlier weights come from (ReconResult::saliency_maps).
  int picture_units = 0;
  int picture_images = 3;
  bool inlier_fisher = true;              // F = (|g| + 1)² in the weighted loss; false: F = 1
  // Every mini-batch is split into this many shards, differentiated separately (in parallel, one thread
  // each, as far as --threads allows) and their gradients summed in shard order: results depend on the
  // shard count, never on the thread count. 0: 2 on the CPU, 1 on CUDA.
  int shards = 0;
  // Threads for the shards (at most `shards` are used); 0: every core (std::thread::hardware_concurrency —
  // ATen's own default intra-op count is 1 on this class of VM).
  int threads = 0;
  // The last N calibration images never train; each unit checks on them that its learned state beats the
  // state it started from, and keeps the start otherwise. -1: N/8 of the set (none below 8 images).
  int64_t holdout = -1;
  // units
  int max_block_compute = 12;
  CacheOptions cache;
  CheckpointOptions checkpoint;
  std::string device = "cpu";
  // Also time a plain FP forward + backward of every unit at the same batch (the cost benchmark's yardstick).
  bool measure_fp_reference = false;
  struct Progress {
    int pass = 1, passes = 1;
    size_t unit = 0, units = 0;
    std::string unit_name;
    int64_t iter = 0, iters = 0;
    double loss = 0;
    double eta_seconds = 0;  // whole run
  };
  std::function<void(const Progress&)> progress;
  std::function<void(const std::string&)> log;  // one line per finished unit
};

struct UnitReport {
  std::string name, kind;
  int pass = 1;
  int64_t iters = 0;
  double sqnr_before_db = 0, sqnr_after_db = 0;  // unit output vs FP, on the quantized-prefix inputs
  double loss_first = 0, loss_last = 0;
  // Reconstruction loss on the held-out images with the pass's start state and with the learned one; when
  // the learned one is worse the unit keeps the start (kept_start).
  double holdout_before = 0, holdout_after = 0;
  bool kept_start = false;
  double seconds = 0;
  double predicted_seconds = 0;  // the cost model's figure for this unit pass, before it ran (ETA, --time-limit)
  // Mean milliseconds per training iteration, by phase (CPU wall clock). "forward" excludes the activation
  // fake-quant it calls; "backward" includes the fake-quant backward, also listed alone.
  struct Phases {
    double data = 0, soft_weights = 0, forward = 0, fake_quant = 0, loss = 0, backward = 0, fake_quant_backward = 0,
           optimizer = 0, total = 0;
    double fp_reference = 0;  // plain FP forward + backward of the unit at the same batch (--recon-timing), 0 if not measured
  } phase_ms;
  nlohmann::json to_json() const;
};

struct ReconResult {
  std::vector<Unit> units;
  std::vector<UnitReport> reports;
  int64_t iters = 0;       // per unit in the first pass (the --time-limit choice when one was given)
  bool completed = false;  // false when stopped by stop_after_units
  double seconds = 0;
  size_t peak_cache_bytes = 0;
  size_t spilled_bytes = 0;
  // Per pass, when images are held out: the network's output SQNR on them at the start and at the end of
  // the pass (every quantizer on), and whether the pass was undone because it made that worse.
  nlohmann::json passes = nlohmann::json::array();
  nlohmann::json inlier;  // per unit output: EM fit, inlier mass; per activation group: full vs inlier range
  std::vector<inlier::SaliencyMaps> saliency_maps;  // ReconOptions::picture_units (InlierQ only)
  nlohmann::json to_json() const;
};

// The reconstruction methods, one row each (src/recon/methods.cpp). A base method is what ReconOptions::method
// names; a composite (InlierQ) runs one of its `bases` (the first is the default) with the inlier stage on.
struct ReconMethod {
  std::string name;
  std::string description;
  std::vector<std::string> bases;  // empty: a base method
  bool inlier = false;             // turns ReconOptions::inlier on
};
const std::vector<ReconMethod>& reconstruction_method_table();
const ReconMethod* find_reconstruction_method(const std::string& name);  // nullptr: no such method
std::vector<std::string> reconstruction_methods();      // the base methods
std::vector<std::string> all_reconstruction_methods();  // every row, composites included
// Throws Error naming the offending option (CLI flag names).
void validate_options(const ReconOptions& opts);
// Learns the rounding of every quantized weight (and, for brecq/qdrop, the activation steps) unit by
// unit over `inputs` (preprocessed images [1, C, H, W]). On return the quantized weights of `g` hold the
// hardened values s·(q − z), so that export reproduces the learned codes, and `enc`'s activation scales
// are the learned ones. `enc` must come from calibrate() on the same graph and plan.
ReconResult reconstruct(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc,
                        const std::vector<TensorData>& inputs, const ReconOptions& opts);

}  // namespace inlierq::recon
