#pragma once
// One name table per option enum: the names the CLI, the JSON records and the checkpoints use, parsing with an
// error that lists them, and the list for --help. Torch-free.
#include <string>
#include <utility>
#include <vector>

#include "inlierq/error.h"

namespace inlierq {

// "a, b, c or d" (last = "" gives "a, b, c, d"): how errors list names.
inline std::string join_names(const std::vector<std::string>& names, const char* last = "or") {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += (i == 0 ? std::string() : i + 1 == names.size() && *last ? std::string(" ") + last + " " : std::string(", ")) + names[i];
  return s;
}

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
    throw Error("unknown " + what + " '" + text + "' (expected " + join_names(names()) + ")");
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& r : rows) out.push_back(r.second);
    return out;
  }
  // "a | b | c", for --help.
  std::string list() const {
    std::string s;
    for (const auto& r : rows) s += (s.empty() ? "" : " | ") + r.second;
    return s;
  }
};

}  // namespace inlierq
