#pragma once
// Shared helpers for the C++ tests.
#include <cstdlib>
#include <string>

namespace inlierq::test {

// ../shared/assets relative to the source tree, overridable with INLIERQ_ASSETS.
inline std::string assets_dir() {
  if (const char* e = std::getenv("INLIERQ_ASSETS")) return e;
  return std::string(INLIERQ_SOURCE_DIR) + "/../shared/assets";
}
inline std::string model_path(const std::string& file) { return assets_dir() + "/models/" + file; }

}  // namespace inlierq::test
