// Hand-computed cases for the COCO bbox evaluator; tests/py/test_coco_eval_vs_pycocotools.py checks it
// against pycocotools itself.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "inlierq/coco_eval.h"
#include "inlierq/error.h"

using namespace inlierq;
using coco::Box;
using coco::Detection;

namespace {

enum { AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl };

// Images 1..num_images, categories 1..num_cats; annotation area = box area unless given.
coco::Dataset make_gt(int num_images, int num_cats, std::vector<coco::Annotation> anns) {
  coco::Dataset ds;
  for (int i = 1; i <= num_images; ++i) ds.images.push_back({i, std::to_string(i) + ".jpg", 640, 480});
  for (int k = 1; k <= num_cats; ++k) ds.categories.push_back({k, "class" + std::to_string(k)});
  for (size_t j = 0; j < anns.size(); ++j) {
    anns[j].id = static_cast<int64_t>(j + 1);
    if (anns[j].area == 0) anns[j].area = anns[j].bbox.w * anns[j].bbox.h;
  }
  ds.annotations = std::move(anns);
  return ds;
}
coco::Annotation ann(int64_t img, int64_t cat, Box b, bool crowd = false) { return {0, img, cat, b, 0, crowd}; }

void expect_stats(const coco::EvalResult& r, const std::array<double, 12>& want) {
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(r.stats[i], want[i], 1e-12) << coco::kStatNames[i];
}

// Three sizes so every area range has GT: 20x20 small, 50x50 medium, 200x200 large.
const Box kSmall{10, 10, 20, 20}, kMedium{100, 100, 50, 50}, kLarge{300, 200, 200, 200};

}  // namespace

TEST(CocoEval, PerfectDetectorScoresOne) {
  auto gt = make_gt(2, 2, {ann(1, 1, kSmall), ann(1, 1, kLarge), ann(2, 2, kMedium)});
  std::vector<Detection> dets = {{1, 1, kSmall, 0.9}, {1, 1, kLarge, 0.8}, {2, 2, kMedium, 0.7}};
  auto r = coco::evaluate(gt, dets);
  // AR1: maxDets counts per (image, class), so image 1 recalls only one of its two class-1 boxes.
  expect_stats(r, {1, 1, 1, 1, 1, 1, 0.75, 1, 1, 1, 1, 1});
  ASSERT_EQ(r.per_class.size(), 2u);
  // Not exactly 1: pycocotools divides by tp + fp + eps.
  EXPECT_NEAR(r.per_class[0].ap, 1.0, 1e-12);
  EXPECT_NEAR(r.per_class[1].ap, 1.0, 1e-12);
  EXPECT_EQ(r.num_images, 2u);
  EXPECT_EQ(r.num_detections, 3u);
}

TEST(CocoEval, AllFalsePositivesScoreZero) {
  auto gt = make_gt(2, 2, {ann(1, 1, kSmall), ann(1, 1, kLarge), ann(2, 2, kMedium)});
  std::vector<Detection> dets = {{1, 1, kMedium, 0.9}, {1, 2, kSmall, 0.8}, {2, 2, kLarge, 0.7}, {2, 1, kMedium, 0.6}};
  auto r = coco::evaluate(gt, dets);
  expect_stats(r, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
}

TEST(CocoEval, ImageWithoutDetectionsAndClassWithoutGt) {
  // Class 2 has no GT: its detection is not counted and its AP is -1. Image 2 has a class-1 box but
  // no detections, so recall stops at 0.5: precision 1 on recall thresholds 0..0.50 (51 of 101).
  auto gt = make_gt(2, 2, {ann(1, 1, kMedium), ann(2, 1, kMedium)});
  std::vector<Detection> dets = {{1, 1, kMedium, 0.9}, {1, 2, kSmall, 0.95}};
  auto r = coco::evaluate(gt, dets);
  const double ap = 51.0 / 101;
  expect_stats(r, {ap, ap, ap, -1, ap, -1, 0.5, 0.5, 0.5, -1, 0.5, -1});
  EXPECT_NEAR(r.per_class[0].ap, ap, 1e-12);
  EXPECT_EQ(r.per_class[1].ap, -1);

  // Restricted to image 1 the same detections are perfect.
  auto sub = coco::evaluate(gt, dets, {1});
  EXPECT_EQ(sub.num_images, 1u);
  EXPECT_NEAR(sub.stats[AP], 1.0, 1e-12);
  EXPECT_THROW(coco::evaluate(gt, dets, {7}), Error);
}

TEST(CocoEval, CrowdRegionsAbsorbDetections) {
  // One regular 10x10 box and a 100x100 crowd region. Crowd IoU divides by the detection's area,
  // so the two boxes inside the crowd (IoU 1) are ignored instead of counted as false positives,
  // and the one straddling its corner (225/400 = 0.5625) is ignored at IoU .50/.55, a FP above.
  auto gt = make_gt(1, 1, {ann(1, 1, {0, 0, 10, 10}), ann(1, 1, {100, 100, 100, 100}, true)});
  std::vector<Detection> dets = {{1, 1, {0, 0, 10, 10}, 0.9},
                                 {1, 1, {95, 95, 20, 20}, 0.99},
                                 {1, 1, {120, 120, 20, 20}, 0.95},
                                 {1, 1, {150, 150, 20, 20}, 0.93}};
  auto r = coco::evaluate(gt, dets);
  // IoU >= .6: FP, ignored, ignored, TP -> precision 1/2 at every recall; AP = (2*1 + 8*0.5) / 10.
  // Everything is small (the crowd is ignored anyway), so medium/large have no GT.
  expect_stats(r, {0.6, 1, 0.5, 0.6, -1, -1, 0, 1, 1, 1, -1, -1});
}

TEST(CocoEval, ScoreTiesKeepImageThenFileOrder) {
  // All scores tie. Per image, file order decides (image 2: FP before TP); across images, image id
  // order decides, so the sequence is TP(img1), FP(img2), TP(img2): precision 1 up to recall .5,
  // then 2/3. In plain file order (FP first) AP would be 2/3.
  auto gt = make_gt(2, 1, {ann(1, 1, kMedium), ann(2, 1, kLarge)});
  std::vector<Detection> dets = {{2, 1, kSmall, 0.5}, {2, 1, kLarge, 0.5}, {1, 1, kMedium, 0.5}};
  auto r = coco::evaluate(gt, dets);
  const double ap = (51 + 50 * (2.0 / 3)) / 101;
  EXPECT_NEAR(r.stats[AP], ap, 1e-12);
  EXPECT_NEAR(r.stats[AR1], 0.5, 1e-12);
  EXPECT_NEAR(r.stats[AR10], 1.0, 1e-12);
}

TEST(CocoEval, SummaryTextMatchesPycocotoolsLayout) {
  auto gt = make_gt(1, 1, {ann(1, 1, kMedium)});
  auto r = coco::evaluate(gt, {{1, 1, kMedium, 0.5}});
  std::string s = coco::format_summary(r);
  EXPECT_EQ(s.substr(0, s.find('\n')), " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000");
  EXPECT_NE(s.find(" Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000\n"),
            std::string::npos);
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 12);
  EXPECT_NE(coco::summary_json(r).find("\"AP50\":0.9999999999999999,"), std::string::npos);
}

TEST(CocoIO, DetectionsRoundTripAtomically) {
  auto dir = std::filesystem::temp_directory_path() / ("coco_io_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "dets.json").string();
  std::vector<Detection> dets = {{139, 1, {0.1, 2.5, 30.25, 4e-3}, 0.123456789012345}, {42, 90, {1, 2, 3, 4}, 1}};
  coco::save_detections(path, dets);
  auto back = coco::load_detections(path);
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].image_id, 139);
  EXPECT_EQ(back[0].bbox.h, 4e-3);
  EXPECT_EQ(back[0].score, 0.123456789012345);
  EXPECT_EQ(back[1].category_id, 90);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);  // no temp file left
  std::filesystem::remove_all(dir);
}

TEST(CocoIO, MalformedInputNamesFileAndField) {
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([] { coco::parse_dataset("{\"images\": [", "gt.json"); }).find("gt.json: not valid JSON"),
            std::string::npos);
  EXPECT_NE(message([] { coco::parse_dataset("{\"images\": [], \"categories\": []}", "gt.json"); }).find("'annotations'"),
            std::string::npos);
  std::string no_bbox = R"({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}],
                            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "area": 4}]})";
  EXPECT_EQ(message([&] { coco::parse_dataset(no_bbox, "gt.json"); }), "gt.json: annotations[0] is missing 'bbox'");
  EXPECT_EQ(message([] { coco::parse_detections(R"([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}])", "dt.json"); }),
            "dt.json: detection 0 has a 'bbox' that is not [x, y, width, height]");
  EXPECT_NE(message([] { coco::load_dataset("/nonexistent/gt.json"); }).find("/nonexistent/gt.json"), std::string::npos);

  // Results on an image the GT does not have are refused, as pycocotools' loadRes does.
  auto gt = make_gt(1, 1, {ann(1, 1, kMedium)});
  EXPECT_NE(message([&] { coco::evaluate(gt, {{9, 1, kMedium, 0.5}}); }).find("image id 9"), std::string::npos);
}
