// compare: how closely a quantized model follows its FP32 model on unlabelled images (agreement mAP,
// output SQNR, heatmap loss; docs/QUANTIZATION.md §6).
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "cli.h"
#include "inlierq/dataset.h"
#include "inlierq/error.h"
#include "inlierq/onnx_io.h"

namespace inlierq::cli {

namespace {

struct CompareArgs {
  std::string fp32, quantized, profile, images, device = "cpu";
  size_t limit = 64;
  float reference_score = 0.3f;
  bool as_json = false;
};

int run(const CompareArgs& a) {
  const ModelProfile profile = load_profile(a.profile);
  const Graph fp32 = load_onnx(a.fp32);
  const Graph quantized = load_onnx(a.quantized);
  if (!(a.reference_score > 0 && a.reference_score < 1)) throw Error("--reference-score must be in (0, 1)");
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms;
  const ImageFolder folder = load_image_folder(a.images, a.limit, [&](size_t, const std::string&, Image&& img) {
    Preprocessed pp = preprocess(img, profile.preprocess);
    inputs.push_back(std::move(pp.tensor));
    transforms.push_back(pp.transform);
  });
  for (const auto& w : folder.warnings) fmt::print(stderr, "warning: {}; skipped\n", w);
  pipeline::FidelityOptions fo;
  fo.device = a.device;
  fo.reference_score = a.reference_score;
  ProgressPrinter printer;
  const auto started = std::chrono::steady_clock::now();
  std::string pass = "FP32";
  fo.progress = [&](size_t done, size_t total) {
    printer("compare " + pass, done, total, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  };
  const pipeline::FidelityReference reference(fp32, profile, std::move(inputs), std::move(transforms), fo);
  pass = "quantized";
  const pipeline::Fidelity f = reference.measure(quantized);
  fmt::print("images: {} ({}), FP32 boxes with score >= {:g}: {}\n", f.images, a.images, a.reference_score, f.reference_boxes);
  if (f.agreement_map >= 0)
    fmt::print("agreement mAP (quantized vs FP32 detections): {:.4f}, AP50 {:.4f}\n", f.agreement_map, f.agreement_map50);
  else
    fmt::print("agreement mAP: undefined (no FP32 box reaches score {:g}; lower --reference-score)\n", a.reference_score);
  fmt::print("output SQNR: {:.2f} dB\n", f.output_sqnr_db);
  if (f.heatmap_loss >= 0)
    fmt::print("heatmap top-K loss per image: FP32 {:.4f}, quantized {:.4f}\n", f.heatmap_loss_fp32, f.heatmap_loss);
  if (a.as_json) {
    nlohmann::json j = f.to_json();
    j["fp32"] = a.fp32;
    j["quantized"] = a.quantized;
    j["profile"] = profile.name;
    j["skipped_images"] = folder.warnings;
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace

Command add_compare(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  auto* sub = app.add_subcommand("compare", "label-free fidelity of a quantized model: its detections scored against the FP32 model's, output SQNR, heatmap loss");
  sub->add_option("fp32", a->fp32, "the FP32 ONNX model")->required();
  sub->add_option("quantized", a->quantized, "the quantized (QDQ) ONNX model of the same network")->required();
  sub->add_option("--profile", a->profile, profile_help())->required();
  sub->add_option("--images", a->images, "folder of unlabelled images")->required();
  sub->add_option("--limit", a->limit, "use the first N images that decode, in sorted path order")->default_val(a->limit);
  sub->add_option("--reference-score", a->reference_score, "FP32 detections at or above this score are the ground truth")->default_val(a->reference_score);
  sub->add_flag("--json", a->as_json, "print one JSON object as the last line");
  sub->add_option("--device", a->device, "cpu or cuda[:N]");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
