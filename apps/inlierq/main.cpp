// inlierq command-line interface.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <set>

#include "ort_latency.h"
#include "inlierq/coco_eval.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"
#include "inlierq/interrupt.h"
#include "inlierq/image.h"
#include "inlierq/npy.h"
#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"
#include "inlierq/dataset.h"
#include "inlierq/preprocess.h"
#include "inlierq/quant.h"
#include "inlierq/recon.h"
#include "inlierq/inlier.h"
#include "inlierq/report.h"
#include "inlierq/transforms.h"
#include "util/atomic_file.h"

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
  using clock = std::chrono::steady_clock;
  Progress(std::string what, size_t total, clock::time_point start = clock::now())
      : what_(std::move(what)), total_(total), start_(start) {}
  void update(size_t done) {
    throw_if_interrupted();  // long loops report progress, so this is where they stop on Ctrl-C
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

struct EvalOutcome {
  coco::EvalResult result;
  std::vector<coco::Detection> detections;
  std::vector<std::string> skipped;  // "cannot decode image 'path': reason"
  size_t images = 0;                 // evaluated (decoded) images
  double seconds = 0;
};

// COCO evaluation of the first `limit` images (ascending id) of gt; shows progress as `label`.
EvalOutcome evaluate_on(Detector& detector, const coco::Dataset& gt, const std::string& images_dir, size_t limit,
                        const std::string& label) {
  const ModelProfile& profile = detector.profile();
  std::vector<coco::Image> images = gt.images;
  std::sort(images.begin(), images.end(), [](const coco::Image& a, const coco::Image& b) { return a.id < b.id; });
  if (limit && images.size() > limit) images.resize(limit);
  if (images.empty()) throw Error("no images to evaluate");
  EvalOutcome out;
  std::vector<int64_t> ids;
  Progress progress(label, images.size());
  // The next image is decoded on another thread while the network runs on this one. A missing file is an
  // error (the annotations name it); one that exists but does not decode is skipped by name and left out
  // of the evaluation, so that its ground truth does not count as missed.
  struct Loaded {
    Image img;
    std::string error;
  };
  auto load = [&](size_t i) {
    const std::string path = (fs::path(images_dir) / images[i].file_name).string();
    std::error_code ec;
    if (!fs::exists(path, ec))
      throw Error("image '" + path + "' named in the annotations (id " + std::to_string(images[i].id) + ") does not exist");
    Loaded l;
    try {
      l.img = load_image(path);
    } catch (const Error& e) {
      l.error = e.what();
    }
    return l;
  };
  std::future<Loaded> next = std::async(std::launch::async, load, 0);
  for (size_t i = 0; i < images.size(); ++i) {
    Loaded l = next.get();
    if (i + 1 < images.size()) next = std::async(std::launch::async, load, i + 1);
    progress.update(i + 1);
    if (!l.error.empty()) {
      fmt::print(stderr, "warning: {}; skipped, left out of the evaluation\n", l.error);
      out.skipped.push_back(l.error);
      continue;
    }
    auto boxes = detector.detect({l.img})[0];
    for (const auto& b : boxes) out.detections.push_back(to_coco(b, images[i].id, profile));
    ids.push_back(images[i].id);
  }
  if (ids.empty()) throw Error("none of the " + std::to_string(images.size()) + " images in '" + images_dir + "' decodes");
  out.result = coco::evaluate(gt, out.detections, ids);
  out.seconds = progress.seconds();
  out.images = ids.size();
  return out;
}

int cmd_eval(const std::string& model, const std::string& profile_name, const std::string& images_dir,
             const std::string& annotations, size_t limit, const std::string& results, bool as_json, bool force,
             const std::string& device) {
  auto detector = open_detector(model, profile_name, device);
  const ModelProfile& profile = detector->profile();
  coco::Dataset gt = coco::load_dataset(annotations);
  if (!results.empty() && !force && fs::exists(results))
    throw Error("'" + results + "' already exists; pass --force to overwrite it");
  if (gt.images.empty()) throw Error(annotations + ": no images to evaluate");
  EvalOutcome e = evaluate_on(*detector, gt, images_dir, limit, "eval");
  const coco::EvalResult& r = e.result;
  if (!results.empty()) coco::save_detections(results, e.detections);
  fmt::print("{}", coco::format_summary(r));
  fmt::print("images: {}, detections: {}, seconds: {:.2f}\n", e.images, e.detections.size(), e.seconds);
  if (as_json) {
    nlohmann::json j{{"model", model}, {"profile", profile.name}, {"map", r.stats[0]}, {"map50", r.stats[1]},
                     {"map75", r.stats[2]}, {"images", e.images}, {"detections", e.detections.size()}, {"seconds", e.seconds},
                     {"skipped_images", e.skipped}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

struct QuantizeArgs {
  std::string model, profile, calib_dir, out, preset, method = "minmax", weight_method = "mse", device = "cpu";
  std::string layout = "auto";
  std::string weight_type = "auto";
  bool ort_latency = true;
  size_t num_calib = 64;
  int wbits = 0, abits = 0, batch = 8;
  uint64_t seed = 0;
  double percentile = 99.99;
  bool act_symmetric = false, quantize_head = false, force = false, as_json = false, separate_concat_scales = false;
  std::vector<std::string> exclude;
  std::string config;
  std::string eval_images, eval_annotations;
  size_t eval_limit = 0;
  int fallback = 0;
  size_t sensitivity_images = 8;
  bool sensitivity = false;
  // reconstruction (--method adaround | brecq | qdrop)
  std::string init_method = "mse";
  recon::ReconOptions recon;
  double time_limit_min = 0;
  std::string checkpoint_dir;
  bool resume = false;
  std::string base = "qdrop";
};

bool is_reconstruction(const std::string& method) {
  const auto m = recon::reconstruction_methods();
  return method == "inlierq" || std::find(m.begin(), m.end(), method) != m.end();
}

// --method inlierq is InlierQ on top of --base (qdrop or brecq).
recon::ReconOptions recon_options(const QuantizeArgs& a) {
  recon::ReconOptions ro = a.recon;
  ro.method = a.method;
  if (a.method == "inlierq") {
    if (a.base != "qdrop" && a.base != "brecq") throw Error("--base must be qdrop or brecq, got '" + a.base + "'");
    ro.method = a.base;
    ro.inlier = true;
  }
  return ro;
}

// Bit widths from --preset wNaM or --wbits/--abits.
std::pair<int, int> resolve_bits(const QuantizeArgs& a) {
  if (!a.preset.empty()) {
    if (a.wbits || a.abits) throw Error("give either --preset or --wbits/--abits, not both");
    int w = 0, x = 0;
    char tail = 0;
    if (std::sscanf(a.preset.c_str(), "w%da%d%c", &w, &x, &tail) != 2 || w < 2 || w > 8 || x < 2 || x > 8)
      throw Error("unknown preset '" + a.preset + "' (expected wNaM with N, M in 2..8, e.g. w8a8, w4a8, w4a4, w2a4)");
    return {w, x};
  }
  if (!a.wbits || !a.abits) throw Error("give --preset (e.g. w8a8) or both --wbits and --abits");
  return {a.wbits, a.abits};
}

// Placement options from the command line (bit widths, head/concat policy, exclusions, --config).
quant::PlacementOptions placement_options(const QuantizeArgs& a) {
  const auto [wbits, abits] = resolve_bits(a);
  quant::PlacementOptions po;
  po.weight_bits = wbits;
  po.act_bits = abits;
  po.act_symmetric = a.act_symmetric;
  po.quantize_head = a.quantize_head;
  po.share_concat_scales = !a.separate_concat_scales;
  po.layout = quant::parse_layout(a.layout);
  po.exclude = a.exclude;
  if (!a.config.empty()) {
    std::ifstream f(a.config);
    if (!f) throw Error("cannot open quantization config '" + a.config + "'");
    try {
      po.overrides = nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      throw Error(a.config + ": not valid JSON: " + e.what());
    }
  }
  return po;
}

std::string strip_onnx_suffix(const std::string& path) {
  const std::string ext = ".onnx";
  return path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0
             ? path.substr(0, path.size() - ext.size())
             : path;
}

// Nearest-neighbour downscale so that the longer side is at most max_side (report thumbnails).
Image thumbnail(const Image& img, int max_side) {
  const int side = std::max(img.width, img.height);
  if (side <= max_side) return img;
  const double f = static_cast<double>(max_side) / side;
  Image out(std::max(1, static_cast<int>(img.width * f)), std::max(1, static_cast<int>(img.height * f)), img.channels);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const uint8_t* s = img.at(std::min(img.width - 1, static_cast<int>(x / f)), std::min(img.height - 1, static_cast<int>(y / f)));
      std::copy(s, s + img.channels, out.at(x, y));
    }
  return out;
}

// Saliency | posterior panels of `maps` over each image (thumbnails of at most max_side pixels).
std::vector<std::pair<std::string, Image>> saliency_figures(const std::vector<inlier::SaliencyMaps>& maps,
                                                            const std::vector<std::string>& paths,
                                                            const std::vector<InputTransform>& transforms, int max_side) {
  std::vector<std::pair<std::string, Image>> out;
  for (size_t i = 0; i < paths.size(); ++i) {
    const Image full = load_image(paths[i]);
    const Image img = thumbnail(full, max_side);
    const float sx = static_cast<float>(full.width) / img.width, sy = static_cast<float>(full.height) / img.height;
    const InputTransform& t = transforms[i];
    for (const auto& m : maps) {
      auto to_cell = [&](float x, float y) {
        const float ix = x * sx * t.scale_x + t.offset_x, iy = y * sy * t.scale_y + t.offset_y;
        return std::pair<float, float>{ix / t.input_width * m.cols, iy / t.input_height * m.rows};
      };
      out.push_back({fmt::format("{} at {} ({}×{}): saliency | inlier posterior", fs::path(paths[i]).filename().string(), m.value,
                                 m.rows, m.cols),
                     report::side_by_side({report::overlay(img, m.saliency[i], m.rows, m.cols, to_cell),
                                           report::overlay(img, m.posterior[i], m.rows, m.cols, to_cell)})});
    }
  }
  return out;
}

// Outputs of the last `count` units: the feature maps next to the head, where the posterior is most telling.
std::vector<std::string> last_unit_outputs(const std::vector<recon::Unit>& units, size_t count) {
  std::vector<std::string> v;
  for (size_t i = units.size() > count ? units.size() - count : 0; i < units.size(); ++i) v.push_back(units[i].outputs.front());
  return v;
}

int cmd_quantize(const QuantizeArgs& a) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto [wbits, abits] = resolve_bits(a);
  const bool recon_method = is_reconstruction(a.method);
  const std::string act_method = recon_method ? a.init_method : a.method;
  const auto methods = quant::calibration_methods();
  if (std::find(methods.begin(), methods.end(), act_method) == methods.end())
    throw Error(recon_method ? "unknown --init-method '" + act_method + "' (expected minmax, percentile, entropy or mse)"
                             : "unknown method '" + a.method + "' (expected a calibration method: minmax, percentile, entropy, mse; "
                               "or a reconstruction method: adaround, brecq, qdrop, inlierq)");
  if (a.weight_type != "auto" && a.weight_type != "int8" && a.weight_type != "uint8")
    throw Error("unknown --weight-type '" + a.weight_type + "' (expected auto, int8 or uint8)");
  quant::parse_layout(a.layout);  // rejects an unknown layout before any work
  if (a.weight_method != "mse" && a.weight_method != "minmax")
    throw Error("unknown weight calibration method '" + a.weight_method + "' (expected mse or minmax)");
  if (a.num_calib == 0) throw Error("--num-calib must be at least 1");
  if (a.fallback < 0) throw Error("--fallback must be ≥ 0");
  if (!a.eval_images.empty() != !a.eval_annotations.empty())
    throw Error("--eval-images and --eval-annotations go together");
  const std::string base = strip_onnx_suffix(a.out);
  const std::string out_onnx = base + ".onnx", out_enc = base + ".encodings.json", out_trt = base + ".trt.cache",
                    out_report = base + ".report.html";
  if (fs::absolute(out_onnx).lexically_normal() == fs::absolute(a.model).lexically_normal())
    throw Error("-o would overwrite the input model '" + a.model + "'");
  for (const auto& p : {out_onnx, out_enc, out_trt, out_report}) ensure_writable(p, a.force);
  ensure_output_folder(out_onnx);
  const OutputLock lock(out_onnx);  // held until the command returns
  const std::string checkpoint_dir = a.checkpoint_dir.empty() ? base + ".ckpt" : a.checkpoint_dir;
  if (recon_method && !a.resume && fs::exists(fs::path(checkpoint_dir) / "state.json")) {
    if (!a.force)
      throw Error("a checkpoint of an interrupted run exists in '" + checkpoint_dir +
                  "'; pass --resume to continue it or --force to start over");
    fs::remove_all(checkpoint_dir);
  }
  if (recon_method) recon::validate_options(recon_options(a));
  if (a.resume && !recon_method) throw Error("--resume applies to --method adaround, brecq, qdrop or inlierq");
  if (a.time_limit_min < 0) throw Error("--time-limit must be > 0 minutes");
  if (a.time_limit_min > 0 && !recon_method) throw Error("--time-limit applies to --method adaround, brecq, qdrop or inlierq");
  if (a.resume) {
    const auto state = fs::path(checkpoint_dir) / "state.json";
    std::ifstream f(state);
    if (!f) throw Error("--resume: no checkpoint in '" + checkpoint_dir + "'");
    // Unreadable state fails now, not after calibration (reconstruct() checks the contents against the run).
    try {
      (void)nlohmann::json::parse(f);
    } catch (const std::exception& e) {
      throw Error(state.string() + ": corrupt checkpoint: " + e.what());
    }
  }
  const auto out_dir = fs::path(out_onnx).parent_path();
  if (!out_dir.empty()) make_output_dir(out_dir.string());

  const ModelProfile profile = load_profile(a.profile);
  const Graph original = load_onnx(a.model);
  ModelSummary summary = summarize(original);
  if (!summary.unsupported.empty())
    throw Error(a.model + ": node '" + summary.unsupported[0]->name + "' uses unsupported op '" + summary.unsupported[0]->op_type + "'");
  PrepareReport prep;
  const Graph g = prepare_for_quantization(original, a.model, &prep);
  const double t_prepare = std::chrono::duration<double>(clock::now() - t0).count();

  const quant::PlacementOptions po = placement_options(a);
  const quant::QuantPlan plan = quant::derive_plan(g, po);
  fmt::print(stderr, "[plan] {} weight and {} activation quantizers ({} scale groups); {} compute nodes in floating point\n",
             plan.weights.size(), plan.activations.size(), plan.num_groups, plan.float_nodes.size());

  // Calibration images: the first N images of the folder that decode, in sorted path order; files that do
  // not decode are skipped by name.
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms_of_inputs;
  ImageFolder folder;
  {
    Progress progress("load calibration images", a.num_calib);
    folder = load_image_folder(a.calib_dir, a.num_calib, [&](size_t i, const std::string&, Image&& img) {
      Preprocessed pp = preprocess(img, profile.preprocess);
      inputs.push_back(std::move(pp.tensor));
      transforms_of_inputs.push_back(pp.transform);
      progress.update(i + 1);
    });
  }
  for (const auto& w : folder.warnings) fmt::print(stderr, "warning: {}; skipped\n", w);
  if (folder.paths.size() < a.num_calib)
    fmt::print(stderr, "warning: {} has only {} decodable images; calibrating on {} (asked for {})\n", a.calib_dir,
               folder.paths.size(), folder.paths.size(), a.num_calib);
  const double t_images = std::chrono::duration<double>(clock::now() - t0).count();
  quant::CalibrationOptions co;
  co.method = act_method;
  co.weight_method = a.weight_method;
  co.percentile = a.percentile;
  co.batch = a.batch;
  co.device = a.device;
  std::unique_ptr<Progress> progress;
  int current_pass = 0;
  // The first report of a pass comes after its first batch: the pass began at the previous report.
  auto pass_start = Progress::clock::now();
  co.progress = [&](int pass, int passes, size_t done, size_t total) {
    if (pass != current_pass) {
      current_pass = pass;
      progress = std::make_unique<Progress>(fmt::format("calibrate {} pass {}/{}", act_method, pass, passes), total, pass_start);
    }
    progress->update(done);
    pass_start = Progress::clock::now();
  };
  quant::Encodings enc = quant::calibrate(g, plan, inputs, co);
  progress.reset();
  quant::QuantPlan final_plan = plan;
  if (a.fallback > 0 || a.sensitivity) {
    const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + std::min(inputs.size(), a.sensitivity_images));
    Progress sp("sensitivity (one quantizer group at a time)", plan.num_groups);
    auto sens = quant::activation_sensitivity(g, plan, enc, probe, a.device, [&](size_t d, size_t) { sp.update(d); });
    fmt::print(stderr, "most harmful activation quantizers alone (output SQNR over {} images):\n", probe.size());
    nlohmann::json js = nlohmann::json::array();
    for (size_t i = 0; i < sens.size(); ++i) {
      std::string vals;
      for (const auto& v : sens[i].values) vals += (vals.empty() ? "" : ",") + v;
      if (i < 8) fmt::print(stderr, "  {:>6.1f} dB  {}\n", sens[i].sqnr_db, vals);
      js.push_back({{"values", sens[i].values}, {"sqnr_db", sens[i].sqnr_db}});
    }
    enc.meta["sensitivity"] = js;
    std::vector<int> drop;
    for (int i = 0; i < a.fallback && i < static_cast<int>(sens.size()); ++i) drop.push_back(sens[i].group);
    if (!drop.empty()) {
      quant::drop_activation_groups(final_plan, enc, drop, "sensitivity fallback");
      fmt::print(stderr, "[fallback] {} activation quantizer group(s) left in floating point\n", drop.size());
    }
    enc.meta["fallback_groups"] = drop.size();
  }
  const double t_calibrated = std::chrono::duration<double>(clock::now() - t0).count();
  Graph quantized_weights = g;  // reconstruction writes hardened weights here
  double t_reconstructed = t_calibrated;
  if (recon_method) {
    recon::ReconOptions ro = recon_options(a);
    ro.heatmap = profile.heatmap;
    ro.seed = a.seed;
    ro.device = a.device;
    ro.checkpoint_dir = checkpoint_dir;
    ro.resume = a.resume;
    // A resumed run must see the same model, plan, bits and calibration images.
    ro.fingerprint = nlohmann::json{{"model", fs::absolute(a.model).string()}, {"model_bytes", fs::file_size(a.model)},
                                    {"plan", final_plan.to_json()}, {"files", folder.paths}, {"init", act_method},
                                    {"weight_method", a.weight_method}}.dump();
    auto last = clock::now() - std::chrono::seconds(10);
    ro.progress = [&](const recon::ReconOptions::Progress& p) {
      if (clock::now() - last < std::chrono::milliseconds(isatty(2) ? 250 : 10000) && p.iter != p.iters) return;
      last = clock::now();
      const int eta = static_cast<int>(p.eta_seconds);
      fmt::print(stderr, "{}{}{} unit {}/{} '{}' iter {}/{} loss {:.4g}  ETA {}:{:02d}:{:02d}{}", isatty(2) ? "\r\033[K" : "",
                 a.method, p.passes > 1 ? fmt::format(" pass {}/{}", p.pass, p.passes) : "", p.unit, p.units, p.unit_name,
                 p.iter, p.iters, p.loss, eta / 3600, eta / 60 % 60, eta % 60, isatty(2) ? "" : "\n");
    };
    ro.log = [&](const std::string& line) { fmt::print(stderr, "{}{}\n", isatty(2) ? "\r\033[K" : "", line); };
    if (a.time_limit_min > 0) {
      // The limit covers the whole command: what calibration took is spent; export and the report take ~2 %.
      const double spent = std::chrono::duration<double>(clock::now() - t0).count();
      ro.time_limit_s = std::max(1.0, a.time_limit_min * 60 * 0.98 - spent);
      fmt::print(stderr, "[recon] {}: time limit {:g} min ({:.0f} s left for reconstruction), batch {}, seed {}\n", a.method,
                 a.time_limit_min, ro.time_limit_s, ro.batch, ro.seed);
    } else {
      fmt::print(stderr, "[recon] {}: {} iterations per unit, batch {}, seed {}\n", a.method, ro.iters, ro.batch, ro.seed);
    }
    recon::ReconResult rr;
    try {
      rr = recon::reconstruct(quantized_weights, final_plan, enc, inputs, ro);
    } catch (const Interrupted& e) {
      const bool have = fs::exists(fs::path(checkpoint_dir) / "state.json");
      throw Interrupted(e.signal(), have ? fmt::format("interrupted by {}; the checkpoint in {} keeps the finished units: run the "
                                                       "same command with --resume to continue", Interrupted::signal_name(e.signal()),
                                                       checkpoint_dir)
                                         : fmt::format("interrupted by {} before the first unit finished (no checkpoint yet)",
                                                       Interrupted::signal_name(e.signal())));
    }
    if (!rr.completed) {
      fmt::print(stderr, "[recon] stopped after {} units as asked; checkpoint in {} (continue with --resume)\n",
                 rr.reports.size(), checkpoint_dir);
      return 4;
    }
    nlohmann::json rj = rr.to_json();
    rj["method"] = a.method;
    rj["init_method"] = act_method;
    rj["iters"] = rr.iters;
    if (a.time_limit_min > 0) rj["time_limit_min"] = a.time_limit_min;
    rj["batch"] = ro.batch;
    rj["seed"] = ro.seed;
    rj["max_cache_mb"] = ro.max_cache_mb;
    rj["unit_list"] = recon::units_json(rr.units);
    enc.meta["reconstruction"] = rj;
    t_reconstructed = std::chrono::duration<double>(clock::now() - t0).count();
    fmt::print(stderr, "[recon] {} units in {:.1f} s (peak activation cache {:.0f} MB{})\n", rr.units.size(), rr.seconds,
               rr.peak_cache_bytes / 1048576.0,
               rr.spilled_bytes ? fmt::format(", {:.0f} MB spilled to disk", rr.spilled_bytes / 1048576.0) : std::string());
  }
  enc.meta["model"] = a.model;
  enc.meta["profile"] = profile.name;
  enc.meta["preset"] = fmt::format("w{}a{}", wbits, abits);
  enc.meta["calibration_folder"] = a.calib_dir;
  enc.meta["calibration_files"] = folder.paths;
  enc.meta["skipped_images"] = folder.warnings;
  enc.meta["seed"] = a.seed;
  enc.meta["folded_batchnorms"] = prep.folded_batchnorms;
  enc.meta["opset"] = {{"original", prep.original_opset}, {"exported", prep.opset}};

  const size_t requantizers = quant::add_requantizers(quantized_weights, final_plan, enc);
  enc.meta["requantizers"] = requantizers;
  enc.meta["plan"] = final_plan.to_json();
  quant::ExportOptions xo;
  xo.unsigned_weights = a.weight_type == "uint8" || (a.weight_type == "auto" && final_plan.layout == quant::QdqLayout::Ort);
  enc.meta["weight_storage"] = xo.unsigned_weights ? "uint8, zero point + 128" : "int8";
  // Share of the compute MACs in the pattern ORT fuses into integer kernels (tests/py/test_qdq_vs_ort.py
  // checks the rule against ORT's optimised graph).
  int64_t all_macs = 0, quantized_macs = 0;
  {
    const auto integer_nodes = quant::integer_compute_nodes(quantized_weights, final_plan);
    const std::set<std::string> quantized_nodes(integer_nodes.begin(), integer_nodes.end());
    for (const auto& n : g.nodes) {
      const int64_t m = node_macs(g, n);
      all_macs += m;
      if (quantized_nodes.count(n.name)) quantized_macs += m;
    }
  }
  const double quantized_fraction = all_macs ? static_cast<double>(quantized_macs) / all_macs : 0.0;
  Graph qdq = quant::make_qdq_graph(quantized_weights, final_plan, enc, xo);
  save_onnx(qdq, out_onnx);
  const auto out_bytes = fs::file_size(out_onnx), in_bytes = fs::file_size(a.model);
  enc.meta["export"] = {{"layout", quant::layout_name(final_plan.layout)}, {"weight_storage", enc.meta["weight_storage"]},
                        {"bytes", out_bytes}, {"fp32_bytes", in_bytes}, {"integer_mac_fraction", quantized_fraction},
                        {"float_nodes", final_plan.float_nodes.size()}};
  fmt::print("export: layout {}, {:.2f} MB ({:.2f} MB FP32), {:.0f} % of compute MACs in integer kernels ({} compute nodes in floating point: {})\n",
             quant::layout_name(final_plan.layout), out_bytes / 1e6, in_bytes / 1e6, 100 * quantized_fraction,
             final_plan.float_nodes.size(), final_plan.float_nodes.empty() ? std::string("none") : final_plan.float_reasons.front() + ", ...");
  if (a.ort_latency) {
    const nlohmann::json lat = cli::ort_latency(a.model, out_onnx);
    enc.meta["export"]["ort_latency"] = lat;
    if (lat.contains("quantized_ms"))
      fmt::print("ONNX Runtime (CPU, 1 thread, median of {} runs): FP32 {:.2f} ms, quantized {:.2f} ms ({:.2f}× FP32)\n",
                 lat.value("runs", 0), lat["fp32_ms"].get<double>(), lat["quantized_ms"].get<double>(), lat["ratio"].get<double>());
    else
      fmt::print("ONNX Runtime latency: skipped ({})\n", lat.value("skipped", std::string("?")));
  }
  write_file_atomically(out_enc, quant::encodings_json(enc).dump(1) + "\n");
  bool wrote_trt = false;
  for (const auto& [n, ae] : enc.activations) wrote_trt |= ae.bits == 8;
  if (wrote_trt) write_file_atomically(out_trt, quant::tensorrt_cache(enc));
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
  fmt::print("wrote {} (opset {}), {}{}\n", out_onnx, qdq.opset, out_enc, wrote_trt ? ", " + out_trt : std::string());
  if (recon_method) {
    std::error_code ec;
    fs::remove_all(checkpoint_dir, ec);  // the run finished; its outputs are written
  }
  fmt::print("{}: {} on {} images, W{}A{}, {:.2f} s (model load + preparation {:.2f} s, images {:.2f} s, "
             "calibration{} {:.2f} s{}, export {:.2f} s)\n",
             recon_method ? "reconstruction" : "calibration", a.method, inputs.size(), wbits, abits, seconds, t_prepare,
             t_images - t_prepare, a.fallback > 0 || a.sensitivity ? " + sensitivity" : "", t_calibrated - t_images,
             recon_method ? fmt::format(", reconstruction {:.2f} s", t_reconstructed - t_calibrated) : std::string(),
             seconds - t_reconstructed);

  nlohmann::json j{{"output", out_onnx}, {"encodings", out_enc}, {"trt_cache", wrote_trt ? nlohmann::json(out_trt) : nlohmann::json()},
                   {"method", a.method}, {"wbits", wbits}, {"abits", abits}, {"calibration_images", inputs.size()},
                   {"weight_quantizers", final_plan.weights.size()}, {"activation_quantizers", final_plan.activations.size()},
                   {"fallback", a.fallback}, {"layout", quant::layout_name(final_plan.layout)},
                   {"bytes", out_bytes}, {"integer_mac_fraction", quantized_fraction},
                   {"ort_latency", enc.meta["export"].value("ort_latency", nlohmann::json())},
                   {"seconds", seconds}};
  if (recon_method) {
    j["reconstruction_seconds"] = t_reconstructed - t_calibrated;
    j["init_method"] = act_method;
    j["iters"] = enc.meta["reconstruction"].value("iters", a.recon.iters);
    j["seed"] = a.seed;
    j["peak_cache_mb"] = enc.meta["reconstruction"]["peak_cache_mb"];
  }
  if (!a.eval_images.empty()) {
    coco::Dataset gt = coco::load_dataset(a.eval_annotations);
    DetectorOptions dopts;
    dopts.session.device = a.device;
    Detector fp(g, profile, dopts);
    EvalOutcome e_fp = evaluate_on(fp, gt, a.eval_images, a.eval_limit, "eval FP32");
    Detector qd(qdq, profile, dopts);
    EvalOutcome e_q = evaluate_on(qd, gt, a.eval_images, a.eval_limit, fmt::format("eval W{}A{}", wbits, abits));
    fmt::print("\n{:<10} {:>8} {:>8} {:>8}   ({} images of {})\n", "model", "mAP", "AP50", "AP75", e_q.images, a.eval_annotations);
    fmt::print("{:<10} {:>8.4f} {:>8.4f} {:>8.4f}\n", "FP32", e_fp.result.stats[0], e_fp.result.stats[1], e_fp.result.stats[2]);
    fmt::print("{:<10} {:>8.4f} {:>8.4f} {:>8.4f}   ({} calibration, Δ mAP {:+.4f})\n", fmt::format("W{}A{}", wbits, abits),
               e_q.result.stats[0], e_q.result.stats[1], e_q.result.stats[2], a.method,
               e_q.result.stats[0] - e_fp.result.stats[0]);
    j["fp32_map"] = e_fp.result.stats[0];
    j["fp32_map50"] = e_fp.result.stats[1];
    j["map"] = e_q.result.stats[0];
    j["map50"] = e_q.result.stats[1];
    j["eval_images"] = e_q.images;
  }
  // The report: saliency pictures of a few calibration images at the units next to the head.
  std::vector<report::Figure> figures;
  if (profile.heatmap.contains("sources")) {
    try {
      const auto units = recon::derive_units(g, final_plan);
      const size_t shown = std::min<size_t>(3, inputs.size());
      recon::ReconOptions so = recon_method ? recon_options(a) : a.recon;
      so.heatmap = profile.heatmap;
      so.device = a.device;
      const std::vector<TensorData> probe(inputs.begin(), inputs.begin() + static_cast<long>(shown));
      const auto maps = inlier::saliency_maps(g, last_unit_outputs(units, 2), probe, so);
      std::vector<InputTransform> transforms;
      for (size_t i = 0; i < shown; ++i) transforms.push_back(transforms_of_inputs[i]);
      const std::vector<std::string> paths(folder.paths.begin(), folder.paths.begin() + static_cast<long>(shown));
      for (auto& [caption, img] : saliency_figures(maps, paths, transforms, 320)) figures.push_back({caption, encode_png(img)});
    } catch (const std::exception& e) {
      fmt::print(stderr, "warning: no saliency figures in the report: {}\n", e.what());
    }
  }
  enc.meta["stage_seconds"] = {{"load + prepare", t_prepare}, {"images", t_images - t_prepare},
                               {"calibration", t_calibrated - t_images}, {"reconstruction", t_reconstructed - t_calibrated},
                               {"export", seconds - t_reconstructed}};
  enc.meta["method"] = a.method;
  nlohmann::json evaluation;
  if (j.contains("map")) evaluation = {{"fp32_map", j["fp32_map"]}, {"fp32_map50", j["fp32_map50"]}, {"map", j["map"]},
                                       {"map50", j["map50"]}, {"eval_images", j["eval_images"]}, {"annotations", a.eval_annotations}};
  write_file_atomically(out_report, report::quantize_report_html(enc.meta, figures, evaluation));
  fmt::print("report: {}\n", out_report);
  j["report"] = out_report;
  if (a.as_json) std::cout << j.dump() << std::endl;
  return 0;
}

// The prepared graph and its quantization plan for inspect --plan / --units and saliency. The profile name
// is only validated: placement is derived from the graph.
std::pair<Graph, quant::QuantPlan> prepared_plan(const std::string& model, const std::string& profile_name, const std::string& preset,
                                                 bool quantize_head = false, const std::vector<std::string>& exclude = {},
                                                 const std::string& layout = "auto") {
  QuantizeArgs a;
  a.preset = preset;
  a.layout = layout;
  a.quantize_head = quantize_head;
  a.exclude = exclude;
  if (!profile_name.empty()) load_profile(profile_name);
  Graph g = prepare_for_quantization(load_onnx(model), model);
  quant::QuantPlan plan = quant::derive_plan(g, placement_options(a));
  return {std::move(g), std::move(plan)};
}

int cmd_plan(const std::string& model, const std::string& profile_name, const std::string& preset, bool quantize_head,
             const std::vector<std::string>& exclude, const std::string& layout, bool as_json) {
  QuantizeArgs a;
  a.preset = preset;
  const auto [wbits, abits] = resolve_bits(a);
  const auto [g, plan] = prepared_plan(model, profile_name, preset, quantize_head, exclude, layout);
  if (as_json) std::cout << plan.to_json().dump(2) << "\n";
  else fmt::print("quantization plan for {} (W{}A{})\n{}", model, wbits, abits, plan.format());
  return 0;
}

int cmd_units(const std::string& model, const std::string& profile_name, const std::string& preset, bool quantize_head,
              const std::vector<std::string>& exclude, const recon::UnitOptions& uo, bool as_json) {
  const auto [g, plan] = prepared_plan(model, profile_name, preset, quantize_head, exclude);
  const auto units = recon::derive_units(g, plan, uo);
  if (as_json) std::cout << recon::units_json(units).dump(2) << "\n";
  else fmt::print("{}", recon::format_units(units));
  return 0;
}

struct SaliencyArgs {
  std::string model, profile, out_dir, preset = "w4a4", device = "cpu";
  std::vector<std::string> images, units;
  recon::ReconOptions opts;
  bool force = false;
};

// Per chosen unit output: IMAGE_STEM.VALUE.png (saliency | inlier posterior over the image) and
// VALUE.histogram.svg (standardised log-saliency histogram with the fitted mixture), plus saliency.json.
int cmd_saliency(const SaliencyArgs& a) {
  const ModelProfile profile = load_profile(a.profile);
  const auto [g, plan] = prepared_plan(a.model, "", a.preset);
  const auto units = recon::derive_units(g, plan);
  std::vector<std::string> values;
  for (const auto& want : a.units) {
    if (want == "all") {
      for (const auto& u : units) values.insert(values.end(), u.outputs.begin(), u.outputs.end());
      continue;
    }
    bool found = false;
    for (const auto& u : units) {
      if (u.name == want) values.insert(values.end(), u.outputs.begin(), u.outputs.end()), found = true;
      else if (std::find(u.outputs.begin(), u.outputs.end(), want) != u.outputs.end()) values.push_back(want), found = true;
    }
    if (!found) throw Error("--unit '" + want + "' names no reconstruction unit or unit output (see inspect --units)");
  }
  if (values.empty()) values = last_unit_outputs(units, 3);
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms;
  for (const auto& f : a.images) {
    Preprocessed p = preprocess(load_image(f), profile.preprocess);
    inputs.push_back(std::move(p.tensor));
    transforms.push_back(p.transform);
  }
  make_output_dir(a.out_dir);
  recon::ReconOptions so = a.opts;
  so.heatmap = profile.heatmap;
  so.device = a.device;
  recon::validate_options(so);
  const auto maps = inlier::saliency_maps(g, values, inputs, so);
  std::vector<std::string> written;
  auto out = [&](const std::string& name) {
    const std::string path = (fs::path(a.out_dir) / name).string();
    ensure_writable(path, a.force);
    written.push_back(path);
    return path;
  };
  nlohmann::json summary = nlohmann::json::object();
  for (const auto& m : maps) {
    std::string safe = m.value;
    for (char& c : safe) if (c == '/' || c == ':' || c == ' ') c = '_';
    write_file_atomically(out(safe + ".histogram.svg"), report::mixture_svg(m.fit, m.value + fmt::format(" ({}×{}, {} images)", m.rows, m.cols, inputs.size())));
    summary[m.value] = m.fit;
    const auto figs = saliency_figures({m}, a.images, transforms, 100000);
    for (size_t i = 0; i < figs.size(); ++i)
      save_png(out(fs::path(a.images[i]).stem().string() + "." + safe + ".png"), figs[i].second);
    fmt::print("{} ({}×{}): EM means {:.2f} / {:.2f}, inlier prior {:.2f}, Ashman D {:.2f}{}\n", m.value, m.rows, m.cols,
               m.fit["means"][0].get<double>(), m.fit["means"][1].get<double>(), m.fit["priors"][1].get<double>(),
               m.fit["ashman_d"].get<double>(),
               m.fit["fallback"].get<bool>() ? " (fallback to uniform weights)" : "");
  }
  write_file_atomically(out("saliency.json"), summary.dump(1) + "\n");
  fmt::print("wrote {} files to {}\n", written.size(), a.out_dir);
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
  install_interrupt_handlers();
  CLI::App app{"inlierq: post-training quantization for object detectors"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (0 = ATen's default, which is 1 on some VMs); reconstruction runs its shards on this many threads (0 = every core)");

  std::string model, profile_name;
  bool as_json = false;
  auto* inspect = app.add_subcommand("inspect", "print inputs, outputs, op histogram, parameters, MACs and unsupported ops");
  inspect->add_option("model", model, "ONNX model")->required();
  inspect->add_flag("--json", as_json, "machine-readable output");
  bool show_plan = false, show_units = false, layerwise_units = false, quantize_head = false;
  int max_unit_convs = recon::UnitOptions{}.max_block_compute;
  std::string plan_preset = "w8a8";
  std::vector<std::string> exclude;
  inspect->add_flag("--plan", show_plan, "print where quantizers go (after BatchNorm folding)");
  inspect->add_flag("--units", show_units, "print the reconstruction units (blocks and layers)");
  inspect->add_flag("--layerwise", layerwise_units, "with --units: one unit per layer (AdaRound's units)");
  inspect->add_option("--max-unit-convs", max_unit_convs, "with --units: blocks with more compute nodes are split into layers");
  std::string profile_help = "built-in profile (";
  for (const auto& n : builtin_profile_names()) profile_help += (profile_help.back() == '(' ? "" : ", ") + n;
  profile_help += ") or JSON path (docs/PROFILES.md)";
  inspect->add_option("--profile", profile_name, "model profile (with --plan)");
  inspect->add_option("--preset", plan_preset, "bit widths for --plan (wNaM)");
  inspect->add_flag("--quantize-head", quantize_head, "with --plan: quantize the detection head too");
  std::string plan_layout = "auto";
  inspect->add_option("--layout", plan_layout, "with --plan: Q/DQ layout, auto, ort or block");
  inspect->add_option("--exclude", exclude, "with --plan: nodes kept in floating point");

  std::vector<std::string> input_specs;
  std::string out_dir, device = "cpu";
  bool force = false;
  auto* infer = app.add_subcommand("infer", "run the FP32 model on .npy inputs and write every output as .npy");
  infer->add_option("model", model, "ONNX model")->required();
  infer->add_option("--input", input_specs, "NAME=FILE.npy (repeatable)")->required();
  infer->add_option("--output-dir", out_dir, "directory for <output name>.npy files")->required();
  infer->add_option("--device", device, "cpu or cuda[:N]");
  infer->add_flag("--force", force, "overwrite existing output files");

  std::string images_dir, annotations, results;
  size_t limit = 0;
  auto* eval = app.add_subcommand("eval", "COCO mAP of the FP32 (or QDQ) model on an annotated image folder");
  eval->add_option("model", model, "ONNX model")->required();
  eval->add_option("--profile", profile_name, profile_help)->required();
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
  detect->add_option("--profile", profile_name, profile_help)->required();
  detect->add_option("images", image_files, "image files")->required();
  detect->add_option("--draw", draw_dir, "write PNGs with labelled boxes here");
  detect->add_flag("--force", force, "overwrite drawn PNGs");
  detect->add_option("--device", device, "cpu or cuda[:N]");

  SaliencyArgs sa;
  auto* saliency = app.add_subcommand("saliency", "InlierQ's per-volume saliency and inlier posterior: PNG overlays and EM histograms");
  saliency->add_option("model", sa.model, "FP32 ONNX model")->required();
  saliency->add_option("--profile", sa.profile, "built-in profile or JSON path (its heatmap definition is used)")->required();
  saliency->add_option("images", sa.images, "image files")->required();
  saliency->add_option("-o,--output-dir", sa.out_dir, "directory for the PNGs, SVGs and saliency.json")->required();
  saliency->add_option("--unit", sa.units, "unit name or unit output value (repeatable; 'all'); default: the last 3 units");
  saliency->add_option("--preset", sa.preset, "bit widths used to derive the units (placement)")->default_val("w4a4");
  saliency->add_option("--topk", sa.opts.topk, "K of the top-K heatmap loss")->default_val(sa.opts.topk);
  saliency->add_option("--aux-loss", sa.opts.aux_loss, "bce | focal | neglogit")->default_val(sa.opts.aux_loss);
  saliency->add_option("--topk-selection", sa.opts.topk_selection, "per_class | global | max_class")->default_val(sa.opts.topk_selection);
  saliency->add_option("--saliency", sa.opts.saliency, "sq | norm | grad_act")->default_val(sa.opts.saliency);
  saliency->add_option("--device", sa.device, "cpu or cuda[:N]");
  saliency->add_flag("--force", sa.force, "overwrite existing files");

  QuantizeArgs qa;
  auto* quantize = app.add_subcommand("quantize", "calibrate and write a QDQ ONNX model, its encodings and a TensorRT cache");
  quantize->add_option("model", qa.model, "FP32 ONNX model")->required();
  quantize->add_option("--profile", qa.profile, profile_help)->required();
  quantize->add_option("--calib", qa.calib_dir, "folder of calibration images (unlabeled)")->required();
  quantize->add_option("--num-calib", qa.num_calib, "number of calibration images (first N by path)")->default_val(64);
  quantize->add_option("--preset", qa.preset, "w8a8 | w4a8 | w4a4 | w2a4 (any wNaM)");
  quantize->add_option("--wbits", qa.wbits, "weight bits (2..8)");
  quantize->add_option("--abits", qa.abits, "activation bits (2..8)");
  quantize->add_option("--method", qa.method, "minmax | percentile | entropy | mse (calibrators), adaround | brecq | qdrop | inlierq (reconstruction)")->default_val("minmax");
  quantize->add_option("--init-method", qa.init_method, "with adaround/brecq/qdrop: activation range initialisation (a calibrator)")->default_val("mse");
  auto& rc = qa.recon;
  auto* iters_opt = quantize->add_option("--iters", rc.iters, "reconstruction iterations per unit (AdaRound pass / QDrop joint pass)")->default_val(rc.iters);
  quantize->add_option("--time-limit", qa.time_limit_min, "reconstruction: choose the iterations per unit so that the whole command takes about this many minutes (replaces --iters; the count is printed)")->excludes(iters_opt);
  quantize->add_option("--recon-batch", rc.batch, "calibration samples per reconstruction iteration")->default_val(rc.batch);
  quantize->add_option("--lr-round", rc.lr_rounding, "Adam learning rate of the rounding logits V")->default_val(rc.lr_rounding);
  quantize->add_option("--lr-act", rc.lr_act, "Adam learning rate of the activation steps (QDrop; cosine decay)")->default_val(rc.lr_act);
  quantize->add_option("--round-lambda", rc.round_lambda, "weight of AdaRound's rounding regulariser")->default_val(rc.round_lambda);
  quantize->add_option("--beta-start", rc.beta_start, "AdaRound β at the end of the warm-up")->default_val(rc.beta_start);
  quantize->add_option("--beta-end", rc.beta_end, "AdaRound β at the last iteration")->default_val(rc.beta_end);
  quantize->add_option("--warmup", rc.warmup, "fraction of iterations without the rounding regulariser")->default_val(rc.warmup);
  quantize->add_option("--rec-p", rc.rec_p, "Lp norm of the reconstruction loss (rounding / joint pass)")->default_val(rc.rec_p);
  quantize->add_option("--brecq-act-iters", rc.brecq_act_iters, "BRECQ pass 2: activation-step iterations per unit")->default_val(rc.brecq_act_iters);
  quantize->add_option("--brecq-lr-act", rc.brecq_lr_act, "BRECQ pass 2: learning rate of the activation steps")->default_val(rc.brecq_lr_act);
  quantize->add_option("--brecq-act-p", rc.brecq_act_p, "BRECQ pass 2: Lp norm of the loss")->default_val(rc.brecq_act_p);
  quantize->add_option("--drop-prob", rc.drop_prob, "QDrop: probability that an activation element is quantized during training")->default_val(rc.drop_prob);
  quantize->add_option("--input-mix", rc.input_mix, "QDrop: probability that a unit-input element comes from the quantized prefix (else FP)")->default_val(rc.input_mix);
  quantize->add_option("--base", qa.base, "with --method inlierq: the reconstruction it builds on (qdrop | brecq)")->default_val("qdrop");
  quantize->add_option("--saliency", rc.saliency, "InlierQ per-volume saliency: sq (Σ g²) | norm (‖g‖) | grad_act (Σ |g·z|)")->default_val(rc.saliency);
  quantize->add_option("--inlier-weighting", rc.inlier_weighting, "InlierQ weights: soft (posterior) | hard (posterior > 0.5)")->default_val(rc.inlier_weighting);
  quantize->add_option("--inlier-init", rc.inlier_init, "InlierQ range init: minmax_inlier | mse_inlier | none")->default_val(rc.inlier_init);
  quantize->add_flag("!--no-inlier-fisher", rc.inlier_fisher, "InlierQ: F = 1 instead of (|g|+1)² in the weighted loss");
  quantize->add_option("--em-iters", rc.em_max_iters, "InlierQ EM: maximum iterations")->default_val(rc.em_max_iters);
  quantize->add_option("--em-tol", rc.em_tolerance, "InlierQ EM: relative log-likelihood change to stop")->default_val(rc.em_tolerance);
  quantize->add_option("--em-var-floor", rc.em_variance_floor, "InlierQ EM: variance floor (× score variance)")->default_val(rc.em_variance_floor);
  quantize->add_option("--em-min-prior", rc.em_min_prior, "InlierQ EM: uniform weights when the inlier prior is below p or above 1−p")->default_val(rc.em_min_prior);
  quantize->add_option("--em-min-separation", rc.em_min_separation, "InlierQ EM: uniform weights when the means are closer (pooled sds)")->default_val(rc.em_min_separation);
  quantize->add_flag("--fisher", rc.fisher, "weight the reconstruction error by (|g|+1)², g = gradient of the label-free top-K heatmap loss (BRECQ's Fisher option)");
  quantize->add_option("--topk", rc.topk, "K of the top-K heatmap loss (Fisher weighting)")->default_val(rc.topk);
  quantize->add_option("--aux-loss", rc.aux_loss, "top-K loss: bce | focal | neglogit")->default_val(rc.aux_loss);
  quantize->add_option("--topk-selection", rc.topk_selection, "per_class | global | max_class")->default_val(rc.topk_selection);
  quantize->add_option("--recon-shards", rc.shards, "split each mini-batch into N shards run on separate threads (0 = 2 on CPU, 1 on CUDA); results depend on N, not on --threads")->default_val(rc.shards);
  quantize->add_option("--holdout", rc.holdout, "calibration images held out of reconstruction training; each unit keeps its start state unless the learned one is better on them (-1 = 1/8 of the set)")->default_val(rc.holdout);
  quantize->add_flag("--recon-timing", rc.measure_fp_reference, "also time a plain FP forward+backward of every unit (per-phase costs are in --json and the encodings)");
  quantize->add_option("--max-unit-convs", rc.max_block_compute, "blocks with more compute nodes are split into layers")->default_val(rc.max_block_compute);
  quantize->add_option("--max-cache-mb", rc.max_cache_mb, "activation cache budget; beyond it caches go float16, then to disk")->default_val(rc.max_cache_mb);
  quantize->add_option("--cache-dir", rc.spill_dir, "where activation caches over budget are spilled (default: temp dir)");
  quantize->add_option("--checkpoint-dir", qa.checkpoint_dir, "reconstruction checkpoint (default OUT.ckpt; removed when the run finishes)");
  quantize->add_flag("--resume", qa.resume, "continue an interrupted reconstruction from its checkpoint");
  quantize->add_option("--stop-after-units", rc.stop_after_units, "stop after N reconstructed units, as if interrupted (testing)")->group("");
  quantize->add_option("--weight-method", qa.weight_method, "weight scale initialisation: mse | minmax")->default_val("mse");
  quantize->add_option("--percentile", qa.percentile, "percentile calibrator: keep [100-p, p] %")->default_val(99.99);
  quantize->add_option("--seed", qa.seed, "random seed of reconstruction (mini-batches, QDrop masks); recorded otherwise");
  quantize->add_option("-o,--output", qa.out, "output QDQ model (OUT.onnx; writes OUT.encodings.json, OUT.trt.cache)")->required();
  quantize->add_option("--exclude", qa.exclude, "node (or value) names kept in floating point");
  quantize->add_option("--config", qa.config, "JSON with per-node bit overrides / exclusions");
  quantize->add_flag("--quantize-head", qa.quantize_head, "quantize the detection head too (prediction layers' weights at 8 bit)");
  quantize->add_flag("--act-symmetric", qa.act_symmetric, "symmetric activation grids (TensorRT-style)");
  quantize->add_flag("--separate-concat-scales", qa.separate_concat_scales, "give each Concat input its own scale");
  quantize->add_flag("!--no-ort-latency", qa.ort_latency,
                     "skip the quick ONNX Runtime latency of FP32 vs the exported file (run when python3 can import onnxruntime)");
  quantize->add_option("--weight-type", qa.weight_type,
                       "how weight codes are stored: int8, uint8 (zero point 128; ONNX Runtime's U8U8 kernels, which do not "
                       "saturate on CPUs without VNNI) or auto (uint8 with --layout ort, int8 with block, for TensorRT)");
  quantize->add_option("--layout", qa.layout,
                       "where activation Q/DQ go: ort (every op with an integer kernel reads and writes int8, the "
                       "layout ONNX Runtime fuses), block (block outputs only, after the activation and residual Add) or "
                       "auto (default: ort with 8-bit activations, block below)");
  quantize->add_option("--batch", qa.batch, "calibration batch size")->default_val(8);
  quantize->add_option("--fallback", qa.fallback, "leave the N activation quantizer groups that alone hurt the outputs most in floating point");
  quantize->add_flag("--sensitivity", qa.sensitivity, "print the per-quantizer sensitivity (also done by --fallback)");
  quantize->add_option("--sensitivity-images", qa.sensitivity_images, "calibration images used for the sensitivity analysis")->default_val(8);
  quantize->add_option("--eval-images", qa.eval_images, "evaluate FP32 and quantized mAP on these images");
  quantize->add_option("--eval-annotations", qa.eval_annotations, "COCO instances JSON for --eval-images");
  quantize->add_option("--eval-limit", qa.eval_limit, "evaluate the first N images only");
  quantize->add_option("--device", qa.device, "cpu or cuda[:N]");
  quantize->add_flag("--force", qa.force, "overwrite existing outputs");
  quantize->add_flag("--json", qa.as_json, "print one JSON object as the last line");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    init_runtime(threads);
    if (*inspect && show_units) {
      recon::UnitOptions uo;
      uo.layerwise = layerwise_units;
      uo.max_block_compute = max_unit_convs;
      return cmd_units(model, profile_name, plan_preset, quantize_head, exclude, uo, as_json);
    }
    if (*inspect && show_plan) return cmd_plan(model, profile_name, plan_preset, quantize_head, exclude, plan_layout, as_json);
    if (*inspect) return cmd_inspect(model, as_json);
    if (*quantize) {
      qa.recon.threads = threads;
      return cmd_quantize(qa);
    }
    if (*infer) return cmd_infer(model, input_specs, out_dir, device, force);
    if (*eval) return cmd_eval(model, profile_name, images_dir, annotations, limit, results, as_json, force, device);
    if (*saliency) return cmd_saliency(sa);
    if (*detect) return cmd_detect(model, profile_name, image_files, draw_dir, force, device);
  } catch (const Interrupted& e) {
    // 128 + the signal number, as a shell reports a process the signal killed.
    fmt::print(stderr, "{}; nothing was written (existing outputs are untouched)\n", e.what());
    return 128 + e.signal();
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
