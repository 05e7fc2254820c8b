// Bad input to the loader and the executor: every case must end in one inlierq::Error whose message
// names the problem (file, node, op or tensor), never in a crash or a foreign exception type.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "inlierq/error.h"
#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"
#include "runtime/executor.h"
#include "test_helpers.h"

namespace fs = std::filesystem;
using namespace inlierq;

namespace {

// Runs f, requires an inlierq::Error and returns its message (empty string when the check failed).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected inlierq::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected inlierq::Error, nothing was thrown";
  return "";
}

#define EXPECT_MSG_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("inlierq_loader_" + std::to_string(::getpid()))) {
    fs::create_directories(path_);
  }
  ~TempDir() { std::error_code ec; fs::remove_all(path_, ec); }
  std::string file(const std::string& name, const std::string& content) const {
    std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }

 private:
  fs::path path_;
};

void add_value(onnx::ValueInfoProto* v, const std::string& name, std::vector<int64_t> shape) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (auto d : shape) tt->mutable_shape()->add_dim()->set_dim_value(d);
}

// x[1,2,4,4] -> Relu 'relu0' -> y, opset 13: the base every malformed variant below edits.
onnx::ModelProto tiny_model() {
  onnx::ModelProto m;
  m.set_ir_version(7);
  m.set_producer_name("test");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("tiny");
  add_value(g->add_input(), "x", {1, 2, 4, 4});
  add_value(g->add_output(), "y", {1, 2, 4, 4});
  auto* n = g->add_node();
  n->set_name("relu0");
  n->set_op_type("Relu");
  n->add_input("x");
  n->add_output("y");
  return m;
}

std::string bytes_of(const onnx::ModelProto& m) {
  std::string s;
  m.SerializeToString(&s);
  return s;
}

}  // namespace

TEST(LoaderErrors, MissingFile) {
  std::string msg = error_of([] { load_onnx("/nonexistent/dir/missing_model.onnx"); });
  EXPECT_MSG_HAS(msg, "missing_model.onnx");
  EXPECT_MSG_HAS(msg, "cannot open");
}

TEST(LoaderErrors, Directory) {
  TempDir tmp;
  std::string dir = fs::path(tmp.file("x", "")).parent_path().string();
  std::string msg = error_of([&] { load_onnx(dir); });
  EXPECT_MSG_HAS(msg, dir);
}

TEST(LoaderErrors, EmptyFile) {
  TempDir tmp;
  std::string p = tmp.file("empty.onnx", "");
  std::string msg = error_of([&] { load_onnx(p); });
  EXPECT_MSG_HAS(msg, "empty.onnx");
  EXPECT_MSG_HAS(msg, "not a valid ONNX model");
}

TEST(LoaderErrors, TruncatedModel) {
  std::string bytes = read_bytes(test::model_path("yolox_nano.onnx"));
  ASSERT_GT(bytes.size(), 1000u);
  std::string msg = error_of([&] { load_onnx_bytes(bytes.substr(0, bytes.size() / 2), "yolox_half.onnx"); });
  EXPECT_MSG_HAS(msg, "yolox_half.onnx");
  EXPECT_MSG_HAS(msg, "truncated");
}

TEST(LoaderErrors, GarbageBytes) {
  std::string garbage;
  uint32_t x = 12345;
  for (int i = 0; i < 4096; ++i) garbage.push_back(static_cast<char>((x = x * 1664525u + 1013904223u) >> 24));
  std::string msg = error_of([&] { load_onnx_bytes(garbage, "garbage.bin"); });
  EXPECT_MSG_HAS(msg, "garbage.bin");
  EXPECT_MSG_HAS(msg, "not a valid ONNX model");
  // Text parses as protobuf surprisingly often; it must still be rejected.
  msg = error_of([&] { load_onnx_bytes("this is not an onnx model\n", "text.onnx"); });
  EXPECT_MSG_HAS(msg, "text.onnx");
}

TEST(LoaderErrors, ValidTinyModelLoads) {
  Graph g = load_onnx_bytes(bytes_of(tiny_model()), "tiny.onnx");
  ASSERT_EQ(g.nodes.size(), 1u);
  EXPECT_EQ(g.opset, 13);
}

TEST(LoaderErrors, UnknownDefaultDomainOp) {
  auto m = tiny_model();
  m.mutable_graph()->mutable_node(0)->set_op_type("FrobnicateX");
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "frob.onnx"); });
  EXPECT_MSG_HAS(msg, "frob.onnx");
  EXPECT_MSG_HAS(msg, "FrobnicateX");
}

// A valid ONNX op the executor lacks, and a custom-domain op: both load (inspect must be able to list
// them) but the summary flags them and the executor refuses with node name and op.
TEST(LoaderErrors, UnsupportedOpsNamedByExecutor) {
  auto m = tiny_model();
  auto* op = m.add_opset_import();
  op->set_domain("com.example");
  op->set_version(1);
  auto* n = m.mutable_graph()->mutable_node(0);
  n->set_name("fancy0");
  n->set_op_type("FancyOp");
  n->set_domain("com.example");
  Graph g = load_onnx_bytes(bytes_of(m), "custom.onnx");
  ModelSummary s = summarize(g);
  ASSERT_EQ(s.unsupported.size(), 1u);
  EXPECT_EQ(s.unsupported[0]->name, "fancy0");
  std::string msg = error_of([&] { rt::Executor ex(g); });
  EXPECT_MSG_HAS(msg, "unsupported op");
  EXPECT_MSG_HAS(msg, "fancy0");
  EXPECT_MSG_HAS(msg, "FancyOp");

  // Round trip through save_onnx/load_onnx of an edited Graph with a standard but unimplemented op.
  Graph g2 = load_onnx_bytes(bytes_of(tiny_model()), "tiny.onnx");
  g2.nodes[0].name = "nms0";
  g2.nodes[0].op_type = "NonMaxSuppression";
  g2.nodes[0].inputs = {"x", "x"};
  TempDir tmp;
  std::string p = tmp.file("nms.onnx", "");
  save_onnx(g2, p);
  Graph g3 = load_onnx(p, LoadOptions{false, false});
  msg = error_of([&] { rt::Executor ex(g3); });
  EXPECT_MSG_HAS(msg, "nms0");
  EXPECT_MSG_HAS(msg, "NonMaxSuppression");
}

TEST(LoaderErrors, DanglingInput) {
  auto m = tiny_model();
  m.mutable_graph()->mutable_node(0)->set_input(0, "nowhere");
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "dangling.onnx"); });
  EXPECT_MSG_HAS(msg, "dangling.onnx");
  EXPECT_MSG_HAS(msg, "nowhere");
  // Without libonnx's checker our own topological sort must catch it and name the node.
  msg = error_of([&] { load_onnx_bytes(bytes_of(m), "dangling.onnx", LoadOptions{false, false}); });
  EXPECT_MSG_HAS(msg, "nowhere");
  EXPECT_MSG_HAS(msg, "relu0");
}

TEST(LoaderErrors, OutputNeverProduced) {
  auto m = tiny_model();
  m.mutable_graph()->mutable_output(0)->set_name("ghost");
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "ghost.onnx", LoadOptions{false, false}); });
  EXPECT_MSG_HAS(msg, "ghost");
}

TEST(LoaderErrors, CycleAndDuplicateOutputs) {
  auto m = tiny_model();
  auto* g = m.mutable_graph();
  g->mutable_node(0)->set_input(0, "z");
  auto* n = g->add_node();
  n->set_name("relu1");
  n->set_op_type("Relu");
  n->add_input("y");
  n->add_output("z");
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "cycle.onnx", LoadOptions{false, false}); });
  EXPECT_MSG_HAS(msg, "cycle");
  n->set_output(0, "y");
  msg = error_of([&] { load_onnx_bytes(bytes_of(m), "dup.onnx", LoadOptions{false, false}); });
  EXPECT_MSG_HAS(msg, "produced twice");
}

TEST(LoaderErrors, OpsetOutOfRange) {
  auto m = tiny_model();
  m.mutable_opset_import(0)->set_version(18);
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "opset18.onnx"); });
  EXPECT_MSG_HAS(msg, "opset18.onnx");
  EXPECT_MSG_HAS(msg, "opset 18 is not supported");
  m.mutable_opset_import(0)->set_version(3);
  msg = error_of([&] { load_onnx_bytes(bytes_of(m), "opset3.onnx"); });
  EXPECT_MSG_HAS(msg, "opset 3 is not supported");
  m.clear_opset_import();
  msg = error_of([&] { load_onnx_bytes(bytes_of(m), "noopset.onnx"); });
  EXPECT_MSG_HAS(msg, "no default-domain opset");
}

TEST(LoaderErrors, InitializerSizeMismatch) {
  auto m = tiny_model();
  auto* g = m.mutable_graph();
  auto* w = g->add_initializer();
  w->set_name("bias_w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : {1, 2, 4, 4}) w->add_dims(d);
  w->set_raw_data(std::string(12, '\0'));  // needs 128 bytes
  auto* n = g->add_node();
  n->set_name("add0");
  n->set_op_type("Add");
  n->add_input("y");
  n->add_input("bias_w");
  n->add_output("z");
  g->mutable_output(0)->set_name("z");
  for (bool check : {true, false}) {
    std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "badinit.onnx", LoadOptions{check, check}); });
    EXPECT_MSG_HAS(msg, "badinit.onnx");
    EXPECT_MSG_HAS(msg, "bias_w");
  }
  // Typed-field storage with the wrong count, and a negative dimension.
  w->clear_raw_data();
  for (int i = 0; i < 5; ++i) w->add_float_data(1.f);
  EXPECT_MSG_HAS(error_of([&] { load_onnx_bytes(bytes_of(m), "badinit.onnx"); }), "bias_w");
  w->clear_float_data();
  w->set_dims(0, -3);
  w->set_raw_data(std::string(96, '\0'));
  EXPECT_MSG_HAS(error_of([&] { load_onnx_bytes(bytes_of(m), "negdim.onnx"); }), "bias_w");
  // Dimensions whose product overflows int64.
  w->clear_dims();
  for (int i = 0; i < 4; ++i) w->add_dims(int64_t(1) << 20);
  EXPECT_MSG_HAS(error_of([&] { load_onnx_bytes(bytes_of(m), "huge.onnx"); }), "bias_w");
}

TEST(LoaderErrors, ExternalDataAndStringTensors) {
  auto m = tiny_model();
  auto* w = m.mutable_graph()->add_initializer();
  w->set_name("ext_w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(4);
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* kv = w->add_external_data();
  kv->set_key("location");
  kv->set_value("weights.bin");
  std::string msg = error_of([&] { load_onnx_bytes(bytes_of(m), "ext.onnx", LoadOptions{false, false}); });
  EXPECT_MSG_HAS(msg, "ext_w");
  EXPECT_MSG_HAS(msg, "external");
}

TEST(LoaderErrors, BadTensorPbFile) {
  TempDir tmp;
  EXPECT_MSG_HAS(error_of([] { load_tensor_pb("/nonexistent/t.pb"); }), "t.pb");
  std::string p = tmp.file("t.pb", std::string("\xff\xff\xff\xff\xff", 5));
  EXPECT_MSG_HAS(error_of([&] { load_tensor_pb(p); }), "t.pb");
}

// --- executor input validation -------------------------------------------------------------

namespace {

// x[1,2,4,4] -> Relu -> Sigmoid -> y, built directly as IR.
Graph tiny_graph() {
  Graph g;
  g.opset = 13;
  ValueInfo x{"x", DType::Float, true, {{1, ""}, {2, ""}, {4, ""}, {4, ""}}};
  ValueInfo y{"y", DType::Float, true, {{1, ""}, {2, ""}, {4, ""}, {4, ""}}};
  g.inputs = {x};
  g.outputs = {y};
  Node a;
  a.name = "relu0";
  a.op_type = "Relu";
  a.inputs = {"x"};
  a.outputs = {"h"};
  Node b;
  b.name = "sig0";
  b.op_type = "Sigmoid";
  b.inputs = {"h"};
  b.outputs = {"y"};
  g.nodes = {a, b};
  return g;
}

}  // namespace

TEST(ExecutorInputErrors, AcceptsValidInput) {
  rt::Executor ex(tiny_graph());
  auto out = ex.run({{"x", at::randn({1, 2, 4, 4})}});
  EXPECT_EQ(out.at("y").sizes().vec(), (std::vector<int64_t>{1, 2, 4, 4}));
  // Batch 1 exports accept any batch size.
  EXPECT_EQ(ex.run({{"x", at::randn({3, 2, 4, 4})}}).at("y").size(0), 3);
}

TEST(ExecutorInputErrors, WrongName) {
  rt::Executor ex(tiny_graph());
  std::string msg = error_of([&] { ex.run({{"images", at::randn({1, 2, 4, 4})}}); });
  EXPECT_MSG_HAS(msg, "unknown input 'images'");
  EXPECT_MSG_HAS(msg, "'x'");
  msg = error_of([&] { ex.run({}); });
  EXPECT_MSG_HAS(msg, "missing input 'x'");
}

TEST(ExecutorInputErrors, WrongShape) {
  rt::Executor ex(tiny_graph());
  std::string msg = error_of([&] { ex.run({{"x", at::randn({2, 4, 4})}}); });
  EXPECT_MSG_HAS(msg, "input 'x' has shape [2,4,4]");
  EXPECT_MSG_HAS(msg, "[1,2,4,4]");
  msg = error_of([&] { ex.run({{"x", at::randn({1, 3, 4, 4})}}); });
  EXPECT_MSG_HAS(msg, "input 'x' has shape [1,3,4,4]");
  msg = error_of([&] { ex.run({{"x", at::randn({1, 2, 4, 5})}}); });
  EXPECT_MSG_HAS(msg, "[1,2,4,5]");
}

TEST(ExecutorInputErrors, WrongDtype) {
  rt::Executor ex(tiny_graph());
  std::string msg = error_of([&] { ex.run({{"x", at::ones({1, 2, 4, 4}, at::kLong)}}); });
  EXPECT_MSG_HAS(msg, "input 'x' has type int64");
  EXPECT_MSG_HAS(msg, "float32");
  msg = error_of([&] { ex.run({{"x", at::ones({1, 2, 4, 4}, at::kDouble)}}); });
  EXPECT_MSG_HAS(msg, "float64");
  msg = error_of([&] { ex.run({{"x", at::Tensor()}}); });
  EXPECT_MSG_HAS(msg, "input 'x' is empty");
}

TEST(ExecutorInputErrors, NonFinite) {
  rt::Executor ex(tiny_graph());
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    at::Tensor x = at::zeros({1, 2, 4, 4});
    x[0][1][2][3] = bad;
    std::string msg = error_of([&] { ex.run({{"x", x}}); });
    EXPECT_MSG_HAS(msg, "input 'x' contains NaN or Inf");
  }
}

// The torch-free Session takes raw TensorData, whose bytes may disagree with its shape.
TEST(ExecutorInputErrors, SessionRejectsInconsistentTensorData) {
  Session s(tiny_graph());
  TensorData t;
  t.dtype = DType::Float;
  t.shape = {1, 2, 4, 4};
  for (size_t n : {8, 512}) {  // needs 128; more would overrun the tensor
    t.bytes.assign(n, 0);
    EXPECT_MSG_HAS(error_of([&] { s.run({{"x", t}}); }), "input 'x'");
  }
  std::string msg;
  t.dtype = DType::Int64;
  t.bytes.assign(256, 0);
  msg = error_of([&] { s.run({{"x", t}}); });
  EXPECT_MSG_HAS(msg, "int64");
  t.dtype = DType::String;
  msg = error_of([&] { s.run({{"x", t}}); });
  EXPECT_MSG_HAS(msg, "'x'");
}

TEST(ExecutorInputErrors, BadGraphStructure) {
  Graph g = tiny_graph();
  g.nodes[0].op_type = "NoSuchOp";
  std::string msg = error_of([&] { rt::Executor ex(g); });
  EXPECT_MSG_HAS(msg, "node 'relu0' (NoSuchOp)");
  // A kernel failure at run time names the node and the input shapes.
  Graph c = tiny_graph();
  Node conv;
  conv.name = "conv0";
  conv.op_type = "Conv";
  conv.inputs = {"y", "w"};
  conv.outputs = {"z"};
  c.nodes.push_back(conv);
  c.outputs[0].name = "z";
  c.outputs[0].has_shape = false;
  TensorData w;
  w.dtype = DType::Float;
  w.shape = {4, 5, 3, 3};  // 5 input channels; x has 2
  w.bytes.assign(4 * 5 * 3 * 3 * 4, 0);
  c.initializers["w"] = w;
  rt::Executor ex(c);
  msg = error_of([&] { ex.run({{"x", at::randn({1, 2, 4, 4})}}); });
  EXPECT_MSG_HAS(msg, "conv0");
}
