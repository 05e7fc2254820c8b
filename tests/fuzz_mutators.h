#pragma once
// Deterministic mutators shared by the fuzz test (tests/test_fuzz_loader.cpp) and the fuzz driver
// (tests/tools/fuzz_tool.cpp, run at scale by bench/fuzz.py). Mutant i of a run draws from its own
// generator, seeded by (seed, i): any mutant of a long run can be replayed alone.
#include <onnx/onnx_pb.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "inlierq/graph.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::fuzz {

inline std::mt19937 mutant_rng(uint32_t seed, uint64_t index) {
  std::seed_seq seq{seed, static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32)};
  return std::mt19937(seq);
}

// Offsets favour the first `head` bytes and the last 4 KiB: a model's nodes are serialised before its
// initializers (and its inputs/outputs after them), an image's header comes first; uniform offsets would
// mostly hit weight or pixel bytes.
inline size_t pick_offset(std::mt19937& rng, size_t size, size_t head) {
  if (size == 0) return 0;
  const int region = static_cast<int>(rng() % 10);
  if (region < 5) return rng() % std::min(size, head);
  if (region < 7) return size - 1 - rng() % std::min<size_t>(size, 4 << 10);
  return rng() % size;
}

// One to three byte-level edits: bit flip, truncation, random insertion, deletion, random overwrite, or
// an "interesting" 1/2/4-byte integer (0, ±1, limits) written big- or little-endian, which is what
// header size and count fields are made of.
inline std::string mutate_bytes(std::string s, std::mt19937& rng, std::string& log, size_t head = 64 << 10) {
  const int count = 1 + static_cast<int>(rng() % 3);
  for (int k = 0; k < count && !s.empty(); ++k) {
    const size_t at = pick_offset(rng, s.size(), head);
    const size_t len = 1 + rng() % 16;
    switch (rng() % 6) {
      case 0:
        s[at] = static_cast<char>(s[at] ^ (1u << (rng() % 8)));
        log += " flip@" + std::to_string(at);
        break;
      case 1:
        s.resize(at);
        log += " truncate@" + std::to_string(at);
        break;
      case 2: {
        std::string ins(len, '\0');
        for (auto& c : ins) c = static_cast<char>(rng());
        s.insert(at, ins);
        log += " insert" + std::to_string(len) + "@" + std::to_string(at);
        break;
      }
      case 3:
        s.erase(at, len);
        log += " delete" + std::to_string(len) + "@" + std::to_string(at);
        break;
      case 4:
        for (size_t i = at; i < std::min(s.size(), at + len); ++i) s[i] = static_cast<char>(rng());
        log += " overwrite" + std::to_string(len) + "@" + std::to_string(at);
        break;
      default: {
        static const uint32_t values[] = {0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                                          0x7FFFFFFF, 0x80000000u, 0xFFFFFFFFu};
        const uint32_t v = values[rng() % (sizeof(values) / sizeof(values[0]))];
        const size_t width = size_t{1} << (rng() % 3);
        const bool big_endian = rng() % 2;
        for (size_t b = 0; b < width && at + b < s.size(); ++b) {
          const size_t shift = 8 * (big_endian ? width - 1 - b : b);
          s[at + b] = static_cast<char>((v >> shift) & 0xFF);
        }
        log += " int" + std::to_string(8 * width) + (big_endian ? "be" : "le") + "=" + std::to_string(v) + "@" +
               std::to_string(at);
      }
    }
  }
  return s;
}

// Field-level edits of a parsed model: byte mutants mostly die in protobuf framing, these reach the
// checker, shape inference, our own graph validation and the kernels' attribute handling.
inline std::string mutate_model_structure(const std::string& bytes, std::mt19937& rng, std::string& log) {
  onnx::ModelProto model;
  model.ParseFromString(bytes);
  auto* g = model.mutable_graph();
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(std::max(n, 1))); };
  auto any_value = [&]() -> std::string {
    const auto& n = g->node(pick(g->node_size()));
    return n.output_size() ? n.output(0) : n.op_type();
  };
  const int count = 1 + pick(3);
  for (int k = 0; k < count && g->node_size(); ++k) {
    const int idx = pick(g->node_size());
    auto* n = g->mutable_node(idx);
    switch (pick(10)) {
      case 0:
        n->set_op_type(g->node(pick(g->node_size())).op_type());
        log += " optype(" + n->name() + ")=" + n->op_type();
        break;
      case 1:
        if (n->input_size()) n->set_input(pick(n->input_size()), pick(4) ? any_value() : "");
        log += " input(" + n->name() + ")";
        break;
      case 2:
        if (n->output_size()) n->set_output(pick(n->output_size()), any_value());
        log += " output(" + n->name() + ")";
        break;
      case 3:
        log += " delete(" + n->name() + ")";
        g->mutable_node()->DeleteSubrange(idx, 1);
        break;
      case 4: {
        if (!n->attribute_size()) break;
        auto* a = n->mutable_attribute(pick(n->attribute_size()));
        const int64_t vals[] = {-1, 0, 1, 2, 3, 7, 1 << 20, -(int64_t(1) << 40)};
        const int64_t v = vals[pick(8)];
        if (a->ints_size()) a->set_ints(pick(a->ints_size()), v);
        else if (pick(2)) a->add_ints(v);
        else a->set_i(v);
        if (pick(4) == 0) a->set_f(std::vector<float>{-1.f, 0.f, 1e30f, NAN}[pick(4)]);
        log += " attr(" + n->name() + "." + a->name() + ")=" + std::to_string(v);
        break;
      }
      case 5:
        if (n->attribute_size()) n->mutable_attribute()->DeleteSubrange(pick(n->attribute_size()), 1);
        log += " dropattr(" + n->name() + ")";
        break;
      case 6: {
        if (!g->initializer_size()) break;
        auto* t = g->mutable_initializer(pick(g->initializer_size()));
        if (t->dims_size() && pick(2)) t->set_dims(pick(t->dims_size()), pick(5) - 1);
        else t->set_data_type(1 + pick(16));
        log += " init(" + t->name() + ")";
        break;
      }
      case 7: {
        if (!g->input_size()) break;
        auto* shape = g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
        if (shape->dim_size()) shape->mutable_dim(pick(shape->dim_size()))->set_dim_value(pick(5) - 1);
        else shape->add_dim()->set_dim_value(1);
        log += " inputdim";
        break;
      }
      case 8:
        if (!model.opset_import_size()) break;
        model.mutable_opset_import(0)->set_version(pick(20));
        log += " opset=" + std::to_string(model.opset_import(0).version());
        break;
      default: {
        auto* m = g->mutable_node()->Mutable(pick(g->node_size()));
        std::swap(*n, *m);
        log += " swap(" + n->name() + "," + m->name() + ")";
      }
    }
  }
  return model.SerializeAsString();
}

// One forward pass on random data of the declared input shapes; false when the shapes are unusable.
inline bool run_once(const Graph& g) {
  // Mutated pads or sizes can make shape inference promise tensors of many GB; running those would test
  // the machine's memory, not the code.
  for (const auto& [_, v] : g.value_info) {
    double numel = 1;
    for (const auto& d : v.shape) numel *= std::max<int64_t>(d.value, 1);
    if (numel > 5e7) return false;
  }
  rt::Executor ex(g);
  rt::TensorMap inputs;
  for (const auto& in : g.inputs) {
    std::vector<int64_t> shape;
    double numel = 1;  // double: a mutated dimension near INT64_MAX must not overflow the product
    for (const auto& d : in.shape) {
      shape.push_back(d.value > 0 ? d.value : 1);
      numel *= static_cast<double>(shape.back());
      if (numel > (1 << 20)) return false;  // not worth the memory
    }
    inputs[in.name] = in.dtype == DType::Float ? at::rand(shape) : at::zeros(shape, rt::to_scalar_type(in.dtype));
  }
  ex.run(inputs);
  return true;
}

// A JSON value a hand-edited or generated file might hold where another was expected.
inline nlohmann::json odd_json_value(std::mt19937& rng) {
  switch (rng() % 12) {
    case 0: return nullptr;
    case 1: return rng() % 2 == 0;
    case 2: {
      static const int64_t ints[] = {0, -1, 1, 2, 3, 255, 256, 65535, 1 << 20, 2147483647, -2147483648LL,
                                     std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()};
      return ints[rng() % (sizeof(ints) / sizeof(ints[0]))];
    }
    case 3: return std::numeric_limits<uint64_t>::max();
    case 4: {
      static const double reals[] = {0.5, -0.5, 1e-30, -1e-300, 1e30, 1e308, -1e308, 4.9e-324};
      return reals[rng() % (sizeof(reals) / sizeof(reals[0]))];
    }
    case 5: return std::numeric_limits<double>::quiet_NaN();  // a NaN survives only in-memory edits
    case 6: return "";
    case 7: {
      static const char* words[] = {"letterbox", "resize", "rgb", "bgr", "sigmoid", "softmax", "nchw", "best", "all",
                                    "cxcywh", "xyxy", "positions_channels", "channels_positions", "output", "nan"};
      return words[rng() % (sizeof(words) / sizeof(words[0]))];
    }
    case 8: return nlohmann::json::array();
    case 9: return nlohmann::json::object();
    case 10: {
      nlohmann::json a = nlohmann::json::array();
      const int n = 1 + static_cast<int>(rng() % 6);
      for (int i = 0; i < n; ++i) a.push_back(static_cast<int>(rng() % 7) - 2);
      return a;
    }
    default: return std::string(1 + rng() % 40, static_cast<char>('a' + rng() % 26));
  }
}

// One to four field-level edits of a parsed JSON document: replace a value by an odd one, delete or
// rename a key, drop or duplicate an array element, or swap two values.
inline void mutate_json(nlohmann::json& doc, std::mt19937& rng, std::string& log) {
  const int count = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < count; ++k) {
    // A random walk from the root: stop with probability 1/4 (always at a leaf; never at the root, whose
    // replacement only tests the top-level type check), else step into a random child. Every node is
    // reachable whatever the document's size or key order.
    auto random_node = [&]() {
      nlohmann::json::json_pointer p;
      while (true) {
        const auto& v = doc.at(p);
        if (!(v.is_object() || v.is_array()) || v.empty() || (!p.empty() && rng() % 4 == 0)) return p;
        const size_t k = rng() % v.size();
        if (v.is_array()) {
          p /= k;
        } else {
          auto it = v.begin();
          std::advance(it, static_cast<long>(k));
          p /= it.key();
        }
      }
    };
    const auto path = random_node();
    const std::string where = path.to_string();
    auto& node = doc.at(path);
    const bool root = path.empty();
    switch (rng() % 6) {
      case 0:
      case 1:
        node = odd_json_value(rng);
        log += " set(" + where + ")=" + node.dump();
        break;
      case 2:
        if (!root) {
          auto& parent = doc.at(path.parent_pointer());
          if (parent.is_object()) parent.erase(path.back());
          else parent.erase(static_cast<size_t>(std::stoul(path.back())));
          log += " delete(" + where + ")";
        }
        break;
      case 3:
        if (!root && doc.at(path.parent_pointer()).is_object()) {
          auto& parent = doc.at(path.parent_pointer());
          nlohmann::json v = std::move(node);
          parent.erase(path.back());
          parent[path.back() + "_"] = std::move(v);
          log += " rename(" + where + ")";
        }
        break;
      case 4:
        if (node.is_array() && !node.empty()) {
          const auto copy = node[rng() % node.size()];
          const size_t times = 1 + rng() % 50;
          for (size_t i = 0; i < times; ++i) node.push_back(copy);
          log += " duplicate(" + where + ")x" + std::to_string(times);
        } else if (node.is_array() || node.is_object()) {
          node.clear();
          log += " clear(" + where + ")";
        }
        break;
      default: {
        auto other = random_node();
        // Swapping a node with its own ancestor or descendant would not be a swap.
        const std::string a = where, b = other.to_string();
        auto within = [](const std::string& inner, const std::string& outer) {
          return inner.rfind(outer, 0) == 0 && (inner.size() == outer.size() || inner[outer.size()] == '/');
        };
        if (within(a, b) || within(b, a)) break;
        std::swap(node, doc.at(other));
        log += " swap(" + a + "," + b + ")";
      }
    }
  }
}

}  // namespace inlierq::fuzz
