// Decoders and profile options on hand-made outputs; tests/py/test_eval_vs_reference.py checks the whole
// pipeline against an independent ONNX Runtime + numpy + pycocotools one on real images.
#include <gtest/gtest.h>

#include <cmath>

#include "detect/decoder.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"

using namespace inlierq;

namespace {

Graph graph_with_output(const std::string& name) {
  Graph g;
  ValueInfo v;
  v.name = name;
  g.outputs.push_back(v);
  return g;
}

}  // namespace

TEST(Decoders, FastestDetAppliesTanhAndSigmoidToTheBoxChannels) {
  // One 2x2 map, 2 classes. Cell (gy=1, gx=0) has a detection; the box channels are raw conv outputs.
  const int64_t C = 5 + 2;
  at::Tensor p = at::zeros({1, C, 2, 2});
  const float dx = 0.3f, dy = -0.2f, dw = 0.5f, dh = -1.0f;
  p[0][0][1][0] = 0.8f;  // objectness (already sigmoid in the graph)
  p[0][1][1][0] = dx;
  p[0][2][1][0] = dy;
  p[0][3][1][0] = dw;
  p[0][4][1][0] = dh;
  p[0][5][1][0] = 0.1f;  // class softmax
  p[0][6][1][0] = 0.9f;
  const Graph g = graph_with_output("out");
  auto dec = detect::make_decoder({{"kind", "fastestdet"}, {"output", "out"}}, g, "test");
  auto dets = dec->decode({{"out", p}}, 100, 200, 0.5f)[0];
  ASSERT_EQ(dets.size(), 1u);
  const auto sig = [](float v) { return 1 / (1 + std::exp(-v)); };
  const float cx = (0 + std::tanh(dx)) / 2 * 100, cy = (1 + std::tanh(dy)) / 2 * 200;
  const float w = sig(dw) * 100, h = sig(dh) * 200;
  EXPECT_NEAR(dets[0].xyxy[0], cx - w / 2, 1e-4);
  EXPECT_NEAR(dets[0].xyxy[1], cy - h / 2, 1e-4);
  EXPECT_NEAR(dets[0].xyxy[2], cx + w / 2, 1e-4);
  EXPECT_NEAR(dets[0].xyxy[3], cy + h / 2, 1e-4);
  EXPECT_EQ(dets[0].label, 1);
  EXPECT_NEAR(dets[0].score, std::pow(0.8, 0.6) * std::pow(0.9, 0.4), 1e-5);

  // Exports that bake the activations into the graph say so.
  auto raw = detect::make_decoder(
      {{"kind", "fastestdet"}, {"output", "out"}, {"offset_activation", "none"}, {"size_activation", "none"}}, g, "test");
  dets = raw->decode({{"out", p}}, 100, 200, 0.5f)[0];
  ASSERT_EQ(dets.size(), 1u);
  EXPECT_NEAR(dets[0].xyxy[0], (0 + dx) / 2 * 100 - dw * 100 / 2, 1e-4);
  EXPECT_THROW(detect::make_decoder({{"kind", "fastestdet"}, {"output", "out"}, {"size_activation", "exp"}}, g, "test"),
               Error);
}

TEST(Profiles, BoxScaleOption) {
  EXPECT_TRUE(load_profile("yolox").box_scale_ratio);  // YOLOX divides by r
  EXPECT_FALSE(load_profile("nanodet").box_scale_ratio);
  nlohmann::json j = {{"preprocess", {{"preset", "yolox"}}}, {"decoder", {{"kind", "yolox"}}}};
  EXPECT_FALSE(parse_profile(j, "p").box_scale_ratio);
  j["box_scale"] = "ratio";
  EXPECT_TRUE(parse_profile(j, "p").box_scale_ratio);
  j["box_scale"] = "exact";
  EXPECT_THROW(parse_profile(j, "p"), Error);
}
