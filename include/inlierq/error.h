#pragma once
#include <stdexcept>
#include <string>

namespace inlierq {

// Every user-facing failure (bad file, unsupported op, wrong input) is reported through this type so
// that the CLI can print one clear message and exit non-zero instead of crashing.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace inlierq
