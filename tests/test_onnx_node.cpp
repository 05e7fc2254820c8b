// Runs ONNX's own backend node tests (Debian libonnx-testdata) for every op the registry supports.
// INLIERQ_NODE_FILTER=substring restricts the run, e.g. to one op while developing it.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <filesystem>
#include <cmath>
#include <fstream>
#include <random>
#include <set>

#include "graph_builders.h"
#include "inlierq/error.h"
#include "inlierq/onnx_io.h"
#include "graph/op_traits.h"
#include "inlierq/quant.h"
#include "inlierq/runtime.h"
#include "quant/grid_ops.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace fs = std::filesystem;
using namespace inlierq;

namespace {

// Cases that exercise a feature the executor deliberately does not implement, with the reason.
const std::map<std::string, std::string> kKnownUnsupported = {
    {"test_cast_STRING_to_FLOAT", "string tensors"},
    {"test_castlike_FLOAT_to_STRING", "string tensors"},
    {"test_castlike_STRING_to_FLOAT", "string tensors"},
    {"test_castlike_STRING_to_FLOAT_expanded", "string tensors"},
    {"test_identity_opt", "optional values"},
    {"test_identity_sequence", "sequence values"},
};

// Registered ops that no passing ONNX node case covers, with the reason (checked both ways below).
const std::map<std::string, std::string> kOpsWithoutNodeCase = {
    {"LpNormalization", "no case in this libonnx-testdata; closed form in OnnxNodeTests.KernelsWithoutNodeCases"},
    {"Mish", "an opset-18 op and the loader accepts opsets 7..17, so its cases cannot load; closed form in "
             "OnnxNodeTests.KernelsWithoutNodeCases"},
};

// The cases of ops unchanged since opset 1 or 6 (GlobalAveragePool, Softplus, Selu, ...) declare that
// opset, below the loader's 7..17; they are run as opset 7. An op whose definition changed between its
// declared version and 7 would then be checked against the newer semantics and fail, not pass silently.
Graph load_node_case(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  onnx::ModelProto m;
  if (!m.ParseFromIstream(&f)) throw Error(path + ": not a model");
  for (auto& o : *m.mutable_opset_import())
    if ((o.domain().empty() || o.domain() == "ai.onnx") && o.version() < 7) o.set_version(7);
  return load_onnx_bytes(m.SerializeAsString(), path);
}

bool all_ops_supported(const Graph& g) {
  for (const auto& n : g.nodes)
    if (!n.domain.empty() || !rt::OpRegistry::instance().find(n.op_type)) return false;
  return true;
}

std::string compare(const at::Tensor& got_in, const at::Tensor& want, double rtol, double atol) {
  at::Tensor got = got_in.detach().to(at::kCPU);
  if (got.sizes() != want.sizes())
    return "shape " + shape_str(got.sizes().vec()) + " != expected " + shape_str(want.sizes().vec());
  if (got.scalar_type() != want.scalar_type())
    return std::string("type ") + c10::toString(got.scalar_type()) + " != expected " + c10::toString(want.scalar_type());
  if (got.numel() == 0) return "";
  if (at::isFloatingType(want.scalar_type())) {
    at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
    at::Tensor both_nan = at::isnan(g) & at::isnan(w);
    at::Tensor same_inf = (g == w);
    at::Tensor close = (g - w).abs() <= atol + rtol * w.abs();
    at::Tensor ok = both_nan | same_inf | close;
    if (!ok.all().item<bool>()) {
      at::Tensor diff = at::where(ok, at::zeros_like(g), (g - w).abs());
      return "max |diff| " + std::to_string(diff.max().item<double>());
    }
    return "";
  }
  if (!at::equal(got, want)) return "values differ";
  return "";
}

}  // namespace

TEST(OnnxNodeTests, SupportedOpsMatchReference) {
  const fs::path root = fs::path(INLIERQ_ONNX_TESTDATA) / "node";
  if (!fs::exists(root)) GTEST_SKIP() << "libonnx-testdata not installed at " << root;
  const char* filter = std::getenv("INLIERQ_NODE_FILTER");
  std::vector<fs::path> cases;
  for (const auto& e : fs::directory_iterator(root)) cases.push_back(e.path());
  std::sort(cases.begin(), cases.end());
  int passed = 0, skipped = 0, failed = 0;
  std::set<std::string> ops_covered;
  for (const auto& dir : cases) {
    const std::string name = dir.filename().string();
    if (filter && name.find(filter) == std::string::npos) continue;
    if (kKnownUnsupported.count(name)) { ++skipped; continue; }
    Graph g;
    try {
      g = load_node_case((dir / "model.onnx").string());
    } catch (const Error&) {
      ++skipped;  // types or opsets outside what the loader accepts
      continue;
    }
    if (!all_ops_supported(g)) { ++skipped; continue; }
    std::string failure;
    try {
      rt::ExecutorOptions eo;
      eo.check_finite = false;
      eo.allow_batch = false;
      rt::Executor ex(g, eo);
      for (const auto& ds : fs::directory_iterator(dir)) {
        if (!ds.is_directory() || ds.path().filename().string().rfind("test_data_set", 0) != 0) continue;
        rt::TensorMap inputs;
        for (size_t i = 0;; ++i) {
          auto p = ds.path() / ("input_" + std::to_string(i) + ".pb");
          if (!fs::exists(p)) break;
          if (i < g.inputs.size()) inputs[g.inputs[i].name] = rt::to_aten(load_tensor_pb(p.string()));
        }
        auto out = ex.run(inputs);
        for (size_t i = 0; i < g.outputs.size(); ++i) {
          auto p = ds.path() / ("output_" + std::to_string(i) + ".pb");
          if (!fs::exists(p)) continue;
          at::Tensor want = rt::to_aten(load_tensor_pb(p.string()));
          std::string why = compare(out.at(g.outputs[i].name), want, 1e-3, 1e-5);
          if (!why.empty()) failure = "output '" + g.outputs[i].name + "': " + why;
        }
      }
    } catch (const std::exception& e) {
      // Integer types ATen lacks (uint16/32/64) are a documented limit, not a wrong result.
      if (std::string(e.what()).find("is not supported by the executor") != std::string::npos) {
        ++skipped;
        continue;
      }
      failure = e.what();
    }
    if (failure.empty()) {
      ++passed;
      for (const auto& n : g.nodes) ops_covered.insert(n.op_type);
    } else {
      ++failed;
      ADD_FAILURE() << name << ": " << failure;
    }
  }
  std::string ops;
  for (const auto& o : ops_covered) ops += o + " ";
  std::printf("[onnx node tests] %d passed, %d failed, %d skipped (unsupported op or type)\n[ops covered] %s\n",
              passed, failed, skipped, ops.c_str());
  EXPECT_GT(passed, 0);
  if (filter) return;
  // Every registered op is checked against ONNX's reference by at least one case, or says why not: a new
  // kernel without a reference case fails here until one exists or the reason is written down.
  for (const auto& op : supported_ops()) {
    const bool covered = ops_covered.count(op) > 0;
    const auto why = kOpsWithoutNodeCase.find(op);
    if (!covered && why == kOpsWithoutNodeCase.end())
      ADD_FAILURE() << "op " << op << " is registered but no ONNX node test case of it passes; add one or list it in "
                    << "kOpsWithoutNodeCase with the reason";
    if (covered && why != kOpsWithoutNodeCase.end())
      ADD_FAILURE() << "op " << op << " is listed in kOpsWithoutNodeCase (" << why->second << ") but a case of it passes";
  }
}

// The registered kernels no ONNX node case reaches, against closed forms computed here in double.
TEST(OnnxNodeTests, KernelsWithoutNodeCases) {
  std::mt19937 rng(11);
  const TensorData x = test::random_tensor({2, 3, 4}, rng, 3.0f);
  const float* xv = x.as<float>();
  auto run = [&](Node n) {
    Graph g;
    g.opset = 17;
    g.inputs.push_back(test::float_input("x", {2, 3, 4}));
    g.outputs.push_back(test::float_output("y", {2, 3, 4}));
    g.nodes.push_back(std::move(n));
    rt::Executor ex(g);
    return ex.run({{"x", rt::to_aten(x)}}).at("y").contiguous();
  };
  const at::Tensor mish = run(test::node("m", "Mish", {"x"}, {"y"}));
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = xv[i], want = v * std::tanh(std::log1p(std::exp(v)));
    EXPECT_NEAR(mish.data_ptr<float>()[i], want, 1e-5 * (1 + std::fabs(want))) << "Mish at " << i;
  }
  for (int64_t p : {1, 2})
    for (int64_t axis : {1, -1}) {
      Node n = test::node("l", "LpNormalization", {"x"}, {"y"});
      n.attrs["p"].kind = Attribute::Kind::Int;
      n.attrs["p"].i = p;
      n.attrs["axis"].kind = Attribute::Kind::Int;
      n.attrs["axis"].i = axis;
      const at::Tensor y = run(n);
      const int64_t a = axis < 0 ? 2 : axis;
      const int64_t dims[3] = {2, 3, 4};
      for (int64_t i0 = 0; i0 < 2; ++i0)
        for (int64_t i1 = 0; i1 < 3; ++i1)
          for (int64_t i2 = 0; i2 < 4; ++i2) {
            int64_t idx[3] = {i0, i1, i2};
            double norm = 0;
            for (int64_t k = 0; k < dims[a]; ++k) {
              int64_t j[3] = {i0, i1, i2};
              j[a] = k;
              const double v = xv[(j[0] * 3 + j[1]) * 4 + j[2]];
              norm += p == 1 ? std::fabs(v) : v * v;
            }
            if (p == 2) norm = std::sqrt(norm);
            const int64_t flat = (idx[0] * 3 + idx[1]) * 4 + idx[2];
            EXPECT_NEAR(y.data_ptr<float>()[flat], xv[flat] / norm, 1e-6) << "LpNormalization p=" << p << " axis=" << axis;
          }
    }
}

// ---- the op-traits table (src/graph/op_traits.h), checked row by row against ONNX's own node cases

namespace {

// Rows whose role no node case can show, with the reason (checked both ways below).
const std::map<std::string, std::string> kRowsWithoutNodeCase = {
    {"Pad", "its constant-mode cases give the pad value as a graph input, which placement rightly does not treat as 0, "
            "and this libonnx-testdata has no edge or reflect case"},
};

struct NodeCase {
  std::string name;
  Graph graph;
  std::vector<rt::TensorMap> inputs, outputs;  // per test_data_set
};

// The single-node cases of `op` that load, with their data.
std::vector<NodeCase> node_cases_of(const std::string& op) {
  std::vector<NodeCase> out;
  const fs::path root = fs::path(INLIERQ_ONNX_TESTDATA) / "node";
  if (!fs::exists(root)) return out;
  std::vector<fs::path> dirs;
  for (const auto& e : fs::directory_iterator(root)) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  for (const auto& dir : dirs) {
    NodeCase c;
    c.name = dir.filename().string();
    try {
      c.graph = load_node_case((dir / "model.onnx").string());
    } catch (const Error&) {
      continue;
    }
    if (c.graph.nodes.size() != 1 || c.graph.nodes[0].op_type != op || !c.graph.nodes[0].domain.empty()) continue;
    if (kKnownUnsupported.count(c.name)) continue;
    std::vector<fs::path> sets;
    for (const auto& ds : fs::directory_iterator(dir))
      if (ds.is_directory() && ds.path().filename().string().rfind("test_data_set", 0) == 0) sets.push_back(ds.path());
    std::sort(sets.begin(), sets.end());
    for (const auto& ds : sets) {
      rt::TensorMap in, outs;
      for (size_t i = 0; i < c.graph.inputs.size(); ++i)
        if (auto p = ds / ("input_" + std::to_string(i) + ".pb"); fs::exists(p)) in[c.graph.inputs[i].name] = rt::to_aten(load_tensor_pb(p.string()));
      for (size_t i = 0; i < c.graph.outputs.size(); ++i)
        if (auto p = ds / ("output_" + std::to_string(i) + ".pb"); fs::exists(p)) outs[c.graph.outputs[i].name] = rt::to_aten(load_tensor_pb(p.string()));
      c.inputs.push_back(std::move(in));
      c.outputs.push_back(std::move(outs));
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

TEST(OpTraits, EveryRowIsAnOpTheExecutorRuns) {
  std::set<std::string> seen;
  for (const auto& row : op_traits_table()) {
    EXPECT_TRUE(seen.insert(row.op_type).second) << row.op_type << " has two rows";
    EXPECT_NE(row.roles, 0u) << row.op_type << " has a row but no role";
    EXPECT_TRUE(op_supported(row.op_type)) << row.op_type << " has a quantization role but the executor cannot run it";
    EXPECT_EQ(row.has(kCompute), row.macs != MacRule::None) << row.op_type << ": compute rows, and only they, count MACs";
    EXPECT_EQ(row.has(kCompute), row.weight_axis != WeightAxis::None) << row.op_type << ": compute rows, and only they, have a weight axis";
  }
}

// A grid-preserving op must output only values of its data inputs: on every node case where placement treats the
// node as grid-preserving, each float output value occurs among the data inputs' values (exact bits). ONNX's
// reference outputs are the evidence, not our kernels.
TEST(OpTraits, GridPreservingRowsOutputOnlyValuesOfTheirDataInputs) {
  if (!fs::exists(fs::path(INLIERQ_ONNX_TESTDATA) / "node")) GTEST_SKIP() << "libonnx-testdata not installed";
  for (const auto& row : op_traits_table()) {
    if (!row.has(kGridPreserving)) continue;
    int checked = 0;
    for (const auto& c : node_cases_of(row.op_type)) {
      const Node& n = c.graph.nodes[0];
      if (!quant::is_passthrough(n, c.graph)) continue;
      for (size_t s = 0; s < c.inputs.size(); ++s) {
        std::vector<float> values;
        bool float_data = true;
        for (const auto& v : quant::passthrough_data_inputs(n)) {
          auto it = c.inputs[s].find(v);
          if (it == c.inputs[s].end() || it->second.scalar_type() != at::kFloat) { float_data = false; break; }
          const at::Tensor x = it->second.contiguous();
          values.insert(values.end(), x.data_ptr<float>(), x.data_ptr<float>() + x.numel());
        }
        if (!float_data || values.empty()) continue;
        std::sort(values.begin(), values.end());
        for (const auto& [name, y] : c.outputs[s]) {
          if (y.scalar_type() != at::kFloat) continue;  // e.g. MaxPool's indices
          const at::Tensor yc = y.contiguous();
          int64_t foreign = 0;
          for (int64_t i = 0; i < yc.numel(); ++i) foreign += !std::binary_search(values.begin(), values.end(), yc.data_ptr<float>()[i]);
          EXPECT_EQ(foreign, 0) << c.name << ": " << foreign << " of " << yc.numel() << " values of output '" << name
                                << "' are not values of the data inputs, yet " << row.op_type << " is grid-preserving";
          ++checked;
        }
      }
    }
    const bool excused = kRowsWithoutNodeCase.count(row.op_type) > 0;
    if (checked == 0 && !excused)
      ADD_FAILURE() << row.op_type << " is grid-preserving but no node case shows it; add one or list it in kRowsWithoutNodeCase";
    if (checked > 0 && excused) ADD_FAILURE() << row.op_type << " is listed in kRowsWithoutNodeCase but a case shows it";
  }
}

// A compute row's weight axis is the output channels, and its MACs are the products summed per output element,
// counted from the node's input and output shapes: on every node case with the weight made an initializer.
TEST(OpTraits, ComputeRowsWeightAxisAndMacsMatchTheNodeCases) {
  if (!fs::exists(fs::path(INLIERQ_ONNX_TESTDATA) / "node")) GTEST_SKIP() << "libonnx-testdata not installed";
  for (const auto& row : op_traits_table()) {
    if (!row.has(kCompute)) continue;
    int checked = 0;
    for (const auto& c : node_cases_of(row.op_type)) {
      if (c.inputs.empty() || c.graph.inputs.size() < 2) continue;
      Graph g = c.graph;
      const Node& n = g.nodes[0];
      const auto& in0 = c.inputs[0];
      if (!in0.count(n.inputs[0]) || !in0.count(n.inputs[1]) || c.outputs[0].empty()) continue;
      const at::Tensor x = in0.at(n.inputs[0]), w = in0.at(n.inputs[1]), y = c.outputs[0].begin()->second;
      if (w.scalar_type() != at::kFloat || w.dim() < 2) continue;
      g.initializers[n.inputs[1]] = rt::from_aten(w.contiguous());
      g.inputs.erase(std::remove_if(g.inputs.begin(), g.inputs.end(), [&](const ValueInfo& v) { return v.name == n.inputs[1]; }),
                     g.inputs.end());
      const int axis = weight_channel_axis(n, g);
      ASSERT_GE(axis, 0) << c.name;
      const int64_t group = n.get_int("group", 1);
      int64_t out_channels = 0, macs = 0;
      if (row.op_type == "Conv") {
        out_channels = y.size(1);
        macs = y.numel() / y.size(0) * (x.size(1) / group) * (w.numel() / (w.size(0) * w.size(1)));
      } else if (row.op_type == "ConvTranspose") {
        out_channels = y.size(1);
        macs = x.numel() / x.size(0) * (y.size(1) / group) * (w.numel() / (w.size(0) * w.size(1)));
      } else if (row.op_type == "Gemm") {
        out_channels = y.size(1);
        macs = y.numel() * x.size(n.get_int("transA", 0) ? 0 : 1);
      } else {
        out_channels = y.size(-1);
        macs = y.numel() / (y.dim() > 2 ? y.size(0) : 1) * x.size(-1);
      }
      const int64_t along_axis = w.size(axis) * (row.op_type == "ConvTranspose" ? group : 1);
      EXPECT_EQ(along_axis, out_channels) << c.name << ": weight axis " << axis << " is not the output channels";
      quant::PlacementOptions po;
      po.quantize_head = true;
      const auto plan = quant::derive_plan(g, po);
      ASSERT_EQ(plan.weights.size(), 1u) << c.name << ": placement does not quantize the weight";
      EXPECT_EQ(plan.weights[0].axis, axis) << c.name;
      if (row.op_type != "MatMul" || y.dim() <= 2) EXPECT_EQ(node_macs(g, n), macs) << c.name;
      ++checked;
    }
    EXPECT_GT(checked, 0) << row.op_type << " is a compute row but no node case checks it";
  }
}
