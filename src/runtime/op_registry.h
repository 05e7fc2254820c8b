#pragma once
// Op registry: op type -> factory. A factory reads a node's attributes (and constant inputs) once and
// returns a kernel that maps input tensors to output tensors. Each op family lives in ops_<family>.cpp.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "inlierq/error.h"
#include "inlierq/graph.h"

namespace inlierq::rt {

using Tensors = std::vector<at::Tensor>;
using Kernel = std::function<Tensors(const Tensors& inputs)>;

struct OpContext {
  const Node& node;
  int64_t opset;
  // Constant value of input i (an initializer or a folded value), or nullptr if it varies per run.
  std::function<const at::Tensor*(size_t)> constant_input;
  // Input 0's first dimension is a batch dimension exported as 1 (see ExecutorOptions).
  bool batch_polymorphic = false;
  // Static shapes from shape inference at the exported batch size; empty where unknown.
  std::vector<std::vector<int64_t>> exported_input_shapes, exported_output_shapes;

  [[noreturn]] void fail(const std::string& msg) const { throw Error(node.describe() + ": " + msg); }
};

using OpFactory = std::function<Kernel(const OpContext&)>;

class OpRegistry {
 public:
  static const OpRegistry& instance();
  void add(const std::string& op_type, OpFactory f) { factories_[op_type] = std::move(f); }
  const OpFactory* find(const std::string& op_type) const {
    auto it = factories_.find(op_type);
    return it == factories_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> op_types() const;

 private:
  std::map<std::string, OpFactory> factories_;
};

// One per family file; called once by OpRegistry::instance(). Explicit calls, not static
// registrars, because the linker drops unreferenced objects from a static library.
void register_conv_ops(OpRegistry& r);
void register_activation_ops(OpRegistry& r);
void register_elementwise_ops(OpRegistry& r);
void register_shape_ops(OpRegistry& r);
void register_resize_ops(OpRegistry& r);
void register_pool_ops(OpRegistry& r);
void register_reduce_ops(OpRegistry& r);
void register_norm_ops(OpRegistry& r);
void register_logic_ops(OpRegistry& r);
void register_quant_ops(OpRegistry& r);

// Helpers shared by the op files.
std::vector<int64_t> to_int_vector(const at::Tensor& t);
int64_t normalize_axis(int64_t axis, int64_t rank, const OpContext& ctx);
at::Tensor required(const Tensors& in, size_t i, const OpContext& ctx);

}  // namespace inlierq::rt
