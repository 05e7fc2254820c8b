// AdaRound / BRECQ / QDrop block reconstruction over cached activations (ALGORITHMS.md §4–5).
//
// Units run in forward order. Two activation caches travel along: the FP path (outputs of the FP units)
// and the quantized path (outputs of the already reconstructed, hardened units). A unit learns on
// mini-batches drawn from both; when it is done its hardened output over the whole calibration set
// replaces its inputs in the quantized cache, and values no later unit reads are dropped.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#ifdef __GLIBC__
#include <malloc.h>  // malloc_trim
#endif

#include "inlierq/error.h"
#include "inlierq/interrupt.h"
#include "inlierq/recon.h"
#include "quant/fake_quant.h"
#include "inlier/inlier_weights.h"
#include "inlier/saliency.h"
#include "quant/range_search.h"
#include "quant/sqnr.h"
#include "recon/activation_store.h"
#include "recon/adaround.h"
#include "recon/checkpoint.h"
#include "recon/shard_pool.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace fs = std::filesystem;

namespace inlierq::recon {

std::vector<std::string> reconstruction_methods() { return {"adaround", "brecq", "qdrop"}; }

void validate_options(const ReconOptions& o) {
  const auto methods = reconstruction_methods();
  if (std::find(methods.begin(), methods.end(), o.method) == methods.end())
    throw Error("unknown reconstruction method '" + o.method + "' (expected adaround, brecq or qdrop)");
  if (o.iters < 0) throw Error("--iters must be ≥ 0");
  if (!(o.time_limit_s >= 0)) throw Error("--time-limit must be ≥ 0 minutes");
  if (o.brecq_act_iters < 0) throw Error("--brecq-act-iters must be ≥ 0");
  if (o.batch < 1) throw Error("--recon-batch must be ≥ 1");
  if (!(o.drop_prob > 0 && o.drop_prob <= 1)) throw Error("--drop-prob must be in (0, 1]");
  if (!(o.input_mix >= 0 && o.input_mix <= 1)) throw Error("--input-mix must be in [0, 1]");
  if (!(o.lr_rounding >= 0) || !(o.lr_act >= 0) || !(o.brecq_lr_act >= 0)) throw Error("learning rates must be ≥ 0");
  if (o.step_update != "absolute" && o.step_update != "log")
    throw Error("unknown --step-update '" + o.step_update + "' (expected absolute or log)");
  if (!(o.warmup >= 0 && o.warmup < 1)) throw Error("--warmup must be in [0, 1)");
  if (!(o.rec_p > 0) || !(o.brecq_act_p > 0)) throw Error("--rec-p and --brecq-act-p must be > 0");
  if (o.max_block_compute < 1) throw Error("--max-unit-convs must be ≥ 1");
  if (o.holdout < -1) throw Error("--holdout must be ≥ 0, or -1 for 1/8 of the calibration set");
  if (o.threads < 0) throw Error("--threads must be ≥ 0");
  if (o.shards < 0 || o.shards > 64) throw Error("--recon-shards must be in [0, 64] (0 = automatic)");
  inlier::validate(o.heatmap_loss);
  inlier::validate(o.inlier_split);
  if (o.inlier_init != "minmax_inlier" && o.inlier_init != "mse_inlier" && o.inlier_init != "none")
    throw Error("unknown --inlier-init '" + o.inlier_init + "' (expected minmax_inlier, mse_inlier or none)");
}

nlohmann::json UnitReport::to_json() const {
  return {{"unit", name}, {"kind", kind}, {"pass", pass}, {"iters", iters},
          {"sqnr_before_db", sqnr_before_db}, {"sqnr_after_db", sqnr_after_db},
          {"loss_first", loss_first}, {"loss_last", loss_last}, {"seconds", seconds},
          {"predicted_seconds", predicted_seconds}, {"holdout_loss_before", holdout_before}, {"holdout_loss_after", holdout_after}, {"kept_start", kept_start},
          {"phase_ms", {{"data", phase_ms.data}, {"soft_weights", phase_ms.soft_weights},
                        {"forward", phase_ms.forward}, {"fake_quant", phase_ms.fake_quant},
                        {"loss", phase_ms.loss}, {"backward", phase_ms.backward},
                        {"fake_quant_backward", phase_ms.fake_quant_backward},
                        {"optimizer", phase_ms.optimizer}, {"total", phase_ms.total},
                        {"fp_reference", phase_ms.fp_reference}}}};
}

nlohmann::json ReconResult::to_json() const {
  nlohmann::json reps = nlohmann::json::array();
  for (const auto& r : reports) reps.push_back(r.to_json());
  nlohmann::json j{{"units", units.size()}, {"reports", reps}, {"iters", iters}, {"completed", completed}, {"seconds", seconds},
                   {"peak_cache_mb", peak_cache_bytes / 1048576.0}, {"spilled_mb", spilled_bytes / 1048576.0}};
  if (!inlier.is_null()) j["inlier"] = inlier;
  if (!passes.empty()) j["passes"] = passes;
  return j;
}

namespace {

using clock_type = std::chrono::steady_clock;

// What a pass does inside each unit.
struct PassSpec {
  int index = 1;
  bool learn_rounding = false;
  bool learn_act = false;
  bool act_on = false;       // activation quantizers active (training and the quantized-path output)
  double quant_prob = 1;     // QDrop: probability that an activation element is quantized
  double input_mix = 0;      // 0: quantized-prefix input only
  double p = 2.0;            // Lp of the reconstruction loss
  double lr_act = 0;
  int64_t iters = 0;
};

struct WeightParam {
  std::string tensor;
  at::Tensor w;            // FP weight
  at::Tensor scale, zero;  // broadcast views
  int64_t qn = 0, qp = 0;
  at::Tensor hard;         // defined once hardened
};

struct ActGroup {
  at::Tensor scale;  // [1], a leaf that may require grad
  at::Tensor zero;
  int64_t qn = 0, qp = 0;
  quant::QuantGrid grid;
  int owner = -1;    // the first unit producing a member learns the shared step
};

// Adam over one tensor (PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8).
struct Adam {
  at::Tensor m, v;
  int64_t t = 0;
  void step(at::Tensor& p, const at::Tensor& grad, double lr) {
    if (!m.defined()) m = at::zeros_like(p), v = at::zeros_like(p);
    ++t;
    m.mul_(0.9).add_(grad, 0.1);
    v.mul_(0.999).addcmul_(grad, grad, 0.001);
    const double bc1 = 1 - std::pow(0.9, static_cast<double>(t)), bc2 = 1 - std::pow(0.999, static_cast<double>(t));
    at::NoGradGuard ng;
    p.addcdiv_(m, (v / bc2).sqrt_().add_(1e-8), -lr / bc1);
  }
};

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed ^ (0x9E3779B97F4A7C15ULL * (a + 1)) ^ (0xC2B2AE3D27D4EB4FULL * (b + 7));
  x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ULL, x ^= x >> 27, x *= 0x94D049BB133111EBULL, x ^= x >> 31;
  return x;
}

// The reconstruction loss is Σ over channels of F·|d|^p, averaged over batch and positions; with volume
// weights w [N, positions...] the positions are averaged with w: Σ w·Σ_c F·|d|^p / Σ w (ALGORITHMS §6.6).
// This is its numerator; the caller divides by the whole mini-batch's normaliser, so that the shards of a
// batch add up to the batch's loss.
at::Tensor lp_loss_sum(const at::Tensor& pred, const at::Tensor& target, double p, const at::Tensor& weight = {},
                       const at::Tensor& volume = {}) {
  at::Tensor d = pred - target;
  d = p == 2.0 ? d * d : d.abs().pow(p);
  if (weight.defined()) d = d * weight;
  if (volume.defined() && d.dim() >= 2) return (d.sum(1) * volume).sum();
  return d.sum();
}

// The denominator that makes lp_loss_sum over `rows` samples shaped like `like` a mean: Σ of those rows'
// inlier weights when given, else rows × positions.
double lp_normaliser(const at::Tensor& like, int64_t rows, const at::Tensor& volume_rows = {}) {
  if (volume_rows.defined() && like.dim() >= 2) return std::max(1e-12, volume_rows.sum().item<double>());
  const double per_sample = static_cast<double>(like.numel() / std::max<int64_t>(1, like.size(0)));
  return static_cast<double>(rows) * per_sample / (like.dim() >= 2 ? static_cast<double>(like.size(1)) : 1.0);
}

// Adds the wall time since the previous call (or construction) to a counter.
struct Lap {
  clock_type::time_point t = clock_type::now();
  void operator()(double& seconds) {
    const auto now = clock_type::now();
    seconds += std::chrono::duration<double>(now - t).count();
    t = now;
  }
};

using quant::sqnr_db;

Graph unit_graph(const Graph& g, const Unit& u) {
  Graph s;
  s.name = u.name;
  s.opset = g.opset;
  std::set<std::string> names(u.nodes.begin(), u.nodes.end());
  for (const auto& n : g.nodes)
    if (names.count(n.name)) {
      s.nodes.push_back(n);
      for (const auto& in : n.inputs)
        if (auto it = g.initializers.find(in); it != g.initializers.end()) s.initializers[in] = it->second;
      for (const auto& v : n.outputs)
        if (auto it = g.value_info.find(v); it != g.value_info.end()) s.value_info[v] = it->second;
    }
  auto info = [&](const std::string& v) {
    const ValueInfo* vi = g.find_value(v);
    return vi ? *vi : ValueInfo{v, DType::Float, false, {}};
  };
  for (const auto& v : u.inputs) s.inputs.push_back(info(v));
  for (const auto& v : u.outputs) s.outputs.push_back(info(v));
  return s;
}

// While alive (and `on`), the calling thread runs ATen ops on one intra-op thread, as the shard workers do.
struct OneIntraOpThread {
  int saved = 0;
  explicit OneIntraOpThread(bool on) {
    if (on) saved = at::get_num_threads(), at::set_num_threads(1);
  }
  ~OneIntraOpThread() {
    if (saved > 0) at::set_num_threads(saved);
  }
  OneIntraOpThread(const OneIntraOpThread&) = delete;
  OneIntraOpThread& operator=(const OneIntraOpThread&) = delete;
};

// A pass is undone when it lowers the network's held-out output SQNR by more than this.
constexpr double kPassCheckToleranceDb = 0.1;

class Reconstructor {
 public:
  Reconstructor(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc, const std::vector<TensorData>& inputs,
                const ReconOptions& opts)
      : g_(g), plan_(plan), enc_(enc), opts_(opts), device_(opts.device),
        store_(opts.max_cache_mb * 1048576ull, opts.spill_dir), fisher_store_(opts.max_cache_mb * 1048576ull, opts.spill_dir) {
    validate_options(opts);
    if (inputs.empty()) throw Error("reconstruction needs calibration images");
    if (g.inputs.size() != 1) throw Error("reconstruction needs a model with one input");
    UnitOptions uo;
    uo.max_block_compute = opts.max_block_compute;
    uo.layerwise = opts.method == "adaround";
    units_ = derive_units(g, plan, uo);
    std::vector<at::Tensor> xs;
    for (const auto& t : inputs) xs.push_back(rt::to_aten(t));
    images_ = at::cat(xs, 0);
    num_ = images_.size(0);
    holdout_ = opts.holdout >= 0 ? std::min<int64_t>(opts.holdout, num_ - 1) : (num_ >= 8 ? std::max<int64_t>(1, num_ / 8) : 0);
    num_train_ = num_ - holdout_;
    network_input_ = g.inputs[0].name;

    for (const auto& w : plan.weights) {
      const auto& we = enc.weights.at(w.tensor);
      WeightParam p;
      p.tensor = w.tensor;
      p.w = rt::to_aten(g.initializers.at(w.tensor)).to(device_);
      const int64_t rank = p.w.dim();
      p.scale = quant::channel_view(at::tensor(we.scale, at::kFloat), we.axis, rank).to(device_);
      std::vector<float> zs(we.zero_point.begin(), we.zero_point.end());
      p.zero = quant::channel_view(at::tensor(zs, at::kFloat), we.axis, rank).to(device_);
      p.qn = we.qn(), p.qp = we.qp();
      weights_[w.node] = std::move(p);
    }
    for (const auto& a : plan.activations) {
      const auto& ae = enc.activations.at(a.value);
      auto& grp = groups_[a.group];
      if (!grp.scale.defined()) {
        grp.scale = at::full({1}, static_cast<double>(ae.scale), at::TensorOptions().dtype(at::kFloat).device(device_));
        grp.zero = at::full({1}, static_cast<double>(ae.zero_point), at::TensorOptions().dtype(at::kFloat).device(device_));
        grp.qn = ae.qn(), grp.qp = ae.qp();
        grp.grid = quant::QuantGrid{ae.bits, ae.symmetric};
      }
      act_group_[a.value] = a.group;
    }
    // Per unit: executor, weights, owned activation groups, last reader of every value.
    std::map<std::string, size_t> unit_of_node;
    for (size_t i = 0; i < units_.size(); ++i)
      for (const auto& n : units_[i].nodes) unit_of_node[n] = i;
    for (const auto& a : plan.activations) {
      auto it = unit_of_node.find(a.producer);
      if (it == unit_of_node.end()) continue;
      auto& grp = groups_[a.group];
      if (grp.owner < 0 || static_cast<int>(it->second) < grp.owner) grp.owner = static_cast<int>(it->second);
    }
    for (size_t i = 0; i < units_.size(); ++i) {
      const auto& u = units_[i];
      for (const auto& v : u.inputs) last_reader_[v] = i;
      for (const auto& n : u.nodes)
        if (weights_.count(n)) unit_weights_[i].push_back(n);
    }
  }

  ReconResult run() {
    const auto t0 = clock_type::now();
    ReconResult res;
    res.units = units_;
    std::vector<PassSpec> passes;
    const int64_t it = opts_.iters;
    if (opts_.method == "adaround") {
      passes.push_back({1, true, false, false, 1, 0, opts_.rec_p, 0, it});
    } else if (opts_.method == "brecq") {
      passes.push_back({1, true, false, false, 1, 0, opts_.rec_p, 0, it});
      passes.push_back({2, false, true, true, 1, 0, opts_.brecq_act_p, opts_.brecq_lr_act, opts_.brecq_act_iters});
    } else {
      passes.push_back({1, true, true, true, opts_.drop_prob, opts_.input_mix, opts_.rec_p, opts_.lr_act, it});
    }
    if (opts_.fisher || opts_.inlier) compute_gradient_weights(res);
    if (opts_.inlier && opts_.inlier_init != "none") init_inlier_ranges(res);
    release_free_heap();
    int resume_pass = 0;
    size_t resume_units = 0;
    int64_t resumed_iters = -1;
    initial_steps_ = snapshot().steps;
    if (opts_.resume) std::tie(resume_pass, resume_units, resumed_iters) = load_checkpoint(res);
    {
      // FP unit inputs of one mini-batch: the cost model's FP forward + backward and the time-limit probe.
      const auto batch_inputs = batch_unit_inputs(std::min<int64_t>(opts_.batch, num_train_));
      probe_unit_costs(passes, batch_inputs);
      // Measured iterations cost 8 per unit and pass: done for a time limit, and otherwise when that is at
      // most 5 % of the iterations, so that the first estimate and ETA rest on measured costs. Not on resume:
      // the iteration count is the checkpoint's, and the probe would train units that are already finished.
      measured_costs_ = !opts_.resume && (opts_.time_limit_s > 0 || (opts_.measure_costs && kProbeIters * 20 <= opts_.iters));
      if (measured_costs_) measure_unit_iterations(passes, batch_inputs);
      // The iteration count is chosen once, before the first unit, and kept by checkpoints: the run is then
      // reproducible with --iters set to the printed count.
      if (opts_.time_limit_s > 0) {
        const int64_t n = resumed_iters >= 0 ? resumed_iters : iters_for_time_limit(passes, t0);
        for (auto& p : passes) p.iters = p.index == 1 ? n : std::max<int64_t>(1, n * opts_.brecq_act_iters / std::max<int64_t>(1, opts_.iters));
      }
    }
    chosen_iters_ = passes.front().iters;
    res.iters = chosen_iters_;
    // What is left, in the cost model's units (unit cost × (iterations + evaluation)).
    work_left_ = 0;
    for (const auto& p : passes)
      for (size_t ui = 0; ui < units_.size(); ++ui)
        if (p.index > resume_pass || (p.index == resume_pass && ui >= resume_units)) work_left_ += unit_work(ui, p);
    if (opts_.log && opts_.time_limit_s <= 0) {
      // The reference budgets take days on a small CPU: say so before the first unit, not after it.
      const int64_t eta = static_cast<int64_t>(work_left_ * 1e-3);
      opts_.log(fmt::format("[recon] estimated {}:{:02d}:{:02d} for {} iterations per unit ({} units; {}){}", eta / 3600,
                            eta / 60 % 60, eta % 60, chosen_iters_, units_.size(),
                            measured_costs_ ? "from 8 measured iterations of each" : "from their FP cost, not measured at this budget",
                            eta > 3600 ? "; --time-limit MINUTES chooses the iterations that fit a budget" : ""));
    }
    t_units_ = clock_type::now();
    int64_t finished_units = static_cast<int64_t>(res.reports.size());
    for (const auto& pass : passes) {
      if (pass.index < resume_pass) continue;
      const size_t skip = pass.index == resume_pass ? resume_units : 0;
      store_.clear();
      store_.put("q:" + network_input_, quantized_network_input());
      store_.put("fp:" + network_input_, images_);
      for (size_t ui = 0; ui < units_.size(); ++ui) {
        const bool done = ui < skip;
        process_unit(ui, pass, static_cast<int>(passes.size()), done, res);
        release_free_heap();
        if (!done) {
          work_done_ += unit_work(ui, pass);
          res.reports.back().predicted_seconds = unit_work(ui, pass) * 1e-3;
          ++finished_units;
          if (!opts_.checkpoint_dir.empty()) save_checkpoint(pass.index, ui + 1, res);
          if (opts_.stop_after_units >= 0 && finished_units >= opts_.stop_after_units &&
              !(pass.index == passes.back().index && ui + 1 == units_.size())) {
            res.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
            res.peak_cache_bytes = store_.peak_bytes_in_memory();
            res.spilled_bytes = store_.spilled_bytes();
            return res;
          }
        }
      }
      // Never worse than the start, for the whole network: on the held-out images with every quantizer on,
      // the pass's result against the state it began from (rebuilt, so that a resumed run decides alike).
      if (holdout_ > 0 && pass.iters > 0) {
        const Snapshot learned = snapshot(), start = pass_start_state(pass);
        restore(start);
        const double sqnr_start = network_holdout_sqnr();
        restore(learned);
        const double sqnr_end = network_holdout_sqnr();
        // 8 images resolve about a tenth of a dB: FastestDet W4A4 AdaRound at 100 iterations moved the output
        // SQNR by −0.003 dB (0.192 → 0.188) while gaining mAP on 500 images; collapses lose dB (BRECQ above: −3.4).
        const bool worse = !(sqnr_end >= sqnr_start - kPassCheckToleranceDb);
        res.passes.push_back({{"pass", pass.index}, {"holdout_output_sqnr_start_db", sqnr_start},
                              {"holdout_output_sqnr_end_db", sqnr_end}, {"kept_start", worse}});
        if (worse) restore(start);
        if (opts_.log)
          opts_.log(fmt::format("[recon] pass {}: network output SQNR on the {} held-out images {:.2f} -> {:.2f} dB{}", pass.index,
                                holdout_, sqnr_start, sqnr_end,
                                worse ? "; worse, so the pass is undone (the state it started from is kept)" : ""));
        if (worse && !opts_.checkpoint_dir.empty()) save_checkpoint(pass.index, units_.size(), res);
      }
    }
    store_.clear();
    // Results into the graph and the encodings.
    for (auto& [node, p] : weights_) {
      if (!p.hard.defined()) p.hard = harden_nearest(p);
      g_.initializers[p.tensor] = rt::from_aten(p.hard.to(at::kCPU).contiguous());
    }
    for (const auto& a : plan_.activations) {
      enc_.activations[a.value].scale = groups_.at(a.group).scale.item<float>();
      enc_.activations[a.value].zero_point = std::lround(groups_.at(a.group).zero.item<double>());
    }
    res.completed = true;
    res.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    res.peak_cache_bytes = store_.peak_bytes_in_memory();
    res.spilled_bytes = store_.spilled_bytes();
    return res;
  }

 private:
  // The gradient pass and every unit free hundreds of megabytes in pieces that glibc keeps (the start-up
  // mallopt makes large blocks heap blocks, so they are not unmapped); hand them back before the next
  // allocations grow the heap around them.
  static void release_free_heap() {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
  }

  // One FP forward + backward of the top-K heatmap loss over the calibration set; per unit output the
  // Fisher factors (|g| + 1)² and, for InlierQ, the per-volume inlier weights.
  void compute_gradient_weights(ReconResult& res) {
    rt::ExecutorOptions eo;
    eo.device = device_;
    eo.fuse_silu = false;  // every unit output must exist as a tensor
    rt::Executor ex(g_, eo);
    std::vector<std::string> values;
    std::set<std::string> seen;
    for (const auto& u : units_)
      for (const auto& v : u.outputs)
        if (seen.insert(v).second) values.push_back(v);
    std::vector<at::Tensor> xs;
    for (int64_t i = 0; i < num_; ++i) xs.push_back(images_.narrow(0, i, 1));
    const inlier::AuxLossOptions ao = inlier::aux_options(opts_.heatmap_loss);
    if (opts_.log) opts_.log(fmt::format("[saliency] gradients of the top-{} heatmap loss at {} unit outputs", ao.k, values.size()));
    const inlier::InlierOptions io = inlier::inlier_options(opts_.inlier_split);
    nlohmann::json fits = nlohmann::json::object();
    const bool want_fisher = opts_.fisher || (opts_.inlier && opts_.inlier_fisher);
    // Reduced per batch: F in float16 and the per-volume raw saliency; the full gradient is never kept.
    inlier::aux_loss_reduce(
        ex, opts_.heatmap_loss.heatmap, xs, values, ao, 4,
        [&](const std::string&, const at::Tensor& g_full, const at::Tensor& z) {
          // Rounded to bfloat16 as when whole-set gradients were kept in bfloat16: the measured tables
          // came from that, and InlierQ's mAP moves with rounding this small (FastestDet W4A4 seed 0:
          // 0.0356 with, 0.0442 without).
          const at::Tensor g = g_full.to(at::kBFloat16).to(at::kFloat);
          std::vector<at::Tensor> kept;
          kept.push_back(want_fisher ? (g.abs() + 1).pow(2).to(at::kHalf) : at::Tensor());
          kept.push_back(opts_.inlier ? inlier::raw_saliency(g, z, io.saliency) : at::Tensor());
          return kept;
        },
        [&](const std::string& v, const std::vector<at::Tensor>& kept) {
          if (want_fisher) fisher_store_.put("f:" + v, kept[0], true);
          if (opts_.inlier) {
            auto vw = inlier::volume_weights_from_raw(kept[1], io);
            fisher_store_.put("w:" + v, vw.weights, true);
            fits[v] = vw.to_json();
            if (opts_.log)
              opts_.log(fmt::format("[inlierq] {}: EM means {:.2f} / {:.2f}, inlier prior {:.2f}, Ashman D {:.2f}, inlier mass {:.2f}{}", v,
                                    vw.fit.mean[0], vw.fit.mean[1], vw.fit.prior[1], vw.fit.ashman_d(), vw.inlier_mass,
                                    vw.fit.fallback ? " (fallback: " + vw.fit.fallback_reason + ")" : std::string()));
          }
        },
        opts_.inlier && opts_.inlier_split.saliency == "grad_act");
    if (opts_.inlier) res.inlier["units"] = fits;
  }

  // Activation ranges from inlier volumes only: every activation site takes the weight map of its unit's
  // first output, resampled (nearest) to its own spatial size. minmax_inlier: min/max over volumes with
  // w > 0.5; mse_inlier: the mse search on a w-weighted histogram.
  void init_inlier_ranges(ReconResult& res) {
    std::map<std::string, size_t> unit_of_node, unit_of_value;
    for (size_t i = 0; i < units_.size(); ++i)
      for (const auto& n : units_[i].nodes) unit_of_node[n] = i;
    for (const auto& a : plan_.activations)
      if (auto it = unit_of_node.find(a.producer); it != unit_of_node.end()) unit_of_value[a.value] = it->second;
    std::map<size_t, at::Tensor> unit_weights;
    for (size_t i = 0; i < units_.size(); ++i)
      if (fisher_store_.has("w:" + units_[i].outputs.front())) unit_weights[i] = fisher_store_.get("w:" + units_[i].outputs.front());
    struct Stats { double lo = INFINITY, hi = -INFINITY, flo = INFINITY, fhi = -INFINITY; std::unique_ptr<quant::Histogram> hist; };
    std::map<int, Stats> stats;
    rt::ExecutorOptions eo;
    eo.device = device_;
    for (const auto& a : plan_.activations) eo.hooked.insert(a.value);
    rt::Executor ex(g_, eo);
    const bool mse = opts_.inlier_init == "mse_inlier";
    const int64_t eb = 8;
    for (int pass = 1; pass <= (mse ? 2 : 1); ++pass) {
      for (int64_t b = 0; b < num_; b += eb) {
        const int64_t nb = std::min(eb, num_ - b);
        rt::RunOptions ro;
        ro.value_hook = [&](const std::string& name, const at::Tensor& x) -> at::Tensor {
          auto uv = unit_of_value.find(name);
          if (uv == unit_of_value.end()) return x;
          auto& st = stats[act_group_.at(name)];
          const at::Tensor xc = x.to(at::kCPU).to(at::kFloat).contiguous();
          at::Tensor w;
          if (auto uw = unit_weights.find(uv->second); uw != unit_weights.end() && xc.dim() == 4 && uw->second.dim() == 3) {
            w = at::upsample_nearest2d(uw->second.narrow(0, b, nb).unsqueeze(1), {xc.size(2), xc.size(3)}).expand_as(xc).contiguous();
          } else {
            w = at::ones_like(xc);
          }
          if (pass == 1) {
            auto [fmn, fmx] = at::aminmax(xc);
            st.flo = std::min(st.flo, fmn.item<double>()), st.fhi = std::max(st.fhi, fmx.item<double>());
            const at::Tensor in = xc.masked_select(w > 0.5);
            if (in.numel() > 0) {
              auto [mn, mx] = at::aminmax(in);
              st.lo = std::min(st.lo, mn.item<double>()), st.hi = std::max(st.hi, mx.item<double>());
            }
          } else {
            if (!st.hist) st.hist = std::make_unique<quant::Histogram>(st.flo, st.fhi, 2048);
            st.hist->add(xc.data_ptr<float>(), static_cast<size_t>(xc.numel()), w.data_ptr<float>());
          }
          return x;
        };
        ex.run({{network_input_, images_.narrow(0, b, nb).to(device_)}}, ro);
      }
    }
    nlohmann::json ranges = nlohmann::json::object();
    for (auto& [gid, st] : stats) {
      auto& grp = groups_.at(gid);
      const quant::QuantGrid grid = grp.grid;
      double lo = st.lo, hi = st.hi;
      if (!std::isfinite(lo)) lo = st.flo, hi = st.fhi;  // no inlier volume seen: keep the full range
      if (mse && st.hist && st.hist->total() > 0) {
        auto r = quant::mse_range(*st.hist, grid);
        lo = r.first, hi = r.second;
      }
      if (grid.symmetric) lo = -std::max(std::fabs(lo), std::fabs(hi)), hi = -lo;
      const auto prm = quant::calibrated_params(static_cast<float>(lo), static_cast<float>(hi), grid);
      const float old_scale = grp.scale.item<float>();
      grp.scale = at::full({1}, static_cast<double>(prm.scale), grp.scale.options());
      grp.zero = at::full({1}, static_cast<double>(prm.zero_point), grp.zero.options());
      ranges[std::to_string(gid)] = {{"full", {st.flo, st.fhi}}, {"inlier", {lo, hi}}, {"scale_before", old_scale},
                                     {"scale", prm.scale}, {"zero_point", prm.zero_point}};
    }
    res.inlier["ranges"] = ranges;
    if (opts_.log) opts_.log(fmt::format("[inlierq] {} activation ranges re-initialised from inlier volumes ({})", stats.size(), opts_.inlier_init));
  }

  at::Tensor harden_nearest(const WeightParam& p) const {
    return (quant::quantize_codes(p.w, p.scale, p.zero, p.qn, p.qp) - p.zero) * p.scale;
  }

  rt::Executor& executor(size_t ui) {
    auto& ex = executors_[ui];
    if (!ex) {
      rt::ExecutorOptions eo;
      eo.device = device_;
      for (const auto& n : unit_weights_[ui]) eo.replaceable.insert(weights_.at(n).tensor);  // replaced per run
      eo.check_finite = false;
      for (const auto& a : plan_.activations) eo.hooked.insert(a.value);
      ex = std::make_unique<rt::Executor>(unit_graph(g_, units_[ui]), eo);
    }
    return *ex;
  }

  // The images as the first units see them on the quantized path: on the input quantizer's grid when
  // the plan quantizes the network input (its scale is calibrated, never learned: no unit produces it).
  at::Tensor quantized_network_input() {
    auto it = act_group_.find(network_input_);
    if (it == act_group_.end()) return images_;
    const ActGroup& grp = groups_.at(it->second);
    at::NoGradGuard no_grad;
    return quant::fake_quant(images_, grp.scale.detach().to(images_.device()), grp.zero.to(images_.device()), grp.qn, grp.qp);
  }

  // A value hook quantizing the unit's activation sites (none when act_on is false).
  // quant_prob: probability of quantizing an element (1 outside QDrop's training), masks seeded by next_seed.
  // A shard of `rows` samples from a mini-batch of `batch` gives LSQ's gradient scale the whole batch's
  // element count. `seconds` (optional) accumulates the time spent quantizing.
  std::function<at::Tensor(const std::string&, const at::Tensor&)> act_hook(bool act_on, double quant_prob = 1.0,
                                                                             std::function<uint64_t()> next_seed = {},
                                                                             int64_t batch = 1, int64_t rows = 1,
                                                                             double* seconds = nullptr) {
    if (!act_on) return {};
    return [this, quant_prob, next_seed, batch, rows, seconds](const std::string& name, const at::Tensor& x) -> at::Tensor {
      auto it = act_group_.find(name);
      if (it == act_group_.end()) return x;
      const auto t0 = clock_type::now();
      const ActGroup& grp = groups_.at(it->second);
      const double gs = grp.scale.requires_grad() ? quant::lsq_grad_scale(x.numel() / rows * batch, grp.qp) : 1.0;
      at::Tensor y = quant::fake_quant_dropout(x, grp.scale, grp.zero, grp.qn, grp.qp, gs, quant_prob, quant_prob < 1 ? next_seed() : 0);
      if (seconds) *seconds += std::chrono::duration<double>(clock_type::now() - t0).count();
      return y;
    };
  }

  // Runs unit ui over the whole calibration set in eval batches: FP (weights and activations float)
  // or quantized (hardened / nearest weights, activation quantizers when act_on).
  std::map<std::string, at::Tensor> run_full(size_t ui, const std::string& prefix, bool quantized, bool act_on) {
    auto& ex = executor(ui);
    const auto& u = units_[ui];
    std::vector<at::Tensor> ins;
    for (const auto& v : u.inputs) ins.push_back(store_.get(prefix + v));
    rt::TensorMap overrides;
    if (quantized)
      for (const auto& n : unit_weights_[ui]) {
        const auto& p = weights_.at(n);
        overrides[p.tensor] = p.hard.defined() ? p.hard : harden_nearest(p);
      }
    rt::RunOptions ro;
    if (quantized) ro.overrides = &overrides, ro.value_hook = act_hook(act_on);
    const int64_t eb = 8;
    const int batches = static_cast<int>((num_ + eb - 1) / eb);
    std::vector<rt::TensorMap> outs(static_cast<size_t>(batches));
    // Eval batches on the shard threads, one intra-op thread each, like training: the caches then do not
    // depend on the thread count.
    auto run_batch = [&](int k) {
      const int64_t b = k * eb;
      rt::TensorMap feed;
      for (size_t j = 0; j < u.inputs.size(); ++j) feed[u.inputs[j]] = ins[j].narrow(0, b, std::min(eb, num_ - b)).to(device_);
      outs[static_cast<size_t>(k)] = ex.run(feed, ro);
    };
    {
      ShardPool* pool = shard_pool(shard_count());
      OneIntraOpThread one(pool != nullptr);
      if (pool) pool->run(batches, run_batch);
      else
        for (int k = 0; k < batches; ++k) run_batch(k);
    }
    std::map<std::string, at::Tensor> full;
    for (const auto& v : u.outputs) {
      std::vector<at::Tensor> ps;
      for (auto& o : outs) ps.push_back(o.at(v).to(at::kCPU).contiguous());
      full[v] = at::cat(ps, 0);
    }
    return full;
  }

  static std::pair<double, double> signal_noise(const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& ref) {
    double s = 0, n = 0;
    for (const auto& [v, r] : ref) {
      const at::Tensor& g = got.at(v);
      // A few images at a time: double copies of a whole calibration set's activations at 640×640 took
      // several gigabytes (YOLOv5n peaked at 7.3 GiB with a 256 MB cache).
      for (int64_t b = 0; b < r.size(0); b += 8) {
        const int64_t nb = std::min<int64_t>(8, r.size(0) - b);
        const at::Tensor rd = r.narrow(0, b, nb).to(at::kDouble), gd = g.narrow(0, b, nb).to(at::kDouble);
        s += rd.pow(2).sum().item<double>();
        n += (gd - rd).pow(2).sum().item<double>();
      }
    }
    return {s, n};
  }

  void process_unit(size_t ui, const PassSpec& pass, int passes, bool done, ReconResult& res) {
    const auto& u = units_[ui];
    const auto t_unit = clock_type::now();
    const auto fp_out = run_full(ui, "fp:", false, false);
    UnitReport rep;
    rep.name = u.name;
    rep.kind = u.kind;
    rep.pass = pass.index;
    const bool has_params = !unit_weights_[ui].empty() || owns_groups(ui);
    const bool learns = !done && has_params && pass.iters > 0;
    Snapshot start;  // the unit's weights and owned steps before the pass
    if (!done) {
      const auto q_before = run_full(ui, "q:", true, pass.act_on);
      const auto before = signal_noise(q_before, fp_out);
      rep.sqnr_before_db = sqnr_db(before.first, before.second);
      if (learns) {
        rep.holdout_before = holdout_loss(ui, q_before, fp_out, pass.p);
        start = unit_state(ui);
        train(ui, pass, passes, fp_out, rep);
      }
      for (const auto& n : unit_weights_[ui]) {
        auto& p = weights_.at(n);
        if (!p.hard.defined()) p.hard = harden_nearest(p);
      }
    }
    auto q_out = run_full(ui, "q:", true, pass.act_on);
    if (learns && holdout_ > 0) {
      // Never worse than the start: on the held-out images, the learned state must not lose to the state the
      // pass began with, or the unit goes back to it.
      rep.holdout_after = holdout_loss(ui, q_out, fp_out, pass.p);
      if (!(rep.holdout_after <= rep.holdout_before)) {
        restore(start);
        rep.kept_start = true;
        q_out = run_full(ui, "q:", true, pass.act_on);
      }
    }
    if (!done) {
      const auto after = signal_noise(q_out, fp_out);
      rep.sqnr_after_db = sqnr_db(after.first, after.second);
      rep.seconds = std::chrono::duration<double>(clock_type::now() - t_unit).count();
      res.reports.push_back(rep);
      if (opts_.log)
        opts_.log(fmt::format("[{}{}/{}] {} '{}' ({} conv{}): {} it, loss {:.4g} -> {:.4g}, {}SQNR {:.1f} -> {:.1f} dB, {:.1f} s{}",
                              passes > 1 ? fmt::format("pass {} ", pass.index) : "", ui + 1, units_.size(), u.kind, u.name,
                              u.compute_nodes, u.compute_nodes == 1 ? "" : "s", rep.iters, rep.loss_first, rep.loss_last,
                              learns && holdout_ > 0 ? fmt::format("held-out {:.4g} -> {:.4g}, ", rep.holdout_before, rep.holdout_after) : "",
                              rep.sqnr_before_db, rep.sqnr_after_db, rep.seconds,
                              rep.kept_start ? " (kept the start: the learned state was worse on the held-out images)" : ""));
    }
    // Caches: drop the inputs no later unit reads, add the outputs later units read.
    for (const auto& v : u.inputs)
      if (last_reader_.at(v) <= ui) store_.erase("fp:" + v), store_.erase("q:" + v);
    for (const auto& v : u.outputs)
      if (auto it = last_reader_.find(v); it != last_reader_.end() && it->second > ui) {
        store_.put("fp:" + v, fp_out.at(v));
        store_.put("q:" + v, q_out.at(v));
      }
  }

  // ---- the network-level check: weights and steps of every unit, and the output SQNR they give
  struct Snapshot {
    std::map<std::string, at::Tensor> hard;  // undefined: nearest rounding
    std::map<int, std::pair<at::Tensor, at::Tensor>> steps;
  };
  Snapshot snapshot() const {
    Snapshot s;
    for (const auto& [n, p] : weights_) s.hard[n] = p.hard;
    for (const auto& [gid, grp] : groups_) s.steps[gid] = {grp.scale.detach().clone(), grp.zero.clone()};
    return s;
  }
  // What one unit's pass can change: its weights and the steps it owns.
  Snapshot unit_state(size_t ui) const {
    Snapshot s;
    if (auto it = unit_weights_.find(ui); it != unit_weights_.end())
      for (const auto& n : it->second) s.hard[n] = weights_.at(n).hard;
    for (const auto& [gid, grp] : groups_)
      if (grp.owner == static_cast<int>(ui)) s.steps[gid] = {grp.scale.detach().clone(), grp.zero.clone()};
    return s;
  }
  // Every pass starts from the calibrated (or InlierQ-initialised) steps, as no pass before a step-learning
  // one changes them, and pass 1 from nearest rounding; later passes keep the weights pass 1 hardened.
  Snapshot pass_start_state(const PassSpec& pass) const {
    Snapshot s;
    for (const auto& [n, p] : weights_) s.hard[n] = pass.index == 1 ? at::Tensor() : p.hard;
    s.steps = initial_steps_;
    return s;
  }
  void restore(const Snapshot& s) {
    for (const auto& [n, h] : s.hard) weights_.at(n).hard = h;
    for (const auto& [gid, sz] : s.steps) groups_.at(gid).scale = sz.first.clone(), groups_.at(gid).zero = sz.second.clone();
  }
  // SQNR (dB) of the network's outputs on the held-out images with the current weights and steps and every
  // activation quantizer on (the exported model), against the FP network.
  double network_holdout_sqnr() {
    if (!net_exec_) {
      rt::ExecutorOptions eo;
      eo.device = device_;
      for (const auto& [n, p] : weights_) eo.replaceable.insert(p.tensor);
      for (const auto& a : plan_.activations) eo.hooked.insert(a.value);
      eo.check_finite = false;
      net_exec_ = std::make_unique<rt::Executor>(g_, eo);
    }
    at::NoGradGuard ng;
    rt::TensorMap overrides;
    for (const auto& [n, p] : weights_) overrides[p.tensor] = p.hard.defined() ? p.hard : harden_nearest(p);
    rt::RunOptions rq;
    rq.overrides = &overrides;
    rq.value_hook = act_hook(true);
    rq.hook_inputs = true;
    double sig = 0, noise = 0;
    const int64_t eb = 8;
    const bool first = holdout_fp_.empty();
    for (int64_t b = num_train_, k = 0; b < num_; b += eb, ++k) {
      const int64_t nb = std::min(eb, num_ - b);
      const rt::TensorMap feed{{network_input_, images_.narrow(0, b, nb).to(device_)}};
      if (first) holdout_fp_.push_back(net_exec_->run(feed));  // the FP outputs never change
      const auto& fp = holdout_fp_[static_cast<size_t>(k)];
      const auto q = net_exec_->run(feed, rq);
      for (const auto& o : g_.outputs) {
        const at::Tensor r = fp.at(o.name).to(at::kDouble), d = q.at(o.name).to(at::kDouble) - r;
        sig += r.pow(2).sum().item<double>();
        noise += d.pow(2).sum().item<double>();
      }
    }
    return sqnr_db(sig, noise);
  }

  // The reconstruction loss of unit outputs `got` against `ref` on the held-out images (the last holdout_ of
  // the calibration set), with the training loss's Fisher and inlier weights.
  double holdout_loss(size_t ui, const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& ref, double p) {
    if (holdout_ <= 0) return 0;
    at::NoGradGuard ng;
    double total = 0;
    for (const auto& v : units_[ui].outputs) {
      const at::Tensor r = ref.at(v).narrow(0, num_train_, holdout_), q = got.at(v).narrow(0, num_train_, holdout_);
      at::Tensor f, w;
      if (fisher_store_.has("f:" + v)) f = fisher_store_.get("f:" + v).narrow(0, num_train_, holdout_).to(at::kFloat);
      if (opts_.inlier && fisher_store_.has("w:" + v)) w = fisher_store_.get("w:" + v).narrow(0, num_train_, holdout_).to(at::kFloat);
      total += lp_loss_sum(q, r, p, f, w).item<double>() / lp_normaliser(r, holdout_, w);
    }
    return total;
  }

  bool owns_groups(size_t ui) const {
    for (const auto& [gid, grp] : groups_)
      if (grp.owner == static_cast<int>(ui)) return true;
    return false;
  }

  void train(size_t ui, const PassSpec& pass, int passes, const std::map<std::string, at::Tensor>& fp_out, UnitReport& rep) {
    const auto& u = units_[ui];
    auto& ex = executor(ui);
    const uint64_t unit_seed = mix_seed(opts_.seed, static_cast<uint64_t>(pass.index), ui);
    at::manual_seed(unit_seed);  // masks on CUDA
    mask_seed_ = unit_seed;
    std::mt19937_64 rng(unit_seed);

    std::vector<at::Tensor> q_in, fp_in, targets;
    for (const auto& v : u.inputs) {
      q_in.push_back(store_.get("q:" + v));
      if (pass.input_mix > 0) fp_in.push_back(store_.get("fp:" + v));
    }
    for (const auto& v : u.outputs) targets.push_back(fp_out.at(v));
    std::vector<at::Tensor> fisher, volume;
    for (const auto& v : u.outputs) {
      if (fisher_store_.has("f:" + v)) fisher.push_back(fisher_store_.get("f:" + v));
      if (opts_.inlier && fisher_store_.has("w:" + v)) volume.push_back(fisher_store_.get("w:" + v));
    }
    if (!fisher.empty() && fisher.size() != u.outputs.size()) fisher.clear();
    if (!volume.empty() && volume.size() != u.outputs.size()) volume.clear();

    AdaRoundConfig cfg;
    cfg.lambda = opts_.round_lambda, cfg.beta_start = opts_.beta_start, cfg.beta_end = opts_.beta_end, cfg.warmup = opts_.warmup;
    struct Rounding { WeightParam* p; at::Tensor v; Adam adam; };
    std::vector<Rounding> roundings;
    rt::TensorMap overrides;
    for (const auto& n : unit_weights_[ui]) {
      auto& p = weights_.at(n);
      if (pass.learn_rounding && !p.hard.defined()) {
        roundings.push_back({&p, init_rounding_logits(p.w, p.scale, cfg).detach().requires_grad_(true), {}});
      } else {
        overrides[p.tensor] = p.hard.defined() ? p.hard : harden_nearest(p);
      }
    }
    std::vector<std::pair<ActGroup*, Adam>> steps;
    if (pass.learn_act)
      for (auto& [gid, grp] : groups_)
        if (grp.owner == static_cast<int>(ui)) {
          grp.scale = grp.scale.detach().requires_grad_(true);
          steps.push_back({&grp, {}});
        }
    if (roundings.empty() && steps.empty()) return;

    const int64_t batch = std::min<int64_t>(opts_.batch, num_train_);
    const int shards = static_cast<int>(std::min<int64_t>(shard_count(), batch));
    ShardPool* pool = shard_pool(shards);
    // Shards run with one intra-op thread each; the calling thread is one of them.
    OneIntraOpThread one(pool != nullptr);
    std::vector<int64_t> order(num_train_);  // the held-out images never enter a mini-batch
    size_t cursor = order.size();
    double first_sum = 0, last_sum = 0;
    int64_t first_n = 0, last_n = 0;
    const int64_t avg_window = std::max<int64_t>(1, std::min<int64_t>(20, pass.iters / 5));
    auto t_last = clock_type::now();
    UnitReport::Phases ph;
    Lap lap;
    struct Shard {
      double rec = 0;
      std::vector<at::Tensor> grads;
      UnitReport::Phases ph;  // seconds, summed over iterations
      double fake_quant = 0;
    };
    std::vector<Shard> shard(static_cast<size_t>(shards));
    const double fqb0 = quant::fused_fake_quant_backward_seconds();
    const auto t_loop = clock_type::now();
    for (int64_t it = 0; it < pass.iters; ++it) {
      throw_if_interrupted();  // the unit restarts on --resume; the last checkpoint is the finished units
      lap(ph.optimizer);  // progress reporting of the previous iteration
      const auto t_iter = clock_type::now();
      // Mini-batch: walk a shuffled order of the calibration set, reshuffling when it runs out.
      std::vector<int64_t> idx;
      while (static_cast<int64_t>(idx.size()) < batch) {
        if (cursor == order.size()) {
          std::iota(order.begin(), order.end(), 0);
          std::shuffle(order.begin(), order.end(), rng);
          cursor = 0;
        }
        idx.push_back(order[cursor++]);
      }
      const at::Tensor index = at::tensor(idx, at::kLong);
      // The soft weights are computed once; the shards differentiate with respect to detached copies, and
      // their summed gradients flow back through the rounding logits here.
      std::vector<at::Tensor> soft, grad_inputs;
      for (auto& r : roundings) {
        soft.push_back(soft_weight(r.p->w, r.v, r.p->scale, r.p->zero, r.p->qn, r.p->qp, cfg));
        grad_inputs.push_back(soft.back().detach().requires_grad_(true));
        overrides[r.p->tensor] = grad_inputs.back();
      }
      for (auto& st : steps) grad_inputs.push_back(st.first->scale);
      // Loss normalisers over the whole mini-batch, so that the shards' sums add up to the batch loss.
      std::vector<double> norm;
      for (size_t k = 0; k < u.outputs.size(); ++k)
        norm.push_back(lp_normaliser(targets[k], batch, volume.empty() ? at::Tensor() : volume[k].index_select(0, index)));
      std::vector<uint64_t> shard_seed(static_cast<size_t>(shards));
      for (auto& sd : shard_seed) sd = next_mask_seed();
      lap(ph.soft_weights);
      auto run_shard = [&](int k) {
        Shard& sh = shard[static_cast<size_t>(k)];
        Lap slap;
        const int64_t b0 = batch * k / shards, b1 = batch * (k + 1) / shards, n = b1 - b0;
        const at::Tensor sidx = index.narrow(0, b0, n);
        uint64_t seed = shard_seed[static_cast<size_t>(k)];
        auto next_seed = [&seed] { return seed = quant::splitmix64(seed); };
        rt::TensorMap feed;
        for (size_t j = 0; j < u.inputs.size(); ++j) {
          at::Tensor q = q_in[j].index_select(0, sidx).to(device_);
          if (pass.input_mix > 0) q = quant::random_select(q, fp_in[j].index_select(0, sidx).to(device_), pass.input_mix, next_seed());
          feed[u.inputs[j]] = q;
        }
        slap(sh.ph.data);
        rt::RunOptions ro;
        ro.record_autograd = true;
        ro.overrides = &overrides;
        ro.value_hook = act_hook(pass.act_on, pass.quant_prob, next_seed, batch, n, &sh.fake_quant);
        auto out = ex.run(feed, ro);
        slap(sh.ph.forward);
        at::Tensor rec = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device_));
        for (size_t j = 0; j < u.outputs.size(); ++j)
          rec = rec + lp_loss_sum(out.at(u.outputs[j]), targets[j].index_select(0, sidx).to(device_), pass.p,
                                  fisher.empty() ? at::Tensor() : fisher[j].index_select(0, sidx).to(device_),
                                  volume.empty() ? at::Tensor() : volume[j].index_select(0, sidx).to(device_)) /
                          norm[j];
        sh.rec = rec.item<double>();
        slap(sh.ph.loss);
        sh.grads = torch::autograd::grad({rec}, grad_inputs, {}, false, false, /*allow_unused=*/true);
        slap(sh.ph.backward);
      };
      if (pool) pool->run(shards, run_shard);
      else
        for (int k = 0; k < shards; ++k) run_shard(k);
      lap(ph.total);  // the shards' wall time (their phases are summed from the shards below)
      double rec_v = 0;
      for (const auto& sh : shard) rec_v += sh.rec;
      if (!std::isfinite(rec_v))
        throw Error(fmt::format("unit '{}': reconstruction loss became {} at iteration {}", u.name, rec_v, it));
      if (it < avg_window) first_sum += rec_v, ++first_n;
      if (it >= pass.iters - avg_window) last_sum += rec_v, ++last_n;
      // Gradients summed over the shards in shard order: the same for any thread count.
      std::vector<at::Tensor> grad(grad_inputs.size());
      for (size_t j = 0; j < grad_inputs.size(); ++j)
        for (const auto& sh : shard)
          if (sh.grads[j].defined()) grad[j] = grad[j].defined() ? grad[j] + sh.grads[j] : sh.grads[j];
      if (!roundings.empty()) {
        std::vector<at::Tensor> outs, gouts;
        for (size_t r = 0; r < roundings.size(); ++r)
          if (grad[r].defined()) outs.push_back(soft[r]), gouts.push_back(grad[r]);
        if (regularizer_active(it, pass.iters, cfg)) {
          const double beta = beta_at(it, pass.iters, cfg);
          at::Tensor reg = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(device_));
          for (auto& r : roundings) reg = reg + cfg.lambda * rounding_regularizer(r.v, beta, cfg);
          outs.push_back(reg), gouts.push_back(at::ones_like(reg));
        }
        for (auto& r : roundings)
          if (r.v.grad().defined()) r.v.mutable_grad().zero_();
        if (!outs.empty()) torch::autograd::backward(outs, gouts);
      }
      lap(ph.soft_weights);
      for (auto& r : roundings)
        if (r.v.grad().defined()) r.adam.step(r.v, r.v.grad(), opts_.lr_rounding);
      // Cosine decay of the step learning rate to 0 over the pass.
      const double lr_act = pass.lr_act * 0.5 * (1 + std::cos(M_PI * static_cast<double>(it) / static_cast<double>(pass.iters)));
      for (size_t j = 0; j < steps.size(); ++j) {
        at::Tensor& sc = steps[j].first->scale;
        const at::Tensor& g = grad[roundings.size() + j];
        if (g.defined()) {
          if (opts_.step_update == "log") {
            at::NoGradGuard ng;
            at::Tensor log_s = sc.detach().log();
            steps[j].second.step(log_s, g * sc.detach(), lr_act);  // d/d(log s) = s · d/ds
            sc.copy_(log_s.exp_());
          } else {
            // The rates are for 4-bit steps (the references' activations); a b-bit grid over the same range
            // has a 2^(b-4) times smaller step, so it learns at lr·2^(4-b) (ALGORITHMS §5).
            steps[j].second.step(sc, g, lr_act * std::ldexp(1.0, 4 - steps[j].first->grid.bits));
          }
        }
        at::NoGradGuard ng;
        sc.clamp_min_(1e-8);
      }
      if (quiet_) probe_iter_ms_.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t_iter).count());
      if (opts_.progress && !quiet_ && (std::chrono::duration<double>(clock_type::now() - t_last).count() > 1.0 || it + 1 == pass.iters)) {
        t_last = clock_type::now();
        ReconOptions::Progress pr;
        pr.pass = pass.index, pr.passes = passes, pr.unit = ui + 1, pr.units = units_.size(), pr.unit_name = u.name;
        pr.iter = it + 1, pr.iters = pass.iters, pr.loss = rec_v;
        // Done in this unit: its iterations so far and two of its three evaluations (FP and quantized before).
        pr.eta_seconds = eta_seconds(iter_ms_.at(pass.index)[ui] * static_cast<double>(it + 1) + 2.0 / 3.0 * eval_ms_[ui]);
        opts_.progress(pr);
      }
    }
    lap(ph.optimizer);
    if (pass.iters > 0) {
      const double n = static_cast<double>(pass.iters);
      // total: wall per iteration; the shard phases: CPU time summed over the shards.
      ph.total = std::chrono::duration<double>(clock_type::now() - t_loop).count();
      for (const auto& sh : shard) {
        ph.data += sh.ph.data, ph.forward += sh.ph.forward - sh.fake_quant, ph.fake_quant += sh.fake_quant;
        ph.loss += sh.ph.loss, ph.backward += sh.ph.backward;
      }
      ph.fake_quant_backward = quant::fused_fake_quant_backward_seconds() - fqb0;
      for (double* v : {&ph.data, &ph.soft_weights, &ph.forward, &ph.fake_quant, &ph.loss, &ph.backward, &ph.fake_quant_backward,
                        &ph.optimizer, &ph.total})
        *v *= 1e3 / n;
      if (opts_.measure_fp_reference) ph.fp_reference = fp_reference_ms(ui, q_in, targets, batch);
    }
    rep.phase_ms = ph;
    for (auto& r : roundings) r.p->hard = hard_weight(r.p->w, r.v.detach(), r.p->scale, r.p->zero, r.p->qn, r.p->qp);
    for (auto& s : steps) s.first->scale = s.first->scale.detach();
    rep.iters = pass.iters;
    rep.loss_first = first_n ? first_sum / first_n : 0;
    rep.loss_last = last_n ? last_sum / last_n : 0;
  }

  // ---- cost model: ETA and --time-limit
  // Predicted wall ms per training iteration of every unit in every pass (iter_ms_) and of its three
  // evaluations over the calibration set (eval_ms_). Without --time-limit they come from every unit's plain
  // FP forward + backward at the training batch (measured once on FP inputs from one forward of the network)
  // times a prior rate; --time-limit replaces them with a few real iterations of every unit.
  using BatchInputs = std::map<size_t, std::vector<at::Tensor>>;
  void probe_unit_costs(const std::vector<PassSpec>& passes, const BatchInputs& ins) {
    unit_cost_ms_.assign(units_.size(), 1.0);
    const int64_t batch = std::min<int64_t>(opts_.batch, num_train_);
    for (const auto& [ui, in] : ins) unit_cost_ms_[ui] = std::max(1e-3, fp_reference_ms(ui, in, {}, batch, 3));
    for (const auto& p : passes) {
      auto& v = iter_ms_[p.index];
      v.resize(units_.size());
      for (size_t ui = 0; ui < units_.size(); ++ui) v[ui] = ms_rate_prior_ * unit_cost_ms_[ui];
    }
    eval_ms_.resize(units_.size());
    for (size_t ui = 0; ui < units_.size(); ++ui) eval_ms_[ui] = ms_rate_prior_ * unit_cost_ms_[ui] * eval_share();
  }
  // Every unit's inputs for the first `batch` calibration images, FP, from one forward of the network.
  BatchInputs batch_unit_inputs(int64_t batch) {
    rt::ExecutorOptions eo;
    eo.device = device_;
    eo.fuse_silu = false;  // unit inputs must exist as tensors
    rt::Executor ex(g_, eo);
    rt::RunOptions ro;
    std::set<std::string> keep;
    for (const auto& u : units_)
      for (const auto& v : u.inputs) keep.insert(v);
    ro.keep.assign(keep.begin(), keep.end());
    rt::TensorMap values;
    {
      at::NoGradGuard ng;
      values = ex.run({{network_input_, images_.narrow(0, 0, batch).to(device_)}}, ro);
    }
    values[network_input_] = images_.narrow(0, 0, batch).to(device_);
    BatchInputs out;
    for (size_t ui = 0; ui < units_.size(); ++ui) {
      std::vector<at::Tensor> ins;
      bool ok = true;
      for (const auto& v : units_[ui].inputs) {
        auto it = values.find(v);
        if (it == values.end()) { ok = false; break; }
        ins.push_back(it->second.clone());  // a normal tensor: the forward above may hand out inference tensors
      }
      if (ok) out[ui] = std::move(ins);
    }
    return out;
  }
  // A unit pass in wall ms: its iterations plus its three evaluations (FP, quantized before and after).
  double unit_work(size_t ui, const PassSpec& pass) const {
    return iter_ms_.at(pass.index)[ui] * static_cast<double>(pass.iters) + eval_ms_[ui];
  }
  // One evaluation over the calibration set, in training iterations' worth of a unit's cost.
  double eval_share() const { return static_cast<double>(num_) / std::max(1, opts_.batch); }
  // Remaining seconds: the rate measured so far (all the time since the first unit, evaluation and cache
  // handling included, over the predicted ms) applied to the work left; before any measurement, the prediction.
  double eta_seconds(double current_unit_done) const {
    const double done = work_done_ + current_unit_done;
    const double elapsed = std::chrono::duration<double>(clock_type::now() - t_units_).count();
    const double rate = done > 0 && elapsed > 0.5 ? elapsed / done : 1e-3;
    return std::max(0.0, (work_left_ - done) * rate);
  }

  // The cost model from measurements: every unit trains kProbeIters real iterations of every pass on the
  // first mini-batch (state restored afterwards; the median counts): the units' iterations differ in their
  // fake-quant and elementwise work, not only in their convolutions (FastestDet's middle ShuffleNet units ran
  // 1.6x what their FP forward + backward predicted). The first trainable unit's evaluation over the whole
  // calibration set is timed and scaled to the others by their FP cost.
  void measure_unit_iterations(const std::vector<PassSpec>& passes, const BatchInputs& ins) {
    size_t first = units_.size();
    for (size_t ui = 0; ui < units_.size() && first == units_.size(); ++ui) {
      bool from_input = true;
      for (const auto& v : units_[ui].inputs) from_input &= v == network_input_;
      if (from_input && !unit_weights_[ui].empty()) first = ui;
    }
    const uint64_t seed = mask_seed_;
    if (first < units_.size()) {
      store_.put("fp:" + network_input_, images_);
      const auto te = clock_type::now();
      run_full(first, "fp:", false, false);
      const double eval_ms = std::chrono::duration<double, std::milli>(clock_type::now() - te).count();
      for (size_t ui = 0; ui < units_.size(); ++ui) eval_ms_[ui] = 3 * eval_ms * unit_cost_ms_[ui] / unit_cost_ms_[first];
      store_.clear();
    }
    {
      // The probe's calibration set is that one mini-batch, none held out, and nothing is reported.
      struct ProbeScope {
        Reconstructor& r;
        int64_t num, train, holdout;
        explicit ProbeScope(Reconstructor& rr, int64_t batch) : r(rr), num(rr.num_), train(rr.num_train_), holdout(rr.holdout_) {
          r.num_ = r.num_train_ = batch, r.holdout_ = 0, r.quiet_ = true;
        }
        ~ProbeScope() { r.num_ = num, r.num_train_ = train, r.holdout_ = holdout, r.quiet_ = false; }
      } scope(*this, std::min<int64_t>(opts_.batch, num_train_));
      for (const auto& p0 : passes)
        for (const auto& [ui, in] : ins) {
          if (unit_weights_[ui].empty()) continue;
          for (size_t j = 0; j < in.size(); ++j) {
            store_.put("fp:" + units_[ui].inputs[j], in[j]);
            store_.put("q:" + units_[ui].inputs[j], in[j]);
          }
          const Snapshot saved = unit_state(ui);
          const auto fp_out = run_full(ui, "fp:", false, false);
          PassSpec p = p0;
          p.iters = kProbeIters;
          UnitReport rep;
          probe_iter_ms_.clear();
          train(ui, p, 1, fp_out, rep);
          restore(saved);
          store_.clear();
          if (probe_iter_ms_.empty()) continue;  // nothing to learn in this pass
          // The median: the first iterations fault pages in and warm caches, and a busy neighbour can stall any.
          std::sort(probe_iter_ms_.begin(), probe_iter_ms_.end());
          iter_ms_.at(p0.index)[ui] = probe_iter_ms_[probe_iter_ms_.size() / 2];
        }
    }
    mask_seed_ = seed;
  }

  // Iterations per unit that fit the time limit, from the measured cost model.
  int64_t iters_for_time_limit(const std::vector<PassSpec>& passes, clock_type::time_point t0) {
    double per_iter = 0, evals = 0;  // ms over all units and passes
    for (const auto& p : passes) {
      const double share = p.index == 1 ? 1.0 : static_cast<double>(opts_.brecq_act_iters) / std::max<int64_t>(1, opts_.iters);
      for (size_t ui = 0; ui < units_.size(); ++ui) per_iter += iter_ms_.at(p.index)[ui] * share, evals += eval_ms_[ui];
    }
    const double left_ms = opts_.time_limit_s * 1e3 - std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
    const int64_t n = static_cast<int64_t>(std::floor((left_ms - evals) / per_iter));
    const int64_t chosen = std::max<int64_t>(10, n);
    if (opts_.log)
      opts_.log(fmt::format("[recon] time limit {:.1f} min: {} iterations per unit{} (measured {:.0f} ms per iteration over all units, "
                            "{:.0f} s of evaluation; reproduce with --iters {})",
                            opts_.time_limit_s / 60, chosen, n < 10 ? fmt::format(" (the limit allows {}; using the minimum)", std::max<int64_t>(0, n)) : "",
                            per_iter, evals * 1e-3, chosen));
    return chosen;
  }

  // Median wall time of a plain FP forward + backward of the unit through ATen autograd at the training
  // batch: FP weights as leaves, no quantizers, MSE to the target. What an iteration would cost with none of
  // reconstruction's machinery.
  double fp_reference_ms(size_t ui, const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& targets, int64_t batch,
                         int reps = 7) {
    const auto& u = units_[ui];
    auto& ex = executor(ui);
    rt::TensorMap overrides;
    std::vector<at::Tensor> leaves;
    for (const auto& n : unit_weights_[ui]) {
      at::Tensor w = weights_.at(n).w.detach().clone().requires_grad_(true);
      overrides[weights_.at(n).tensor] = w;
      leaves.push_back(w);
    }
    rt::RunOptions ro;
    ro.record_autograd = true;
    ro.overrides = &overrides;
    rt::TensorMap feed;
    for (size_t k = 0; k < u.inputs.size(); ++k) feed[u.inputs[k]] = inputs[k].narrow(0, 0, batch).to(device_);
    std::vector<at::Tensor> tg;
    for (const auto& t : targets) tg.push_back(t.narrow(0, 0, batch).to(device_));
    std::vector<double> ms;
    for (int rep = 0; rep < reps; ++rep) {
      const auto t0 = clock_type::now();
      auto out = ex.run(feed, ro);
      at::Tensor loss = at::zeros({}, at::kFloat);
      for (size_t k = 0; k < u.outputs.size(); ++k)
        loss = loss + (tg.empty() ? out.at(u.outputs[k]).pow(2).mean() : (out.at(u.outputs[k]) - tg[k]).pow(2).mean());
      loss.backward();
      for (auto& l : leaves) l.mutable_grad().reset();
      ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

  // ---- checkpoints: state.json + weights-<k>.bin (raw float32 of every hardened weight)
  std::string run_key() const {
    nlohmann::json j{{"fingerprint", opts_.fingerprint}, {"method", opts_.method}, {"iters", opts_.iters},
                     {"batch", opts_.batch}, {"seed", opts_.seed}, {"lr_rounding", opts_.lr_rounding},
                     {"lr_act", opts_.lr_act}, {"brecq_lr_act", opts_.brecq_lr_act}, {"step_update", opts_.step_update}, {"brecq_act_iters", opts_.brecq_act_iters},
                     {"drop_prob", opts_.drop_prob}, {"input_mix", opts_.input_mix}, {"lambda", opts_.round_lambda},
                     {"beta", {opts_.beta_start, opts_.beta_end}}, {"warmup", opts_.warmup}, {"rec_p", opts_.rec_p},
                     {"brecq_act_p", opts_.brecq_act_p}, {"max_block_compute", opts_.max_block_compute}, {"shards", shard_count()}, {"holdout", holdout_},
                     {"time_limit_s", opts_.time_limit_s},
                     {"fisher", opts_.fisher}, {"topk", opts_.heatmap_loss.topk}, {"aux_loss", opts_.heatmap_loss.aux_loss},
                     {"topk_selection", opts_.heatmap_loss.topk_selection}, {"inlier", opts_.inlier}, {"saliency", opts_.inlier_split.saliency},
                     {"inlier_weighting", opts_.inlier_split.weighting}, {"inlier_quantile", opts_.inlier_split.quantile}, {"inlier_init", opts_.inlier_init},
                     {"inlier_fisher", opts_.inlier_fisher},
                     {"em", {opts_.inlier_split.em_max_iters, opts_.inlier_split.em_tolerance, opts_.inlier_split.em_variance_floor,
                             opts_.inlier_split.em_min_prior, opts_.inlier_split.em_min_separation}},
                     {"images", num_}};
    return j.dump();
  }

  void save_checkpoint(int pass, size_t units_done, const ReconResult& res) {
    CheckpointState st;
    st.run = run_key(), st.pass = pass, st.units_done = units_done, st.iters = chosen_iters_, st.reports = res.reports;
    for (const auto& [node, p] : weights_)
      if (p.hard.defined()) st.hard_weights.emplace_back(p.tensor, p.hard);
    for (const auto& [gid, grp] : groups_) st.act_scales[gid] = grp.scale.item<float>();
    write_checkpoint(opts_.checkpoint_dir, st, checkpoints_written_);
  }

  std::tuple<int, size_t, int64_t> load_checkpoint(ReconResult& res) {
    std::map<std::string, WeightParam*> by_tensor;
    for (auto& [n, p] : weights_) by_tensor[p.tensor] = &p;
    const CheckpointState st = read_checkpoint(opts_.checkpoint_dir, run_key(), [&](const std::string& t) -> int64_t {
      auto it = by_tensor.find(t);
      return it == by_tensor.end() ? -1 : it->second->w.numel();
    });
    for (const auto& [tensor, h] : st.hard_weights) {
      WeightParam& p = *by_tensor.at(tensor);
      p.hard = h.view(p.w.sizes()).to(device_);
    }
    for (const auto& [gid, s] : st.act_scales)
      groups_.at(gid).scale = at::full({1}, static_cast<double>(s), at::TensorOptions().dtype(at::kFloat).device(device_));
    res.reports.insert(res.reports.end(), st.reports.begin(), st.reports.end());
    if (opts_.log)
      opts_.log(fmt::format("resuming from '{}': pass {}, {} of {} units done", opts_.checkpoint_dir, st.pass, st.units_done, units_.size()));
    return {st.pass, st.units_done, st.iters};
  }

  Graph& g_;
  const quant::QuantPlan& plan_;
  quant::Encodings& enc_;
  const ReconOptions& opts_;
  at::Device device_;
  ActivationStore store_;
  ActivationStore fisher_store_;  // (|g| + 1)² per unit-output element, for all passes
  std::vector<Unit> units_;
  at::Tensor images_;
  int64_t num_ = 0;
  int64_t holdout_ = 0, num_train_ = 0;  // the last holdout_ images check each unit; the first num_train_ train it
  std::string network_input_;
  std::map<std::string, WeightParam> weights_;  // by node
  std::map<int, ActGroup> groups_;
  std::map<std::string, int> act_group_;
  std::map<size_t, std::vector<std::string>> unit_weights_;
  std::map<std::string, size_t> last_reader_;
  std::map<size_t, std::unique_ptr<rt::Executor>> executors_;
  uint64_t mask_seed_ = 0;
  std::unique_ptr<ShardPool> pool_;
  std::unique_ptr<rt::Executor> net_exec_;  // the whole graph, for the network-level held-out check
  std::vector<rt::TensorMap> holdout_fp_;   // its FP outputs on the held-out images, per batch of 8
  std::map<int, std::pair<at::Tensor, at::Tensor>> initial_steps_;  // steps before any pass (after InlierQ's init)
  const int intra_threads_ = opts_.threads > 0 ? opts_.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  int shard_count() const { return opts_.shards > 0 ? opts_.shards : device_.is_cpu() ? 2 : 1; }
  // Threads for the shards: as many as intra-op threads allow, created once and kept for all units.
  ShardPool* shard_pool(int shards) {
    const int threads = std::min(shards, intra_threads_);
    if (threads <= 1 || !device_.is_cpu()) return nullptr;
    if (!pool_ || pool_->threads() != threads)
      pool_ = std::make_unique<ShardPool>(threads, [] {
        (void)at::get_num_threads();  // ATen's lazy per-thread init first, or it would undo the next line
        at::set_num_threads(1);
      });
    return pool_.get();
  }
  uint64_t next_mask_seed() { return mask_seed_ = quant::splitmix64(mask_seed_); }
  // cost model (probe_unit_costs): per unit FP forward+backward ms, predicted wall ms per iteration (per
  // pass) and of the unit's evaluations; work in predicted wall ms
  std::vector<double> unit_cost_ms_;
  std::map<int, std::vector<double>> iter_ms_;
  std::vector<double> eval_ms_;
  double work_left_ = 0, work_done_ = 0;
  // Wall ms per cost ms before anything is measured: QDrop's iteration over the units' FP forward + backward
  // on one thread was 0.90-1.13 (docs/BENCHMARKS.md), and two shard threads ran 1.55-1.63x faster.
  double ms_rate_prior_ = 1.05 / (1 + 0.6 * (std::min(shard_count(), intra_threads_) - 1));
  int64_t chosen_iters_ = 0;
  static constexpr int64_t kProbeIters = 8;
  bool measured_costs_ = false;  // the cost model's iteration times were measured (measure_unit_iterations)
  int64_t checkpoints_written_ = 0;
  bool quiet_ = false;  // no progress callbacks (the time-limit probe)
  std::vector<double> probe_iter_ms_;  // wall ms of each iteration while quiet_
  clock_type::time_point t_units_ = clock_type::now();
};

}  // namespace

ReconResult reconstruct(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc, const std::vector<TensorData>& inputs,
                        const ReconOptions& opts) {
  Reconstructor r(g, plan, enc, inputs, opts);
  return r.run();
}

}  // namespace inlierq::recon
