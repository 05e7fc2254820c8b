#pragma once
// Executes the IR on at::Tensor. Internal header: it exposes ATen, so it is not under include/.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "inlierq/graph.h"
#include "runtime/op_registry.h"

namespace inlierq::rt {

using TensorMap = std::unordered_map<std::string, at::Tensor>;

struct ExecutorOptions {
  at::Device device = at::kCPU;
  // Evaluate nodes whose inputs are all constant once, at construction. Turn off when initializers
  // will be replaced per run (quantization) and the replacement must reach those nodes.
  bool fold_constants = true;
  // Initializers that runs will override: nodes reading them are never folded (the rest still are).
  std::unordered_set<std::string> replaceable;
  // When every graph input is exported with batch 1, accept any batch size N and reinterpret
  // constant Reshape targets whose leading dimension is 1 as N.
  bool allow_batch = true;
  // Reject inputs that contain NaN or Inf.
  bool check_finite = true;
  // Keep 4-D activations and conv weights in NHWC memory order, which oneDNN convolves without
  // reordering on every call. Values and shapes are unchanged; only strides differ.
  bool channels_last = true;
  // Replace x * Sigmoid(x) by one SiLU kernel. The Sigmoid output then never exists, so turn this
  // off when a value_hook must see it.
  bool fuse_silu = true;
  // Values a value_hook must see (activation quantizers): never fused away.
  std::unordered_set<std::string> hooked;
};

struct RunOptions {
  // Intermediate values to return in addition to the graph outputs.
  std::vector<std::string> keep;
  // Makes float graph inputs require grad so that autograd can reach every intermediate value.
  bool track_grad = false;
  // Record autograd even when no input or override requires grad (a value_hook may add parameters).
  bool record_autograd = false;
  // Called on every value a node produces, before any consumer sees it (e.g. fake quantization).
  std::function<at::Tensor(const std::string& value, const at::Tensor&)> value_hook;
  // Also call value_hook on the graph inputs (a quantized network input).
  bool hook_inputs = false;
  // Replaces initializers for this run (e.g. fake-quantized weights, or weights requiring grad).
  const TensorMap* overrides = nullptr;
  // When set, accumulates wall time per op type in milliseconds.
  std::map<std::string, double>* profile = nullptr;
  bool profile_by_node = false;  // key the profile by node name instead of op type
};

class Executor {
 public:
  explicit Executor(const Graph& g, ExecutorOptions opts = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  TensorMap run(const TensorMap& inputs, const RunOptions& opts = {}) const;
  // Convenience for single-input graphs: returns outputs in graph order.
  Tensors run_single(const at::Tensor& input, const RunOptions& opts = {}) const;

  const Graph& graph() const { return graph_; }
  const ExecutorOptions& options() const { return opts_; }
  // Initializer tensors on the executor's device (after folding, also folded values).
  const at::Tensor* constant(const std::string& name) const;

 private:
  struct Step {
    const Node* node;
    Kernel kernel;
    std::vector<int> inputs;   // slot index, -1 for omitted optional inputs
    std::vector<int> outputs;  // slot index, -1 for unused outputs
    std::vector<int> free_after;
  };
  void check_inputs(const TensorMap& inputs) const;
  std::vector<int64_t> static_shape(const std::string& name) const;
  void fuse_silu(const std::unordered_set<int>& protected_slots);

  Graph graph_;
  ExecutorOptions opts_;
  bool batch_polymorphic_ = false;
  std::unordered_map<std::string, int> slot_of_;
  std::vector<std::string> slot_names_;
  std::vector<at::Tensor> constants_;  // indexed by slot; undefined for non-constant slots
  std::vector<Step> steps_;
};

}  // namespace inlierq::rt
