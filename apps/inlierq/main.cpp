// inlierq command-line interface.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <iostream>

#include "inlierq/error.h"
#include "inlierq/npy.h"
#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"

namespace fs = std::filesystem;
using namespace inlierq;

namespace {

nlohmann::json value_json(const ValueInfo& v) {
  nlohmann::json dims = nlohmann::json::array();
  for (const auto& d : v.shape) dims.push_back(d.value >= 0 ? nlohmann::json(d.value) : nlohmann::json(d.param.empty() ? "?" : d.param));
  return {{"name", v.name}, {"dtype", dtype_name(v.dtype)}, {"shape", dims}};
}

int cmd_inspect(const std::string& model, bool as_json) {
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

std::string sanitize(std::string name) {
  for (auto& c : name)
    if (c == '/' || c == '\\') c = '_';
  return name;
}

int cmd_infer(const std::string& model, const std::vector<std::string>& input_specs, const std::string& out_dir,
              const std::string& device, bool force) {
  Graph g = load_onnx(model);
  std::map<std::string, TensorData> inputs;
  for (const auto& spec : input_specs) {
    auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw Error("--input expects NAME=FILE.npy, got '" + spec + "'");
    const std::string name = spec.substr(0, eq), file = spec.substr(eq + 1);
    if (inputs.count(name)) throw Error("input '" + name + "' is given twice");
    try {
      inputs[name] = read_npy(file);
    } catch (const Error& e) {
      throw Error("input '" + name + "': " + e.what());
    }
  }
  // Output problems are reported before the model runs, not after.
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) throw Error("cannot create output directory '" + out_dir + "': " + (ec ? ec.message() : "not a directory"));
  for (const auto& o : g.outputs) {
    const std::string path = (fs::path(out_dir) / (sanitize(o.name) + ".npy")).string();
    if (!force && fs::exists(path)) throw Error("'" + path + "' already exists; pass --force to overwrite it");
  }
  Session session(g, SessionOptions{device, 0});
  auto outputs = session.run(inputs);
  for (const auto& o : g.outputs) {
    const std::string path = (fs::path(out_dir) / (sanitize(o.name) + ".npy")).string();
    write_npy(path, outputs.at(o.name));
    fmt::print("{} {} -> {}\n", o.name, shape_str(outputs.at(o.name).shape), path);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"inlierq: post-training quantization for object detectors"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (0 = all cores)");

  std::string model;
  bool as_json = false;
  auto* inspect = app.add_subcommand("inspect", "print inputs, outputs, op histogram, parameters, MACs and unsupported ops");
  inspect->add_option("model", model, "ONNX model")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");

  std::vector<std::string> input_specs;
  std::string out_dir, device = "cpu";
  bool force = false;
  auto* infer = app.add_subcommand("infer", "run the FP32 model on .npy inputs and write every output as .npy");
  infer->add_option("model", model, "ONNX model")->required();
  infer->add_option("--input", input_specs, "NAME=FILE.npy (repeatable)")->required();
  infer->add_option("--output-dir", out_dir, "directory for <output name>.npy files")->required();
  infer->add_option("--device", device, "cpu or cuda[:N]");
  infer->add_flag("--force", force, "overwrite existing output files");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    init_runtime(threads);
    if (*inspect) return cmd_inspect(model, as_json);
    if (*infer) return cmd_infer(model, input_specs, out_dir, device, force);
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    // Only the first line: c10::Error appends a C++ backtrace that would bury the message.
    const std::string what = e.what();
    fmt::print(stderr, "internal error: {}\n", what.substr(0, what.find('\n')));
    return 3;
  }
  return 0;
}
