#pragma once
// Torch-free intermediate representation of an ONNX graph.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace inlierq {

// Values follow onnx::TensorProto::DataType so that import and export need no translation table.
enum class DType : int32_t {
  Undefined = 0, Float = 1, UInt8 = 2, Int8 = 3, UInt16 = 4, Int16 = 5, Int32 = 6, Int64 = 7,
  String = 8, Bool = 9, Float16 = 10, Double = 11, UInt32 = 12, UInt64 = 13, BFloat16 = 16,
};
const char* dtype_name(DType t);
size_t dtype_size(DType t);  // 0 for String/Undefined

// A dense host tensor: raw little-endian bytes plus shape and type.
struct TensorData {
  DType dtype = DType::Undefined;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  int64_t numel() const;
  template <typename T> const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
  template <typename T> T* as() { return reinterpret_cast<T*>(bytes.data()); }
};
std::string shape_str(const std::vector<int64_t>& shape);

struct Dim {
  int64_t value = -1;  // -1 when unknown or symbolic
  std::string param;   // symbolic name, if any
};

struct ValueInfo {
  std::string name;
  DType dtype = DType::Undefined;
  bool has_shape = false;
  std::vector<Dim> shape;
  std::string shape_string() const;
};

struct Attribute {
  enum class Kind { Undefined, Float, Int, String, Tensor, Floats, Ints, Strings, Graph };
  Kind kind = Kind::Undefined;
  float f = 0;
  int64_t i = 0;
  std::string s;
  TensorData t;
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
};

struct Node {
  std::string name;
  std::string op_type;
  std::string domain;
  std::vector<std::string> inputs;   // "" marks an omitted optional input
  std::vector<std::string> outputs;
  std::map<std::string, Attribute> attrs;

  bool has(const std::string& a) const { return attrs.count(a) != 0; }
  int64_t get_int(const std::string& a, int64_t dflt) const;
  float get_float(const std::string& a, float dflt) const;
  std::string get_string(const std::string& a, const std::string& dflt) const;
  std::vector<int64_t> get_ints(const std::string& a, const std::vector<int64_t>& dflt = {}) const;
  std::vector<float> get_floats(const std::string& a, const std::vector<float>& dflt = {}) const;
  // "node 'name' (Op)" for error messages.
  std::string describe() const;
};

struct Graph {
  std::string name;
  int64_t opset = 0;  // default-domain opset
  std::string producer;
  std::vector<Node> nodes;          // topologically sorted
  std::vector<ValueInfo> inputs;    // real inputs only: initializers listed as inputs are dropped
  std::vector<ValueInfo> outputs;
  std::map<std::string, TensorData> initializers;
  std::map<std::string, ValueInfo> value_info;  // inferred shapes of intermediate values

  const ValueInfo* find_value(const std::string& name) const;
  bool is_initializer(const std::string& name) const { return initializers.count(name) != 0; }
};

}  // namespace inlierq
