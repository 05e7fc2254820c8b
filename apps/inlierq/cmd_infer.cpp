// infer: run the FP32 model on .npy inputs and write every output as .npy.
#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <memory>

#include "cli.h"
#include "inlierq/error.h"
#include "inlierq/npy.h"
#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"

namespace inlierq::cli {

namespace {

namespace fs = std::filesystem;

struct InferArgs {
  std::string model, out_dir, device = "cpu";
  std::vector<std::string> inputs;
  bool force = false;
};

std::string output_file(const std::string& dir, std::string name) {
  for (auto& c : name)
    if (c == '/' || c == '\\') c = '_';
  return (fs::path(dir) / (name + ".npy")).string();
}

int run(const InferArgs& a) {
  Graph g = load_onnx(a.model);
  std::map<std::string, TensorData> inputs;
  for (const auto& spec : a.inputs) {
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
  make_output_dir(a.out_dir);
  for (const auto& o : g.outputs) {
    const std::string path = output_file(a.out_dir, o.name);
    if (!a.force && fs::exists(path)) throw Error("'" + path + "' already exists; pass --force to overwrite it");
  }
  Session session(g, SessionOptions{a.device, 0});
  auto outputs = session.run(inputs);
  for (const auto& o : g.outputs) {
    const std::string path = output_file(a.out_dir, o.name);
    write_npy(path, outputs.at(o.name));
    fmt::print("{} {} -> {}\n", o.name, shape_str(outputs.at(o.name).shape), path);
  }
  return 0;
}

}  // namespace

Command add_infer(CLI::App& app) {
  auto a = std::make_shared<InferArgs>();
  auto* sub = app.add_subcommand("infer", "run the FP32 model on .npy inputs and write every output as .npy");
  sub->add_option("model", a->model, "ONNX model")->required();
  sub->add_option("--input", a->inputs, "NAME=FILE.npy (repeatable)")->required();
  sub->add_option("--output-dir", a->out_dir, "directory for <output name>.npy files")->required();
  sub->add_option("--device", a->device, "cpu or cuda[:N]");
  sub->add_flag("--force", a->force, "overwrite existing output files");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
