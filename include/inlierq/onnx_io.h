#pragma once
#include <string>

#include "inlierq/graph.h"

namespace inlierq {

struct LoadOptions {
  bool run_checker = true;
  bool infer_shapes = true;
};

// Parses, checks and shape-infers an ONNX model, folds Constant nodes into initializers and returns
// the topologically sorted IR. Throws inlierq::Error naming the file and the problem.
Graph load_onnx(const std::string& path, const LoadOptions& opts = {});
Graph load_onnx_bytes(const std::string& bytes, const std::string& origin, const LoadOptions& opts = {});

// Writes the IR back to ONNX (atomically: a temporary file renamed into place).
void save_onnx(const Graph& g, const std::string& path, int64_t opset_override = 0);
std::string serialize_onnx(const Graph& g, int64_t opset_override = 0);

// Converts the graph to another default-domain opset with ONNX's version converter (e.g. 11 → 13 for
// per-axis DequantizeLinear) and reloads it; origin names the model in error messages.
Graph convert_opset(const Graph& g, int64_t target, const std::string& origin);

}  // namespace inlierq

namespace inlierq {
// Reads a serialised onnx.TensorProto (the .pb files of ONNX's backend test data).
TensorData load_tensor_pb(const std::string& path);
}  // namespace inlierq
