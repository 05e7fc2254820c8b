// Graph preparation (BatchNorm folding, opset upgrade), placement, calibration and QDQ export.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <set>

#include "inlierq/error.h"
#include "inlierq/onnx_io.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "quant/calibrators.h"
#include "quant/fake_quant.h"
#include "quant/range_search.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"
#include "graph_builders.h"
#include "test_helpers.h"

using namespace inlierq;
using namespace inlierq::test;

namespace {

// A small backbone: stem conv, a residual block, a concat of a block output with its max-pool and a
// second branch, and one prediction conv.
Graph toy_detector(std::mt19937& rng) {
  Graph g;
  g.inputs = {float_input("x", {1, 3, 16, 16})};
  g.outputs = {float_output("pred", {1, 6, 16, 16})};
  auto conv = [&](const std::string& name, const std::string& in, const std::string& out, int cin, int cout, int k) {
    g.initializers[name + ".w"] = random_tensor({cout, cin, k, k}, rng, 0.3f);
    g.initializers[name + ".b"] = random_tensor({cout}, rng, 0.1f);
    Node n = node(name, "Conv", {in, name + ".w", name + ".b"}, {out});
    set_ints(n, "pads", {k / 2, k / 2, k / 2, k / 2});
    g.nodes.push_back(n);
  };
  conv("stem", "x", "stem_out", 3, 8, 3);
  g.nodes.push_back(node("stem_relu", "Relu", {"stem_out"}, {"a"}));
  conv("c2", "a", "c2_out", 8, 8, 3);
  g.nodes.push_back(node("c2_relu", "Relu", {"c2_out"}, {"b"}));
  conv("c3", "b", "c", 8, 8, 1);
  g.nodes.push_back(node("res_add", "Add", {"a", "c"}, {"d"}));
  Node pool = node("pool", "MaxPool", {"d"}, {"e"});
  set_ints(pool, "kernel_shape", {3, 3});
  set_ints(pool, "pads", {1, 1, 1, 1});
  g.nodes.push_back(pool);
  conv("c5", "a", "c5_out", 8, 4, 1);
  g.nodes.push_back(node("c5_sig", "Sigmoid", {"c5_out"}, {"c5_s"}));
  g.nodes.push_back(node("c5_silu", "Mul", {"c5_out", "c5_s"}, {"f"}));
  Node cat = node("cat", "Concat", {"d", "e", "f"}, {"h"});
  cat.attrs["axis"].kind = Attribute::Kind::Int;
  cat.attrs["axis"].i = 1;
  g.nodes.push_back(cat);
  conv("pred", "h", "pred", 20, 6, 1);
  return finish(g);
}

std::vector<TensorData> random_inputs(int n, std::mt19937& rng) {
  std::vector<TensorData> v;
  for (int i = 0; i < n; ++i) v.push_back(random_tensor({1, 3, 16, 16}, rng, 1.0f, 0.2f));
  return v;
}

at::Tensor run_graph(const Graph& g, const TensorData& x) {
  rt::Executor ex(g);
  return ex.run({{g.inputs[0].name, rt::to_aten(x)}}).at(g.outputs[0].name);
}

const quant::ActSite* find_site(const quant::QuantPlan& p, const std::string& v) {
  for (const auto& a : p.activations)
    if (a.value == v) return &a;
  return nullptr;
}
const quant::WeightSite* find_weight(const quant::QuantPlan& p, const std::string& node) {
  for (const auto& w : p.weights)
    if (w.node == node) return &w;
  return nullptr;
}

}  // namespace

TEST(QuantGraph, FoldBatchNormKeepsOutputs) {
  std::mt19937 rng(1);
  Graph g;
  g.inputs = {float_input("x", {2, 4, 8, 8})};
  g.outputs = {float_output("y", {2, 6, 6, 6})};
  g.initializers["w"] = random_tensor({6, 4, 3, 3}, rng, 0.5f);
  g.initializers["b"] = random_tensor({6}, rng);
  g.initializers["gamma"] = random_tensor({6}, rng, 0.5f, 1.0f);
  g.initializers["beta"] = random_tensor({6}, rng);
  g.initializers["mean"] = random_tensor({6}, rng);
  g.initializers["var"] = random_tensor({6}, rng, 0.2f, 1.0f);
  for (int i = 0; i < 6; ++i) g.initializers["var"].as<float>()[i] = std::fabs(g.initializers["var"].as<float>()[i]);
  g.nodes.push_back(node("conv", "Conv", {"x", "w", "b"}, {"conv_out"}));
  Node bn = node("bn", "BatchNormalization", {"conv_out", "gamma", "beta", "mean", "var"}, {"bn_out"});
  bn.attrs["epsilon"].kind = Attribute::Kind::Float;
  bn.attrs["epsilon"].f = 1e-3f;
  g.nodes.push_back(bn);
  g.nodes.push_back(node("relu", "Relu", {"bn_out"}, {"y"}));
  g = finish(g);
  TensorData x = random_tensor({2, 4, 8, 8}, rng);
  const at::Tensor before = run_graph(g, x);
  Graph f = g;
  EXPECT_EQ(fold_batchnorm(f), 1);
  for (const auto& n : f.nodes) EXPECT_NE(n.op_type, "BatchNormalization");
  EXPECT_EQ(f.nodes[0].outputs[0], "bn_out");  // the conv takes over the BN's output name
  const at::Tensor after = run_graph(f, x);
  EXPECT_LT((before - after).abs().max().item<float>(), 1e-4f * std::max(1.0f, before.abs().max().item<float>()));
  // A conv whose output has another consumer is left alone.
  Graph h = g;
  h.nodes.push_back(node("extra", "Relu", {"conv_out"}, {"z"}));
  h.outputs.push_back(float_output("z", {2, 6, 6, 6}));
  EXPECT_EQ(fold_batchnorm(h), 0);
}

TEST(QuantGraph, OpsetUpgradeOfSharedModelsKeepsOutputs) {
  for (const char* file : {"nanodet_m_416.onnx", "fastestdet_352.onnx"}) {
    const std::string path = test::model_path(file);
    Graph g = load_onnx(path);
    PrepareReport rep;
    Graph p = prepare_for_quantization(g, path, &rep);
    EXPECT_EQ(rep.original_opset, 11);
    EXPECT_EQ(p.opset, 13);
    std::mt19937 rng(3);
    std::vector<int64_t> shape;
    for (const auto& d : g.inputs[0].shape) shape.push_back(d.value);
    TensorData x = random_tensor(shape, rng);
    rt::Executor a(g), b(p);
    auto oa = a.run({{g.inputs[0].name, rt::to_aten(x)}});
    auto ob = b.run({{p.inputs[0].name, rt::to_aten(x)}});
    for (const auto& o : g.outputs)
      EXPECT_LT((oa.at(o.name) - ob.at(o.name)).abs().max().item<float>(), 1e-5f) << file << " " << o.name;
  }
}

// ORT layout: a conv reading the image through grid-preserving ops (YOLOX's Focus) gets its quantizer on
// its own input, flagged as the image (first layer's 8 bits, min/max range whatever the calibrator).
TEST(QuantGraph, ImageQuantizerAfterGridPreservingOps) {
  std::mt19937 rng(7);
  Graph g;
  g.inputs = {float_input("x", {1, 3, 16, 16})};
  g.outputs = {float_output("out", {1, 4, 16, 16})};
  g.nodes.push_back(node("focus", "Identity", {"x"}, {"xf"}));
  for (const auto& [name, in, out, cin, cout] :
       std::vector<std::tuple<std::string, std::string, std::string, int, int>>{{"c1", "xf", "c1_out", 3, 8}, {"c2", "a", "c2_out", 8, 8},
                                                                                {"c3", "b", "out", 8, 4}}) {
    g.initializers[name + ".w"] = random_tensor({cout, cin, 1, 1}, rng, 0.3f);
    g.initializers[name + ".b"] = random_tensor({cout}, rng, 0.1f);
    g.nodes.push_back(node(name, "Conv", {in, name + ".w", name + ".b"}, {out}));
  }
  g.nodes.insert(g.nodes.begin() + 2, node("r1", "Relu", {"c1_out"}, {"a"}));
  g.nodes.insert(g.nodes.begin() + 4, node("r2", "Relu", {"c2_out"}, {"b"}));
  g = finish(g);
  quant::PlacementOptions po;
  po.act_bits = 4;
  po.weight_bits = 4;
  po.layout = quant::QdqLayout::Ort;
  const auto plan = quant::derive_plan(g, po);
  ASSERT_TRUE(find_site(plan, "xf"));
  EXPECT_FALSE(find_site(plan, "x"));
  EXPECT_TRUE(find_site(plan, "xf")->image);
  EXPECT_EQ(find_site(plan, "xf")->bits, 8);
  EXPECT_FALSE(find_site(plan, "a")->image);
  std::vector<TensorData> inputs;
  for (int i = 0; i < 3; ++i) inputs.push_back(random_tensor({1, 3, 16, 16}, rng, 1.0f, 0.2f));
  quant::CalibrationOptions co;
  co.method = "mse";
  const auto enc = quant::calibrate(g, plan, inputs, co);
  const auto& e = enc.activations.at("xf");
  const auto p = quant::range_to_params(e.observed_min, e.observed_max, quant::QuantGrid{8, false});
  EXPECT_FLOAT_EQ(e.scale, p.scale);
  EXPECT_EQ(e.zero_point, p.zero_point);
}

TEST(QuantGraph, PlacementOnToyDetector) {
  std::mt19937 rng(2);
  Graph g = toy_detector(rng);
  quant::PlacementOptions po;
  po.weight_bits = 4;
  po.act_bits = 4;
  {
    // ORT layout: the network input (at the first layer's 8 bits), every compute output (after its Relu,
    // which ORT folds into the QuantizeLinear), the Sigmoid and Mul of the SiLU and the residual Add;
    // the Concat's inputs still share one scale; never the network output.
    EXPECT_EQ(quant::derive_plan(g, po).layout, quant::QdqLayout::Block);  // auto at 4-bit activations
    po.layout = quant::QdqLayout::Ort;
    auto ort = quant::derive_plan(g, po);
    EXPECT_EQ(ort.layout, quant::QdqLayout::Ort);
    std::set<std::string> values;
    for (const auto& a : ort.activations) values.insert(a.value);
    EXPECT_EQ(values, (std::set<std::string>{"x", "a", "b", "c", "d", "c5_out", "c5_s", "f"}));
    EXPECT_EQ(find_site(ort, "x")->bits, 8);
    EXPECT_EQ(find_site(ort, "c5_out")->bits, 4);
    EXPECT_TRUE(find_site(ort, "c5_out")->silu_input);  // read only by x·sigmoid(x)
    EXPECT_FALSE(find_site(ort, "a")->silu_input);
    EXPECT_EQ(find_site(ort, "d")->group, find_site(ort, "f")->group);
    EXPECT_NE(find_site(ort, "c")->group, find_site(ort, "d")->group);
    EXPECT_NE(find_site(ort, "c5_out")->group, find_site(ort, "f")->group);
    // Separate Concat scales: the Concat's output, read by pred, gets a grid of its own only when the head
    // is quantized (otherwise pred reads floats and nothing needs one).
    po.share_concat_scales = false;
    po.quantize_head = true;
    auto sep = quant::derive_plan(g, po);
    ASSERT_TRUE(find_site(sep, "h"));
    EXPECT_NE(find_site(sep, "d")->group, find_site(sep, "f")->group);
    po.share_concat_scales = true;
    po.quantize_head = false;
    EXPECT_THROW(quant::parse_layout("nchw"), Error);
  }
  po.layout = quant::QdqLayout::Block;
  auto plan = quant::derive_plan(g, po);
  // Weights: the stem at 8 bit (first layer), c2/c3/c5 at 4 bit, the prediction conv in floating point.
  ASSERT_TRUE(find_weight(plan, "stem"));
  EXPECT_EQ(find_weight(plan, "stem")->bits, 8);
  EXPECT_EQ(find_weight(plan, "c2")->bits, 4);
  EXPECT_EQ(find_weight(plan, "c3")->bits, 4);
  EXPECT_EQ(find_weight(plan, "c5")->bits, 4);
  EXPECT_FALSE(find_weight(plan, "pred"));
  EXPECT_EQ(plan.head_nodes, std::vector<std::string>{"pred"});
  // Activations: after the fused activation (a, b, SiLU f), after the residual add (d), never the
  // conv output that only feeds the add (c), the pre-activation values, or the network output.
  std::set<std::string> values;
  for (const auto& a : plan.activations) values.insert(a.value);
  EXPECT_EQ(values, (std::set<std::string>{"a", "b", "d", "f"}));
  // Concat inputs (d, max-pooled d, f) share one scale; a and b have their own.
  EXPECT_EQ(find_site(plan, "d")->group, find_site(plan, "f")->group);
  EXPECT_NE(find_site(plan, "a")->group, find_site(plan, "d")->group);
  EXPECT_NE(find_site(plan, "a")->group, find_site(plan, "b")->group);
  EXPECT_EQ(plan.num_groups, 3);

  // Head quantized: the prediction conv's weights at 8 bit, its output still floating point.
  po.quantize_head = true;
  auto with_head = quant::derive_plan(g, po);
  ASSERT_TRUE(find_weight(with_head, "pred"));
  EXPECT_EQ(find_weight(with_head, "pred")->bits, 8);
  EXPECT_FALSE(find_site(with_head, "pred"));

  // Float head input (QDrop's COCO convention): the block ends that reach only the float prediction conv
  // (d and f, through the Concat and the pool) stay unquantized and are listed as such; a, read by c2 and
  // the residual Add, keeps its grid. With the head quantized, pred reads a grid again.
  po.quantize_head = false;
  po.float_inputs_of_float_nodes = true;
  auto float_in = quant::derive_plan(g, po);
  std::set<std::string> float_in_values;
  for (const auto& a : float_in.activations) float_in_values.insert(a.value);
  EXPECT_EQ(float_in_values, (std::set<std::string>{"a", "b"}));
  EXPECT_EQ(std::set<std::string>(float_in.float_activations.begin(), float_in.float_activations.end()),
            (std::set<std::string>{"d", "f"}));
  po.quantize_head = true;
  auto float_in_head = quant::derive_plan(g, po);
  EXPECT_TRUE(find_site(float_in_head, "d") && find_site(float_in_head, "f"));
  po.float_inputs_of_float_nodes = false;

  // Exclusions and overrides by name; unknown names are errors.
  po.quantize_head = false;
  po.exclude = {"c5", "b"};
  auto excl = quant::derive_plan(g, po);
  EXPECT_FALSE(find_weight(excl, "c5"));
  EXPECT_FALSE(find_site(excl, "b"));
  EXPECT_FALSE(find_site(excl, "f"));
  po.exclude = {"no_such_node"};
  EXPECT_THROW(quant::derive_plan(g, po), Error);
  po.exclude = {};
  po.overrides = nlohmann::json::parse(R"({"nodes": {"c2": {"weight_bits": 6, "act_bits": 8}}})");
  auto ov = quant::derive_plan(g, po);
  EXPECT_EQ(find_weight(ov, "c2")->bits, 6);
  EXPECT_EQ(find_site(ov, "b")->bits, 8);
  po.overrides = nlohmann::json::parse(R"({"nodes": {"c2": {"weight_bitz": 6}}})");
  EXPECT_THROW(quant::derive_plan(g, po), Error);
  po.overrides = nlohmann::json::parse(R"({"nodes": {"c2": {"weight_bits": 9}}})");
  EXPECT_THROW(quant::derive_plan(g, po), Error);
}

TEST(QuantGraph, HeadsOfSharedModels) {
  // Expected counts follow from the rule in docs/QUANTIZATION.md and were cross-checked by an
  // independent Python prototype of it: YOLOX 3 levels × (stem, 2×2 cls, 2×2 reg, 3 predictions);
  // NanoDet 3 levels × (2 depthwise-separable convs + 1 prediction); FastestDet the obj/reg/cls branches.
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"yolox_nano.onnx", 36}, {"nanodet_m_416.onnx", 15}, {"fastestdet_352.onnx", 6}};
  for (const auto& [file, heads] : cases) {
    const std::string path = test::model_path(file);
    Graph g = prepare_for_quantization(load_onnx(path), path);
    auto plan = quant::derive_plan(g, quant::PlacementOptions{});
    EXPECT_EQ(plan.head_nodes.size(), heads) << file;
    EXPECT_EQ(plan.first_nodes.size(), 1u) << file;
    size_t compute = 0;
    for (const auto& n : g.nodes) compute += n.op_type == "Conv";
    EXPECT_EQ(plan.weights.size() + plan.float_nodes.size(), compute) << file;
    // Every quantized conv reads a quantized value (or, for the first conv, the image).
    std::set<std::string> sites;
    for (const auto& a : plan.activations) sites.insert(a.value);
    GraphIndex index(g);
    for (const auto& w : plan.weights) {
      if (w.node == plan.first_nodes[0]) continue;
      std::string v;
      for (const auto& n : g.nodes)
        if (n.name == w.node) v = n.inputs[0];
      // Walk back through value-preserving ops (every input of a Concat).
      std::function<bool(const std::string&, int)> on_grid = [&](const std::string& val, int depth) -> bool {
        if (sites.count(val)) return true;
        const Node* p = index.producer(val);
        static const std::set<std::string> same_values = {"MaxPool", "Concat", "Resize", "Reshape", "Transpose",
                                                          "Slice", "Split", "Gather", "Flatten"};
        if (!p || depth > 500 || !same_values.count(p->op_type)) return false;
        if (p->op_type != "Concat") return on_grid(p->inputs[0], depth + 1);
        for (const auto& i : p->inputs)
          if (!on_grid(i, depth + 1)) return false;
        return true;
      };
      EXPECT_TRUE(on_grid(v, 0)) << file << ": input of " << w.node << " is not quantized";
    }
  }
}

TEST(QuantGraph, MinMaxCalibrationMatchesObservedRanges) {
  std::mt19937 rng(4);
  Graph g = toy_detector(rng);
  quant::PlacementOptions po;
  auto plan = quant::derive_plan(g, po);
  auto inputs = random_inputs(5, rng);
  quant::CalibrationOptions co;
  co.method = "minmax";
  co.batch = 2;
  auto enc = quant::calibrate(g, plan, inputs, co);
  // Independent: keep every site value over all inputs and take min/max per scale group.
  rt::ExecutorOptions eo;
  eo.fuse_silu = false;
  rt::Executor ex(g, eo);
  std::map<int, std::pair<float, float>> group_range;
  for (const auto& x : inputs) {
    rt::RunOptions ro;
    for (const auto& a : plan.activations) ro.keep.push_back(a.value);
    auto out = ex.run({{"x", rt::to_aten(x)}}, ro);
    for (const auto& a : plan.activations) {
      auto& r = group_range.try_emplace(a.group, 1e30f, -1e30f).first->second;
      r.first = std::min(r.first, out.at(a.value).min().item<float>());
      r.second = std::max(r.second, out.at(a.value).max().item<float>());
    }
  }
  for (const auto& a : plan.activations) {
    const auto& e = enc.activations.at(a.value);
    const auto r = group_range.at(a.group);
    EXPECT_FLOAT_EQ(e.observed_min, r.first) << a.value;
    EXPECT_FLOAT_EQ(e.observed_max, r.second) << a.value;
    const auto p = quant::range_to_params(r.first, r.second, quant::QuantGrid{a.bits, a.symmetric});
    EXPECT_FLOAT_EQ(e.scale, p.scale) << a.value;
    EXPECT_EQ(e.zero_point, p.zero_point) << a.value;
  }
  co.method = "bogus";
  EXPECT_THROW(quant::calibrate(g, plan, inputs, co), Error);
}

// The exported QDQ graph, run by the executor's QuantizeLinear/DequantizeLinear kernels, must equal a
// simulation built from fake_quant on the FP graph (value hooks + fake-quantized weights).
TEST(QuantGraph, QdqExportEqualsFakeQuantSimulation) {
  for (auto layout : {quant::QdqLayout::Ort, quant::QdqLayout::Block})
  for (int bits : {8, 4, 3}) {
    for (const std::string& method : quant::calibration_methods()) {  // every row of the calibrator table
      const std::string what = std::string(quant::layout_name(layout)) + " " + method + " bits " + std::to_string(bits);
      std::mt19937 rng(5);
      Graph g = toy_detector(rng);
      quant::PlacementOptions po;
      po.layout = layout;
      po.weight_bits = bits;
      po.act_bits = bits;
      auto plan = quant::derive_plan(g, po);
      auto inputs = random_inputs(4, rng);
      quant::CalibrationOptions co;
      co.method = method;
      auto enc = quant::calibrate(g, plan, inputs, co);
      // The simulation below knows only the calibrated sites: the requantizers must be exact identities.
      const auto calibrated = enc.activations;
      const size_t sites = plan.activations.size();
      EXPECT_EQ(quant::add_requantizers(g, plan, enc), 2u) << what;  // the MaxPool after d, the Concat
      EXPECT_EQ(plan.activations.size(), sites + 2) << what;
      for (const char* v : {"e", "h"}) {
        ASSERT_TRUE(enc.activations.count(v)) << what << " " << v;
        EXPECT_EQ(enc.activations.at(v).scale, enc.activations.at("d").scale) << what;
        EXPECT_EQ(enc.activations.at(v).zero_point, enc.activations.at("d").zero_point) << what;
      }
      quant::ExportOptions xo;
      xo.unsigned_weights = bits == 8 && layout == quant::QdqLayout::Ort;
      Graph qdq = quant::make_qdq_graph(g, plan, enc, xo);
      size_t clips = 0, u8_weights = 0, s8_weights = 0;
      for (const auto& n : qdq.nodes) {
        clips += n.op_type == "Clip";
        if (n.op_type == "DequantizeLinear" && qdq.initializers.count(n.inputs[0])) {
          u8_weights += qdq.initializers.at(n.inputs[0]).dtype == DType::UInt8;
          s8_weights += qdq.initializers.at(n.inputs[0]).dtype == DType::Int8;
        }
      }
      size_t narrow = 0;  // sub-8-bit quantizers (the network input stays at the first layer's 8 bits)
      for (const auto& a : plan.activations) narrow += a.bits < 8;
      EXPECT_EQ(clips, narrow) << what;
      EXPECT_EQ(narrow, bits < 8 ? plan.activations.size() - (layout == quant::QdqLayout::Ort) : 0u) << what;
      EXPECT_EQ(u8_weights, xo.unsigned_weights ? plan.weights.size() : 0u) << what;
      EXPECT_EQ(s8_weights, xo.unsigned_weights ? 0u : plan.weights.size()) << what;

      rt::ExecutorOptions eo;
      eo.fold_constants = false;
      eo.fuse_silu = false;
      rt::Executor sim(g, eo);
      rt::TensorMap overrides;
      for (const auto& w : plan.weights) {
        const auto& we = enc.weights.at(w.tensor);
        at::Tensor t = rt::to_aten(g.initializers.at(w.tensor));
        at::Tensor s = at::tensor(we.scale, at::kFloat), z = at::tensor(we.zero_point, at::kLong).to(at::kFloat);
        overrides[w.tensor] = quant::fake_quant(t, quant::channel_view(s, w.axis, t.dim()), quant::channel_view(z, w.axis, t.dim()),
                                                we.qn(), we.qp());
      }
      // Biases of convs reading a quantized value are int32 codes with scale s_in·s_w (in the block layout
      // the stem reads the raw input and keeps a float bias; pred is head).
      std::map<std::string, std::string> conv_input = {{"c2", "a"}, {"c3", "b"}, {"c5", "a"}};
      if (layout == quant::QdqLayout::Ort) conv_input["stem"] = "x";
      for (const auto& [conv, in] : conv_input) {
        const auto& we = enc.weights.at(conv + ".w");
        at::Tensor b = rt::to_aten(g.initializers.at(conv + ".b"));
        at::Tensor s = at::tensor(we.scale, at::kFloat) * enc.activations.at(in).scale;
        overrides[conv + ".b"] = at::round(b / s) * s;
      }
      rt::RunOptions ro;
      ro.overrides = &overrides;
      ro.hook_inputs = true;
      ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
        auto it = calibrated.find(name);
        if (it == calibrated.end()) return t;
        const auto& a = it->second;
        return quant::fake_quant(t, at::full({1}, a.scale), at::full({1}, (float)a.zero_point), a.qn(), a.qp());
      };
      rt::Executor qex(qdq);
      for (const auto& x : inputs) {
        at::Tensor expect = sim.run({{"x", rt::to_aten(x)}}, ro).at("pred");
        at::Tensor got = qex.run({{"x", rt::to_aten(x)}}).at("pred");
        EXPECT_LT((expect - got).abs().max().item<float>(), 1e-4f) << what;
      }
      // The QDQ model is valid ONNX at opset 13 and reloads.
      Graph re = load_onnx_bytes(serialize_onnx(qdq), "qdq");
      EXPECT_EQ(re.opset, 13);
    }
  }
}

TEST(QuantGraph, EncodingsAndTensorRtCache) {
  std::mt19937 rng(6);
  Graph g = toy_detector(rng);
  auto plan = quant::derive_plan(g, quant::PlacementOptions{});
  auto enc = quant::calibrate(g, plan, random_inputs(3, rng), quant::CalibrationOptions{});
  auto j = quant::encodings_json(enc);
  ASSERT_TRUE(j.contains("activation_encodings"));
  ASSERT_TRUE(j.contains("param_encodings"));
  EXPECT_EQ(j["activation_encodings"].size(), plan.activations.size());
  EXPECT_EQ(j["param_encodings"].size(), plan.weights.size());
  for (const auto& w : plan.weights) {
    const auto& e = j["param_encodings"][w.tensor];
    EXPECT_EQ(e["scale"].size(), static_cast<size_t>(g.initializers.at(w.tensor).shape[0]));
    EXPECT_EQ(e["bitwidth"], 8);
    EXPECT_EQ(e["axis"], 0);
    for (size_t c = 0; c < e["scale"].size(); ++c)
      EXPECT_NEAR(e["max"][c].get<double>() - e["min"][c].get<double>(), 255 * e["scale"][c].get<double>(), 1e-6);
  }
  const std::string cache = quant::tensorrt_cache(enc);
  EXPECT_EQ(cache.rfind("TRT-", 0), 0u);
  for (const auto& a : plan.activations) {
    const auto& e = enc.activations.at(a.value);
    const double amax = std::max(std::fabs((e.qn() - e.zero_point) * (double)e.scale), std::fabs((e.qp() - e.zero_point) * (double)e.scale));
    const auto pos = cache.find("\n" + a.value + ": ");
    ASSERT_NE(pos, std::string::npos) << a.value;
    const uint32_t bits = static_cast<uint32_t>(std::stoul(cache.substr(pos + a.value.size() + 3, 8), nullptr, 16));
    float scale;
    std::memcpy(&scale, &bits, 4);
    EXPECT_FLOAT_EQ(scale, static_cast<float>(amax / 127.0)) << a.value;
  }
}

// Export is the last guard before a file is written: an encoding that would put a zero, denormal,
// negative or NaN scale, or a NaN weight, into the QDQ graph is refused with the tensor's name.
TEST(QuantGraph, ExportRefusesScalesAndWeightsThatWouldPoisonTheFile) {
  std::mt19937 rng(7);
  Graph g = toy_detector(rng);
  auto plan = quant::derive_plan(g, quant::PlacementOptions{});
  const auto enc = quant::calibrate(g, plan, random_inputs(2, rng), quant::CalibrationOptions{});
  ASSERT_NO_THROW(quant::make_qdq_graph(g, plan, enc));
  const std::string act = plan.activations.at(0).value, weight = plan.weights.at(0).tensor;
  for (float bad : {0.0f, -0.5f, 1e-40f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto e = enc;
    e.activations.at(act).scale = bad;
    try {
      quant::make_qdq_graph(g, plan, e);
      ADD_FAILURE() << "activation scale " << bad << " was exported";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("activation '" + act + "'"), std::string::npos) << err.what();
    }
    if (!std::isfinite(bad)) {  // a non-finite weight value itself, as reconstruction or an embedder might pass
      Graph poisoned = g;
      poisoned.initializers.at(weight).as<float>()[0] = bad;
      try {
        quant::make_qdq_graph(poisoned, plan, enc);
        ADD_FAILURE() << "weight value " << bad << " was exported";
      } catch (const Error& err) {
        EXPECT_NE(std::string(err.what()).find("weight '" + weight + "'"), std::string::npos) << err.what();
      }
    }
    e = enc;
    e.weights.at(weight).scale.back() = bad;
    try {
      quant::make_qdq_graph(g, plan, e);
      ADD_FAILURE() << "weight scale " << bad << " was exported";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find(weight), std::string::npos) << err.what();
    }
  }
}

// Every row of the calibrator table (src/quant/calibrators.h), on the toy detector at 8 and 4 bits: ranges
// inside the observed [min, max] widened to 0 (no calibrator extends a range), one scale per group,
// network-input groups kept at min/max, a calibrator's name found by find_calibrator, and an unknown name
// refused with every row's name listed. A new row is covered without a new test.
TEST(Calibrators, EveryRowOfTheTable) {
  std::string names;
  for (const auto* c : quant::calibrators()) {
    EXPECT_EQ(&quant::find_calibrator(c->name), c);
    EXPECT_TRUE(c->range != nullptr && c->summary && *c->summary) << c->name;
    EXPECT_TRUE(c->histogram || !c->histogram_of_abs) << c->name << ": |x| histogram without a histogram pass";
    for (int bits : {8, 4}) {
      std::mt19937 rng(9);
      Graph g = toy_detector(rng);
      quant::PlacementOptions po;
      po.weight_bits = po.act_bits = bits;
      const auto plan = quant::derive_plan(g, po);
      quant::CalibrationOptions co;
      co.method = c->name;
      const auto enc = quant::calibrate(g, plan, random_inputs(4, rng), co);
      std::map<int, std::pair<float, int64_t>> group_params;
      for (const auto& a : plan.activations) {
        const auto& e = enc.activations.at(a.value);
        const double lo = (e.qn() - e.zero_point) * static_cast<double>(e.scale), hi = (e.qp() - e.zero_point) * static_cast<double>(e.scale);
        const double obs_lo = std::min(0.0f, e.observed_min), obs_hi = std::max(0.0f, e.observed_max);
        // One grid step of slack: the zero point is rounded, which shifts the grid by up to a step.
        EXPECT_GE(lo, obs_lo - e.scale * 1.01) << c->name << " " << a.value;
        EXPECT_LE(hi, obs_hi + e.scale * 1.01) << c->name << " " << a.value;
        EXPECT_GT(e.scale, 0.0f) << c->name << " " << a.value;
        if (a.image) {
          const auto p = quant::range_to_params(e.observed_min, e.observed_max, quant::QuantGrid{e.bits, e.symmetric});
          EXPECT_EQ(e.scale, p.scale) << c->name << ": the network input keeps its min/max grid";
        }
        auto [it, fresh] = group_params.try_emplace(a.group, e.scale, e.zero_point);
        if (!fresh) EXPECT_TRUE(it->second.first == e.scale && it->second.second == e.zero_point) << c->name << " group " << a.group;
      }
    }
    names += std::string(c->name) + " ";
  }
  try {
    quant::find_calibrator("bogus");
    ADD_FAILURE() << "an unknown calibrator was found";
  } catch (const Error& e) {
    for (const auto* c : quant::calibrators()) EXPECT_NE(std::string(e.what()).find(c->name), std::string::npos) << e.what();
  }
  std::printf("  calibrators: %s\n", names.c_str());
}

// avg_mse against calibrating each 2-image slice alone with mse: over 6 images in batches of 4 (slices
// {0,1}, {2,3} | {4,5}), every group's scale is the mean of the slices' scales (the width of a range fixes
// its scale), and its zero point lies within one code of theirs. At 4 bits the mean of the slices' optima is
// not the whole-set optimum, so some group differs from mse's.
TEST(Calibrators, AvgMseIsTheMeanOfTheSlicesOptima) {
  std::mt19937 rng(13);
  Graph g = toy_detector(rng);
  quant::PlacementOptions po;
  po.weight_bits = po.act_bits = 4;
  const auto plan = quant::derive_plan(g, po);
  const auto inputs = random_inputs(6, rng);
  quant::CalibrationOptions co;
  co.batch = 4;
  co.method = "avg_mse";
  const auto avg = quant::calibrate(g, plan, inputs, co);
  EXPECT_EQ(avg.meta.at("slice_images"), 2);
  co.method = "mse";
  const auto whole = quant::calibrate(g, plan, inputs, co);
  std::vector<quant::Encodings> slices;
  for (size_t s = 0; s < inputs.size(); s += 2)
    slices.push_back(quant::calibrate(g, plan, {inputs[s], inputs[s + 1]}, co));
  bool differs_from_whole = false;
  for (const auto& a : plan.activations) {
    const auto& e = avg.activations.at(a.value);
    if (a.image) continue;  // the network input keeps its min/max grid
    double scale = 0, lo = 0;
    for (const auto& sl : slices) {
      const auto& x = sl.activations.at(a.value);
      scale += x.scale / static_cast<double>(slices.size());
      lo += (x.qn() - x.zero_point) * static_cast<double>(x.scale) / static_cast<double>(slices.size());
    }
    EXPECT_NEAR(e.scale, scale, 1e-5 * scale) << a.value;
    const double zp = static_cast<double>(e.qn()) - lo / scale;
    EXPECT_LE(std::fabs(e.zero_point - zp), 1.0 + 1e-6) << a.value;
    differs_from_whole = differs_from_whole || e.scale != whole.activations.at(a.value).scale;
  }
  EXPECT_TRUE(differs_from_whole);
}

// `auto` calibrates every row in shared passes: each result must be what calibrate() gives for that row alone,
// and calibrate_weights() what calibrate() puts in the weights.
TEST(Calibrators, SharedPassesEqualOneCalibratorAtATime) {
  std::mt19937 rng(11);
  Graph g = toy_detector(rng);
  quant::PlacementOptions po;
  const auto plan = quant::derive_plan(g, po);
  const auto inputs = random_inputs(4, rng);
  std::vector<std::string> names;
  for (const auto* c : quant::calibrators()) names.push_back(c->name);
  quant::CalibrationOptions co;
  const auto all = quant::calibrate_methods(g, plan, inputs, co, names);
  ASSERT_EQ(all.size(), names.size());
  for (const auto& n : names) {
    co.method = n;
    const auto one = quant::calibrate(g, plan, inputs, co);
    const auto& shared = all.at(n);
    ASSERT_EQ(one.activations.size(), shared.activations.size()) << n;
    for (const auto& [v, e] : one.activations) {
      EXPECT_EQ(e.scale, shared.activations.at(v).scale) << n << " " << v;
      EXPECT_EQ(e.zero_point, shared.activations.at(v).zero_point) << n << " " << v;
    }
    for (const auto& [t, w] : one.weights) EXPECT_EQ(w.scale, shared.weights.at(t).scale) << n << " " << t;
  }
  for (const char* wm : {"minmax", "mse"}) {
    co.method = "minmax";
    co.weight_method = wm;
    const auto enc = quant::calibrate(g, plan, inputs, co);
    const auto weights = quant::calibrate_weights(g, plan, wm);
    ASSERT_EQ(weights.size(), enc.weights.size());
    for (const auto& [t, w] : enc.weights) {
      EXPECT_EQ(w.scale, weights.at(t).scale) << wm << " " << t;
      EXPECT_EQ(w.zero_point, weights.at(t).zero_point) << wm << " " << t;
    }
  }
}

// After correction every quantized conv's output, after the activation that follows it (ReLU, x·sigmoid(x), none
// before the residual Add), has the FP32 model's per-channel mean on the images it was measured on, its
// predecessors' corrections included (the QDQ graph of the corrected model, run separately), up to half a step of
// the int32 grid its bias is stored on; a conv without a bias gets one.
TEST(BiasCorrection, QuantizedConvOutputsKeepTheFp32ChannelMeans) {
  for (int bits : {8, 6}) {
    std::mt19937 rng(11);
    Graph g = toy_detector(rng);
    for (auto& n : g.nodes)
      if (n.name == "c3") n.inputs.resize(2);
    g.initializers.erase("c3.b");
    quant::PlacementOptions po;
    po.weight_bits = bits;
    po.act_bits = bits;
    const auto plan = quant::derive_plan(g, po);
    const auto inputs = random_inputs(6, rng);
    quant::CalibrationOptions co;
    co.method = "percentile";  // clipping biases the means
    const auto enc = quant::calibrate(g, plan, inputs, co);
    const auto bc = quant::compute_bias_correction(g, plan, enc, inputs);
    std::set<std::string> corrected;
    for (const auto& [n, s] : bc.shifts) corrected.insert(n);
    EXPECT_EQ(corrected, (std::set<std::string>{"stem", "c2", "c3", "c5"})) << bits;  // pred is head: float weights
    Graph fixed = g;
    quant::apply_bias_correction(fixed, bc);
    ASSERT_EQ(fixed.nodes[4].name, "c3");
    ASSERT_EQ(fixed.nodes[4].inputs.size(), 3u);
    ASSERT_TRUE(fixed.initializers.count(fixed.nodes[4].inputs[2]));

    // Activation output and the quantized input its int32 bias grid comes from (below 8 bits the block layout leaves the
    // stem's input and bias in floating point).
    const std::vector<std::tuple<std::string, std::string, std::string>> convs = {
        {"stem", "a", bits == 8 ? "x" : ""}, {"c2", "b", "a"}, {"c3", "c", "b"}, {"c5", "f", "a"}};
    auto run = [&](const Graph& m) {
      rt::ExecutorOptions eo;
      eo.fuse_silu = false;
      rt::Executor ex(m, eo);
      std::vector<at::Tensor> xs;
      for (const auto& t : inputs) xs.push_back(rt::to_aten(t));
      rt::RunOptions ro;
      for (const auto& c : convs) {
        ro.keep.push_back(std::get<1>(c));
        if (m.find_value(std::get<1>(c) + "_dequantized")) ro.keep.push_back(std::get<1>(c) + "_dequantized");
      }
      return ex.run({{"x", at::cat(xs, 0)}}, ro);
    };
    // What the next layer reads: the dequantized value where the activation output is quantized.
    const auto read = [&](const rt::TensorMap& r, const std::string& v) {
      return (r.count(v + "_dequantized") ? r.at(v + "_dequantized") : r.at(v)).mean({0, 2, 3});
    };
    const auto fp = run(g);
    const auto before = run(quant::make_qdq_graph(g, plan, enc));
    const auto after = run(quant::make_qdq_graph(fixed, plan, enc));
    double err_before = 0, err_after = 0;
    for (const auto& [conv, out, in] : convs) {
      const at::Tensor mf = fp.at(out).mean({0, 2, 3}), mb = read(before, out), ma = read(after, out);
      const auto& sw = enc.weights.at(conv + ".w").scale;
      const double step = in.empty() ? 0 : enc.activations.at(in).scale * *std::max_element(sw.begin(), sw.end());
      // The quantizers after the conv make the mean a staircase in the bias, so a tenth of the error may remain (at
      // 4 bits on 1,536 values per channel, more can).
      EXPECT_LT((mf - ma).abs().max().item<double>(), 0.5 * step + 0.1 * (mf - mb).abs().max().item<double>()) << bits << " " << conv;
      err_before += (mb - mf).abs().sum().item<double>();
      err_after += (ma - mf).abs().sum().item<double>();
    }
    EXPECT_GT(err_before, 3 * err_after) << bits;  // there was a bias to correct
  }
}

namespace {

// Multiplies output channels [c0, c1) of a conv's weight (and bias) by f.
void scale_output_channels(Graph& g, const std::string& conv, int c0, int c1, float f) {
  TensorData& w = g.initializers.at(conv + ".w");
  const int64_t per = w.numel() / w.shape[0];
  for (int64_t i = c0 * per; i < c1 * per; ++i) w.as<float>()[i] *= f;
  if (g.initializers.count(conv + ".b"))
    for (int c = c0; c < c1; ++c) g.initializers.at(conv + ".b").as<float>()[c] *= f;
}

// Multiplies input channels [c0, c1) of a conv's weight by f.
void scale_input_channels(Graph& g, const std::string& conv, int c0, int c1, float f) {
  TensorData& w = g.initializers.at(conv + ".w");
  const int64_t cin = w.shape[1], k = w.numel() / (w.shape[0] * cin);
  for (int64_t o = 0; o < w.shape[0]; ++o)
    for (int64_t i = c0; i < c1; ++i)
      for (int64_t j = 0; j < k; ++j) w.as<float>()[(o * cin + i) * k + j] *= f;
}

}  // namespace

// YOLOX-Nano's stem output in miniature: six channels of the stem 300 times larger than the other two, which
// alone carry what the later layers read. An 8-bit grid for that tensor erases the small channels; every other
// group of the toy model is harmless at 8 bits.
TEST(Sensitivity, EightBitProbeFindsChannelsNoGridHolds) {
  std::mt19937 rng(5);
  Graph g = toy_detector(rng);
  const auto inputs = random_inputs(4, rng);
  quant::PlacementOptions po;
  po.weight_bits = 4;
  po.act_bits = 4;
  quant::CalibrationOptions co;
  co.method = "mse";
  const auto plain = quant::eight_bit_sensitivity(g, quant::derive_plan(g, po), inputs, co);
  for (const auto& s : plain) EXPECT_GT(s.sqnr_db, 15.0) << s.values.front();

  const float big = 300;
  scale_output_channels(g, "stem", 0, 6, big);
  for (const char* reader : {"c2", "c5"}) scale_input_channels(g, reader, 0, 6, 1 / big);
  scale_input_channels(g, "pred", 0, 6, 1 / big);   // d = a + c
  scale_input_channels(g, "pred", 8, 14, 1 / big);  // e = maxpool(d)
  const auto plan = quant::derive_plan(g, po);
  const auto s8 = quant::eight_bit_sensitivity(g, plan, inputs, co);
  ASSERT_EQ(s8.size(), static_cast<size_t>(plan.num_groups));
  // The big channels reach the concat group too (d = a + c): those two groups, and only they, fall below 10 dB.
  const quant::ActSite* a = find_site(plan, "a");
  const quant::ActSite* d = find_site(plan, "d");
  ASSERT_TRUE(a && d);
  EXPECT_EQ(a->bits, 4);
  std::set<int> worst;
  for (size_t i = 0; i < s8.size(); ++i) {
    if (i < 2) {
      EXPECT_LT(s8[i].sqnr_db, 10.0) << s8[i].values.front();
      worst.insert(s8[i].group);
    } else {
      EXPECT_GT(s8[i].sqnr_db, 15.0) << s8[i].values.front();
    }
  }
  EXPECT_EQ(worst, (std::set<int>{a->group, d->group}));
  const auto a_entry = std::find_if(s8.begin(), s8.end(), [&](const quant::GroupSensitivity& s) { return s.group == a->group; });
  ASSERT_EQ(a_entry->values, std::vector<std::string>{"a"});

  // Independently: 'a' on its 8-bit mse grid, everything else in floating point, SQNR of the output by hand.
  quant::QuantPlan at8 = plan;
  for (auto& s : at8.activations) s.bits = 8;
  quant::CalibrationOptions cw = co;
  cw.weight_method = "minmax";
  const auto e = quant::calibrate(g, at8, inputs, cw).activations.at("a");
  ASSERT_EQ(e.qp() - e.qn(), 255);
  rt::ExecutorOptions eo;
  eo.hooked.insert("a");
  rt::Executor ex(g, eo);
  std::vector<at::Tensor> xs;
  for (const auto& t : inputs) xs.push_back(rt::to_aten(t));
  const at::Tensor x = at::cat(xs, 0);
  const at::Tensor ref = ex.run({{"x", x}}).at("pred");
  rt::RunOptions ro;
  ro.hook_inputs = true;
  ro.value_hook = [&](const std::string& name, const at::Tensor& t) {
    if (name != "a") return t;
    return (at::clamp(at::round(t / e.scale) + e.zero_point, e.qn(), e.qp()) - e.zero_point) * e.scale;
  };
  const at::Tensor got = ex.run({{"x", x}}, ro).at("pred");
  const double db = 10 * std::log10(ref.pow(2).sum().item<double>() / (ref - got).pow(2).sum().item<double>());
  EXPECT_NEAR(a_entry->sqnr_db, db, 0.01);
}

namespace {

TensorData u8_tensor(std::vector<int64_t> shape, std::vector<uint8_t> v) {
  TensorData t;
  t.dtype = DType::UInt8;
  t.shape = std::move(shape);
  t.bytes = std::move(v);
  return t;
}

TensorData f32_tensor(std::vector<int64_t> shape, std::vector<float> v) {
  TensorData t;
  t.dtype = DType::Float;
  t.shape = std::move(shape);
  t.bytes.resize(v.size() * sizeof(float));
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

// x (codes on a unit grid) → Q/DQ → three convs whose weights are uint8 codes at zero point 128: pair sums that
// leave int16 (127·255 + 127·v), a pair of opposite signs that cannot, and a depthwise conv.
Graph u8s8_graph() {
  Graph g;
  g.name = "u8s8";
  g.inputs = {float_input("x", {1, 2, 3, 3})};
  g.initializers["xs"] = f32_tensor({}, {1.0f});
  g.initializers["xz"] = u8_tensor({}, {0});
  g.nodes.push_back(node("q", "QuantizeLinear", {"x", "xs", "xz"}, {"xq"}));
  g.nodes.push_back(node("dq", "DequantizeLinear", {"xq", "xs", "xz"}, {"xd"}));
  auto conv = [&](const std::string& name, std::vector<int64_t> wshape, std::vector<uint8_t> codes, int64_t group) {
    const int64_t o = wshape[0];
    g.initializers[name + "_wq"] = u8_tensor(wshape, std::move(codes));
    g.initializers[name + "_ws"] = f32_tensor({o}, std::vector<float>(o, 0.01f));
    g.initializers[name + "_wz"] = u8_tensor({o}, std::vector<uint8_t>(o, 128));
    Node dq = node(name + "_wdq", "DequantizeLinear", {name + "_wq", name + "_ws", name + "_wz"}, {name + "_w"});
    dq.attrs["axis"].kind = Attribute::Kind::Int;
    dq.attrs["axis"].i = 0;
    g.nodes.push_back(dq);
    Node c = node(name, "Conv", {"xd", name + "_w"}, {name + "_y"});
    c.attrs["group"].kind = Attribute::Kind::Int;
    c.attrs["group"].i = group;
    g.nodes.push_back(c);
    g.outputs.push_back(float_output(name + "_y", {1, o, 3, 3}));
  };
  conv("same_sign", {1, 2, 1, 1}, {255, 255}, 1);
  conv("opposite", {1, 2, 1, 1}, {255, 1}, 1);
  conv("depthwise", {2, 1, 1, 1}, {255, 255}, 2);
  return finish(g);
}

}  // namespace

// The accumulator SQNR under int16 pair saturation against a hand computation, and int8 storage keeps the values.
TEST(U8S8Saturation, PairSumsThatLeaveInt16AgainstAHandComputation) {
  const Graph g = u8s8_graph();
  // Channel 0 at code 255 everywhere, channel 1 at 0..8: the pair 127·255 + 127·v leaves int16 from v = 4 on.
  std::vector<float> x(18);
  for (int p = 0; p < 9; ++p) x[p] = 255.0f, x[9 + p] = static_cast<float>(p);
  const TensorData image = f32_tensor({1, 2, 3, 3}, x);
  double a2 = 0, e2 = 0;
  int64_t saturated = 0;
  for (int p = 0; p < 9; ++p) {
    const double sum = 127.0 * 255.0 + 127.0 * p;
    const double clipped = std::min(sum, 32767.0);
    a2 += sum * sum, e2 += (clipped - sum) * (clipped - sum), saturated += clipped != sum;
  }
  ASSERT_GT(saturated, 0);
  const auto checks = quant::check_u8s8_saturation(g, {image});
  ASSERT_EQ(checks.size(), 3u);
  std::map<std::string, quant::U8S8Check> by_conv;
  for (const auto& c : checks) by_conv[c.conv] = c;
  EXPECT_FALSE(by_conv.at("same_sign").depthwise);
  EXPECT_NEAR(by_conv.at("same_sign").accumulator_sqnr_db, 10.0 * std::log10(a2 / e2), 1e-6);
  EXPECT_EQ(by_conv.at("same_sign").saturated_pairs, saturated);
  EXPECT_EQ(by_conv.at("same_sign").pairs, 9);
  EXPECT_TRUE(std::isinf(by_conv.at("opposite").accumulator_sqnr_db));
  EXPECT_EQ(by_conv.at("opposite").saturated_pairs, 0);
  EXPECT_TRUE(by_conv.at("depthwise").depthwise);

  Graph stored = g;
  EXPECT_EQ(quant::store_conv_weights_signed(stored, {"same_sign", "depthwise"}), (std::set<std::string>{"same_sign", "depthwise"}));
  EXPECT_EQ(stored.initializers.at("same_sign_wq").dtype, DType::Int8);
  EXPECT_EQ(stored.initializers.at("same_sign_wq").as<int8_t>()[0], 127);
  EXPECT_EQ(stored.initializers.at("same_sign_wz").dtype, DType::Int8);
  EXPECT_EQ(stored.initializers.at("same_sign_wz").as<int8_t>()[0], 0);
  EXPECT_EQ(stored.initializers.at("opposite_wq").dtype, DType::UInt8);
  // Only uint8 weights at zero point 128 are candidates: the stored ones are no longer measured.
  EXPECT_EQ(quant::check_u8s8_saturation(stored, {image}).size(), 1u);
  EXPECT_THROW(quant::check_u8s8_saturation(g, {}), Error);
  rt::Executor before(g), after(load_onnx_bytes(serialize_onnx(stored), "stored"));
  const auto ya = before.run({{"x", rt::to_aten(image)}}), yb = after.run({{"x", rt::to_aten(image)}});
  for (const auto& o : g.outputs) EXPECT_TRUE(at::equal(ya.at(o.name), yb.at(o.name))) << o.name;
}

namespace {

// g with each named weight replaced by its fake quantization on `enc`'s grid, computed here per output channel.
Graph with_quantized_weights(Graph g, const std::map<std::string, quant::WeightEncoding>& enc, const std::set<std::string>& tensors) {
  for (const auto& t : tensors) {
    const quant::WeightEncoding& e = enc.at(t);
    TensorData& w = g.initializers.at(t);
    const int64_t per = w.numel() / w.shape[0];
    for (int64_t c = 0; c < w.shape[0]; ++c)
      for (int64_t i = c * per; i < (c + 1) * per; ++i) {
        float& v = w.as<float>()[i];
        const double q = std::clamp<double>(std::nearbyint(v / e.scale[c]) + e.zero_point[c], e.qn(), e.qp());
        v = static_cast<float>((q - e.zero_point[c]) * e.scale[c]);
      }
  }
  return g;
}

double output_sqnr_db(const Graph& ref, const Graph& q, const std::vector<TensorData>& inputs) {
  double s = 0, n = 0;
  for (const auto& x : inputs) {
    const at::Tensor a = run_graph(ref, x).to(at::kDouble), b = run_graph(q, x).to(at::kDouble);
    s += a.pow(2).sum().item<double>();
    n += (a - b).pow(2).sum().item<double>();
  }
  return 10 * std::log10(s / n);
}

}  // namespace

// --budget weight-bits: each candidate's SQNR against a hand-quantized copy of the graph, the average bits from the
// initializers, the greedy order and its maximality, the measured frontier, and the plan that carries the choice.
TEST(WeightBitsBudget, RaisesTheWeightsThatHurtMostPerBitWithinTheAverage) {
  std::mt19937 rng(11);
  const Graph g = toy_detector(rng);
  const auto inputs = random_inputs(3, rng);
  quant::PlacementOptions po;
  po.weight_bits = 4;
  po.quantize_head = true;  // pred at 8 bits (head_last_bits), stem at 8 (first layer): not candidates
  const quant::QuantPlan plan = quant::derive_plan(g, po);
  std::map<std::string, int> bits_of;
  double params = 0, bits = 0;
  for (const auto& w : plan.weights) {
    bits_of[w.tensor] = w.bits;
    params += g.initializers.at(w.tensor).numel();
    bits += static_cast<double>(g.initializers.at(w.tensor).numel()) * w.bits;
  }
  ASSERT_EQ(bits_of.at("stem.w"), 8);
  ASSERT_EQ(bits_of.at("pred.w"), 8);
  // Room for 4 more bits on c3 and c5 (96 weights), not on c2 (576).
  const double budget = (bits + 4.0 * (64 + 32)) / params + 1e-9;
  const auto choice = quant::assign_weight_bits(g, plan, inputs, budget, "mse", "cpu");
  EXPECT_NEAR(choice.average_bits_before, bits / params, 1e-12);
  EXPECT_EQ(choice.params, static_cast<int64_t>(params));
  ASSERT_EQ(choice.layers.size(), 3u);  // c2, c3, c5

  const auto low = quant::calibrate_weights(g, plan, "mse");
  double used = bits;
  for (size_t i = 0; i < choice.layers.size(); ++i) {
    const auto& l = choice.layers[i];
    const double db = output_sqnr_db(g, with_quantized_weights(g, low, {l.tensor}), inputs);
    EXPECT_NEAR(l.sqnr_db, db, 0.01) << l.tensor;
    EXPECT_EQ(l.bits, 4);
    EXPECT_EQ(l.params, g.initializers.at(l.tensor).numel());
    if (i > 0) {
      const auto& p = choice.layers[i - 1];
      EXPECT_GE(std::pow(10, -p.sqnr_db / 10) / p.params, std::pow(10, -l.sqnr_db / 10) / l.params) << "order";
    }
    if (l.raised) used += 4.0 * l.params;
  }
  EXPECT_NEAR(choice.average_bits, used / params, 1e-12);
  EXPECT_LE(choice.average_bits, budget);
  for (const auto& l : choice.layers)  // greedy leaves out only what no longer fits
    if (!l.raised) EXPECT_GT(used + 4.0 * l.params, budget * params) << l.tensor;
  EXPECT_FALSE(std::find_if(choice.layers.begin(), choice.layers.end(), [](const auto& l) { return l.tensor == "c2.w"; })->raised);

  // The frontier: all weights at the plan's bits, then each candidate raised in order, then the choice.
  ASSERT_EQ(choice.frontier.size(), choice.layers.size() + 2);
  std::set<std::string> all;
  for (const auto& w : plan.weights) all.insert(w.tensor);
  EXPECT_NEAR(choice.frontier.front().sqnr_db, output_sqnr_db(g, with_quantized_weights(g, low, all), inputs), 0.01);
  quant::QuantPlan at8 = plan;
  for (auto& w : at8.weights) w.bits = 8;
  const auto high = quant::calibrate_weights(g, at8, "mse");
  std::map<std::string, quant::WeightEncoding> assigned = low;
  for (const auto& l : choice.layers)
    if (l.raised) assigned[l.tensor] = high.at(l.tensor);
  EXPECT_TRUE(choice.frontier.back().chosen);
  EXPECT_NEAR(choice.frontier.back().sqnr_db, output_sqnr_db(g, with_quantized_weights(g, assigned, all), inputs), 0.01);
  EXPECT_GT(choice.frontier[choice.layers.size()].sqnr_db, choice.frontier.front().sqnr_db + 3);  // 8-bit weights throughout

  // The plan carries the choice; a config override wins over it.
  quant::PlacementOptions chosen = po;
  chosen.budget_weight_bits = choice.node_bits;
  const auto p2 = quant::derive_plan(g, chosen);
  for (const auto& l : choice.layers) {
    const quant::WeightSite* w = find_weight(p2, l.node);
    ASSERT_TRUE(w);
    EXPECT_EQ(w->bits, l.raised ? 8 : 4) << l.node;
    if (l.raised) EXPECT_EQ(w->reason, "weight-bits budget");
  }
  chosen.overrides = {{"nodes", {{"c3", {{"weight_bits", 6}}}}}};
  EXPECT_EQ(find_weight(quant::derive_plan(g, chosen), "c3")->bits, 6);
  const auto pinned = quant::assign_weight_bits(g, plan, inputs, budget, "mse", "cpu", {"c3"});
  for (const auto& l : pinned.layers) EXPECT_NE(l.node, "c3");

  // A budget below what the plan already spends is an error that says so.
  try {
    quant::assign_weight_bits(g, plan, inputs, 4.0, "mse", "cpu");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already average"), std::string::npos) << e.what();
  }
}

// Inlier-weighted sensitivity: each weight's weighted output SQNR against a hand computation with the same weights,
// and the budget's order by it when asked; ranking by it without weights is an error.
TEST(WeightBitsBudget, InlierWeightedSqnrAgainstAHandComputation) {
  std::mt19937 rng(12);
  const Graph g = toy_detector(rng);
  const auto inputs = random_inputs(3, rng);
  quant::PlacementOptions po;
  po.weight_bits = 4;
  const quant::QuantPlan plan = quant::derive_plan(g, po);
  // Positions weighed 0..1 per image, as the mixture's posteriors would be.
  const at::Tensor w = at::rand({3, 1, 16, 16}, at::TensorOptions().dtype(at::kFloat));
  const quant::OutputWeights weights{{"pred", rt::from_aten(w)}};
  const double budget = 5.3;  // above the 4.97 the stem at 8 bits already spends
  const auto choice = quant::assign_weight_bits(g, plan, inputs, budget, "mse", "cpu", {}, 8, {}, weights,
                                                quant::SensitivityError::Inlier);
  ASSERT_GE(choice.layers.size(), 2u);
  EXPECT_EQ(choice.ranked_by, quant::SensitivityError::Inlier);
  const auto low = quant::calibrate_weights(g, plan, "mse");
  for (size_t i = 0; i < choice.layers.size(); ++i) {
    const auto& l = choice.layers[i];
    const Graph q = with_quantized_weights(g, low, {l.tensor});
    double s = 0, n = 0, sw = 0, nw = 0;
    for (size_t k = 0; k < inputs.size(); ++k) {
      const at::Tensor a = run_graph(g, inputs[k]).to(at::kDouble), b = run_graph(q, inputs[k]).to(at::kDouble);
      const at::Tensor wk = w[k].unsqueeze(0).to(at::kDouble);
      s += a.pow(2).sum().item<double>(), n += (a - b).pow(2).sum().item<double>();
      sw += (wk * a.pow(2)).sum().item<double>(), nw += (wk * (a - b).pow(2)).sum().item<double>();
    }
    EXPECT_NEAR(l.sqnr_db, 10 * std::log10(s / n), 0.01) << l.tensor;
    EXPECT_NEAR(l.inlier_sqnr_db, 10 * std::log10(sw / nw), 0.01) << l.tensor;
    if (i > 0) {
      const auto& p = choice.layers[i - 1];
      EXPECT_GE(std::pow(10, -p.inlier_sqnr_db / 10) / p.params, std::pow(10, -l.inlier_sqnr_db / 10) / l.params) << "order";
    }
  }
  EXPECT_EQ(choice.to_json()["ranked_by"], "inlier");
  EXPECT_TRUE(choice.to_json()["layers"][0].contains("inlier_sqnr_db"));
  // Without weights: the plain figure only.
  const auto plain = quant::assign_weight_bits(g, plan, inputs, budget, "mse", "cpu");
  EXPECT_TRUE(std::isnan(plain.layers[0].inlier_sqnr_db));
  EXPECT_FALSE(plain.to_json()["layers"][0].contains("inlier_sqnr_db"));
  EXPECT_THROW(quant::assign_weight_bits(g, plan, inputs, budget, "mse", "cpu", {}, 8, {}, {}, quant::SensitivityError::Inlier),
               Error);
}
