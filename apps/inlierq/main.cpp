// inlierq command-line interface.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "inlierq/coco_eval.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"
#include "inlierq/image.h"
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

void make_output_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw Error("cannot create output directory '" + dir + "': " + (ec ? ec.message() : "not a directory"));
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
  make_output_dir(out_dir);
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

// Progress on stderr, at most a few times per second: what, how far, rate, ETA.
class Progress {
 public:
  Progress(std::string what, size_t total) : what_(std::move(what)), total_(total), start_(clock::now()) {}
  void update(size_t done) {
    auto now = clock::now();
    // On a terminal, redraw one line a few times per second; in a log, one line per ~10 %.
    if (done != total_) {
      if (tty_ && now - last_ < std::chrono::milliseconds(250)) return;
      if (!tty_ && done < next_log_) return;
    }
    last_ = now;
    next_log_ = done + std::max<size_t>(1, total_ / 10);
    double secs = std::chrono::duration<double>(now - start_).count();
    double rate = done / std::max(secs, 1e-9);
    fmt::print(stderr, "{}[{}] {}/{} images, {:.1f} img/s, ETA {:.0f} s{}", tty_ ? "\r" : "", what_, done, total_, rate,
               done ? (total_ - done) / rate : 0.0, tty_ ? "   " : "\n");
    if (tty_ && done == total_) fmt::print(stderr, "\n");
  }
  double seconds() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

 private:
  using clock = std::chrono::steady_clock;
  std::string what_;
  size_t total_;
  clock::time_point start_, last_{};
  size_t next_log_ = 0;
  bool tty_ = isatty(2) != 0;
};

coco::Detection to_coco(const BoxDetection& d, int64_t image_id, const ModelProfile& p) {
  if (d.label < 0 || d.label >= static_cast<int>(p.category_ids.size()))
    throw Error("class index " + std::to_string(d.label) + " has no category id in profile '" + p.name + "'");
  coco::Detection c;
  c.image_id = image_id;
  c.category_id = p.category_ids[d.label];
  c.bbox = {d.xyxy[0], d.xyxy[1], d.xyxy[2] - d.xyxy[0], d.xyxy[3] - d.xyxy[1]};
  c.score = d.score;
  return c;
}

std::unique_ptr<Detector> open_detector(const std::string& model, const std::string& profile_name,
                                        const std::string& device) {
  DetectorOptions opts;
  opts.session.device = device;
  return std::make_unique<Detector>(load_onnx(model), load_profile(profile_name), opts);
}

int cmd_eval(const std::string& model, const std::string& profile_name, const std::string& images_dir,
             const std::string& annotations, size_t limit, const std::string& results, bool as_json, bool force,
             const std::string& device) {
  auto detector = open_detector(model, profile_name, device);
  const ModelProfile& profile = detector->profile();
  coco::Dataset gt = coco::load_dataset(annotations);
  if (!results.empty() && !force && fs::exists(results))
    throw Error("'" + results + "' already exists; pass --force to overwrite it");
  std::vector<coco::Image> images = gt.images;
  std::sort(images.begin(), images.end(), [](const coco::Image& a, const coco::Image& b) { return a.id < b.id; });
  if (limit && images.size() > limit) images.resize(limit);
  if (images.empty()) throw Error(annotations + ": no images to evaluate");
  std::vector<coco::Detection> dets;
  std::vector<int64_t> ids;
  Progress progress("eval", images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    const auto path = (fs::path(images_dir) / images[i].file_name).string();
    auto boxes = detector->detect({load_image(path)})[0];
    for (const auto& b : boxes) dets.push_back(to_coco(b, images[i].id, profile));
    ids.push_back(images[i].id);
    progress.update(i + 1);
  }
  coco::EvalResult r = coco::evaluate(gt, dets, ids);
  const double seconds = progress.seconds();
  if (!results.empty()) coco::save_detections(results, dets);
  fmt::print("{}", coco::format_summary(r));
  fmt::print("images: {}, detections: {}, seconds: {:.2f}\n", images.size(), dets.size(), seconds);
  if (as_json) {
    nlohmann::json j{{"model", model}, {"profile", profile.name}, {"map", r.stats[0]}, {"map50", r.stats[1]},
                     {"map75", r.stats[2]}, {"images", images.size()}, {"detections", dets.size()}, {"seconds", seconds}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

int cmd_detect(const std::string& model, const std::string& profile_name, const std::vector<std::string>& files,
               const std::string& draw_dir, bool force, const std::string& device) {
  auto detector = open_detector(model, profile_name, device);
  const ModelProfile& profile = detector->profile();
  if (!draw_dir.empty()) make_output_dir(draw_dir);
  for (const auto& f : files) {
    Image img = load_image(f);
    auto boxes = detector->detect({img})[0];
    fmt::print("{}: {} detections\n", f, boxes.size());
    for (const auto& b : boxes)
      fmt::print("  {:<14} {:.3f}  [{:.1f}, {:.1f}, {:.1f}, {:.1f}]\n", profile.class_names.at(b.label), b.score,
                 b.xyxy[0], b.xyxy[1], b.xyxy[2], b.xyxy[3]);
    if (!draw_dir.empty()) {
      const auto out = (fs::path(draw_dir) / (fs::path(f).stem().string() + ".png")).string();
      if (!force && fs::exists(out)) throw Error("'" + out + "' already exists; pass --force to overwrite it");
      save_png(out, draw_detections(img, boxes, profile.class_names, 0.3f));
      fmt::print("  drawn: {}\n", out);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_passive_openmp(argv);
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

  std::string profile_name, images_dir, annotations, results;
  size_t limit = 0;
  auto* eval = app.add_subcommand("eval", "COCO mAP of the FP32 (or QDQ) model on an annotated image folder");
  eval->add_option("model", model, "ONNX model")->required();
  eval->add_option("--profile", profile_name, "built-in profile (yolox, nanodet, fastestdet) or JSON path")->required();
  eval->add_option("--images", images_dir, "image folder")->required();
  eval->add_option("--annotations", annotations, "COCO instances JSON")->required();
  eval->add_option("--limit", limit, "evaluate the first N images by ascending image id");
  eval->add_option("--results", results, "write COCO-format detections here");
  eval->add_flag("--json", as_json, "print one JSON object as the last line");
  eval->add_flag("--force", force, "overwrite --results");
  eval->add_option("--device", device, "cpu or cuda[:N]");

  std::vector<std::string> image_files;
  std::string draw_dir;
  auto* detect = app.add_subcommand("detect", "print detections for images, optionally drawing them");
  detect->add_option("model", model, "ONNX model")->required();
  detect->add_option("--profile", profile_name, "built-in profile or JSON path")->required();
  detect->add_option("images", image_files, "image files")->required();
  detect->add_option("--draw", draw_dir, "write PNGs with labelled boxes here");
  detect->add_flag("--force", force, "overwrite drawn PNGs");
  detect->add_option("--device", device, "cpu or cuda[:N]");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    init_runtime(threads);
    if (*inspect) return cmd_inspect(model, as_json);
    if (*infer) return cmd_infer(model, input_specs, out_dir, device, force);
    if (*eval) return cmd_eval(model, profile_name, images_dir, annotations, limit, results, as_json, force, device);
    if (*detect) return cmd_detect(model, profile_name, image_files, draw_dir, force, device);
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
