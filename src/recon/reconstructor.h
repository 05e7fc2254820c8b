#pragma once
// The state of one reconstruction run and its unit loop (ALGORITHMS.md §4–5). Internal header (exposes
// ATen). The class is split by concern over several files:
//   reconstruct.cpp  the unit/cache loop, the held-out checks, results into the graph and encodings;
//   trainer.cpp      one unit's training iterations (trainer.h: Adam, schedules, loss);
//   cost_model.cpp   the first estimate, the ETA and --time-limit;
//   checkpoint.cpp   the checkpoint file format and the run key;
//   inlier/gradient_stage.cpp  the gradient pass, inlier weights and inlier-aware ranges.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "inlierq/recon.h"
#include "quant/fake_quant.h"
#include "recon/activation_store.h"
#include "recon/shard_pool.h"
#include "recon/trainer.h"
#include "runtime/executor.h"

namespace inlierq::recon {

// --time-limit's choice: the iterations per unit that fit `left_ms` after `eval_ms` of evaluations, at
// `ms_per_iteration` summed over all units and passes; never fewer than kMinTimeLimitIters.
constexpr int64_t kMinTimeLimitIters = 10;
int64_t iterations_for_budget(double left_ms, double eval_ms, double ms_per_iteration);

class Reconstructor {
 public:
  Reconstructor(Graph& g, const quant::QuantPlan& plan, quant::Encodings& enc, const std::vector<TensorData>& inputs,
                const ReconOptions& opts);
  ReconResult run();

 private:
  using BatchInputs = std::map<size_t, std::vector<at::Tensor>>;
  // The weights and steps of every unit (or of one), as the network-level check and the per-unit check
  // restore them.
  struct Snapshot {
    std::map<std::string, at::Tensor> hard;  // undefined: nearest rounding
    std::map<int, std::pair<at::Tensor, at::Tensor>> steps;
  };

  // ---- the unit loop (reconstruct.cpp)
  static void release_free_heap();
  void compute_gradient_weights(ReconResult& res);
  void init_inlier_ranges(ReconResult& res);
  rt::Executor& executor(size_t ui);
  at::Tensor quantized_network_input();
  std::map<std::string, at::Tensor> run_full(size_t ui, const std::string& prefix, bool quantized, bool act_on);
  static std::pair<double, double> signal_noise(const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& ref);
  void process_unit(size_t ui, const PassSpec& pass, int passes, bool done, ReconResult& res);
  Snapshot snapshot() const;
  Snapshot unit_state(size_t ui) const;
  Snapshot pass_start_state(const PassSpec& pass) const;
  void restore(const Snapshot& s);
  double network_holdout_sqnr();
  double holdout_loss(size_t ui, const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& ref, double p);
  bool owns_groups(size_t ui) const;
  void save_checkpoint(int pass, size_t units_done, const ReconResult& res);
  std::tuple<int, size_t, int64_t> load_checkpoint(ReconResult& res);
  int shard_count() const { return opts_.shards > 0 ? opts_.shards : device_.is_cpu() ? 2 : 1; }
  ShardPool* shard_pool(int shards);
  uint64_t next_mask_seed() { return mask_seed_ = quant::splitmix64(mask_seed_); }

  // ---- training (trainer.cpp)
  // A value hook quantizing the unit's activation sites (none when act_on is false).
  // quant_prob: probability of quantizing an element (1 outside QDrop's training), masks seeded by next_seed.
  // A shard of `rows` samples from a mini-batch of `batch` gives LSQ's gradient scale the whole batch's
  // element count. `seconds` (optional) accumulates the time spent quantizing.
  std::function<at::Tensor(const std::string&, const at::Tensor&)> act_hook(bool act_on, double quant_prob = 1.0,
                                                                             std::function<uint64_t()> next_seed = {},
                                                                             int64_t batch = 1, int64_t rows = 1,
                                                                             double* seconds = nullptr);
  void train(size_t ui, const PassSpec& pass, int passes, const std::map<std::string, at::Tensor>& fp_out, UnitReport& rep);

  // ---- cost model (cost_model.cpp)
  void probe_unit_costs(const std::vector<PassSpec>& passes, const BatchInputs& ins);
  // Every unit's inputs for the first `batch` calibration images, FP, from one forward of the network.
  BatchInputs batch_unit_inputs(int64_t batch);
  // A unit pass in wall ms: its iterations plus its three evaluations (FP, quantized before and after).
  double unit_work(size_t ui, const PassSpec& pass) const;
  double eval_share() const;
  double eta_seconds(double current_unit_done) const;
  void measure_unit_iterations(const std::vector<PassSpec>& passes, const BatchInputs& ins);
  int64_t iters_for_time_limit(const std::vector<PassSpec>& passes, clock_type::time_point t0);
  // Median wall time of a plain FP forward + backward of the unit through ATen autograd at the training
  // batch: FP weights as leaves, no quantizers, MSE to the target. What an iteration would cost with none of
  // reconstruction's machinery.
  double fp_reference_ms(size_t ui, const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& targets, int64_t batch,
                         int reps = 7);

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

}  // namespace inlierq::recon
