// inspect: inputs, outputs, op histogram, parameters, MACs, unsupported ops; --plan and --units.
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "cli.h"
#include "inlierq/onnx_io.h"
#include "inlierq/recon.h"
#include "inlierq/runtime.h"

namespace inlierq::cli {

namespace {

nlohmann::json value_json(const ValueInfo& v) {
  nlohmann::json dims = nlohmann::json::array();
  for (const auto& d : v.shape) dims.push_back(d.value >= 0 ? nlohmann::json(d.value) : nlohmann::json(d.param.empty() ? "?" : d.param));
  return {{"name", v.name}, {"dtype", dtype_name(v.dtype)}, {"shape", dims}};
}

int summary(const std::string& model, bool as_json) {
  Graph g = load_onnx(model);
  ModelSummary s = summarize(g);
  if (as_json) {
    nlohmann::json j;
    j["model"] = model;
    j["opset"] = g.opset;
    for (const auto& v : s.inputs) j["inputs"].push_back(value_json(v));
    for (const auto& v : s.outputs) j["outputs"].push_back(value_json(v));
    j["nodes"] = g.nodes.size();
    j["op_histogram"] = s.op_histogram;
    j["parameters"] = s.parameters;
    j["macs"] = s.macs;
    j["unsupported"] = nlohmann::json::array();
    for (const Node* n : s.unsupported) j["unsupported"].push_back({{"node", n->name}, {"op", n->op_type}, {"domain", n->domain}});
    std::cout << j.dump(2) << "\n";
  } else {
    fmt::print("model: {} (opset {}, {} nodes, producer '{}')\n", model, g.opset, g.nodes.size(), g.producer);
    for (const auto& v : s.inputs) fmt::print("  input  {:<24} {} {}\n", v.name, dtype_name(v.dtype), v.shape_string());
    for (const auto& v : s.outputs) fmt::print("  output {:<24} {} {}\n", v.name, dtype_name(v.dtype), v.shape_string());
    fmt::print("parameters: {} ({:.2f} M)\nMACs: {} ({:.3f} G per image)\nops:\n", s.parameters, s.parameters / 1e6,
               s.macs, s.macs / 1e9);
    for (const auto& [op, count] : s.op_histogram)
      fmt::print("  {:<24} {:>5}{}\n", op, count, op_supported(op) ? "" : "  (unsupported)");
    for (const Node* n : s.unsupported)
      fmt::print(stderr, "unsupported op: node '{}' op '{}{}'\n", n->name, n->domain.empty() ? "" : n->domain + ".", n->op_type);
  }
  if (!s.unsupported.empty()) {
    fmt::print(stderr, "error: {} node(s) use unsupported ops\n", s.unsupported.size());
    return 2;
  }
  return 0;
}

struct InspectArgs {
  std::string model, profile, preset = "w8a8", layout = "auto";
  std::vector<std::string> exclude;
  bool as_json = false, plan = false, units = false, layerwise = false, quantize_head = false;
  int max_unit_convs = recon::UnitOptions{}.max_block_compute;
};

int run(const InspectArgs& a) {
  if (a.units) {
    recon::UnitOptions uo;
    uo.layerwise = a.layerwise;
    uo.max_block_compute = a.max_unit_convs;
    const auto [g, plan] = prepared_plan(a.model, a.profile, a.preset, a.quantize_head, a.exclude);
    const auto units = recon::derive_units(g, plan, uo);
    if (a.as_json) std::cout << recon::units_json(units).dump(2) << "\n";
    else fmt::print("{}", recon::format_units(units));
    return 0;
  }
  if (a.plan) {
    const auto [wbits, abits] = pipeline::resolve_bits(a.preset, 0, 0);
    const auto [g, plan] = prepared_plan(a.model, a.profile, a.preset, a.quantize_head, a.exclude, a.layout);
    if (a.as_json) std::cout << plan.to_json().dump(2) << "\n";
    else fmt::print("quantization plan for {} (W{}A{})\n{}", a.model, wbits, abits, plan.format());
    return 0;
  }
  return summary(a.model, a.as_json);
}

}  // namespace

Command add_inspect(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  auto* sub = app.add_subcommand("inspect", "print inputs, outputs, op histogram, parameters, MACs and unsupported ops");
  sub->add_option("model", a->model, "ONNX model")->required();
  sub->add_flag("--json", a->as_json, "machine-readable output");
  sub->add_flag("--plan", a->plan, "print where quantizers go (after BatchNorm folding)");
  sub->add_flag("--units", a->units, "print the reconstruction units (blocks and layers)");
  sub->add_flag("--layerwise", a->layerwise, "with --units: one unit per layer (AdaRound's units)");
  sub->add_option("--max-unit-convs", a->max_unit_convs, "with --units: blocks with more compute nodes are split into layers");
  sub->add_option("--profile", a->profile, "model profile (with --plan)");
  sub->add_option("--preset", a->preset, "bit widths for --plan (wNaM)");
  sub->add_flag("--quantize-head", a->quantize_head, "with --plan: quantize the detection head too");
  sub->add_option("--layout", a->layout, "with --plan: Q/DQ layout, auto, ort or block");
  sub->add_option("--exclude", a->exclude, "with --plan: nodes kept in floating point");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
