#pragma once
#include <ATen/ATen.h>

#include "inlierq/graph.h"

namespace inlierq::rt {
at::ScalarType to_scalar_type(DType t);  // throws for types ATen lacks
DType to_dtype(at::ScalarType t);
at::Tensor to_aten(const TensorData& t);  // copies
TensorData from_aten(const at::Tensor& t);
}  // namespace inlierq::rt
