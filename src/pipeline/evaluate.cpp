// COCO evaluation of a detector over an annotated image folder (include/inlierq/pipeline.h).
#include <algorithm>
#include <filesystem>
#include <future>

#include "inlierq/error.h"
#include "inlierq/pipeline.h"
#include "pipeline/coco_boxes.h"
#include "pipeline/progress.h"

namespace inlierq::pipeline {

namespace fs = std::filesystem;

FolderEvaluation evaluate_folder(Detector& detector, const coco::Dataset& gt, const std::string& images_dir, size_t limit,
                                 const std::string& label, const Events& events) {
  const ModelProfile& profile = detector.profile();
  std::vector<coco::Image> images = gt.images;
  std::sort(images.begin(), images.end(), [](const coco::Image& a, const coco::Image& b) { return a.id < b.id; });
  if (limit && images.size() > limit) images.resize(limit);
  if (images.empty()) throw Error("no images to evaluate");
  FolderEvaluation out;
  std::vector<int64_t> ids;
  ProgressReporter progress(events, label, images.size());
  // The next image is decoded on another thread while the network runs on this one.
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
      if (events.warning) events.warning(l.error + "; skipped, left out of the evaluation");
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

}  // namespace inlierq::pipeline
