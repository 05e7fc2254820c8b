// eval: COCO mAP of the FP32 (or QDQ) model on an annotated image folder.
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <memory>

#include "cli.h"
#include "inlierq/error.h"
#include "inlierq/onnx_io.h"

namespace inlierq::cli {

namespace {

struct EvalArgs {
  std::string model, profile, images, annotations, results, device = "cpu";
  size_t limit = 0;
  bool as_json = false, force = false;
};

int run(const EvalArgs& a) {
  Detector detector = open_detector(a.model, a.profile, a.device);
  const ModelProfile& profile = detector.profile();
  coco::Dataset gt = coco::load_dataset(a.annotations);
  if (!a.results.empty() && !a.force && std::filesystem::exists(a.results))
    throw Error("'" + a.results + "' already exists; pass --force to overwrite it");
  if (gt.images.empty()) throw Error(a.annotations + ": no images to evaluate");
  const auto e = pipeline::evaluate_folder(detector, gt, a.images, a.limit, "eval", console_events());
  const coco::EvalResult& r = e.result;
  if (!a.results.empty()) coco::save_detections(a.results, e.detections);
  fmt::print("{}", coco::format_summary(r));
  fmt::print("images: {}, detections: {}, seconds: {:.2f}\n", e.images, e.detections.size(), e.seconds);
  if (a.as_json) {
    nlohmann::json j{{"model", a.model}, {"profile", profile.name}, {"map", r.stats[0]}, {"map50", r.stats[1]},
                     {"map75", r.stats[2]}, {"images", e.images}, {"detections", e.detections.size()}, {"seconds", e.seconds},
                     {"skipped_images", e.skipped}};
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "COCO mAP of the FP32 (or QDQ) model on an annotated image folder");
  sub->add_option("model", a->model, "ONNX model")->required();
  sub->add_option("--profile", a->profile, profile_help())->required();
  sub->add_option("--images", a->images, "image folder")->required();
  sub->add_option("--annotations", a->annotations, "COCO instances JSON")->required();
  sub->add_option("--limit", a->limit, "evaluate the first N images by ascending image id");
  sub->add_option("--results", a->results, "write COCO-format detections here");
  sub->add_flag("--json", a->as_json, "print one JSON object as the last line");
  sub->add_flag("--force", a->force, "overwrite --results");
  sub->add_option("--device", a->device, "cpu or cuda[:N]");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
