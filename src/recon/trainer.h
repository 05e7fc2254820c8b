#pragma once
// What one unit's training step is made of (ALGORITHMS.md §4–5): the learned quantizer state, Adam, the
// learning-rate schedules, the reconstruction loss and the seeds. The unit loop (reconstruct.cpp) owns the
// state; Reconstructor::train (trainer.cpp) runs the iterations. Internal header (exposes ATen).
#include <ATen/ATen.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "inlierq/recon.h"
#include "quant/range_search.h"

namespace inlierq::recon {

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

// A quantized weight: its FP values and grid; `hard` holds s·(q − z) once its rounding is decided.
struct WeightParam {
  std::string tensor;
  at::Tensor w;            // FP weight
  at::Tensor scale, zero;  // broadcast views
  int64_t qn = 0, qp = 0;
  at::Tensor hard;         // defined once hardened
};

// An activation scale group: one step (learned by its owner unit) shared by all its member values.
struct ActGroup {
  at::Tensor scale;  // [1], a leaf that may require grad
  at::Tensor zero;
  int64_t qn = 0, qp = 0;
  quant::QuantGrid grid;
  int owner = -1;    // the first unit producing a member learns the shared step
};

// Nearest rounding of a weight on its grid, dequantized.
at::Tensor harden_nearest(const WeightParam& p);

// Adam over one tensor (PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8).
struct Adam {
  at::Tensor m, v;
  int64_t t = 0;
  void step(at::Tensor& p, const at::Tensor& grad, double lr);
};

// Cosine decay of a pass's step learning rate from pass.lr_act to 0 over its iterations.
double step_learning_rate(const PassSpec& pass, int64_t iteration);

// One update of a learned activation step from its gradient (undefined: no update). absolute: Adam on s at lr·2^(4−b), as the rates
// are those of 4-bit steps (a b-bit grid over the same range has a 2^(b−4) times smaller step); log: Adam on
// log s at lr. The step stays ≥ 1e-8.
void update_step(ActGroup& group, Adam& adam, const at::Tensor& grad, double lr, StepUpdate step_update);

// The seed of a unit's pass: every (seed, pass, unit) gets its own stream.
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b);

// The reconstruction loss is Σ over channels of F·|d|^p, averaged over batch and positions; with volume
// weights w [N, positions...] the positions are averaged with w: Σ w·Σ_c F·|d|^p / Σ w (ALGORITHMS §6.6).
// This is its numerator; the caller divides by the whole mini-batch's normaliser, so that the shards of a
// batch add up to the batch's loss.
at::Tensor lp_loss_sum(const at::Tensor& pred, const at::Tensor& target, double p, const at::Tensor& weight = {},
                       const at::Tensor& volume = {});

// The denominator that makes lp_loss_sum over `rows` samples shaped like `like` a mean: Σ of those rows'
// inlier weights when given, else rows × positions.
double lp_normaliser(const at::Tensor& like, int64_t rows, const at::Tensor& volume_rows = {});

// Adds the wall time since the previous call (or construction) to a counter.
struct Lap {
  clock_type::time_point t = clock_type::now();
  void operator()(double& seconds) {
    const auto now = clock_type::now();
    seconds += std::chrono::duration<double>(now - t).count();
    t = now;
  }
};

// While alive (and `on`), the calling thread runs ATen ops on one intra-op thread, as the shard workers do.
struct OneIntraOpThread {
  int saved = 0;
  explicit OneIntraOpThread(bool on);
  ~OneIntraOpThread();
  OneIntraOpThread(const OneIntraOpThread&) = delete;
  OneIntraOpThread& operator=(const OneIntraOpThread&) = delete;
};

}  // namespace inlierq::recon
