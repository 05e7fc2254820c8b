#pragma once
// Graph rewrites applied before quantization. Torch-free.
#include <map>
#include <string>
#include <vector>

#include "inlierq/graph.h"

namespace inlierq {

// Producer and consumers of every value name, for graph walks.
struct GraphIndex {
  explicit GraphIndex(const Graph& g);
  const Node* producer(const std::string& value) const;              // nullptr for inputs/initializers
  const std::vector<const Node*>& consumers(const std::string& value) const;
  bool is_graph_output(const std::string& value) const;

 private:
  std::map<std::string, const Node*> producer_;
  std::map<std::string, std::vector<const Node*>> consumers_;
  std::vector<std::string> outputs_;
};

// Folds every BatchNormalization (inference form, one output) whose input is produced by a Conv that
// has no other consumer into that Conv's weight and bias. The Conv takes over the BatchNormalization's
// output name, so tensor names (e.g. in a TensorRT calibration cache) still match the original model.
// Returns the number of folded nodes.
int fold_batchnorm(Graph& g);

// The opset-13 spelling of graphs converted from opset 11: a Resize given both an empty `scales`
// tensor and `sizes` (legal in 11, rejected by ONNX Runtime in 13) gets an omitted `scales` input.
int drop_empty_resize_scales(Graph& g);

// Everything quantization needs before placement: BatchNorm folding, and an upgrade to opset 13 when
// the model is older (per-axis DequantizeLinear needs 13). origin names the model in messages.
struct PrepareReport {
  int folded_batchnorms = 0;
  int64_t original_opset = 0;
  int64_t opset = 0;
};
Graph prepare_for_quantization(const Graph& g, const std::string& origin, PrepareReport* report = nullptr);

}  // namespace inlierq
