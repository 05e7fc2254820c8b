// InlierQ's label-free signal: heatmap logits, the top-K auxiliary loss and its gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "graph_builders.h"
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
  rt::ExecutorOptions eo;
  eo.fuse_silu = false;
  rt::Executor ex(g, eo);
  const at::Tensor x = at::randn({2, 4, 6, 5});
  inlier::AuxLossOptions o;
  o.k = 5;
  at::Tensor grad;
  inlier::aux_loss_gradients(ex, kHeatmap, {x.narrow(0, 0, 1), x.narrow(0, 1, 1)}, {"h"}, o, 2,
                             [&](const std::string&, const at::Tensor& t) { grad = t; });
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
  std::mt19937 pick(3);
  int nonzero = 0;
  const at::Tensor gflat = grad.contiguous().view({-1});
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t i = std::uniform_int_distribution<int64_t>(0, gflat.numel() - 1)(pick);
    const double eps = 1e-2;
    const double fd = (loss_with(i, eps) - loss_with(i, -eps)) / (2 * eps);
    EXPECT_NEAR(gflat[i].item<double>(), fd, 2e-3 + 0.05 * std::fabs(fd)) << "element " << i;
    nonzero += std::fabs(fd) > 1e-6;
  }
  EXPECT_GT(nonzero, 5);  // top-5 of 30 positions per class: a fair share of elements carry gradient
}
