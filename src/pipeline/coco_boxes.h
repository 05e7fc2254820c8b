#pragma once
// A detector's box as a COCO result entry (xywh, dataset category id). Internal to the pipeline.
#include <string>

#include "inlierq/coco_eval.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"

namespace inlierq::pipeline {

inline coco::Detection to_coco(const BoxDetection& d, int64_t image_id, const ModelProfile& p) {
  if (d.label < 0 || d.label >= static_cast<int>(p.category_ids.size()))
    throw Error("class index " + std::to_string(d.label) + " has no category id in profile '" + p.name + "'");
  coco::Detection c;
  c.image_id = image_id;
  c.category_id = p.category_ids[d.label];
  c.bbox = {d.xyxy[0], d.xyxy[1], d.xyxy[2] - d.xyxy[0], d.xyxy[3] - d.xyxy[1]};
  c.score = d.score;
  return c;
}

}  // namespace inlierq::pipeline
