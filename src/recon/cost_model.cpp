// The cost model behind the first estimate, the ETA and --time-limit (docs/RECONSTRUCTION.md, "Time
// limit"): predicted wall ms per training iteration of every unit in every pass (iter_ms_) and of its three
// evaluations over the calibration set (eval_ms_). They start from every unit's plain FP forward + backward
// at the training batch (measured once on FP inputs from one forward of the network) times a prior rate;
// measure_unit_iterations replaces them with a few real iterations of every unit.
#include <c10/core/GradMode.h>
#include <fmt/format.h>

#include <cmath>
#include <set>

#include "recon/reconstructor.h"

namespace inlierq::recon {

void Reconstructor::probe_unit_costs(const std::vector<PassSpec>& passes, const BatchInputs& ins) {
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
Reconstructor::BatchInputs Reconstructor::batch_unit_inputs(int64_t batch) {
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
double Reconstructor::unit_work(size_t ui, const PassSpec& pass) const {
  return iter_ms_.at(pass.index)[ui] * static_cast<double>(pass.iters) + eval_ms_[ui];
}
// One evaluation over the calibration set, in training iterations' worth of a unit's cost.
double Reconstructor::eval_share() const { return static_cast<double>(num_) / std::max(1, opts_.batch); }
// Remaining seconds: the rate measured so far (all the time since the first unit, evaluation and cache
// handling included, over the predicted ms) applied to the work left; before any measurement, the prediction.
double Reconstructor::eta_seconds(double current_unit_done) const {
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
void Reconstructor::measure_unit_iterations(const std::vector<PassSpec>& passes, const BatchInputs& ins) {
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
int64_t Reconstructor::iters_for_time_limit(const std::vector<PassSpec>& passes, clock_type::time_point t0) {
  double per_iter = 0, evals = 0;  // ms over all units and passes
  for (const auto& p : passes) {
    const double share = p.index == 1 ? 1.0 : static_cast<double>(opts_.brecq_act_iters) / std::max<int64_t>(1, opts_.iters);
    for (size_t ui = 0; ui < units_.size(); ++ui) per_iter += iter_ms_.at(p.index)[ui] * share, evals += eval_ms_[ui];
  }
  const double left_ms = opts_.time_limit_s * 1e3 - std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  const int64_t n = static_cast<int64_t>(std::floor((left_ms - evals) / per_iter));
  const int64_t chosen = iterations_for_budget(left_ms, evals, per_iter);
  if (opts_.log)
    opts_.log(fmt::format("[recon] time limit {:.1f} min: {} iterations per unit{} (measured {:.0f} ms per iteration over all units, "
                          "{:.0f} s of evaluation; reproduce with --iters {})",
                          opts_.time_limit_s / 60, chosen, n < kMinTimeLimitIters ? fmt::format(" (the limit allows {}; using the minimum)", std::max<int64_t>(0, n)) : "",
                          per_iter, evals * 1e-3, chosen));
  return chosen;
}

int64_t iterations_for_budget(double left_ms, double eval_ms, double ms_per_iteration) {
  const double n = std::floor((left_ms - eval_ms) / std::max(1e-9, ms_per_iteration));
  return n < static_cast<double>(kMinTimeLimitIters) ? kMinTimeLimitIters : static_cast<int64_t>(n);
}

// Median wall time of a plain FP forward + backward of the unit through ATen autograd at the training
// batch: FP weights as leaves, no quantizers, MSE to the target. What an iteration would cost with none of
// reconstruction's machinery.
double Reconstructor::fp_reference_ms(size_t ui, const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& targets,
                                      int64_t batch, int reps) {
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

}  // namespace inlierq::recon
