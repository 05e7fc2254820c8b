// Backward passes of the executor checked against central finite differences in float64, on
// single-node graphs, plus gradients to intermediate values and to initializers.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

using namespace inlierq;

namespace {

struct GradCase {
  std::string op;
  std::vector<std::vector<int64_t>> input_shapes;  // float inputs that receive gradients
  std::map<std::string, Attribute> attrs;
  std::vector<TensorData> const_inputs;  // appended after the float inputs (shapes, indices, ...)
  double positive_offset = 0;            // shift inputs away from kinks / domain limits
};

Attribute ints(std::vector<int64_t> v) { Attribute a; a.kind = Attribute::Kind::Ints; a.ints = std::move(v); return a; }
Attribute one_int(int64_t v) { Attribute a; a.kind = Attribute::Kind::Int; a.i = v; return a; }
Attribute one_float(float v) { Attribute a; a.kind = Attribute::Kind::Float; a.f = v; return a; }
Attribute str(std::string v) { Attribute a; a.kind = Attribute::Kind::String; a.s = std::move(v); return a; }

TensorData i64(std::vector<int64_t> v) {
  TensorData t;
  t.dtype = DType::Int64;
  t.shape = {static_cast<int64_t>(v.size())};
  t.bytes.resize(v.size() * 8);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}
TensorData f64(std::vector<double> v) {
  TensorData t;
  t.dtype = DType::Double;
  t.shape = {static_cast<int64_t>(v.size())};
  t.bytes.resize(v.size() * 8);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

Graph single_node_graph(const GradCase& c) {
  Graph g;
  g.opset = 13;
  Node n;
  n.name = "under_test";
  n.op_type = c.op;
  n.attrs = c.attrs;
  for (size_t i = 0; i < c.input_shapes.size(); ++i) {
    ValueInfo v;
    v.name = "x" + std::to_string(i);
    v.dtype = DType::Double;
    g.inputs.push_back(v);
    n.inputs.push_back(v.name);
  }
  for (size_t i = 0; i < c.const_inputs.size(); ++i) {
    // A default-constructed TensorData stands for an omitted optional input.
    const bool omitted = c.const_inputs[i].dtype == DType::Undefined;
    std::string name = "c" + std::to_string(i);
    if (!omitted) g.initializers[name] = c.const_inputs[i];
    n.inputs.push_back(omitted ? "" : name);
  }
  n.outputs = {"y"};
  g.outputs.push_back(ValueInfo{"y", DType::Double, false, {}});
  g.nodes.push_back(n);
  return g;
}

void check_gradients(const GradCase& c) {
  SCOPED_TRACE(c.op);
  Graph g = single_node_graph(c);
  rt::Executor ex(g);
  at::manual_seed(0);
  rt::TensorMap inputs;
  for (size_t i = 0; i < c.input_shapes.size(); ++i)
    inputs["x" + std::to_string(i)] = at::randn(c.input_shapes[i], at::kDouble) + c.positive_offset;
  rt::RunOptions ro;
  ro.track_grad = true;
  at::Tensor y = ex.run(inputs, ro).at("y");
  at::Tensor probe = at::randn(y.sizes(), at::kDouble);  // random projection gives a scalar loss
  auto loss_of = [&](const rt::TensorMap& in) {
    rt::RunOptions plain;
    return (ex.run(in, plain).at("y") * probe).sum().item<double>();
  };
  // The executor detaches inputs and marks them requires_grad, so gradients come back through keep.
  rt::RunOptions keep = ro;
  for (size_t i = 0; i < c.input_shapes.size(); ++i) keep.keep.push_back("x" + std::to_string(i));
  auto res = ex.run(inputs, keep);
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < c.input_shapes.size(); ++i) xs.push_back(res.at("x" + std::to_string(i)));
  auto grads = torch::autograd::grad({(res.at("y") * probe).sum()}, xs, {}, false, false, true);
  const double eps = 1e-6;
  for (size_t i = 0; i < xs.size(); ++i) {
    at::Tensor x = inputs.at("x" + std::to_string(i));
    at::Tensor flat = x.reshape(-1);
    at::Tensor analytic = grads[i].defined() ? grads[i].reshape(-1) : at::zeros_like(flat);
    const int64_t n = flat.numel();
    for (int64_t k = 0; k < n; k += std::max<int64_t>(1, n / 40)) {
      rt::TensorMap plus = inputs, minus = inputs;
      at::Tensor xp = x.clone(), xm = x.clone();
      xp.reshape(-1)[k] += eps;
      xm.reshape(-1)[k] -= eps;
      plus["x" + std::to_string(i)] = xp;
      minus["x" + std::to_string(i)] = xm;
      double numeric = (loss_of(plus) - loss_of(minus)) / (2 * eps);
      double a = analytic[k].item<double>();
      EXPECT_NEAR(a, numeric, 1e-5 * std::max(1.0, std::abs(numeric))) << "input " << i << " element " << k;
    }
  }
}

}  // namespace

TEST(Gradients, Conv) {
  check_gradients({"Conv", {{2, 3, 7, 6}, {4, 3, 3, 3}, {4}}, {{"pads", ints({1, 0, 1, 2})}, {"strides", ints({2, 1})}}, {}});
  check_gradients({"Conv", {{1, 4, 5, 5}, {4, 1, 3, 3}}, {{"group", one_int(4)}, {"pads", ints({1, 1, 1, 1})}}, {}});
}

TEST(Gradients, Activations) {
  for (std::string op : {"Relu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "Erf", "Softplus"})
    check_gradients({op, {{2, 3, 4}}, {}, {}, 0.05});
  check_gradients({"LeakyRelu", {{2, 3, 4}}, {{"alpha", one_float(0.1f)}}, {}, 0.05});
  check_gradients({"Softmax", {{2, 5}}, {{"axis", one_int(1)}}, {}});
  check_gradients({"Clip", {{3, 4}}, {}, {f64({-0.5}), f64({0.7})}, 0.01});
}

TEST(Gradients, MulAddSubDivPow) {
  check_gradients({"Mul", {{2, 3, 4}, {3, 1}}, {}, {}});
  check_gradients({"Add", {{2, 3, 4}, {4}}, {}, {}});
  check_gradients({"Sub", {{2, 3}, {2, 3}}, {}, {}});
  check_gradients({"Div", {{2, 3}, {2, 3}}, {}, {}, 3.0});
  check_gradients({"Exp", {{2, 3}}, {}, {}});
  check_gradients({"Sqrt", {{2, 3}}, {}, {}, 4.0});
}

TEST(Gradients, BatchNormalization) {
  // Inputs: X, scale, B, mean, var (var shifted positive so sqrt stays smooth).
  check_gradients({"BatchNormalization", {{2, 3, 4, 4}, {3}, {3}, {3}}, {{"epsilon", one_float(1e-3f)}},
                   {f64({0.5, 1.0, 2.0})}});
}

TEST(Gradients, ResizeNearestAndLinear) {
  TensorData no_roi;  // omitted optional input
  TensorData scales = TensorData{DType::Float, {4}, {}};
  std::vector<float> sv = {1, 1, 2, 2};
  scales.bytes.resize(16);
  std::memcpy(scales.bytes.data(), sv.data(), 16);
  check_gradients({"Resize", {{1, 2, 3, 3}}, {{"mode", str("nearest")}}, {no_roi, scales}});
  check_gradients({"Resize", {{1, 2, 3, 3}}, {{"mode", str("linear")}}, {no_roi, scales}});
  check_gradients({"Resize", {{1, 2, 3, 3}}, {{"mode", str("linear")}, {"coordinate_transformation_mode", str("align_corners")}},
                   {no_roi, scales}});
  TensorData sizes = i64({1, 2, 5, 7});  // non-integer scale through the gather path
  check_gradients({"Resize", {{1, 2, 3, 4}}, {{"mode", str("linear")}, {"coordinate_transformation_mode", str("pytorch_half_pixel")}},
                   {no_roi, TensorData{}, sizes}});
}

TEST(Gradients, ConcatSliceReshape) {
  check_gradients({"Concat", {{2, 3, 4}, {2, 1, 4}, {2, 2, 4}}, {{"axis", one_int(1)}}, {}});
  check_gradients({"Slice", {{4, 6}}, {}, {i64({1, -1}), i64({4, 0}), i64({0, 1}), i64({2, -2})}});
  check_gradients({"Reshape", {{2, 3, 4}}, {}, {i64({4, -1})}});
  check_gradients({"Transpose", {{2, 3, 4}}, {{"perm", ints({2, 0, 1})}}, {}});
}

TEST(Gradients, ToIntermediateAndInitializer) {
  // y = Sigmoid(x * w): dL/dm at the intermediate m = x*w, and dL/dw at the initializer w.
  Graph g;
  g.opset = 13;
  g.inputs.push_back(ValueInfo{"x", DType::Double, false, {}});
  TensorData w = f64({0.5, -1.5, 2.0});
  g.initializers["w"] = w;
  Node mul{"mul", "Mul", "", {"x", "w"}, {"m"}, {}};
  Node sig{"sig", "Sigmoid", "", {"m"}, {"y"}, {}};
  g.nodes = {mul, sig};
  g.outputs.push_back(ValueInfo{"y", DType::Double, false, {}});
  rt::Executor ex(g, rt::ExecutorOptions{at::kCPU, /*fold_constants=*/false});
  at::Tensor x = at::tensor({1.0, 2.0, -0.5}, at::kDouble);
  at::Tensor wt = ex.constant("w")->detach().clone().requires_grad_(true);
  rt::TensorMap overrides{{"w", wt}};
  rt::RunOptions ro;
  ro.track_grad = true;
  ro.keep = {"m"};
  ro.overrides = &overrides;
  auto res = ex.run({{"x", x}}, ro);
  auto grads = torch::autograd::grad({res.at("y").sum()}, {res.at("m"), wt});
  at::Tensor m = x * wt.detach();
  at::Tensor dm = at::sigmoid(m) * (1 - at::sigmoid(m));
  EXPECT_TRUE(at::allclose(grads[0], dm));
  EXPECT_TRUE(at::allclose(grads[1], dm * x));
}
