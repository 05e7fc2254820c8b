#include "pipeline/budget.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "inlierq/error.h"
#include "inlierq/runtime.h"

namespace inlierq::pipeline {

namespace {

double budget_number(const std::string& item, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || end != value.c_str() + value.size() || !std::isfinite(v))
    throw Error("--budget " + item + ": '" + value + "' is not a number");
  return v;
}

}  // namespace

Budget parse_budget(const std::string& spec) {
  Budget b;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    const std::string item = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? spec.size() + 1 : comma + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error("--budget: '" + item + "' is not KEY=VALUE (keys: int8-macs, latency, weight-bits)");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    const double v = budget_number(item, value);
    if (key == "int8-macs") {
      if (v <= 0 || v > 1) throw Error("--budget " + item + ": the share of MACs in integer kernels must be in (0, 1]");
      b.min_int8_macs = v;
    } else if (key == "latency") {
      if (v <= 0) throw Error("--budget " + item + ": the latency ratio to FP32 must be > 0");
      b.max_latency = v;
    } else if (key == "weight-bits") {
      if (v < 2 || v > 8) throw Error("--budget " + item + ": the average weight bits must be in [2, 8]");
      b.max_weight_bits = v;
    } else {
      throw Error("--budget: unknown key '" + key + "' (keys: int8-macs, latency, weight-bits)");
    }
  }
  if (b.empty()) throw Error("--budget: empty (e.g. int8-macs=0.9, latency=0.8 or weight-bits=5)");
  return b;
}

std::string Budget::to_string() const {
  std::string s;
  if (min_int8_macs > 0) s += fmt::format("int8-macs={}", min_int8_macs);
  if (max_latency > 0) s += fmt::format("{}latency={}", s.empty() ? "" : ",", max_latency);
  if (max_weight_bits > 0) s += fmt::format("{}weight-bits={}", s.empty() ? "" : ",", max_weight_bits);
  return s;
}

nlohmann::json Budget::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  if (min_int8_macs > 0) j["min_int8_macs"] = min_int8_macs;
  if (max_latency > 0) j["max_latency"] = max_latency;
  if (max_weight_bits > 0) j["max_weight_bits"] = max_weight_bits;
  return j;
}

double integer_mac_fraction(const Graph& g, const std::set<std::string>& integer_nodes) {
  int64_t all_macs = 0, integer_macs = 0;
  for (const auto& n : g.nodes) {
    const int64_t m = node_macs(g, n);
    all_macs += m;
    if (integer_nodes.count(n.name)) integer_macs += m;
  }
  return all_macs ? static_cast<double>(integer_macs) / all_macs : 0.0;
}

double integer_mac_fraction(const Graph& g, const quant::QuantPlan& plan, const quant::Encodings& enc) {
  quant::QuantPlan p = plan;
  quant::Encodings e = enc;
  quant::add_requantizers(g, p, e);
  const auto nodes = quant::integer_compute_nodes(g, p);
  return integer_mac_fraction(g, std::set<std::string>(nodes.begin(), nodes.end()));
}

double integer_mac_fraction(const Graph& g, const quant::QuantPlan& plan) {
  quant::Encodings e;
  for (const auto& a : plan.activations) {
    quant::ActEncoding x;
    x.value = a.value;
    x.bits = a.bits;
    x.symmetric = a.symmetric;
    x.group = a.group;
    x.scale = 1.0f + static_cast<float>(a.group);
    e.activations[a.value] = x;
  }
  return integer_mac_fraction(g, plan, e);
}

}  // namespace inlierq::pipeline
