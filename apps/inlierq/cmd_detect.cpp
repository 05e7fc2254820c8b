// detect: print detections for images, optionally drawing them.
#include <fmt/format.h>

#include <filesystem>
#include <memory>

#include "cli.h"
#include "inlierq/error.h"
#include "inlierq/onnx_io.h"

namespace inlierq::cli {

namespace {

namespace fs = std::filesystem;

struct DetectArgs {
  std::string model, profile, draw_dir, device = "cpu";
  std::vector<std::string> files;
  bool force = false;
};

int run(const DetectArgs& a) {
  Detector detector = open_detector(a.model, a.profile, a.device);
  const ModelProfile& profile = detector.profile();
  if (!a.draw_dir.empty()) make_output_dir(a.draw_dir);
  for (const auto& f : a.files) {
    Image img = load_image(f);
    auto boxes = detector.detect({img})[0];
    fmt::print("{}: {} detections\n", f, boxes.size());
    for (const auto& b : boxes)
      fmt::print("  {:<14} {:.3f}  [{:.1f}, {:.1f}, {:.1f}, {:.1f}]\n", profile.class_names.at(b.label), b.score,
                 b.xyxy[0], b.xyxy[1], b.xyxy[2], b.xyxy[3]);
    if (!a.draw_dir.empty()) {
      const auto out = (fs::path(a.draw_dir) / (fs::path(f).stem().string() + ".png")).string();
      if (!a.force && fs::exists(out)) throw Error("'" + out + "' already exists; pass --force to overwrite it");
      save_png(out, draw_detections(img, boxes, profile.class_names, 0.3f));
      fmt::print("  drawn: {}\n", out);
    }
  }
  return 0;
}

}  // namespace

Command add_detect(CLI::App& app) {
  auto a = std::make_shared<DetectArgs>();
  auto* sub = app.add_subcommand("detect", "print detections for images, optionally drawing them");
  sub->add_option("model", a->model, "ONNX model")->required();
  sub->add_option("--profile", a->profile, profile_help())->required();
  sub->add_option("images", a->files, "image files")->required();
  sub->add_option("--draw", a->draw_dir, "write PNGs with labelled boxes here");
  sub->add_flag("--force", a->force, "overwrite drawn PNGs");
  sub->add_option("--device", a->device, "cpu or cuda[:N]");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
