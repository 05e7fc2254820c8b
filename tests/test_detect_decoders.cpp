// Decoders and profile options on hand-made outputs; tests/py/test_eval_vs_reference.py checks the whole
// pipeline against an independent ONNX Runtime + numpy + pycocotools one on real images.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>

#include "graph_builders.h"

#include "detect/decoder.h"
#include "inlier/saliency.h"
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

Graph graph_with_outputs(const std::vector<std::string>& names) {
  Graph g;
  for (const auto& n : names) {
    ValueInfo v;
    v.name = n;
    g.outputs.push_back(v);
  }
  return g;
}

void expect_box(const BoxDetection& d, std::array<float, 4> xyxy, float score, int label) {
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(d.xyxy[k], xyxy[k], 1e-4) << "corner " << k;
  EXPECT_NEAR(d.score, score, 1e-6);
  EXPECT_EQ(d.label, label);
}

const BoxDetection& with_label(const std::vector<BoxDetection>& dets, int label) {
  for (const auto& d : dets)
    if (d.label == label) return d;
  throw std::runtime_error("no detection with label " + std::to_string(label));
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

// Decoded-box outputs: every layout and option on hand-made tensors with hand-computed boxes.

TEST(DecodedBoxes, YoloV8StyleChannelsByPositionsWithoutObjectness) {
  // [1, 4 + 80, 3]: cx, cy, w, h in input pixels, then 80 class scores; no objectness.
  at::Tensor p = at::zeros({1, 84, 3});
  const float cx = 50, cy = 40, w = 20, h = 10;
  p[0][0][1] = cx, p[0][1][1] = cy, p[0][2][1] = w, p[0][3][1] = h;
  p[0][4 + 17][1] = 0.7f;  // class 17 at position 1
  p[0][4 + 3][1] = 0.2f;   // and a weaker class 3
  p[0][4 + 5][2] = 0.005f; // below the threshold
  const nlohmann::json c = {{"kind", "decoded"}, {"output", "output0"}, {"layout", "channels_positions"},
                            {"boxes", {{"channels", {0, 4}}, {"format", "cxcywh"}}}, {"scores", {{"channels", {4, 84}}}}};
  auto dec = detect::make_decoder(c, graph_with_output("output0"), "test");
  EXPECT_FALSE(dec->final_detections());
  auto dets = dec->decode({{"output0", p}}, 640, 640, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);  // class_mode best: one class per position
  expect_box(dets[0], {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2}, 0.7f, 17);
  nlohmann::json all = c;
  all["class_mode"] = "all";
  dets = detect::make_decoder(all, graph_with_output("output0"), "test")->decode({{"output0", p}}, 640, 640, 0.01f)[0];
  ASSERT_EQ(dets.size(), 2u);
  expect_box(with_label(dets, 3), {cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2}, 0.2f, 3);
}

TEST(DecodedBoxes, YoloV5StylePositionsByChannelsWithObjectness) {
  // [1, 2, 4 + 1 + 3]: score = obj · cls, or obj^a · cls^b with powers.
  at::Tensor p = at::zeros({1, 2, 8});
  p[0][0][0] = 100, p[0][0][1] = 60, p[0][0][2] = 40, p[0][0][3] = 30;
  p[0][0][4] = 0.5f;             // objectness
  p[0][0][5 + 2] = 0.8f;         // class 2
  p[0][1][4] = 0.9f;             // position 1: high objectness, every class 0
  const nlohmann::json c = {{"kind", "decoded"}, {"output", "out"}, {"boxes", {{"channels", {0, 4}}}},
                            {"objectness", {{"channel", 4}}}, {"scores", {{"channels", {5, 8}}}}, {"class_mode", "all"}};
  auto dets = detect::make_decoder(c, graph_with_output("out"), "t")->decode({{"out", p}}, 320, 320, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);
  expect_box(dets[0], {80, 45, 120, 75}, 0.4f, 2);
  nlohmann::json pw = c;
  pw["objectness_power"] = 0.6;
  pw["class_power"] = 0.4;
  dets = detect::make_decoder(pw, graph_with_output("out"), "t")->decode({{"out", p}}, 320, 320, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);
  EXPECT_NEAR(dets[0].score, std::pow(0.5, 0.6) * std::pow(0.8, 0.4), 1e-6);
  // Raw logits in the export: the decoder applies the sigmoid.
  nlohmann::json logits = c;
  logits["objectness"]["activation"] = "sigmoid";
  logits["scores"]["activation"] = "sigmoid";
  at::Tensor q = p.clone();
  q[0][0][4] = 0.0f;                          // σ = 0.5
  q[0][0][5 + 2] = std::log(0.8f / 0.2f);     // σ = 0.8
  q.narrow(2, 5, 3)[0][1].fill_(-20);         // σ ≈ 0: position 1 stays out
  q.narrow(2, 5, 3)[0][0][0] = -20, q.narrow(2, 5, 3)[0][0][1] = -20;
  dets = detect::make_decoder(logits, graph_with_output("out"), "t")->decode({{"out", q}}, 320, 320, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);
  expect_box(dets[0], {80, 45, 120, 75}, 0.4f, 2);
}

TEST(DecodedBoxes, SeparateOutputsNormalisedXyxy) {
  // boxes [1, P, 1, 4] (normalised x1 y1 x2 y2, as YOLOv4 exports) and scores [1, P, C].
  at::Tensor boxes = at::zeros({1, 2, 1, 4});
  boxes[0][1][0][0] = 0.25f, boxes[0][1][0][1] = 0.5f, boxes[0][1][0][2] = 0.75f, boxes[0][1][0][3] = 1.0f;
  at::Tensor scores = at::zeros({1, 2, 3});
  scores[0][1][1] = 0.6f;
  const nlohmann::json c = {{"kind", "decoded"},
                            {"boxes", {{"output", "boxes"}, {"format", "xyxy"}, {"units", "normalized"}}},
                            {"scores", {{"output", "confs"}}}};
  auto dec = detect::make_decoder(c, graph_with_outputs({"boxes", "confs"}), "t");
  auto dets = dec->decode({{"boxes", boxes}, {"confs", scores}}, 200, 100, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);
  expect_box(dets[0], {50, 50, 150, 100}, 0.6f, 1);
  // Top-left corner + size.
  nlohmann::json xywh = c;
  xywh["boxes"]["format"] = "xywh";
  dets = detect::make_decoder(xywh, graph_with_outputs({"boxes", "confs"}), "t")
             ->decode({{"boxes", boxes}, {"confs", scores}}, 200, 100, 0.01f)[0];
  ASSERT_EQ(dets.size(), 1u);
  expect_box(dets[0], {50, 50, 200, 150}, 0.6f, 1);
  // Positions must agree between the outputs, and the error names both.
  try {
    dec->decode({{"boxes", boxes}, {"confs", at::zeros({1, 3, 3})}}, 200, 100, 0.01f);
    ADD_FAILURE() << "mismatched positions accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'confs'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'boxes'"), std::string::npos) << e.what();
  }
}

TEST(DecodedBoxes, FinalDetectionsWithLabelsAndCount) {
  // Post-NMS export: [1, K, 6] = x1, y1, x2, y2, score, class; padding rows have class -1, and a count
  // output says how many rows are real.
  at::Tensor d = at::zeros({1, 4, 6});
  d[0][0] = at::tensor({10.f, 10.f, 20.f, 30.f, 0.9f, 4.f});
  d[0][1] = at::tensor({12.f, 10.f, 22.f, 30.f, 0.8f, 4.f});  // overlaps row 0, same class: NMS would drop it
  d[0][2] = at::tensor({0.f, 0.f, 5.f, 5.f, 0.7f, -1.f});     // padding
  d[0][3] = at::tensor({0.f, 0.f, 9.f, 9.f, 0.6f, 2.f});      // beyond the count
  const nlohmann::json c = {{"kind", "decoded"}, {"output", "dets"}, {"final", true},
                            {"boxes", {{"channels", {0, 4}}, {"format", "xyxy"}}}, {"scores", {{"channels", {4, 5}}}},
                            {"labels", {{"channel", 5}}}};
  auto dec = detect::make_decoder(c, graph_with_output("dets"), "t");
  EXPECT_TRUE(dec->final_detections());
  auto dets = dec->decode({{"dets", d}}, 64, 64, 0.01f)[0];
  ASSERT_EQ(dets.size(), 3u);  // the padding row is skipped
  expect_box(dets[0], {10, 10, 20, 30}, 0.9f, 4);
  expect_box(dets[1], {12, 10, 22, 30}, 0.8f, 4);
  expect_box(dets[2], {0, 0, 9, 9}, 0.6f, 2);
  nlohmann::json counted = c;
  counted["count"] = {{"output", "num"}};
  dets = detect::make_decoder(counted, graph_with_outputs({"dets", "num"}), "t")
             ->decode({{"dets", d}, {"num", at::full({1, 1}, 3.0f)}}, 64, 64, 0.01f)[0];
  ASSERT_EQ(dets.size(), 2u);
  EXPECT_THROW(detect::make_decoder({{"kind", "decoded"}, {"output", "dets"}, {"boxes", nlohmann::json::object()},
                                     {"scores", {{"channels", {4, 5}}}}, {"labels", {{"channel", 5}}}},
                                    graph_with_output("dets"), "t"),
               Error);  // labels without final
}

TEST(DecodedBoxes, DetectorSkipsNmsOnlyForFinalDetections) {
  // A 1×1 conv with zero weights: every one of the 4 positions outputs the bias, the same box and class.
  Graph g;
  g.inputs = {test::float_input("x", {1, 3, 1, 4})};
  g.outputs = {test::float_output("dets", {1, 6, 1, 4})};
  TensorData w;
  w.dtype = DType::Float;
  w.shape = {6, 3, 1, 1};
  w.bytes.assign(6 * 3 * sizeof(float), 0);
  TensorData b = w;
  b.shape = {6};
  b.bytes.resize(6 * sizeof(float));
  const float bias[6] = {0.5f, 0.0f, 2.5f, 1.0f, 0.9f, 1.0f};
  std::memcpy(b.bytes.data(), bias, sizeof bias);
  g.initializers["w"] = w;
  g.initializers["b"] = b;
  g.nodes.push_back(test::node("conv", "Conv", {"x", "w", "b"}, {"dets"}));
  g = test::finish(g);
  nlohmann::json profile = {{"preprocess", {{"width", 4}, {"height", 1}}},
                            {"decoder", {{"kind", "decoded"}, {"output", "dets"}, {"layout", "channels_positions"},
                                         {"boxes", {{"format", "xyxy"}}}, {"scores", {{"channels", {4, 5}}}},
                                         {"labels", {{"channel", 5}}}, {"final", true}}}};
  const Image img(4, 1);
  EXPECT_EQ(Detector(g, parse_profile(profile, "final")).detect({img})[0].size(), 4u);
  profile["decoder"].erase("labels");
  profile["decoder"]["final"] = false;
  EXPECT_EQ(Detector(g, parse_profile(profile, "nms")).detect({img})[0].size(), 1u);
}

TEST(Profiles, UnknownKeysAreNamedWithTheKnownOnes) {
  const auto message = [](const nlohmann::json& j) {
    try {
      parse_profile(j, "p.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  nlohmann::json j = {{"preprocess", {{"preset", "yolov5"}}}, {"decoder", {{"kind", "yolox"}}}, {"nms_io", 0.5}};
  std::string m = message(j);
  EXPECT_NE(m.find("unknown key 'nms_io'"), std::string::npos) << m;
  EXPECT_NE(m.find("nms_iou"), std::string::npos) << m;
  j.erase("nms_io");
  j["preprocess"]["channels"] = "rgb";
  m = message(j);
  EXPECT_NE(m.find("unknown key 'channels'"), std::string::npos) << m;
  EXPECT_NE(m.find("channel_order"), std::string::npos) << m;
  // Decoder keys are checked when the decoder is built against the graph.
  try {
    detect::make_decoder({{"kind", "decoded"}, {"output", "o"}, {"boxes", {{"fromat", "xyxy"}}}, {"scores", nlohmann::json::object()}},
                         graph_with_output("o"), "p.json");
    ADD_FAILURE() << "a misspelt decoder key was accepted";
  } catch (const Error& e) {
    m = e.what();
    EXPECT_NE(m.find("unknown key 'fromat'"), std::string::npos) << m;
    EXPECT_NE(m.find("format"), std::string::npos) << m;
  }
}

// Fuzz findings (docs/FUZZING.md): fields of the wrong type escaped as nlohmann::json::type_error instead
// of an Error naming the profile.
TEST(Profiles, MistypedFieldsAreErrorsNamingTheProfile) {
  const auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "accepted; expected an Error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  nlohmann::json nanodet = nlohmann::json::parse(std::ifstream(std::string(INLIERQ_SOURCE_DIR) + "/profiles/nanodet.json"));
  std::vector<std::string> level_outputs;
  for (const auto& l : nanodet["decoder"]["levels"]) level_outputs.push_back(l["scores"]), level_outputs.push_back(l["boxes"]);
  nanodet["decoder"]["levels"][1]["stride"] = nullptr;
  expect_error([&] { detect::make_decoder(nanodet["decoder"], graph_with_outputs(level_outputs), "nanodet.json"); },
               "nanodet.json: invalid decoder");
  expect_error([&] { detect::make_decoder({{"kind", 3}}, graph_with_output("o"), "p.json"); }, "decoder.kind must be a string");
  nlohmann::json v5 = nlohmann::json::parse(std::ifstream(std::string(INLIERQ_SOURCE_DIR) + "/profiles/yolov5.json"));
  for (const auto& [key, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"channels", {5, "85"}}, {"channels", {85, 5}}, {"channels", nullptr}, {"objectness_channel", "4"},
           {"objectness_channel", -1}, {"layout", 2}, {"values", nullptr}}) {
    nlohmann::json j = v5;
    j["heatmap"]["sources"][0][key] = value;
    expect_error([&] { parse_profile(j, "v5.json"); }, "v5.json: heatmap.sources[]");
  }
  // Two sources with different class counts cannot be concatenated.
  const nlohmann::json two = {{"sources", {{{"output", "a"}, {"channels", {0, 3}}}, {{"output", "b"}, {"channels", {0, 2}}}}}};
  expect_error([&] { inlier::heatmap_logits(two, {{"a", at::rand({1, 5, 4})}, {"b", at::rand({1, 5, 4})}}); },
               "same batch and class count");
}

TEST(Preprocess, YoloV5LetterboxRoundsTheSize) {
  // 1000×333 into 640: r = 0.64, 333·0.64 = 213.12 → 213 both ways; 999×500: r = 0.6406…, 500·r = 320.32.
  // 1250×777: r = 0.512, 777·0.512 = 397.824 → 397 (int) or 398 (round).
  const Image img(1250, 777);
  PreprocessSpec s = preprocess_preset("yolov5");
  EXPECT_EQ(preprocess(img, s).transform.resized_height, 398);
  EXPECT_EQ(preprocess(img, s).transform.offset_y, (640 - 398) / 2);
  s.letterbox_round = LetterboxRound::Floor;
  EXPECT_EQ(preprocess(img, s).transform.resized_height, 397);
}

namespace {

// Every string an "output"-like key names, anywhere in the decoder config.
void referenced_outputs(const nlohmann::json& j, std::vector<std::string>& names) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      if (v.is_string() && (k == "output" || k == "scores" || k == "boxes" || k == "objectness_output"))
        names.push_back(v.get<std::string>());
      else
        referenced_outputs(v, names);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) referenced_outputs(v, names);
  }
}

}  // namespace

// The ```json blocks of a markdown file.
static std::vector<std::string> json_snippets(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error(path + " not found");
  std::vector<std::string> snippets;
  std::string line, block;
  bool in_json = false;
  while (std::getline(f, line)) {
    if (!in_json && line.rfind("```json", 0) == 0) {
      in_json = true;
      block.clear();
    } else if (in_json && line.rfind("```", 0) == 0) {
      in_json = false;
      snippets.push_back(block);
    } else if (in_json) {
      block += line + "\n";
    }
  }
  return snippets;
}

TEST(Profiles, EverySnippetInTheDocsLoads) {
  const std::string root = INLIERQ_SOURCE_DIR;
  std::vector<std::string> snippets = json_snippets(root + "/docs/PROFILES.md");
  ASSERT_GE(snippets.size(), 8u);
  const std::vector<std::string> readme = json_snippets(root + "/README.md");
  ASSERT_GE(readme.size(), 1u);
  snippets.insert(snippets.end(), readme.begin(), readme.end());
  // Fragments (a decoder, a preprocessing override, class ids) are laid over a minimal profile.
  const nlohmann::json base = {{"preprocess", {{"preset", "yolox"}}},
                               {"decoder", {{"kind", "yolox"}, {"output", "output"}, {"strides", {8}}}}};
  for (size_t i = 0; i < snippets.size(); ++i) {
    SCOPED_TRACE("snippet " + std::to_string(i + 1) + ":\n" + snippets[i]);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(snippets[i]));
    nlohmann::json full = base;
    full.merge_patch(j);
    if (j.contains("decoder")) full["decoder"] = j["decoder"];
    ModelProfile p;
    ASSERT_NO_THROW(p = parse_profile(full, "docs snippet"));
    std::vector<std::string> names;
    referenced_outputs(p.decoder, names);
    EXPECT_NO_THROW(detect::make_decoder(p.decoder, graph_with_outputs(names), "docs snippet"));
  }
  // The built-in profiles are the documented ones.
  for (const auto& name : builtin_profile_names()) EXPECT_NO_THROW(load_profile(name)) << name;
}
