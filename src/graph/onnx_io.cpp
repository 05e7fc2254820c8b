// ONNX <-> IR conversion. libonnx does the parsing, checking and shape inference; this file turns the
// protobuf into plain structs and back, and turns every failure into an inlierq::Error naming the
// file, node or tensor involved.
#include "inlierq/onnx_io.h"

#include <google/protobuf/io/coded_stream.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <onnx/version_converter/convert.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_map>

#include "inlierq/error.h"
#include "util/atomic_file.h"

namespace inlierq {
namespace {

constexpr int64_t kMinOpset = 7;
constexpr int64_t kMaxOpset = 17;

template <typename Src>
void copy_converted(TensorData& t, const Src& src, int64_t n) {
  const size_t es = dtype_size(t.dtype);
  t.bytes.resize(static_cast<size_t>(n) * es);
  for (int64_t i = 0; i < n; ++i) {
    switch (t.dtype) {
      case DType::Float: { float v = static_cast<float>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::Double: { double v = static_cast<double>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::Int64: { int64_t v = static_cast<int64_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::UInt64: { uint64_t v = static_cast<uint64_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::Int32: { int32_t v = static_cast<int32_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::UInt32: { uint32_t v = static_cast<uint32_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::Int16: { int16_t v = static_cast<int16_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::UInt16: case DType::Float16: case DType::BFloat16: { uint16_t v = static_cast<uint16_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::Int8: { int8_t v = static_cast<int8_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      case DType::UInt8: case DType::Bool: { uint8_t v = static_cast<uint8_t>(src.Get(i)); std::memcpy(&t.bytes[i * es], &v, es); break; }
      default: break;
    }
  }
}

TensorData tensor_from_proto(const onnx::TensorProto& p, const std::string& what) {
  TensorData t;
  t.dtype = static_cast<DType>(p.data_type());
  if (t.dtype == DType::String || dtype_size(t.dtype) == 0)
    throw Error(what + ": unsupported tensor data type " + std::to_string(p.data_type()));
  if (p.data_location() == onnx::TensorProto::EXTERNAL)
    throw Error(what + ": external tensor data is not supported; re-save the model with weights inlined");
  int64_t n = 1;
  for (auto d : p.dims()) {
    if (d < 0 || (d > 0 && n > std::numeric_limits<int64_t>::max() / d / 16))
      throw Error(what + ": invalid dimension " + std::to_string(d));
    t.shape.push_back(d);
    n *= d;
  }
  const size_t es = dtype_size(t.dtype);
  if (p.has_raw_data()) {
    if (p.raw_data().size() != static_cast<size_t>(n) * es)
      throw Error(what + ": raw data holds " + std::to_string(p.raw_data().size()) + " bytes, shape " +
                  shape_str(t.shape) + " of " + dtype_name(t.dtype) + " needs " + std::to_string(n * es));
    t.bytes.assign(p.raw_data().begin(), p.raw_data().end());
    return t;
  }
  auto check = [&](int have) {
    if (have != n)
      throw Error(what + ": holds " + std::to_string(have) + " values but shape " + shape_str(t.shape) +
                  " needs " + std::to_string(n));
  };
  switch (t.dtype) {
    case DType::Float: check(p.float_data_size()); copy_converted(t, p.float_data(), n); break;
    case DType::Double: check(p.double_data_size()); copy_converted(t, p.double_data(), n); break;
    case DType::Int64: check(p.int64_data_size()); copy_converted(t, p.int64_data(), n); break;
    case DType::UInt32: case DType::UInt64: check(p.uint64_data_size()); copy_converted(t, p.uint64_data(), n); break;
    default: check(p.int32_data_size()); copy_converted(t, p.int32_data(), n); break;
  }
  return t;
}

void tensor_to_proto(const TensorData& t, const std::string& name, onnx::TensorProto* p) {
  p->set_name(name);
  p->set_data_type(static_cast<int32_t>(t.dtype));
  for (auto d : t.shape) p->add_dims(d);
  p->set_raw_data(std::string(t.bytes.begin(), t.bytes.end()));
}

ValueInfo value_from_proto(const onnx::ValueInfoProto& v) {
  ValueInfo vi;
  vi.name = v.name();
  if (v.type().has_tensor_type()) {
    const auto& tt = v.type().tensor_type();
    vi.dtype = static_cast<DType>(tt.elem_type());
    if (tt.has_shape()) {
      vi.has_shape = true;
      for (const auto& d : tt.shape().dim()) {
        Dim dim;
        if (d.has_dim_value()) dim.value = d.dim_value();
        if (d.has_dim_param()) dim.param = d.dim_param();
        vi.shape.push_back(dim);
      }
    }
  }
  return vi;
}

void value_to_proto(const ValueInfo& vi, onnx::ValueInfoProto* v) {
  v->set_name(vi.name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(static_cast<int32_t>(vi.dtype));
  if (vi.has_shape) {
    auto* sh = tt->mutable_shape();
    for (const auto& d : vi.shape) {
      auto* pd = sh->add_dim();
      if (d.value >= 0) pd->set_dim_value(d.value);
      else if (!d.param.empty()) pd->set_dim_param(d.param);
    }
  }
}

Attribute attr_from_proto(const onnx::AttributeProto& a, const std::string& what) {
  Attribute r;
  using A = onnx::AttributeProto;
  switch (a.type()) {
    case A::FLOAT: r.kind = Attribute::Kind::Float; r.f = a.f(); break;
    case A::INT: r.kind = Attribute::Kind::Int; r.i = a.i(); break;
    case A::STRING: r.kind = Attribute::Kind::String; r.s = a.s(); break;
    case A::TENSOR: r.kind = Attribute::Kind::Tensor; r.t = tensor_from_proto(a.t(), what + " attribute '" + a.name() + "'"); break;
    case A::FLOATS: r.kind = Attribute::Kind::Floats; r.floats.assign(a.floats().begin(), a.floats().end()); break;
    case A::INTS: r.kind = Attribute::Kind::Ints; r.ints.assign(a.ints().begin(), a.ints().end()); break;
    case A::STRINGS: r.kind = Attribute::Kind::Strings; r.strings.assign(a.strings().begin(), a.strings().end()); break;
    case A::GRAPH: case A::GRAPHS: r.kind = Attribute::Kind::Graph; break;  // subgraph ops are reported as unsupported
    default: break;
  }
  return r;
}

void attr_to_proto(const std::string& name, const Attribute& a, onnx::AttributeProto* p) {
  using A = onnx::AttributeProto;
  p->set_name(name);
  switch (a.kind) {
    case Attribute::Kind::Float: p->set_type(A::FLOAT); p->set_f(a.f); break;
    case Attribute::Kind::Int: p->set_type(A::INT); p->set_i(a.i); break;
    case Attribute::Kind::String: p->set_type(A::STRING); p->set_s(a.s); break;
    case Attribute::Kind::Tensor: p->set_type(A::TENSOR); tensor_to_proto(a.t, "", p->mutable_t()); break;
    case Attribute::Kind::Floats: p->set_type(A::FLOATS); for (auto v : a.floats) p->add_floats(v); break;
    case Attribute::Kind::Ints: p->set_type(A::INTS); for (auto v : a.ints) p->add_ints(v); break;
    case Attribute::Kind::Strings: p->set_type(A::STRINGS); for (auto& v : a.strings) p->add_strings(v); break;
    default: throw Error("cannot export attribute '" + name + "' of unsupported kind");
  }
}

// A Constant node's value as a tensor, whichever attribute form it uses.
TensorData constant_value(const Node& n) {
  auto it = n.attrs.begin();
  if (n.attrs.size() != 1) throw Error(n.describe() + ": expected exactly one value attribute");
  const auto& [key, a] = *it;
  TensorData t;
  auto put = [&](DType dt, const void* src, size_t count, std::vector<int64_t> shape) {
    t.dtype = dt; t.shape = std::move(shape);
    t.bytes.resize(count * dtype_size(dt));
    if (count) std::memcpy(t.bytes.data(), src, t.bytes.size());
  };
  if (key == "value" && a.kind == Attribute::Kind::Tensor) return a.t;
  if (key == "value_float" && a.kind == Attribute::Kind::Float) put(DType::Float, &a.f, 1, {});
  else if (key == "value_int" && a.kind == Attribute::Kind::Int) put(DType::Int64, &a.i, 1, {});
  else if (key == "value_floats" && a.kind == Attribute::Kind::Floats)
    put(DType::Float, a.floats.data(), a.floats.size(), {static_cast<int64_t>(a.floats.size())});
  else if (key == "value_ints" && a.kind == Attribute::Kind::Ints)
    put(DType::Int64, a.ints.data(), a.ints.size(), {static_cast<int64_t>(a.ints.size())});
  else throw Error(n.describe() + ": unsupported Constant attribute '" + key + "'");
  return t;
}

// Kahn's algorithm; keeps the file order among ready nodes so that names and reports stay stable.
std::vector<Node> topo_sort(std::vector<Node> nodes, const std::set<std::string>& available_init,
                            const std::string& origin) {
  std::unordered_map<std::string, size_t> producer;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (auto& o : nodes[i].outputs)
      if (!o.empty()) {
        if (producer.count(o) || available_init.count(o))
          throw Error(origin + ": value '" + o + "' is produced twice (second time by " + nodes[i].describe() + ")");
        producer[o] = i;
      }
  std::vector<int> pending(nodes.size(), 0);
  std::vector<std::vector<size_t>> consumers(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    std::set<size_t> deps;
    for (auto& in : nodes[i].inputs) {
      if (in.empty() || available_init.count(in)) continue;
      auto it = producer.find(in);
      if (it == producer.end())
        throw Error(origin + ": " + nodes[i].describe() + " reads '" + in + "', which no node, input or initializer provides");
      deps.insert(it->second);
    }
    pending[i] = static_cast<int>(deps.size());
    for (auto d : deps) consumers[d].push_back(i);
  }
  std::vector<Node> out;
  out.reserve(nodes.size());
  std::set<size_t> ready;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (pending[i] == 0) ready.insert(i);
  while (!ready.empty()) {
    size_t i = *ready.begin();
    ready.erase(ready.begin());
    for (auto c : consumers[i])
      if (--pending[c] == 0) ready.insert(c);
    out.push_back(std::move(nodes[i]));
  }
  if (out.size() != nodes.size()) throw Error(origin + ": the graph contains a cycle");
  return out;
}

// libonnx 1.12's checker does not look at attribute values, and its shape inference for Conv, ConvInteger,
// QLinearConv and the pooling ops divides by `strides`: a 0 there kills the process with SIGFPE (found by
// tests/test_fuzz_loader.cpp). These attributes must be positive wherever ONNX defines them, so they are
// checked here, subgraphs included, before libonnx sees the model.
void check_positive_attributes(const onnx::GraphProto& g, const std::string& origin) {
  static const std::set<std::string> kPositive = {"strides", "dilations", "kernel_shape", "blocksize", "group"};
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& n = g.node(i);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) check_positive_attributes(a.g(), origin);
      for (const auto& sub : a.graphs()) check_positive_attributes(sub, origin);
      if (!(n.domain().empty() || n.domain() == "ai.onnx") || !kPositive.count(a.name())) continue;
      bool ok = true;
      for (auto v : a.ints()) ok &= v > 0;
      if (a.type() == onnx::AttributeProto::INT) ok &= a.i() > 0;
      if (!ok)
        throw Error(origin + ": node '" + (n.name().empty() ? n.op_type() + "_" + std::to_string(i) : n.name()) + "' (" + n.op_type() +
                    "): attribute '" + a.name() + "' must hold positive values");
    }
  }
}

Graph graph_from_model(onnx::ModelProto& model, const std::string& origin, const LoadOptions& opts) {
  Graph g;
  for (const auto& op : model.opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx") g.opset = op.version();
  if (g.opset == 0) throw Error(origin + ": model declares no default-domain opset");
  if (g.opset < kMinOpset || g.opset > kMaxOpset)
    throw Error(origin + ": opset " + std::to_string(g.opset) + " is not supported (supported: " +
                std::to_string(kMinOpset) + ".." + std::to_string(kMaxOpset) + ")");
  // Initializers are converted (and their sizes validated) first: the messages name the tensor, and
  // shape inference never reads a tensor whose data disagrees with its shape.
  const auto& gp = model.graph();
  std::set<std::string> provided;
  for (const auto& init : gp.initializer()) {
    if (init.name().empty()) throw Error(origin + ": an initializer has no name");
    g.initializers[init.name()] = tensor_from_proto(init, origin + ": initializer '" + init.name() + "'");
    provided.insert(init.name());
  }
  check_positive_attributes(gp, origin);
  if (opts.run_checker) {
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      throw Error(origin + ": ONNX checker rejected the model: " + e.what());
    }
  }
  if (opts.infer_shapes) {
    try {
      onnx::shape_inference::InferShapes(model);
    } catch (const std::exception& e) {
      throw Error(origin + ": shape inference failed: " + e.what());
    }
  }
  g.name = gp.name();
  g.producer = model.producer_name();
  for (const auto& in : gp.input()) {
    if (g.initializers.count(in.name())) continue;  // exporters of opset < 9 list weights as inputs
    g.inputs.push_back(value_from_proto(in));
    provided.insert(in.name());
  }
  for (const auto& out : gp.output()) g.outputs.push_back(value_from_proto(out));
  for (const auto& vi : gp.value_info()) g.value_info[vi.name()] = value_from_proto(vi);

  std::vector<Node> nodes;
  std::set<std::string> used_names;
  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    Node n;
    n.name = np.name().empty() ? np.op_type() + "_" + std::to_string(i) : np.name();
    while (used_names.count(n.name)) n.name += "_";
    used_names.insert(n.name);
    n.op_type = np.op_type();
    n.domain = np.domain() == "ai.onnx" ? "" : np.domain();
    n.inputs.assign(np.input().begin(), np.input().end());
    n.outputs.assign(np.output().begin(), np.output().end());
    for (const auto& a : np.attribute()) n.attrs[a.name()] = attr_from_proto(a, origin + ": " + n.describe());
    if (n.op_type == "Constant" && n.domain.empty()) {
      if (n.outputs.size() != 1) throw Error(origin + ": " + n.describe() + " must have one output");
      g.initializers[n.outputs[0]] = constant_value(n);
      provided.insert(n.outputs[0]);
      continue;
    }
    nodes.push_back(std::move(n));
  }
  g.nodes = topo_sort(std::move(nodes), provided, origin);
  for (const auto& o : g.outputs) {
    bool found = provided.count(o.name) != 0;
    for (const auto& n : g.nodes)
      for (const auto& no : n.outputs) found |= no == o.name;
    if (!found) throw Error(origin + ": graph output '" + o.name + "' is never produced");
  }
  return g;
}

}  // namespace

Graph load_onnx_bytes(const std::string& bytes, const std::string& origin, const LoadOptions& opts) {
  onnx::ModelProto model;
  google::protobuf::io::CodedInputStream stream(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                static_cast<int>(bytes.size()));
  stream.SetTotalBytesLimit(std::numeric_limits<int>::max());
  if (bytes.empty() || !model.ParseFromCodedStream(&stream) || !stream.ConsumedEntireMessage())
    throw Error(origin + ": not a valid ONNX model (protobuf parsing failed; is the file truncated or not ONNX?)");
  if (!model.has_graph() || model.graph().node_size() == 0)
    throw Error(origin + ": not a valid ONNX model (it has no graph nodes)");
  return graph_from_model(model, origin, opts);
}

Graph load_onnx(const std::string& path, const LoadOptions& opts) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open model file '" + path + "': " + std::strerror(errno));
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error("'" + path + "' is a directory, not an ONNX model file");
  std::ostringstream ss;
  ss << f.rdbuf();
  return load_onnx_bytes(ss.str(), path, opts);
}

namespace {
onnx::ModelProto model_from_graph(const Graph& g, int64_t opset_override) {
  onnx::ModelProto model;
  model.set_ir_version(7);
  model.set_producer_name("inlierq");
  auto* op = model.add_opset_import();
  op->set_domain("");
  op->set_version(opset_override ? opset_override : g.opset);
  auto* gp = model.mutable_graph();
  gp->set_name(g.name.empty() ? "inlierq" : g.name);
  for (const auto& [name, t] : g.initializers) tensor_to_proto(t, name, gp->add_initializer());
  for (const auto& v : g.inputs) value_to_proto(v, gp->add_input());
  for (const auto& v : g.outputs) value_to_proto(v, gp->add_output());
  // Inferred shapes travel along: ONNX's version converter needs them (e.g. for Softmax 12 → 13).
  for (const auto& [name, v] : g.value_info) value_to_proto(v, gp->add_value_info());
  for (const auto& n : g.nodes) {
    auto* np = gp->add_node();
    np->set_name(n.name);
    np->set_op_type(n.op_type);
    if (!n.domain.empty()) np->set_domain(n.domain);
    for (auto& i : n.inputs) np->add_input(i);
    for (auto& o : n.outputs) np->add_output(o);
    for (const auto& [k, a] : n.attrs) attr_to_proto(k, a, np->add_attribute());
  }
  return model;
}
}  // namespace

std::string serialize_onnx(const Graph& g, int64_t opset_override) {
  std::string bytes;
  if (!model_from_graph(g, opset_override).SerializeToString(&bytes))
    throw Error("cannot serialise graph '" + g.name + "' (is it over 2 GB?)");
  return bytes;
}

void save_onnx(const Graph& g, const std::string& path, int64_t opset_override) {
  write_file_atomically(path, serialize_onnx(g, opset_override));
}

Graph convert_opset(const Graph& g, int64_t target, const std::string& origin) {
  if (g.opset == target) return g;
  onnx::ModelProto converted;
  try {
    converted = onnx::version_conversion::ConvertVersion(model_from_graph(g, 0), static_cast<int>(target));
  } catch (const std::exception& e) {
    throw Error(origin + ": ONNX's version converter cannot take the model from opset " + std::to_string(g.opset) +
                " to " + std::to_string(target) + ": " + e.what());
  }
  std::string bytes;
  converted.SerializeToString(&bytes);
  return load_onnx_bytes(bytes, origin + " (converted to opset " + std::to_string(target) + ")");
}

}  // namespace inlierq

namespace inlierq {
TensorData load_tensor_pb(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open tensor file '" + path + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  onnx::TensorProto p;
  if (!p.ParseFromString(ss.str())) throw Error(path + ": not a valid serialised TensorProto");
  return tensor_from_proto(p, path);
}
}  // namespace inlierq
