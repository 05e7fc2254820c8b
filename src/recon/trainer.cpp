// The training of one unit (ALGORITHMS.md §4–5): mini-batches from the caches, shards differentiated in
// parallel, AdaRound's soft weights and regulariser, QDrop's dropped activation quantization, Adam with
// the step schedules. Bit-identical for any thread count: gradients are summed in shard order.
#include "recon/trainer.h"

#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <fmt/format.h>

#include <cmath>
#include <numeric>
#include <random>

#include "inlierq/error.h"
#include "inlierq/interrupt.h"
#include "recon/adaround.h"
#include "recon/reconstructor.h"

namespace inlierq::recon {

at::Tensor harden_nearest(const WeightParam& p) {
  return (quant::quantize_codes(p.w, p.scale, p.zero, p.qn, p.qp) - p.zero) * p.scale;
}

void Adam::step(at::Tensor& p, const at::Tensor& grad, double lr) {
  if (!m.defined()) m = at::zeros_like(p), v = at::zeros_like(p);
  ++t;
  m.mul_(0.9).add_(grad, 0.1);
  v.mul_(0.999).addcmul_(grad, grad, 0.001);
  const double bc1 = 1 - std::pow(0.9, static_cast<double>(t)), bc2 = 1 - std::pow(0.999, static_cast<double>(t));
  at::NoGradGuard ng;
  p.addcdiv_(m, (v / bc2).sqrt_().add_(1e-8), -lr / bc1);
}

double step_learning_rate(const PassSpec& pass, int64_t iteration) {
  return pass.lr_act * 0.5 * (1 + std::cos(M_PI * static_cast<double>(iteration) / static_cast<double>(pass.iters)));
}

void update_step(ActGroup& group, Adam& adam, const at::Tensor& grad, double lr, StepUpdate step_update) {
  at::Tensor& sc = group.scale;
  if (grad.defined()) {
    if (step_update == StepUpdate::Log) {
      at::NoGradGuard ng;
      at::Tensor log_s = sc.detach().log();
      adam.step(log_s, grad * sc.detach(), lr);  // d/d(log s) = s · d/ds
      sc.copy_(log_s.exp_());
    } else {
      adam.step(sc, grad, lr * std::ldexp(1.0, 4 - group.grid.bits));
    }
  }
  at::NoGradGuard ng;
  sc.clamp_min_(1e-8);
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t x = seed ^ (0x9E3779B97F4A7C15ULL * (a + 1)) ^ (0xC2B2AE3D27D4EB4FULL * (b + 7));
  x ^= x >> 31, x *= 0xBF58476D1CE4E5B9ULL, x ^= x >> 27, x *= 0x94D049BB133111EBULL, x ^= x >> 31;
  return x;
}

at::Tensor lp_loss_sum(const at::Tensor& pred, const at::Tensor& target, double p, const at::Tensor& weight, const at::Tensor& volume) {
  at::Tensor d = pred - target;
  d = p == 2.0 ? d * d : d.abs().pow(p);
  if (weight.defined()) d = d * weight;
  if (volume.defined() && d.dim() >= 2) return (d.sum(1) * volume).sum();
  return d.sum();
}

double lp_normaliser(const at::Tensor& like, int64_t rows, const at::Tensor& volume_rows) {
  if (volume_rows.defined() && like.dim() >= 2) return std::max(1e-12, volume_rows.sum().item<double>());
  const double per_sample = static_cast<double>(like.numel() / std::max<int64_t>(1, like.size(0)));
  return static_cast<double>(rows) * per_sample / (like.dim() >= 2 ? static_cast<double>(like.size(1)) : 1.0);
}

OneIntraOpThread::OneIntraOpThread(bool on) {
  if (on) saved = at::get_num_threads(), at::set_num_threads(1);
}
OneIntraOpThread::~OneIntraOpThread() {
  if (saved > 0) at::set_num_threads(saved);
}

std::function<at::Tensor(const std::string&, const at::Tensor&)> Reconstructor::act_hook(bool act_on, double quant_prob,
                                                                                          std::function<uint64_t()> next_seed,
                                                                                          int64_t batch, int64_t rows,
                                                                                          double* seconds) {
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

void Reconstructor::train(size_t ui, const PassSpec& pass, int passes, const std::map<std::string, at::Tensor>& fp_out, UnitReport& rep) {
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
  cfg.lambda = opts_.rounding.lambda, cfg.beta_start = opts_.rounding.beta_start, cfg.beta_end = opts_.rounding.beta_end, cfg.warmup = opts_.rounding.warmup;
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
      if (r.v.grad().defined()) r.adam.step(r.v, r.v.grad(), opts_.rounding.lr);
    const double lr_act = step_learning_rate(pass, it);
    for (size_t j = 0; j < steps.size(); ++j)
      update_step(*steps[j].first, steps[j].second, grad[roundings.size() + j], lr_act, opts_.steps.update);
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

}  // namespace inlierq::recon
