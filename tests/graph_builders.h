#pragma once
// Builders for small synthetic ONNX graphs in the C++ tests.
#include <random>
#include <string>
#include <vector>

#include "inlierq/graph.h"
#include "inlierq/onnx_io.h"

namespace inlierq::test {

inline TensorData random_tensor(std::vector<int64_t> shape, std::mt19937& rng, float scale = 1.0f, float offset = 0.0f) {
  TensorData t;
  t.dtype = DType::Float;
  t.shape = std::move(shape);
  t.bytes.resize(t.numel() * sizeof(float));
  std::normal_distribution<float> n(0, 1);
  for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = n(rng) * scale + offset;
  return t;
}

inline Node node(const std::string& name, const std::string& op, std::vector<std::string> in, std::vector<std::string> out) {
  Node n;
  n.name = name;
  n.op_type = op;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

inline void set_ints(Node& n, const std::string& k, std::vector<int64_t> v) {
  n.attrs[k].kind = Attribute::Kind::Ints;
  n.attrs[k].ints = std::move(v);
}

// Round-trips through ONNX so that the checker runs and shapes are inferred.
inline Graph finish(Graph g, int64_t opset = 13) {
  g.opset = opset;
  return load_onnx_bytes(serialize_onnx(g), "synthetic");
}

inline ValueInfo float_input(const std::string& name, std::vector<int64_t> shape) {
  ValueInfo v;
  v.name = name;
  v.dtype = DType::Float;
  v.has_shape = true;
  for (auto d : shape) v.shape.push_back(Dim{d, ""});
  return v;
}

inline ValueInfo float_output(const std::string& name, std::vector<int64_t> shape) {
  return float_input(name, std::move(shape));
}


}  // namespace inlierq::test
