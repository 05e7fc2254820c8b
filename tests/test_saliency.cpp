// InlierQ's label-free signal: heatmap logits, the top-K auxiliary loss and its gradients.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <regex>
#include "graph_builders.h"
#include "inlierq/error.h"
#include "inlierq/inlier.h"
#include "inlierq/report.h"
#include "inlier/inlier_weights.h"
#include "inlier/saliency.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

using namespace inlierq;
using namespace inlierq::test;

namespace {

// x → Conv (4 → 3 classes) 'h' → Sigmoid → 'p' [1, 3, 6, 5]: a heatmap given as probabilities.
Graph sigmoid_head(std::mt19937& rng) {
  Graph g;
  g.inputs = {float_input("x", {1, 4, 6, 5})};
  g.outputs = {float_output("p", {1, 3, 6, 5})};
  g.initializers["w"] = random_tensor({3, 4, 1, 1}, rng, 1.0f);
  g.nodes.push_back(node("conv", "Conv", {"x", "w"}, {"h"}));
  g.nodes.push_back(node("sig", "Sigmoid", {"h"}, {"p"}));
  return finish(g);
}

// Every intermediate value must exist as a tensor for the gradient capture.
rt::ExecutorOptions unfused() {
  rt::ExecutorOptions eo;
  eo.fuse_silu = false;
  return eo;
}

const nlohmann::json kHeatmap = {{"sources", {{{"output", "p"}, {"layout", "channels_positions"}, {"channels", {0, 3}},
                                                {"values", "probabilities"}}}}};

}  // namespace

TEST(Saliency, HeatmapLogitsInvertTheSigmoid) {
  const at::Tensor h = at::randn({2, 3, 6, 5}) * 3;
  const at::Tensor hm = inlier::heatmap_logits(kHeatmap, {{"p", at::sigmoid(h)}});
  ASSERT_EQ(hm.sizes(), (at::IntArrayRef{2, 3, 30}));
  EXPECT_TRUE(at::allclose(hm, h.flatten(2), 1e-3, 1e-3));
  // Objectness × class, positions-major layout (YOLOX-like): logit of the product.
  const at::Tensor raw = at::rand({1, 7, 6});  // [N, M, 1 obj + 5 cls]
  const nlohmann::json yolox = {{"sources", {{{"output", "o"}, {"layout", "positions_channels"}, {"channels", {1, 6}},
                                               {"objectness_channel", 0}}}}};
  const at::Tensor score = (raw.narrow(2, 0, 1) * raw.narrow(2, 1, 5)).transpose(1, 2).clamp(1e-7, 1 - 1e-7);
  EXPECT_TRUE(at::allclose(inlier::heatmap_logits(yolox, {{"o", raw}}), at::log(score) - at::log1p(-score), 1e-4, 1e-4));
  EXPECT_THROW(inlier::heatmap_logits(nlohmann::json::object(), {{"p", h}}), Error);
  EXPECT_THROW(inlier::heatmap_logits(kHeatmap, {{"q", h}}), Error);
}

TEST(Saliency, TopKLossClosedForm) {
  const at::Tensor h = at::randn({2, 3, 30});
  inlier::AuxLossOptions o;
  o.k = 4;
  // Per image: mean over classes and their 4 largest logits of −log σ(h); summed over images.
  double expect = 0;
  for (int n = 0; n < 2; ++n) {
    double s = 0;
    for (int c = 0; c < 3; ++c) {
      const at::Tensor top = std::get<0>(h[n][c].topk(4));
      s += at::softplus(-top).sum().item<double>();
    }
    expect += s / 12;
  }
  EXPECT_NEAR(inlier::topk_aux_loss(h, o).item<double>(), expect, 1e-5);
}

TEST(Saliency, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(2);
  const Graph g = sigmoid_head(rng);
  rt::Executor ex(g, unfused());
  const at::Tensor x = at::randn({2, 4, 6, 5});
  inlier::AuxLossOptions o;
  o.k = 5;
  at::Tensor grad;
  inlier::aux_loss_gradients(ex, kHeatmap, {x.narrow(0, 0, 1), x.narrow(0, 1, 1)}, {"h"}, o, 2,
                             [&](const std::string&, const at::Tensor& t, const at::Tensor&) { grad = t; });
  ASSERT_TRUE(grad.defined());
  ASSERT_EQ(grad.sizes(), (at::IntArrayRef{2, 3, 6, 5}));
  // Central differences of the loss in double precision, perturbing one element of 'h' at a time.
  auto loss_with = [&](int64_t flat, double eps) {
    rt::RunOptions ro;
    ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
      if (name != "h") return t;
      at::Tensor u = t.to(at::kDouble).contiguous().clone();
      u.view({-1})[flat] += eps;
      return u.to(at::kFloat);
    };
    const auto outs = ex.run({{"x", x}}, ro);
    return inlier::topk_aux_loss(inlier::heatmap_logits(kHeatmap, outs), o).item<double>();
  };
  // Every element with a gradient (the top-5 positions of each class and image) and 20 others.
  const at::Tensor gflat = grad.contiguous().view({-1});
  std::vector<int64_t> picks;
  for (int64_t i = 0; i < gflat.numel(); ++i)
    if (gflat[i].item<float>() != 0) picks.push_back(i);
  std::mt19937 pick(3);
  for (int k = 0; k < 20; ++k) picks.push_back(std::uniform_int_distribution<int64_t>(0, gflat.numel() - 1)(pick));
  int nonzero = 0;
  for (const int64_t i : picks) {
    const double eps = 1e-2;
    const double fd = (loss_with(i, eps) - loss_with(i, -eps)) / (2 * eps);
    EXPECT_NEAR(gflat[i].item<double>(), fd, 2e-3 + 0.05 * std::fabs(fd)) << "element " << i;
    nonzero += std::fabs(fd) > 1e-6;
  }
  EXPECT_GE(nonzero, 20);  // top-5 of 30 positions per class and image: 30 elements carry gradient
}

// The per-batch reduction InlierQ uses (F and raw saliency per batch, no full gradient kept) gives the
// weights of the whole-gradient path.
TEST(Saliency, BatchReductionMatchesWholeGradient) {
  std::mt19937 rng(4);
  const Graph g = sigmoid_head(rng);
  rt::Executor ex(g, unfused());
  const at::Tensor x = at::randn({5, 4, 6, 5});
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < 5; ++i) xs.push_back(x.narrow(0, i, 1));
  inlier::AuxLossOptions o;
  o.k = 5;
  for (const auto& [saliency, saliency_name] : inlier::saliency_names().rows) {
    inlier::InlierOptions io;
    io.saliency = saliency;
    at::Tensor grad, act, raw;
    inlier::aux_loss_gradients(ex, kHeatmap, xs, {"h"}, o, 2,
                               [&](const std::string&, const at::Tensor& t, const at::Tensor& z) { grad = t, act = z; }, true);
    inlier::aux_loss_reduce(
        ex, kHeatmap, xs, {"h"}, o, 2,
        [&](const std::string&, const at::Tensor& t, const at::Tensor& z) {
          return std::vector<at::Tensor>{at::Tensor(), inlier::raw_saliency(t.to(at::kBFloat16).to(at::kFloat), z, saliency)};
        },
        [&](const std::string&, const std::vector<at::Tensor>& kept) {
          EXPECT_FALSE(kept[0].defined());
          raw = kept[1];
        },
        true);
    ASSERT_TRUE(raw.defined());
    ASSERT_EQ(raw.sizes(), (at::IntArrayRef{5, 6, 5}));
    const auto whole = inlier::volume_weights(grad, act, io);
    const auto batched = inlier::volume_weights_from_raw(raw, io);
    EXPECT_TRUE(at::allclose(whole.weights, batched.weights, 1e-6, 1e-6)) << saliency_name;
    EXPECT_NEAR(whole.fit.mean[1], batched.fit.mean[1], 1e-9) << saliency_name;
  }
}

// The plain threshold InlierQ's EM is compared against: exactly the round(q·n) highest raw saliencies of
// the volumes with a non-zero gradient get weight 1 (log and standardisation keep the order, so sorting the
// raw values is an independent reference), every other volume 0; q outside (0, 1] is refused.
TEST(Saliency, QuantileWeightingKeepsTheHighestScores) {
  at::manual_seed(3);
  at::Tensor raw = at::exp(3 * at::randn({4, 9, 7}, at::kDouble));
  raw.masked_fill_(at::rand({4, 9, 7}) < 0.1, 0.0);  // volumes without a gradient never count as inliers
  const at::Tensor nonzero = raw.masked_select(raw > 0);
  for (double q : {0.1, 0.5, 0.9, 1.0}) {
    inlier::InlierOptions io;
    io.weighting = inlier::Weighting::Quantile;
    io.quantile = q;
    const auto vw = inlier::volume_weights_from_raw(raw, io);
    const int64_t k = std::llround(q * static_cast<double>(nonzero.numel()));
    const double threshold = std::get<0>(at::sort(nonzero, 0, true))[k - 1].item<double>();
    const at::Tensor expected = ((raw >= threshold) & (raw > 0)).to(at::kFloat);
    EXPECT_TRUE(at::equal(vw.weights, expected)) << "q " << q;
    EXPECT_EQ(vw.weights.sum().item<double>(), static_cast<double>(k)) << "q " << q;
  }
  inlier::InlierOptions bad;
  bad.weighting = inlier::Weighting::Quantile;
  for (double q : {0.0, 1.5}) {
    bad.quantile = q;
    EXPECT_THROW(inlier::volume_weights_from_raw(raw, bad), Error) << q;
  }
}

// Labels are never used for calibration; here they check that the label-free inlier posterior points at
// objects: over 16 coco128 images, the mean posterior of volumes inside ground-truth boxes exceeds the
// mean outside at the unit outputs nearest the head.
#include "inlier/inlier_weights.h"
#include "inlierq/dataset.h"
#include "inlierq/detect.h"
#include "inlierq/image.h"
#include "inlierq/onnx_io.h"
#include "inlierq/preprocess.h"
#include "inlierq/quant.h"
#include "inlierq/recon.h"
#include "inlierq/transforms.h"
#include "test_helpers.h"

TEST(Saliency, InlierPosteriorIsHigherInsideGroundTruthBoxes) {
  for (const auto& [file, profile_name] : std::vector<std::pair<std::string, std::string>>{
           {"fastestdet_352.onnx", "fastestdet"}, {"yolox_nano.onnx", "yolox"}}) {
    const ModelProfile profile = load_profile(profile_name);
    const Graph g = prepare_for_quantization(load_onnx(model_path(file)), file);
    quant::PlacementOptions po;
    po.weight_bits = po.act_bits = 4;
    const auto units = recon::derive_units(g, quant::derive_plan(g, po));
    std::vector<std::string> values;  // the outputs of the last three units (neck, next to the head)
    for (size_t i = units.size() - 3; i < units.size(); ++i) values.push_back(units[i].outputs.front());
    const auto folder = scan_image_folder(assets_dir() + "/coco128/images/train2017", 16);
    std::vector<at::Tensor> xs;
    std::vector<std::vector<std::array<float, 4>>> boxes;  // input-frame xyxy
    for (const auto& path : folder.paths) {
      const Image img = load_image(path);
      const Preprocessed p = preprocess(img, profile.preprocess);
      xs.push_back(rt::to_aten(p.tensor));
      std::vector<std::array<float, 4>> bs;
      for (const auto& b : load_yolo_labels(yolo_label_path(path), img.width, img.height))
        bs.push_back(p.transform.to_input({b.x, b.y, b.x + b.w, b.y + b.h}));
      boxes.push_back(bs);
    }
    rt::ExecutorOptions eo;
    eo.fuse_silu = false;
    rt::Executor ex(g, eo);
    const int64_t in_h = xs[0].size(2), in_w = xs[0].size(3);
    int higher = 0;
    inlier::aux_loss_gradients(ex, profile.heatmap, xs, values, {}, 4, [&](const std::string& v, const at::Tensor& grad, const at::Tensor&) {
      const auto vw = inlier::volume_weights(grad, at::Tensor());
      ASSERT_EQ(vw.weights.dim(), 3) << v;
      EXPECT_GE(vw.weights.min().item<float>(), 0.0f);
      EXPECT_LE(vw.weights.max().item<float>(), 1.0f);
      const int64_t h = vw.weights.size(1), w = vw.weights.size(2);
      at::Tensor inside = at::zeros({static_cast<int64_t>(xs.size()), h, w}, at::kBool);
      for (size_t n = 0; n < boxes.size(); ++n)
        for (const auto& b : boxes[n]) {
          const int64_t x0 = std::max<int64_t>(0, static_cast<int64_t>(b[0] / in_w * w)), x1 = std::min<int64_t>(w, static_cast<int64_t>(std::ceil(b[2] / in_w * w)));
          const int64_t y0 = std::max<int64_t>(0, static_cast<int64_t>(b[1] / in_h * h)), y1 = std::min<int64_t>(h, static_cast<int64_t>(std::ceil(b[3] / in_h * h)));
          if (x1 > x0 && y1 > y0) inside[static_cast<int64_t>(n)].narrow(0, y0, y1 - y0).narrow(1, x0, x1 - x0).fill_(true);
        }
      const double in_mean = vw.weights.masked_select(inside).mean().item<double>();
      const double out_mean = vw.weights.masked_select(inside.logical_not()).mean().item<double>();
      std::printf("  %-10s %-16s posterior inside boxes %.3f, outside %.3f\n", profile_name.c_str(), v.c_str(), in_mean, out_mean);
      higher += in_mean > out_mean;
    }, false);
    EXPECT_GE(higher, 2) << file << ": the posterior is not higher inside boxes at most neck outputs";
  }
}

TEST(Saliency, HeatmapReadsDecodedBoxLayouts) {
  // YOLOv8-style [N, 4 + C, P]: class probabilities in channels 4.., positions last.
  const at::Tensor v8 = at::rand({2, 4 + 3, 5}).clamp(0.01, 0.99);
  const nlohmann::json h8 = {{"sources", {{{"output", "o"}, {"layout", "channels_positions"}, {"channels", {4, 7}}}}}};
  const at::Tensor c8 = v8.narrow(1, 4, 3);
  EXPECT_TRUE(at::allclose(inlier::heatmap_logits(h8, {{"o", v8}}), at::log(c8) - at::log1p(-c8), 1e-4, 1e-4));
  // Separate outputs: scores [N, P, C] and objectness [N, P] in another output.
  const at::Tensor cls = at::rand({2, 5, 3}).clamp(0.01, 0.99), obj = at::rand({2, 5}).clamp(0.01, 0.99);
  const nlohmann::json hs = {{"sources", {{{"output", "scores"}, {"channels", {0, 3}}, {"objectness_output", "obj"},
                                           {"objectness_channel", 0}}}}};
  const at::Tensor prod = (obj.unsqueeze(2) * cls).transpose(1, 2);
  EXPECT_TRUE(at::allclose(inlier::heatmap_logits(hs, {{"scores", cls}, {"obj", obj}}), at::log(prod) - at::log1p(-prod),
                           1e-4, 1e-4));
  EXPECT_THROW(inlier::heatmap_logits({{"sources", {{{"output", "o"}, {"channels", {4, 7}}, {"layuot", "x"}}}}}, {{"o", v8}}),
               Error);
}

// The report's frontier: the path visits exactly the trials no other trial beats at the same or a larger
// share of integer MACs, from the largest share down; the chosen trial is ringed; the budget is drawn.
TEST(ReportFrontier, PathVisitsTheParetoTrialsOnly) {
  const nlohmann::json trials = nlohmann::json::parse(R"([
    {"fidelity": {"agreement_map": 0.70}, "integer_mac_fraction": 1.0},
    {"fidelity": {"agreement_map": 0.80}, "integer_mac_fraction": 1.0},
    {"fidelity": {"agreement_map": 0.85}, "integer_mac_fraction": 0.9},
    {"fidelity": {"agreement_map": 0.82}, "integer_mac_fraction": 0.8},
    {"fidelity": {"agreement_map": -1}, "integer_mac_fraction": 0.75},
    {"fidelity": {"agreement_map": 0.90}, "integer_mac_fraction": 0.7, "within_budget": false}])");
  const std::string svg = inlierq::report::frontier_svg(trials, 2, 0.85);
  // Points by their title, so that the path's coordinates can be matched to trials.
  std::map<int, std::pair<double, double>> at;
  const std::regex circle(R"re(<circle cx="([0-9.]+)" cy="([0-9.]+)" r="3.5" fill="(#[0-9a-f]+)"><title>trial (\d+):)re");
  std::map<int, std::string> fill;
  for (std::sregex_iterator it(svg.begin(), svg.end(), circle), end; it != end; ++it) {
    const int t = std::stoi((*it)[4]);
    at[t] = {std::stod((*it)[1]), std::stod((*it)[2])};
    fill[t] = (*it)[3];
  }
  ASSERT_EQ(at.size(), 5u) << "the trial without agreement is left out";
  EXPECT_EQ(fill[6], "#aaaaaa") << "outside the budget: grey";
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex(R"re(<path d="([^"]+)")re")));
  std::vector<std::pair<double, double>> vertices;
  const std::string d = m[1];
  const std::regex xy(R"(([0-9.]+),([0-9.]+))");
  for (std::sregex_iterator it(d.begin(), d.end(), xy), end; it != end; ++it) vertices.emplace_back(std::stod((*it)[1]), std::stod((*it)[2]));
  // Staircase: each Pareto trial, with a corner between consecutive ones.
  const std::vector<int> pareto = {2, 3, 6};
  ASSERT_EQ(vertices.size(), 2 * pareto.size() - 1);
  for (size_t i = 0; i < pareto.size(); ++i) {
    EXPECT_NEAR(vertices[2 * i].first, at[pareto[i]].first, 0.05) << "vertex " << i;
    EXPECT_NEAR(vertices[2 * i].second, at[pareto[i]].second, 0.05) << "vertex " << i;
  }
  EXPECT_TRUE(std::regex_search(svg, std::regex("cx=\"" + fmt::format("{:.1f}", at[3].first) + "\" cy=\"" +
                                                  fmt::format("{:.1f}", at[3].second) + "\" r=\"7\"")))
      << "the chosen trial (index 2 = trial 3) is ringed";
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos) << "the budget line";
}

// --budget weight-bits' plot: one point per measured step, placed by its bits and SQNR (a point further right has more
// bits, a higher one more dB), the chosen assignment ringed where it was measured, the budget dashed between.
TEST(ReportWeightBits, PointsFollowTheMeasuredFrontier) {
  const nlohmann::json wb = nlohmann::json::parse(R"({"budget_bits": 5, "high_bits": 8, "frontier": [
    {"average_bits": 4.0, "sqnr_db": 2.0}, {"average_bits": 4.5, "sqnr_db": 6.0}, {"average_bits": 5.2, "sqnr_db": 8.0},
    {"average_bits": 8.0, "sqnr_db": 20.0}, {"average_bits": 4.9, "sqnr_db": 7.0, "chosen": true}]})");
  const std::string svg = inlierq::report::weight_bits_svg(wb);
  const std::regex circle(R"re(<circle cx="([0-9.]+)" cy="([0-9.]+)" r="2.5" fill="#1f77b4"><title>([0-9.]+) bits: ([0-9.]+) dB)re");
  std::vector<std::array<double, 4>> pts;  // x, y, bits, dB
  for (std::sregex_iterator it(svg.begin(), svg.end(), circle), end; it != end; ++it)
    pts.push_back({std::stod((*it)[1]), std::stod((*it)[2]), std::stod((*it)[3]), std::stod((*it)[4])});
  ASSERT_EQ(pts.size(), 4u) << "the chosen point is drawn as a ring, not on the path";
  for (size_t i = 1; i < pts.size(); ++i) {
    EXPECT_GT(pts[i][0], pts[i - 1][0]);
    EXPECT_LT(pts[i][1], pts[i - 1][1]) << "more dB is higher up (smaller y)";
  }
  // Linear axes: x and y of the chosen point interpolate between its neighbours.
  const double x = pts[1][0] + (4.9 - 4.5) / (5.2 - 4.5) * (pts[2][0] - pts[1][0]);
  const double y = pts[1][1] + (7.0 - 6.0) / (8.0 - 6.0) * (pts[2][1] - pts[1][1]);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex(R"re(<circle cx="([0-9.]+)" cy="([0-9.]+)" r="6")re")));
  EXPECT_NEAR(std::stod(m[1]), x, 0.15);
  EXPECT_NEAR(std::stod(m[2]), y, 0.15);
  ASSERT_TRUE(std::regex_search(svg, m, std::regex(R"re(<line x1="([0-9.]+)" y1="[0-9.]+" x2="[0-9.]+" y2="[0-9.]+" stroke="#d62728" stroke-dasharray)re")));
  EXPECT_NEAR(std::stod(m[1]), pts[1][0] + (5.0 - 4.5) / (5.2 - 4.5) * (pts[2][0] - pts[1][0]), 0.15) << "the budget line";
}

// Inlier-weighted sensitivity's output weights: the heatmap source's gradient taken here on a leaf copy of its
// output, split by the same mixture, shaped [N, 1, H, W] against it; an output with as many positions (a box map)
// shares them, and one with other positions gets none.
TEST(Saliency, OutputInlierWeightsFollowTheHeatmapSource) {
  std::mt19937 rng(5);
  Graph g;
  g.inputs = {float_input("x", {1, 4, 6, 5})};
  g.outputs = {float_output("p", {1, 3, 6, 5}), float_output("box", {1, 4, 6, 5}), float_output("pooled", {1, 3, 3, 2})};
  g.initializers["w"] = random_tensor({3, 4, 1, 1}, rng, 1.0f);
  g.initializers["wb"] = random_tensor({4, 4, 1, 1}, rng, 1.0f);
  g.nodes.push_back(node("conv", "Conv", {"x", "w"}, {"h"}));
  g.nodes.push_back(node("sig", "Sigmoid", {"h"}, {"p"}));
  g.nodes.push_back(node("box_conv", "Conv", {"x", "wb"}, {"box"}));
  Node pool = node("pool", "MaxPool", {"p"}, {"pooled"});
  set_ints(pool, "kernel_shape", {2, 2});
  set_ints(pool, "strides", {2, 2});
  set_ints(pool, "pads", {0, 0, 1, 0});
  g.nodes.push_back(pool);
  g = finish(g);
  // Two images, one of them a bright patch on a dim background, so that the mixture has something to split.
  std::vector<TensorData> images;
  for (int i = 0; i < 2; ++i) {
    at::Tensor x = at::randn({1, 4, 6, 5}) * 0.2;
    x.narrow(2, 1 + i, 2).narrow(3, 2, 2).add_(3.0);
    images.push_back(rt::from_aten(x));
  }
  inlier::HeatmapLossOptions loss;
  loss.heatmap = kHeatmap;
  loss.topk = 4;
  inlier::InlierSplitOptions split;
  const auto w = inlier::output_inlier_weights(g, images, loss, split);
  ASSERT_EQ(w.size(), 2u);
  ASSERT_TRUE(w.count("p") && w.count("box"));
  const at::Tensor wp = rt::to_aten(w.at("p")), wb = rt::to_aten(w.at("box"));
  ASSERT_EQ(wp.sizes(), (at::IntArrayRef{2, 1, 6, 5}));
  EXPECT_TRUE(at::equal(wp, wb));

  rt::Executor ex(g, unfused());
  const at::Tensor x = at::cat({rt::to_aten(images[0]), rt::to_aten(images[1])}, 0);
  const at::Tensor p = ex.run({{"x", x}}).at("p").clone().requires_grad_(true);
  const at::Tensor l = inlier::topk_aux_loss(inlier::heatmap_logits(kHeatmap, {{"p", p}}), inlier::aux_options(loss));
  l.backward();
  const auto expect = inlier::volume_weights(p.grad().flatten(2), p.detach().flatten(2), inlier::inlier_options(split));
  EXPECT_TRUE(at::allclose(wp.flatten(1), expect.weights, 1e-5, 1e-6));
  EXPECT_GT((wp.max() - wp.min()).item<double>(), 0.5) << "the split weighs the patch apart from the background";

  loss.heatmap = nlohmann::json::object();
  EXPECT_THROW(inlier::output_inlier_weights(g, images, loss, split), Error);
}
