#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "inlierq/graph.h"

namespace inlierq::rt {
at::ScalarType to_scalar_type(DType t);  // throws for types ATen lacks
DType to_dtype(at::ScalarType t);
at::Tensor to_aten(const TensorData& t);  // copies
TensorData from_aten(const at::Tensor& t);
// inputs[begin, end) concatenated along the batch axis (copies).
at::Tensor to_aten_batch(const std::vector<TensorData>& inputs, size_t begin = 0, size_t end = SIZE_MAX);
}  // namespace inlierq::rt
