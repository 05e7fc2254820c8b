#pragma once
// One name table per option enum: the names the CLI, the JSON records and the checkpoints use, parsing with an
// error that lists them, and the list for --help. Torch-free.
#include <string>
#include <utility>
#include <vector>

#include "inlierq/error.h"

namespace inlierq {

template <class E>
struct NameTable {
  std::vector<std::pair<E, std::string>> rows;

  const std::string& name(E value) const {
    for (const auto& [v, n] : rows)
      if (v == value) return n;
    throw Error("an option value without a name (" + std::to_string(static_cast<int>(value)) + ")");
  }
  // `what` names the option in the error, e.g. "--step-update".
  E parse(const std::string& text, const std::string& what) const {
    for (const auto& [v, n] : rows)
      if (n == text) return v;
    throw Error("unknown " + what + " '" + text + "' (expected " + list(", ", " or ") + ")");
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& r : rows) out.push_back(r.second);
    return out;
  }
  std::string list(const std::string& sep = " | ", const std::string& last = "") const {
    std::string s;
    for (size_t i = 0; i < rows.size(); ++i)
      s += (i == 0 ? "" : i + 1 == rows.size() && !last.empty() ? last : sep) + rows[i].second;
    return s;
  }
};

}  // namespace inlierq
