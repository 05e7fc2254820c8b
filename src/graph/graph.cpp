#include "inlierq/graph.h"

#include <sstream>

#include "inlierq/error.h"

namespace inlierq {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float: return "float32";
    case DType::UInt8: return "uint8";
    case DType::Int8: return "int8";
    case DType::UInt16: return "uint16";
    case DType::Int16: return "int16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::String: return "string";
    case DType::Bool: return "bool";
    case DType::Float16: return "float16";
    case DType::Double: return "float64";
    case DType::UInt32: return "uint32";
    case DType::UInt64: return "uint64";
    case DType::BFloat16: return "bfloat16";
    default: return "undefined";
  }
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float: case DType::Int32: case DType::UInt32: return 4;
    case DType::UInt8: case DType::Int8: case DType::Bool: return 1;
    case DType::UInt16: case DType::Int16: case DType::Float16: case DType::BFloat16: return 2;
    case DType::Int64: case DType::Double: case DType::UInt64: return 8;
    default: return 0;
  }
}

int64_t TensorData::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  os << "]";
  return os.str();
}

std::string ValueInfo::shape_string() const {
  if (!has_shape) return "?";
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ",";
    if (shape[i].value >= 0) os << shape[i].value;
    else if (!shape[i].param.empty()) os << shape[i].param;
    else os << "?";
  }
  os << "]";
  return os.str();
}

namespace {
const Attribute* find_attr(const Node& n, const std::string& a, Attribute::Kind k) {
  auto it = n.attrs.find(a);
  if (it == n.attrs.end()) return nullptr;
  if (it->second.kind != k)
    throw Error(n.describe() + ": attribute '" + a + "' has an unexpected type");
  return &it->second;
}
}  // namespace

int64_t Node::get_int(const std::string& a, int64_t dflt) const {
  auto* p = find_attr(*this, a, Attribute::Kind::Int);
  return p ? p->i : dflt;
}
float Node::get_float(const std::string& a, float dflt) const {
  auto* p = find_attr(*this, a, Attribute::Kind::Float);
  return p ? p->f : dflt;
}
std::string Node::get_string(const std::string& a, const std::string& dflt) const {
  auto* p = find_attr(*this, a, Attribute::Kind::String);
  return p ? p->s : dflt;
}
std::vector<int64_t> Node::get_ints(const std::string& a, const std::vector<int64_t>& dflt) const {
  auto* p = find_attr(*this, a, Attribute::Kind::Ints);
  return p ? p->ints : dflt;
}
std::vector<float> Node::get_floats(const std::string& a, const std::vector<float>& dflt) const {
  auto* p = find_attr(*this, a, Attribute::Kind::Floats);
  return p ? p->floats : dflt;
}
std::string Node::describe() const { return "node '" + name + "' (" + op_type + ")"; }

const ValueInfo* Graph::find_value(const std::string& name) const {
  for (auto& v : inputs)
    if (v.name == name) return &v;
  for (auto& v : outputs)
    if (v.name == name) return &v;
  auto it = value_info.find(name);
  return it == value_info.end() ? nullptr : &it->second;
}

}  // namespace inlierq
