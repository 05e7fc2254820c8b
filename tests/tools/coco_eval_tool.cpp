// Test-only driver for tests/py/test_coco_eval_vs_pycocotools.py: evaluates a results file against a
// COCO GT file and prints one JSON line (summary_json + the summary text + the evaluation time).
//   coco_eval_tool --gt GT.json --dt DT.json [--img-ids IDS.json]   (IDS.json: a JSON list of image ids)
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "inlierq/coco_eval.h"
#include "inlierq/error.h"

int main(int argc, char** argv) {
  using namespace inlierq;
  std::string gt_path, dt_path, ids_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    (flag == "--gt" ? gt_path : flag == "--dt" ? dt_path : flag == "--img-ids" ? ids_path : flag) = argv[i + 1];
  }
  if (gt_path.empty() || dt_path.empty() || argc % 2 == 0) {
    std::cerr << "usage: coco_eval_tool --gt GT.json --dt DT.json [--img-ids IDS.json]\n";
    return 2;
  }
  try {
    coco::Dataset gt = coco::load_dataset(gt_path);
    std::vector<coco::Detection> dets = coco::load_detections(dt_path);
    std::vector<int64_t> img_ids;
    if (!ids_path.empty()) {
      std::ifstream f(ids_path);
      if (!f) throw Error("cannot open '" + ids_path + "'");
      img_ids = nlohmann::json::parse(f).get<std::vector<int64_t>>();
    }
    auto t0 = std::chrono::steady_clock::now();
    coco::EvalResult r = coco::evaluate(gt, dets, img_ids);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto out = nlohmann::ordered_json::parse(coco::summary_json(r));
    out["summary"] = coco::format_summary(r);
    out["eval_seconds"] = seconds;
    std::cout << out.dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
