#pragma once
// COCO instances / results I/O and a bbox evaluator that reproduces pycocotools' COCOeval
// (iouType='bbox', default parameters) to floating-point rounding.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace inlierq::coco {

struct Box {  // COCO convention: top-left corner, width, height, in pixels
  double x = 0, y = 0, w = 0, h = 0;
};

struct Image {
  int64_t id = 0;
  std::string file_name;
  int width = 0, height = 0;  // 0 when the file omits them
};

struct Category {
  int64_t id = 0;
  std::string name;
};

struct Annotation {
  int64_t id = 0;  // defaults to position + 1 when the file omits it
  int64_t image_id = 0, category_id = 0;
  Box bbox;
  double area = 0;  // used for the area ranges (segment area in real COCO, not the box area)
  bool iscrowd = false;
};

struct Dataset {
  std::vector<Image> images;
  std::vector<Category> categories;
  std::vector<Annotation> annotations;  // segmentation is not kept
};

struct Detection {
  int64_t image_id = 0, category_id = 0;
  Box bbox;
  double score = 0;
};

// Both throw inlierq::Error naming the source and the offending entry/field.
Dataset load_dataset(const std::string& path);
Dataset parse_dataset(const std::string& json_text, const std::string& source = "<memory>");

// COCO results format: a JSON list of {image_id, category_id, bbox, score}.
std::vector<Detection> load_detections(const std::string& path);
std::vector<Detection> parse_detections(const std::string& json_text, const std::string& source = "<memory>");
std::string detections_to_json(const std::vector<Detection>& dets);
void save_detections(const std::string& path, const std::vector<Detection>& dets);  // atomic

// Order of EvalResult::stats, as in COCOeval.stats.
inline constexpr std::array<const char*, 12> kStatNames = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

struct ClassAP {
  int64_t category_id = 0;
  std::string name;
  double ap = -1;  // AP@[.5:.95], area all, maxDets 100; -1 when the class has no (non-crowd) GT
};

struct EvalResult {
  std::array<double, 12> stats{};  // -1 where undefined (no GT in that setting)
  std::vector<ClassAP> per_class;  // every GT category, ascending id
  size_t num_images = 0;
  size_t num_detections = 0;  // detections that took part (in the image subset and a GT category)
};

// Evaluates over img_ids (empty: every image of gt); images without detections still count.
// Detections on other GT images or of categories absent from gt are ignored, as in pycocotools;
// a detection or img_id naming an image that gt does not have is an Error.
EvalResult evaluate(const Dataset& gt, const std::vector<Detection>& dets,
                    const std::vector<int64_t>& img_ids = {});

std::string format_summary(const EvalResult& r);  // the 12-line block COCOeval.summarize() prints
std::string summary_json(const EvalResult& r);    // one line: {"AP":..,...,"per_class":[..]}

}  // namespace inlierq::coco
