#pragma once
#include <string>

#include "inlierq/graph.h"

namespace inlierq {
// NumPy .npy (format 1.0–3.0, little-endian, C order) for the infer command and tests.
TensorData read_npy(const std::string& path);
void write_npy(const std::string& path, const TensorData& t);  // atomic
}  // namespace inlierq
