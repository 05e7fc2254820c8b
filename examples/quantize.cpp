// Quantizes a detector to W8A8 through inlierq's public API alone (no private header, no torch include):
//
//   example_quantize MODEL.onnx CALIB_DIR OUT.onnx PROFILE
//
// PROFILE is a built-in profile name (yolox, nanodet, fastestdet, yolov5) or a profile JSON
// (docs/PROFILES.md). Writes OUT.onnx (QDQ), OUT.encodings.json, OUT.trt.cache and OUT.report.html.
#include <cstdio>
#include <exception>

#include "inlierq/pipeline.h"
#include "inlierq/runtime.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s MODEL.onnx CALIB_DIR OUT.onnx PROFILE\n", argv[0]);
    return 2;
  }
  inlierq::init_runtime(0);
  inlierq::pipeline::QuantizeJob job;
  job.model = argv[1];
  job.calib_dir = argv[2];
  job.out = argv[3];
  job.profile = argv[4];
  job.preset = "w8a8";
  job.ort_latency = false;  // an embedder measures latency its own way

  inlierq::pipeline::Events events;
  events.warning = [](const std::string& line) { std::fprintf(stderr, "warning: %s\n", line.c_str()); };
  events.stage_done = [](inlierq::pipeline::Stage stage, const inlierq::pipeline::QuantizeResult&) {
    std::fprintf(stderr, "stage %s done\n", inlierq::pipeline::stage_name(stage));
  };
  try {
    const auto result = inlierq::pipeline::quantize(job, events);
    std::printf("wrote %s: W%dA%d, %zu weight and %zu activation quantizers, %zu calibration images, %.0f %% of MACs in "
                "integer kernels\n",
                result.out_onnx.c_str(), result.weight_bits, result.act_bits, result.plan.weights.size(),
                result.plan.activations.size(), result.calibration_images, 100 * result.integer_mac_fraction);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
