// AdaRound / BRECQ / QDrop block reconstruction over cached activations (ALGORITHMS.md §4–5): the unit loop.
//
// Units run in forward order. Two activation caches travel along: the FP path (outputs of the FP units)
// and the quantized path (outputs of the already reconstructed, hardened units). A unit learns on
// mini-batches drawn from both; when it is done its hardened output over the whole calibration set
// replaces its inputs in the quantized cache, and values no later unit reads are dropped. One unit's
// training is in trainer.cpp, the cost model in cost_model.cpp (reconstructor.h lists the split).
#include "recon/reconstructor.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <set>

#ifdef __GLIBC__
#include <malloc.h>  // malloc_trim
#endif

#include "inlierq/error.h"
#include "inlier/gradient_stage.h"
#include "quant/range_search.h"
#include "quant/sqnr.h"
#include "recon/checkpoint.h"
#include "recon/methods.h"
#include "runtime/tensor_convert.h"

namespace inlierq::recon {

void validate_options(const ReconOptions& o) {
  const auto methods = reconstruction_methods();
  if (std::find(methods.begin(), methods.end(), o.method) == methods.end())
    throw Error("unknown reconstruction method '" + o.method + "' (expected " + join_names(methods) + ")");
  if (o.iters < 0) throw Error("--iters must be ≥ 0");
  if (!(o.time_limit_s >= 0)) throw Error("--time-limit must be ≥ 0 minutes");
  if (o.brecq_act_iters < 0) throw Error("--brecq-act-iters must be ≥ 0");
  if (o.batch < 1) throw Error("--recon-batch must be ≥ 1");
  if (!(o.qdrop.drop_prob > 0 && o.qdrop.drop_prob <= 1)) throw Error("--drop-prob must be in (0, 1]");
  if (!(o.qdrop.input_mix >= 0 && o.qdrop.input_mix <= 1)) throw Error("--input-mix must be in [0, 1]");
  if (!(o.rounding.lr >= 0) || !(o.steps.lr >= 0) || !(o.steps.brecq_lr >= 0)) throw Error("learning rates must be ≥ 0");
  if (!(o.rounding.warmup >= 0 && o.rounding.warmup < 1)) throw Error("--warmup must be in [0, 1)");
  if (!(o.rec_p > 0) || !(o.brecq_act_p > 0)) throw Error("--rec-p and --brecq-act-p must be > 0");
  if (o.max_block_compute < 1) throw Error("--max-unit-convs must be ≥ 1");
  if (o.picture_units < 0 || o.picture_images < 0) throw Error("picture_units and picture_images must be ≥ 0");
  if (o.holdout < -1) throw Error("--holdout must be ≥ 0, or -1 for 1/8 of the calibration set");
  if (o.threads < 0) throw Error("--threads must be ≥ 0");
  if (o.shards < 0 || o.shards > 64) throw Error("--recon-shards must be in [0, 64] (0 = automatic)");
  inlier::validate(o.heatmap_loss);
  inlier::validate(o.inlier_split);
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

// A pass is undone when it lowers the network's held-out output SQNR by more than this.
constexpr double kPassCheckToleranceDb = 0.1;

}  // namespace

Reconstructor::Reconstructor(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc, const std::vector<TensorData>& inputs,
                             const ReconOptions& opts)
    : g_(g), plan_(plan), enc_(enc), opts_(opts), device_(opts.device),
      store_(opts.cache.max_mb * 1048576ull, opts.cache.spill_dir), fisher_store_(opts.cache.max_mb * 1048576ull, opts.cache.spill_dir) {
  validate_options(opts);
  if (inputs.empty()) throw Error("reconstruction needs calibration images");
  if (g.inputs.size() != 1) throw Error("reconstruction needs a model with one input");
  UnitOptions uo;
  uo.max_block_compute = opts.max_block_compute;
  uo.layerwise = method_is_layerwise(opts.method);
  units_ = derive_units(g, plan, uo);
  images_ = rt::to_aten_batch(inputs);
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

ReconResult Reconstructor::run() {
  const auto t0 = clock_type::now();
  ReconResult res;
  res.units = units_;
  std::vector<PassSpec> passes = method_passes(opts_);
  if (opts_.fisher || opts_.inlier) compute_gradient_weights(res);
  if (opts_.inlier && opts_.inlier_init != InlierInit::None) init_inlier_ranges(res);
  release_free_heap();
  int resume_pass = 0;
  size_t resume_units = 0;
  int64_t resumed_iters = -1;
  initial_steps_ = snapshot().steps;
  if (opts_.checkpoint.resume) std::tie(resume_pass, resume_units, resumed_iters) = load_checkpoint(res);
  {
    // FP unit inputs of one mini-batch: the cost model's FP forward + backward and the time-limit probe.
    const auto batch_inputs = batch_unit_inputs(std::min<int64_t>(opts_.batch, num_train_));
    probe_unit_costs(passes, batch_inputs);
    // Measured iterations cost 8 per unit and pass: done for a time limit, and otherwise when that is at
    // most 5 % of the iterations, so that the first estimate and ETA rest on measured costs. Not on resume:
    // the iteration count is the checkpoint's, and the probe would train units that are already finished.
    measured_costs_ = !opts_.checkpoint.resume && (opts_.time_limit_s > 0 || (opts_.measure_costs && kProbeIters * 20 <= opts_.iters));
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
        if (!opts_.checkpoint.dir.empty()) save_checkpoint(pass.index, ui + 1, res);
        if (opts_.checkpoint.stop_after_units >= 0 && finished_units >= opts_.checkpoint.stop_after_units &&
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
      if (worse && !opts_.checkpoint.dir.empty()) save_checkpoint(pass.index, units_.size(), res);
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

// The gradient pass and every unit free hundreds of megabytes in pieces that glibc keeps (the start-up
// mallopt makes large blocks heap blocks, so they are not unmapped); hand them back before the next
// allocations grow the heap around them.
void Reconstructor::release_free_heap() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

// One FP forward + backward of the top-K heatmap loss over the calibration set; per unit output the
// Fisher factors (|g| + 1)² and, for InlierQ, the per-volume inlier weights (inlier/gradient_stage.h).
void Reconstructor::compute_gradient_weights(ReconResult& res) {
  std::vector<std::string> values;
  std::set<std::string> seen;
  for (const auto& u : units_)
    for (const auto& v : u.outputs)
      if (seen.insert(v).second) values.push_back(v);
  inlier::GradientStageOptions go;
  go.heatmap_loss = opts_.heatmap_loss;
  go.split = opts_.inlier_split;
  go.fisher = opts_.fisher || (opts_.inlier && opts_.inlier_fisher);
  go.inlier = opts_.inlier;
  go.device = opts_.device;
  go.log = opts_.log;
  for (size_t i = units_.size() > static_cast<size_t>(opts_.picture_units) ? units_.size() - opts_.picture_units : 0; i < units_.size(); ++i)
    go.maps_of.push_back(units_[i].outputs.front());
  go.map_images = opts_.picture_images;
  const nlohmann::json fits = inlier::gradient_weights(
      g_, images_, values, go,
      [&](const std::string& v, const at::Tensor& f, const at::Tensor& w) {
        if (f.defined()) fisher_store_.put("f:" + v, f, true);
        if (w.defined()) fisher_store_.put("w:" + v, w, true);
      },
      &res.saliency_maps);
  if (opts_.inlier) res.inlier["units"] = fits;
}

// Activation ranges from inlier volumes only: every activation site takes the weight map of its unit's
// first output (inlier/gradient_stage.h).
void Reconstructor::init_inlier_ranges(ReconResult& res) {
  std::map<std::string, size_t> unit_of_node;
  for (size_t i = 0; i < units_.size(); ++i)
    for (const auto& n : units_[i].nodes) unit_of_node[n] = i;
  std::map<std::string, inlier::InlierRangeSite> sites;
  std::set<std::string> hooked;
  for (const auto& a : plan_.activations) {
    hooked.insert(a.value);
    auto it = unit_of_node.find(a.producer);
    if (it == unit_of_node.end()) continue;
    inlier::InlierRangeSite site;
    site.group = act_group_.at(a.value);
    const std::string key = "w:" + units_[it->second].outputs.front();
    if (fisher_store_.has(key)) site.weights = fisher_store_.get(key);
    sites[a.value] = site;
  }
  std::map<int, quant::QuantGrid> grids;
  for (const auto& [gid, grp] : groups_) grids[gid] = grp.grid;
  const auto found = inlier::inlier_ranges(g_, images_, sites, grids, hooked, opts_.inlier_init == InlierInit::MseInlier, opts_.device);
  nlohmann::json ranges = nlohmann::json::object();
  for (const auto& [gid, r] : found) {
    auto& grp = groups_.at(gid);
    const auto prm = quant::calibrated_params(static_cast<float>(r.lo), static_cast<float>(r.hi), grp.grid);
    const float old_scale = grp.scale.item<float>();
    grp.scale = at::full({1}, static_cast<double>(prm.scale), grp.scale.options());
    grp.zero = at::full({1}, static_cast<double>(prm.zero_point), grp.zero.options());
    ranges[std::to_string(gid)] = {{"full", {r.full_lo, r.full_hi}}, {"inlier", {r.lo, r.hi}}, {"scale_before", old_scale},
                                   {"scale", prm.scale}, {"zero_point", prm.zero_point}};
  }
  res.inlier["ranges"] = ranges;
  if (opts_.log) opts_.log(fmt::format("[inlierq] {} activation ranges re-initialised from inlier volumes ({})", found.size(), inlier_init_names().name(opts_.inlier_init)));
}

rt::Executor& Reconstructor::executor(size_t ui) {
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
at::Tensor Reconstructor::quantized_network_input() {
  auto it = act_group_.find(network_input_);
  if (it == act_group_.end()) return images_;
  const ActGroup& grp = groups_.at(it->second);
  at::NoGradGuard no_grad;
  return quant::fake_quant(images_, grp.scale.detach().to(images_.device()), grp.zero.to(images_.device()), grp.qn, grp.qp);
}

// Runs unit ui over the whole calibration set in eval batches: FP (weights and activations float)
// or quantized (hardened / nearest weights, activation quantizers when act_on).
std::map<std::string, at::Tensor> Reconstructor::run_full(size_t ui, const std::string& prefix, bool quantized, bool act_on) {
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

std::pair<double, double> Reconstructor::signal_noise(const std::map<std::string, at::Tensor>& got,
                                                     const std::map<std::string, at::Tensor>& ref) {
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

void Reconstructor::process_unit(size_t ui, const PassSpec& pass, int passes, bool done, ReconResult& res) {
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
Reconstructor::Snapshot Reconstructor::snapshot() const {
  Snapshot s;
  for (const auto& [n, p] : weights_) s.hard[n] = p.hard;
  for (const auto& [gid, grp] : groups_) s.steps[gid] = {grp.scale.detach().clone(), grp.zero.clone()};
  return s;
}
// What one unit's pass can change: its weights and the steps it owns.
Reconstructor::Snapshot Reconstructor::unit_state(size_t ui) const {
  Snapshot s;
  if (auto it = unit_weights_.find(ui); it != unit_weights_.end())
    for (const auto& n : it->second) s.hard[n] = weights_.at(n).hard;
  for (const auto& [gid, grp] : groups_)
    if (grp.owner == static_cast<int>(ui)) s.steps[gid] = {grp.scale.detach().clone(), grp.zero.clone()};
  return s;
}
// Every pass starts from the calibrated (or InlierQ-initialised) steps, as no pass before a step-learning
// one changes them, and pass 1 from nearest rounding; later passes keep the weights pass 1 hardened.
Reconstructor::Snapshot Reconstructor::pass_start_state(const PassSpec& pass) const {
  Snapshot s;
  for (const auto& [n, p] : weights_) s.hard[n] = pass.index == 1 ? at::Tensor() : p.hard;
  s.steps = initial_steps_;
  return s;
}
void Reconstructor::restore(const Snapshot& s) {
  for (const auto& [n, h] : s.hard) weights_.at(n).hard = h;
  for (const auto& [gid, sz] : s.steps) groups_.at(gid).scale = sz.first.clone(), groups_.at(gid).zero = sz.second.clone();
}

// SQNR (dB) of the network's outputs on the held-out images with the current weights and steps and every
// activation quantizer on (the exported model), against the FP network.
double Reconstructor::network_holdout_sqnr() {
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
double Reconstructor::holdout_loss(size_t ui, const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& ref,
                                   double p) {
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

bool Reconstructor::owns_groups(size_t ui) const {
  for (const auto& [gid, grp] : groups_)
    if (grp.owner == static_cast<int>(ui)) return true;
  return false;
}

void Reconstructor::save_checkpoint(int pass, size_t units_done, const ReconResult& res) {
  CheckpointState st;
  st.run = checkpoint_run_key(opts_, shard_count(), holdout_, num_), st.pass = pass, st.units_done = units_done, st.iters = chosen_iters_, st.reports = res.reports;
  for (const auto& [node, p] : weights_)
    if (p.hard.defined()) st.hard_weights.emplace_back(p.tensor, p.hard);
  for (const auto& [gid, grp] : groups_) st.act_scales[gid] = grp.scale.item<float>();
  write_checkpoint(opts_.checkpoint.dir, st, checkpoints_written_);
}

std::tuple<int, size_t, int64_t> Reconstructor::load_checkpoint(ReconResult& res) {
  std::map<std::string, WeightParam*> by_tensor;
  for (auto& [n, p] : weights_) by_tensor[p.tensor] = &p;
  const CheckpointState st = read_checkpoint(opts_.checkpoint.dir, checkpoint_run_key(opts_, shard_count(), holdout_, num_), [&](const std::string& t) -> int64_t {
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
    opts_.log(fmt::format("resuming from '{}': pass {}, {} of {} units done", opts_.checkpoint.dir, st.pass, st.units_done, units_.size()));
  return {st.pass, st.units_done, st.iters};
}

// Threads for the shards: as many as intra-op threads allow, created once and kept for all units.
ShardPool* Reconstructor::shard_pool(int shards) {
  const int threads = std::min(shards, intra_threads_);
  if (threads <= 1 || !device_.is_cpu()) return nullptr;
  if (!pool_ || pool_->threads() != threads)
    pool_ = std::make_unique<ShardPool>(threads, [] {
      (void)at::get_num_threads();  // ATen's lazy per-thread init first, or it would undo the next line
      at::set_num_threads(1);
    });
  return pool_.get();
}

ReconResult reconstruct(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc, const std::vector<TensorData>& inputs,
                        const ReconOptions& opts) {
  Reconstructor r(g, plan, enc, inputs, opts);
  return r.run();
}

}  // namespace inlierq::recon
