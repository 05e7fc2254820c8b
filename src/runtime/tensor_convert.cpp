#include "runtime/tensor_convert.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "inlierq/error.h"

namespace inlierq::rt {

at::ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::Float: return at::kFloat;
    case DType::Double: return at::kDouble;
    case DType::Float16: return at::kHalf;
    case DType::BFloat16: return at::kBFloat16;
    case DType::Int64: return at::kLong;
    case DType::Int32: return at::kInt;
    case DType::Int16: return at::kShort;
    case DType::Int8: return at::kChar;
    case DType::UInt8: return at::kByte;
    case DType::Bool: return at::kBool;
    default: throw Error(std::string("tensor type ") + dtype_name(t) + " is not supported by the executor");
  }
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kLong: return DType::Int64;
    case at::kInt: return DType::Int32;
    case at::kShort: return DType::Int16;
    case at::kChar: return DType::Int8;
    case at::kByte: return DType::UInt8;
    case at::kBool: return DType::Bool;
    default: throw Error(std::string("ATen type ") + c10::toString(t) + " has no ONNX equivalent here");
  }
}

at::Tensor to_aten(const TensorData& t) {
  const auto type = to_scalar_type(t.dtype);
  // TensorData built by API callers may disagree with itself; a longer buffer would overrun the tensor.
  int64_t n = 1;
  for (auto d : t.shape) {
    if (d < 0 || (d > 0 && n > std::numeric_limits<int64_t>::max() / d / 16))
      throw Error("tensor shape " + shape_str(t.shape) + " is invalid");
    n *= d;
  }
  if (t.bytes.size() != static_cast<size_t>(n) * dtype_size(t.dtype))
    throw Error("tensor holds " + std::to_string(t.bytes.size()) + " bytes, shape " + shape_str(t.shape) + " of " +
                dtype_name(t.dtype) + " needs " + std::to_string(n * static_cast<int64_t>(dtype_size(t.dtype))));
  auto out = at::empty(t.shape, at::TensorOptions().dtype(type));
  if (!t.bytes.empty()) std::memcpy(out.data_ptr(), t.bytes.data(), t.bytes.size());
  return out;
}

TensorData from_aten(const at::Tensor& src) {
  auto c = src.detach().to(at::kCPU).contiguous();
  TensorData t;
  t.dtype = to_dtype(c.scalar_type());
  t.shape = c.sizes().vec();
  t.bytes.resize(c.numel() * c.element_size());
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), c.data_ptr(), t.bytes.size());
  return t;
}

at::Tensor to_aten_batch(const std::vector<TensorData>& inputs, size_t begin, size_t end) {
  end = std::min(end, inputs.size());
  if (begin >= end) throw Error("an empty batch of inputs");
  std::vector<at::Tensor> xs;
  for (size_t i = begin; i < end; ++i) xs.push_back(to_aten(inputs[i]));
  return at::cat(xs, 0);
}

}  // namespace inlierq::rt
