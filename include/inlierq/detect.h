#pragma once
// Model profiles (preprocessing, output decoding, NMS, heatmap definition) and the detector that
// applies them. Torch-free.
#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/graph.h"
#include "inlierq/image.h"
#include "inlierq/preprocess.h"
#include "inlierq/runtime.h"

namespace inlierq {

struct BoxDetection {
  std::array<float, 4> xyxy{};  // pixels
  float score = 0;
  int label = 0;                // model class index
};

struct ModelProfile {
  std::string name, source;
  PreprocessSpec preprocess;
  nlohmann::json decoder;  // kind-specific, validated by the decoder
  nlohmann::json heatmap;  // which outputs/channels carry per-position class confidence
  bool declares_heatmap() const { return declares_heatmap(heatmap); }
  // A "heatmap" with at least one source: what InlierQ's saliency and Fisher weighting read.
  static bool declares_heatmap(const nlohmann::json& h) {
    return h.contains("sources") && h["sources"].is_array() && !h["sources"].empty();
  }
  float score_threshold = 0.01f;
  float nms_iou = 0.65f;
  int max_detections = 100;
  // How letterboxed boxes are scaled back to the original image: by the resize actually done,
  // int(w·r)/w and int(h·r)/h ("resized"), or by the letterbox ratio r = min(H/h, W/w) itself ("ratio":
  // YOLOX's convention, which trains on labels·r and evaluates with boxes / r).
  bool box_scale_ratio = false;
  std::vector<int64_t> category_ids;  // model class index -> dataset category id
  std::vector<std::string> class_names;
};

// A built-in profile name (profiles/*.json: yolox, nanodet, fastestdet, yolov5) or a path to a JSON file.
ModelProfile load_profile(const std::string& name_or_path);
ModelProfile parse_profile(const nlohmann::json& j, const std::string& source);
std::vector<std::string> builtin_profile_names();

// Greedy NMS within each class, highest score first; keeps at most max_det boxes overall.
std::vector<BoxDetection> class_wise_nms(std::vector<BoxDetection> dets, float iou_threshold, int max_det);
float box_iou(const std::array<float, 4>& a, const std::array<float, 4>& b);

struct DetectorOptions {
  SessionOptions session;
};

class Detector {
 public:
  Detector(const Graph& g, const ModelProfile& profile, const DetectorOptions& opts = {});
  ~Detector();
  // Boxes in original-image pixels, one list per image.
  std::vector<std::vector<BoxDetection>> detect(const std::vector<Image>& images);
  // The same on inputs already preprocessed by the profile (each [1, C, H, W]) with their transforms, as one
  // batch; `outputs`, when given, receives the raw graph outputs of the batch (batch dimension N).
  std::vector<std::vector<BoxDetection>> detect_preprocessed(const std::vector<TensorData>& inputs,
                                                             std::vector<InputTransform> transforms,
                                                             std::map<std::string, TensorData>* outputs = nullptr);
  const ModelProfile& profile() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace inlierq

namespace inlierq {
// A copy of img with each detection scoring at least min_score drawn as a class-coloured box with a
// "name score" label (stb_easy_font glyphs, so no font file is needed).
Image draw_detections(const Image& img, const std::vector<BoxDetection>& dets, const std::vector<std::string>& names,
                      float min_score);
}  // namespace inlierq
