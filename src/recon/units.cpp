// Reconstruction units from the graph's topological order (ALGORITHMS.md §5).
#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "inlierq/error.h"
#include "inlierq/recon.h"
#include "graph/op_traits.h"

namespace inlierq::recon {
namespace {

bool is_compute(const Node& n) { return has_role(n, kCompute); }

// Positions of the unit part of the graph and the value bookkeeping the SESE test needs. Values are
// integer ids so that the O(window²) search around every merge node stays cheap.
struct Order {
  std::vector<const Node*> nodes;
  std::unordered_map<std::string, int> id;  // non-constant value → id
  std::vector<std::string> names;
  std::vector<int> producer;       // id → position, -1 for the network input
  std::vector<int> last_consumer;  // id → last consuming position, n for the tail / graph outputs
  std::vector<std::vector<int>> in_ids, out_ids;
  int n() const { return static_cast<int>(nodes.size()); }

  int value(const std::string& v) {
    auto [it, fresh] = id.emplace(v, static_cast<int>(names.size()));
    if (fresh) names.push_back(v), producer.push_back(-1), last_consumer.push_back(-1);
    return it->second;
  }
  // Distinct values read by [a, b] and produced before a (stops counting at `limit`).
  std::vector<int> inputs(int a, int b, size_t limit = SIZE_MAX) const {
    std::vector<int> s;
    for (int i = a; i <= b; ++i)
      for (int v : in_ids[i])
        if (producer[v] < a && std::find(s.begin(), s.end(), v) == s.end()) {
          s.push_back(v);
          if (s.size() >= limit) return s;
        }
    return s;
  }
  // Values produced in [a, b] and read after b.
  std::vector<int> outputs(int a, int b, size_t limit = SIZE_MAX) const {
    std::vector<int> s;
    for (int i = a; i <= b; ++i)
      for (int v : out_ids[i])
        if (last_consumer[v] > b) {
          s.push_back(v);
          if (s.size() >= limit) return s;
        }
    return s;
  }
  // Whether a value can sit in the activation caches: batch on axis 0 (exported batch 1). Inside a
  // ShuffleNet channel shuffle the batch moves to axis 1; such values must stay inside one unit.
  std::vector<bool> cacheable;
  bool single_entry_exit(int a, int b) const {
    const auto in = inputs(a, b, 2), out = outputs(a, b, 2);
    return in.size() == 1 && out.size() == 1 && cacheable[in[0]] && cacheable[out[0]];
  }
  int compute_in(int a, int b) const {
    int c = 0;
    for (int i = a; i <= b; ++i) c += is_compute(*nodes[i]);
    return c;
  }
};

}  // namespace

std::vector<Unit> derive_units(const Graph& g, const quant::QuantPlan& plan, const UnitOptions& opts) {
  // The unit part: quantized compute nodes, activation-quantizer producers and all their ancestors.
  std::unordered_map<std::string, int> producer_index;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& o : g.nodes[i].outputs)
      if (!o.empty()) producer_index[o] = static_cast<int>(i);
  std::unordered_map<std::string, int> node_index;
  for (size_t i = 0; i < g.nodes.size(); ++i) node_index[g.nodes[i].name] = static_cast<int>(i);
  std::vector<bool> in_units(g.nodes.size(), false);
  std::vector<int> stack;
  auto seed = [&](const std::string& node) {
    auto it = node_index.find(node);
    if (it == node_index.end()) throw Error("quantization plan names node '" + node + "', which the graph lacks");
    stack.push_back(it->second);
  };
  for (const auto& w : plan.weights) seed(w.node);
  for (const auto& a : plan.activations)
    if (!a.producer.empty()) seed(a.producer);  // a quantized network input has no producer
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    if (in_units[i]) continue;
    in_units[i] = true;
    for (const auto& v : g.nodes[i].inputs)
      if (auto it = producer_index.find(v); it != producer_index.end() && !in_units[it->second]) stack.push_back(it->second);
  }

  Order ord;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (in_units[i]) ord.nodes.push_back(&g.nodes[i]);
  if (ord.nodes.empty()) throw Error("nothing to reconstruct: the plan quantizes no weight and no activation");
  const int n = ord.n();
  ord.in_ids.resize(n);
  ord.out_ids.resize(n);
  for (int p = 0; p < n; ++p) {
    for (const auto& o : ord.nodes[p]->outputs)
      if (!o.empty()) {
        const int v = ord.value(o);
        ord.producer[v] = p;
        ord.out_ids[p].push_back(v);
      }
    for (const auto& i : ord.nodes[p]->inputs)
      if (!i.empty() && !g.is_initializer(i)) {
        const int v = ord.value(i);
        ord.last_consumer[v] = std::max(ord.last_consumer[v], p);
        ord.in_ids[p].push_back(v);
      }
  }
  ord.cacheable.assign(ord.names.size(), false);
  for (size_t v = 0; v < ord.names.size(); ++v) {
    const ValueInfo* vi = g.find_value(ord.names[v]);
    ord.cacheable[v] = vi && vi->has_shape && !vi->shape.empty() && vi->shape[0].value == 1;
  }
  // Readers outside the unit part (the head, decoding) and graph outputs read "after the end".
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (!in_units[i])
      for (const auto& v : g.nodes[i].inputs)
        if (auto it = ord.id.find(v); it != ord.id.end()) ord.last_consumer[it->second] = n;
  for (const auto& o : g.outputs)
    if (auto it = ord.id.find(o.name); it != ord.id.end()) ord.last_consumer[it->second] = n;

  // Blocks: the smallest single-entry single-exit range around each merge node that holds at least
  // two compute nodes; overlapping blocks are united when the union is still single-entry single-exit.
  std::vector<std::pair<int, int>> blocks;
  if (!opts.layerwise) {
    const int window = 96;
    for (int p = 0; p < n; ++p) {
      std::set<int> data_inputs(ord.in_ids[p].begin(), ord.in_ids[p].end());
      if (data_inputs.size() < 2) continue;
      bool found = false;
      for (int size = 0; size <= 2 * window && !found; ++size)
        for (int a = std::max(0, p - size); a <= p && !found; ++a) {
          const int b = a + size;
          if (b < p || b >= n) continue;
          if (!ord.single_entry_exit(a, b)) continue;
          found = true;
          const int c = ord.compute_in(a, b);
          if (c >= 2 && c <= opts.max_block_compute) blocks.emplace_back(a, b);
        }
    }
    std::sort(blocks.begin(), blocks.end());
    std::vector<std::pair<int, int>> merged;
    for (const auto& blk : blocks) {
      if (!merged.empty() && blk.first <= merged.back().second) {
        const int a = merged.back().first, b = std::max(merged.back().second, blk.second);
        if (ord.single_entry_exit(a, b) && ord.compute_in(a, b) <= opts.max_block_compute)
          merged.back().second = b;
        continue;  // a partial overlap whose union is not a block keeps the first block only
      }
      merged.push_back(blk);
    }
    blocks = std::move(merged);
  }

  // Boundaries: block starts and ends, and every compute node outside blocks starts a layer.
  std::vector<int> block_of(n, -1);
  for (size_t k = 0; k < blocks.size(); ++k)
    for (int p = blocks[k].first; p <= blocks[k].second; ++p) block_of[p] = static_cast<int>(k);
  std::vector<std::pair<int, int>> ranges;  // [a, b]
  std::vector<bool> range_is_block;
  int start = 0;
  auto close = [&](int end, bool blk) {
    if (end >= start) ranges.emplace_back(start, end), range_is_block.push_back(blk);
    start = end + 1;
  };
  for (int p = 0; p < n;) {
    if (block_of[p] >= 0) {
      close(p - 1, false);
      const int e = blocks[block_of[p]].second;
      close(e, true);
      p = e + 1;
      continue;
    }
    if (is_compute(*ord.nodes[p]) && p > start) {
      // Only split here if the range so far holds a compute node; a compute-free prefix joins this layer.
      if (ord.compute_in(start, p - 1) > 0) close(p - 1, false);
    }
    ++p;
  }
  close(n - 1, false);
  // Ranges without a compute node (a Concat after a block, a Resize) join the previous range.
  std::vector<std::pair<int, int>> final_ranges;
  std::vector<bool> final_is_block;
  for (size_t k = 0; k < ranges.size(); ++k) {
    const bool empty = ord.compute_in(ranges[k].first, ranges[k].second) == 0;
    if (empty && !final_ranges.empty()) {
      final_ranges.back().second = ranges[k].second;
      continue;
    }
    if (!final_ranges.empty() && ord.compute_in(final_ranges.back().first, final_ranges.back().second) == 0) {
      final_ranges.back().second = ranges[k].second;  // a compute-free first range joins the next
      final_is_block.back() = range_is_block[k];
      continue;
    }
    final_ranges.push_back(ranges[k]);
    final_is_block.push_back(range_is_block[k]);
  }

  // A value that cannot be cached must not cross a unit boundary: merge its producer's unit with every
  // unit up to its last reader.
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t k = 0; k + 1 < final_ranges.size() && !changed; ++k) {
      int reach = final_ranges[k].second;
      for (int v : ord.outputs(final_ranges[k].first, final_ranges[k].second))
        if (!ord.cacheable[v]) {
          if (ord.last_consumer[v] >= n)
            throw Error("value '" + ord.names[v] + "' has no batch-leading static shape and is read by the head; cannot build units");
          reach = std::max(reach, ord.last_consumer[v]);
        }
      if (reach > final_ranges[k].second) {
        size_t j = k + 1;
        while (j < final_ranges.size() && final_ranges[j].first <= reach) ++j;
        final_ranges[k].second = final_ranges[j - 1].second;
        bool blk = false;
        for (size_t m = k; m < j; ++m) blk = blk || final_is_block[m];
        final_is_block[k] = blk;
        final_ranges.erase(final_ranges.begin() + static_cast<long>(k) + 1, final_ranges.begin() + static_cast<long>(j));
        final_is_block.erase(final_is_block.begin() + static_cast<long>(k) + 1, final_is_block.begin() + static_cast<long>(j));
        changed = true;
      }
    }
  }
  // The network input needs no cache slot check: it is the images themselves.

  std::vector<Unit> units;
  for (size_t k = 0; k < final_ranges.size(); ++k) {
    const auto [a, b] = final_ranges[k];
    Unit u;
    u.kind = final_is_block[k] ? "block" : "layer";
    for (int p = a; p <= b; ++p) {
      u.nodes.push_back(ord.nodes[p]->name);
      if (u.name.empty() && is_compute(*ord.nodes[p])) u.name = ord.nodes[p]->name;
    }
    if (u.name.empty()) u.name = u.nodes.front();
    // Values in topological order: inputs by producer (the network input first), outputs by position.
    auto ins = ord.inputs(a, b), outs = ord.outputs(a, b);
    auto by_producer = [&](int x, int y) { return ord.producer[x] != ord.producer[y] ? ord.producer[x] < ord.producer[y] : x < y; };
    std::sort(ins.begin(), ins.end(), by_producer);
    std::sort(outs.begin(), outs.end(), by_producer);
    for (int v : ins) u.inputs.push_back(ord.names[v]);
    for (int v : outs) u.outputs.push_back(ord.names[v]);
    u.compute_nodes = ord.compute_in(a, b);
    units.push_back(std::move(u));
  }
  return units;
}

nlohmann::json units_json(const std::vector<Unit>& units) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& u : units)
    j.push_back({{"name", u.name}, {"kind", u.kind}, {"nodes", u.nodes}, {"inputs", u.inputs}, {"outputs", u.outputs},
                 {"compute_nodes", u.compute_nodes}});
  return j;
}

std::string format_units(const std::vector<Unit>& units) {
  int blocks = 0;
  for (const auto& u : units) blocks += u.kind == "block";
  std::string s = fmt::format("{} reconstruction units ({} blocks, {} layers)\n", units.size(), blocks, units.size() - blocks);
  s += fmt::format("  {:>3}  {:<6} {:>5} {:>5}  {:<40} {}\n", "#", "kind", "convs", "nodes", "name", "inputs -> outputs");
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& u = units[i];
    std::string io;
    for (size_t k = 0; k < u.inputs.size(); ++k) io += (k ? ", " : "") + u.inputs[k];
    io += " -> ";
    for (size_t k = 0; k < u.outputs.size(); ++k) io += (k ? ", " : "") + u.outputs[k];
    s += fmt::format("  {:>3}  {:<6} {:>5} {:>5}  {:<40} {}\n", i, u.kind, u.compute_nodes, u.nodes.size(), u.name, io);
  }
  return s;
}

}  // namespace inlierq::recon
