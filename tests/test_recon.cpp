// Reconstruction: units, QDrop masks, AdaRound/BRECQ/QDrop on a tiny W4A4 network, resume, one real unit.
#include <gtest/gtest.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <unistd.h>
#include <random>

#include "graph_builders.h"
#include "inlierq/inlier.h"
#include "inlierq/onnx_io.h"
#include "inlierq/pipeline.h"
#include "inlierq/quant.h"
#include "inlierq/recon.h"
#include "inlierq/transforms.h"
#include "quant/fake_quant.h"
#include "quant/qdrop_kernel.h"
#include "recon/reconstructor.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"
#include "test_helpers.h"

using namespace inlierq;
using namespace inlierq::test;
namespace fs = std::filesystem;

namespace {

// stem conv → two residual blocks (3×3 conv, ReLU, 1×1 conv, Add, ReLU) → prediction conv.
Graph two_block_net(std::mt19937& rng) {
  Graph g;
  g.inputs = {float_input("x", {1, 3, 16, 16})};
  g.outputs = {float_output("pred", {1, 6, 16, 16})};
  auto conv = [&](const std::string& name, const std::string& in, const std::string& out, int cin, int cout, int k, float ws) {
    g.initializers[name + ".w"] = random_tensor({cout, cin, k, k}, rng, ws);
    g.initializers[name + ".b"] = random_tensor({cout}, rng, 0.1f);
    Node n = node(name, "Conv", {in, name + ".w", name + ".b"}, {out});
    set_ints(n, "pads", {k / 2, k / 2, k / 2, k / 2});
    g.nodes.push_back(n);
  };
  conv("stem", "x", "stem_out", 3, 16, 3, 0.3f);
  g.nodes.push_back(node("stem_relu", "Relu", {"stem_out"}, {"a0"}));
  for (int b = 1; b <= 2; ++b) {
    const std::string in = "a" + std::to_string(b - 1), p = "b" + std::to_string(b);
    conv(p + "c1", in, p + "c1_out", 16, 16, 3, 0.15f);
    g.nodes.push_back(node(p + "relu1", "Relu", {p + "c1_out"}, {p + "h"}));
    conv(p + "c2", p + "h", p + "c2_out", 16, 16, 1, 0.3f);
    g.nodes.push_back(node(p + "add", "Add", {in, p + "c2_out"}, {p + "sum"}));
    g.nodes.push_back(node(p + "relu2", "Relu", {p + "sum"}, {"a" + std::to_string(b)}));
  }
  conv("pred", "a2", "pred", 16, 6, 1, 0.3f);
  return finish(g);
}

std::vector<TensorData> images(int n, std::mt19937& rng) {
  std::vector<TensorData> v;
  for (int i = 0; i < n; ++i) v.push_back(random_tensor({1, 3, 16, 16}, rng, 1.0f, 0.2f));
  return v;
}

quant::QuantPlan w4a4_plan(const Graph& g) {
  quant::PlacementOptions po;
  po.weight_bits = 4;
  po.act_bits = 4;
  return quant::derive_plan(g, po);
}

quant::Encodings mse_calibration(const Graph& g, const quant::QuantPlan& plan, const std::vector<TensorData>& xs) {
  quant::CalibrationOptions co;
  co.method = "mse";
  return quant::calibrate(g, plan, xs, co);
}

// Mean squared error of the QDQ model's output against the FP model's over the images.
double output_mse(const Graph& fp, const Graph& qdq, const std::vector<TensorData>& xs) {
  rt::Executor a(fp), b(qdq);
  double se = 0;
  int64_t n = 0;
  for (const auto& x : xs) {
    const at::Tensor t = rt::to_aten(x);
    const at::Tensor ya = a.run_single(t)[0], yb = b.run_single(t)[0];
    se += (ya - yb).pow(2).sum().item<double>();
    n += ya.numel();
  }
  return se / static_cast<double>(n);
}

recon::ReconOptions fast_options(const std::string& method) {
  recon::ReconOptions o;
  o.method = method;
  o.iters = 300;
  o.brecq_act_iters = 150;
  o.batch = 8;
  o.seed = 7;
  return o;
}

// The tiny two-block W4A4 network, calibrated: what most reconstruction tests start from.
struct TinyNet {
  Graph g;
  quant::QuantPlan plan;
  std::vector<TensorData> xs;
  quant::Encodings enc0;
};
TinyNet tiny_net(unsigned seed, int images_n) {
  std::mt19937 rng(seed);
  TinyNet t;
  t.g = two_block_net(rng);
  t.plan = w4a4_plan(t.g);
  t.xs = images(images_n, rng);
  t.enc0 = mse_calibration(t.g, t.plan, t.xs);
  return t;
}

}  // namespace

TEST(ReconUnits, ResidualBlocksAndLayers) {
  std::mt19937 rng(1);
  const Graph g = two_block_net(rng);
  const auto plan = w4a4_plan(g);
  const auto units = recon::derive_units(g, plan);
  ASSERT_EQ(units.size(), 3u) << recon::format_units(units);
  EXPECT_EQ(units[0].kind, "layer");
  EXPECT_EQ(units[0].inputs, std::vector<std::string>{"x"});
  EXPECT_EQ(units[0].outputs, std::vector<std::string>{"a0"});
  for (int b = 1; b <= 2; ++b) {
    EXPECT_EQ(units[b].kind, "block");
    EXPECT_EQ(units[b].compute_nodes, 2);
    EXPECT_EQ(units[b].inputs, std::vector<std::string>{"a" + std::to_string(b - 1)});
    EXPECT_EQ(units[b].outputs, std::vector<std::string>{"a" + std::to_string(b)});
  }
  // The prediction conv is the head: kept in floating point and outside every unit.
  for (const auto& u : units)
    for (const auto& n : u.nodes) EXPECT_NE(n, "pred");
  recon::UnitOptions lw;
  lw.layerwise = true;
  const auto layers = recon::derive_units(g, plan, lw);
  ASSERT_EQ(layers.size(), 5u) << recon::format_units(layers);
  // The second conv of a block reads its own input and the block input (the skip): two inputs.
  EXPECT_EQ(layers[2].inputs, (std::vector<std::string>{"a0", "b1h"}));
  lw.layerwise = false;
  lw.max_block_compute = 1;  // blocks too large for the budget fall back to layers
  EXPECT_EQ(recon::derive_units(g, plan, lw).size(), 5u);
}

TEST(ReconUnits, SharedModelsSplitIntoBlocksAndLayers) {
  for (const auto& [file, min_blocks] : std::vector<std::pair<std::string, int>>{
           {"yolox_nano.onnx", 8}, {"nanodet_m_416.onnx", 16}, {"fastestdet_352.onnx", 17}}) {
    const Graph g = prepare_for_quantization(load_onnx(model_path(file)), file);
    const auto plan = w4a4_plan(g);
    const auto units = recon::derive_units(g, plan);
    int blocks = 0;
    std::set<std::string> covered;
    for (const auto& u : units) {
      blocks += u.kind == "block";
      EXPECT_FALSE(u.inputs.empty()) << file << " unit " << u.name;
      EXPECT_FALSE(u.outputs.empty()) << file << " unit " << u.name;
      // Every unit boundary can be cached: batch on axis 0.
      for (const auto& v : u.outputs) {
        const ValueInfo* vi = g.find_value(v);
        ASSERT_TRUE(vi && vi->has_shape) << file << " " << v;
        EXPECT_EQ(vi->shape.at(0).value, 1) << file << " " << v;
      }
      covered.insert(u.nodes.begin(), u.nodes.end());
    }
    EXPECT_GE(blocks, min_blocks) << file << "\n" << recon::format_units(units);
    for (const auto& w : plan.weights) EXPECT_TRUE(covered.count(w.node)) << file << " " << w.node;
    for (const auto& h : plan.head_nodes) EXPECT_FALSE(covered.count(h)) << file << " head node " << h;
  }
}

TEST(QDropMask, StatisticsAndDeterminism) {
  const at::Tensor like = at::zeros({4, 16, 64, 64});  // 262,144 elements
  const double n = static_cast<double>(like.numel());
  for (double p : {0.5, 0.1, 0.9}) {
    const at::Tensor m = quant::bernoulli_mask(like, p, 11);
    const double mean = m.to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(mean, p, 5 * std::sqrt(p * (1 - p) / n)) << "p " << p;
    EXPECT_TRUE(at::equal(m, quant::bernoulli_mask(like, p, 11))) << "same seed, same mask";
    const at::Tensor other = quant::bernoulli_mask(like, p, 12);
    EXPECT_FALSE(at::equal(m, other));
    // Independent across seeds: P(both) = p².
    const double both = (m & other).to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(both, p * p, 5 * std::sqrt(p * p * (1 - p * p) / n)) << "p " << p;
    // No structure along the fastest axis: neighbours agree with probability p² + (1 − p)².
    const at::Tensor flat = m.reshape({-1});
    const double agree = (flat.narrow(0, 0, flat.numel() - 1) == flat.narrow(0, 1, flat.numel() - 1)).to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(agree, p * p + (1 - p) * (1 - p), 0.01) << "p " << p;
  }
  EXPECT_TRUE(quant::bernoulli_mask(like, 1.0, 3).all().item<bool>());
  EXPECT_FALSE(quant::bernoulli_mask(like, 0.0, 3).any().item<bool>());
}

TEST(QDropMask, FusedFakeQuantMatchesCompositeValuesAndGradients) {
  std::mt19937 rng(5);
  for (bool channels_last : {false, true}) {
    at::Tensor x = at::randn({2, 8, 9, 7}) * 2;
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor z = at::full({1}, 3.0);
    for (double p : {1.0, 0.5}) {
      const uint64_t seed = 99;
      at::Tensor xa = x.detach().requires_grad_(true), xb = x.detach().requires_grad_(true);
      at::Tensor sa = at::full({1}, 0.3).requires_grad_(true), sb = at::full({1}, 0.3).requires_grad_(true);
      const double gs = quant::lsq_grad_scale(x.numel(), 15);
      const at::Tensor fused = quant::fake_quant_dropout(xa, sa, z, 0, 15, gs, p, seed);
      const at::Tensor mask = quant::bernoulli_mask(x, p, seed);
      const at::Tensor composite = at::where(mask, quant::fake_quant(xb, sb, z, 0, 15, gs), xb);
      EXPECT_TRUE(at::allclose(fused, composite, 0, 1e-6)) << "p " << p << " channels_last " << channels_last;
      const at::Tensor w = at::randn(x.sizes());
      (fused * w).sum().backward();
      (composite * w).sum().backward();
      EXPECT_TRUE(at::allclose(xa.grad(), xb.grad(), 1e-6, 1e-6)) << "p " << p;
      EXPECT_NEAR(sa.grad().item<double>(), sb.grad().item<double>(), 1e-4 * (1 + std::fabs(sb.grad().item<double>())));
      if (p < 1) {
        // Unmasked elements pass through unchanged.
        EXPECT_TRUE(at::equal(fused.masked_select(mask.logical_not()), x.masked_select(mask.logical_not())));
      }
    }
  }
}

// The AVX2 and scalar bodies of the fused kernels must agree to the bit (values, both gradients, the mixed
// inputs), on a tensor of several chunks whose size is not a multiple of 8, with and without a learned step.
TEST(QDropMask, SimdAndScalarKernelsAreBitIdentical) {
  if (!quant::kernel::simd_active()) GTEST_SKIP() << "no AVX2 on this CPU";
  const at::Tensor x = at::randn({3, 5, 77, 91}) * 3;  // 105,105 elements: 4 chunks, 1 left over 8
  const at::Tensor w = at::randn(x.sizes());
  const at::Tensor other = at::randn(x.sizes());
  struct Got { at::Tensor y, gx, gs, mixed; };
  auto run = [&](bool simd, double p, bool learn_step) {
    quant::kernel::set_simd(simd);
    at::Tensor xa = x.detach().requires_grad_(true);
    at::Tensor s = at::full({1}, 0.21).requires_grad_(learn_step);
    const at::Tensor y = quant::fake_quant_dropout(xa, s, at::full({1}, 7.0), 0, 15, 0.01, p, 1234);
    (y * w).sum().backward();
    Got g{y.detach(), xa.grad(), learn_step ? s.grad() : at::Tensor(), quant::random_select(x, other, p, 77)};
    quant::kernel::set_simd(true);
    return g;
  };
  for (double p : {1.0, 0.5})
    for (bool learn_step : {true, false}) {
      const Got a = run(true, p, learn_step), b = run(false, p, learn_step);
      EXPECT_TRUE(at::equal(a.y, b.y)) << "p " << p;
      EXPECT_TRUE(at::equal(a.gx, b.gx)) << "p " << p;
      EXPECT_TRUE(at::equal(a.mixed, b.mixed)) << "p " << p;
      if (learn_step) EXPECT_EQ(a.gs.item<float>(), b.gs.item<float>()) << "p " << p;
    }
}

TEST(Reconstruction, LowersOutputErrorOfTinyW4A4Net) {
  std::mt19937 rng(3);
  const Graph g = two_block_net(rng);
  const auto plan = w4a4_plan(g);
  const auto xs = images(32, rng);
  const auto test_xs = images(16, rng);
  const quant::Encodings enc0 = mse_calibration(g, plan, xs);
  const double rtn = output_mse(g, quant::make_qdq_graph(g, plan, enc0), test_xs);
  // Every base method of the table (recon::reconstruction_method_table); InlierQ, the composite, in InlierQOnTheTinyNet.
  for (const std::string& method : recon::reconstruction_methods()) {
    Graph gq = g;
    quant::Encodings enc = enc0;
    const auto res = recon::reconstruct(gq, plan, enc, xs, fast_options(method));
    ASSERT_TRUE(res.completed);
    // Exported weights are on the grid the encodings describe (hardened s·(q − z)).
    for (const auto& w : plan.weights) {
      const at::Tensor wt = rt::to_aten(gq.initializers.at(w.tensor));
      const auto& we = enc.weights.at(w.tensor);
      const at::Tensor s = quant::channel_view(at::tensor(we.scale), 0, wt.dim());
      EXPECT_LT((wt / s - at::round(wt / s)).abs().max().item<float>(), 1e-3) << method << " " << w.tensor;
    }
    const double mse = output_mse(g, quant::make_qdq_graph(gq, plan, enc), test_xs);
    std::printf("  %-8s output MSE %.4f vs round-to-nearest %.4f\n", method.c_str(), mse, rtn);
    EXPECT_LT(mse, 0.9 * rtn) << method << ": reconstruction " << mse << " vs round-to-nearest " << rtn;
    for (const auto& r : res.reports) EXPECT_TRUE(std::isfinite(r.sqnr_after_db)) << method;
  }
}

// Shards make the result independent of the thread count (each shard, and each eval batch, runs on one
// intra-op thread wherever it runs); splitting a batch into shards changes the sums' order, not the maths.
TEST(Reconstruction, ThreadCountDoesNotChangeTheResultAndShardsSumToTheBatch) {
  const auto [g, plan, xs, enc0] = tiny_net(9, 16);
  const int threads0 = at::get_num_threads();
  auto run = [&](int threads, int shards, const std::string& method) {
    at::set_num_threads(threads);
    auto opts = fast_options(method);
    opts.iters = 30;
    opts.brecq_act_iters = 10;
    opts.shards = shards;
    opts.threads = threads;
    std::pair<Graph, quant::Encodings> r{g, enc0};
    recon::reconstruct(r.first, plan, r.second, xs, opts);
    at::set_num_threads(threads0);
    return r;
  };
  for (const std::string method : {"qdrop", "brecq"}) {
    const auto one = run(1, 2, method), two = run(2, 2, method);
    for (const auto& w : plan.weights)
      EXPECT_EQ(one.first.initializers.at(w.tensor).bytes, two.first.initializers.at(w.tensor).bytes) << method << " " << w.tensor;
    for (const auto& [v, a] : one.second.activations) EXPECT_EQ(a.scale, two.second.activations.at(v).scale) << method << " " << v;
  }
  // One shard vs four: the same gradients up to rounding, so (almost) the same learned steps; the masks are
  // drawn per shard, so use the deterministic method (BRECQ: no QDrop masks, pass 2 learns the steps).
  const auto s1 = run(1, 1, "brecq"), s4 = run(1, 4, "brecq");
  for (const auto& [v, a] : s1.second.activations)
    EXPECT_NEAR(a.scale, s4.second.activations.at(v).scale, 1e-3 * a.scale) << v;
}

// A pass that makes a unit worse on the held-out images is undone: with a step learning rate far too large,
// units go back to their start, and the final network is no worse than the calibrated one there.
TEST(Reconstruction, HeldOutCheckKeepsTheStartWhenTrainingHurts) {
  const auto [g, plan, xs, enc0] = tiny_net(12, 16);
  auto opts = fast_options("brecq");
  opts.iters = 20;
  opts.brecq_act_iters = 30;
  opts.steps.brecq_lr = 0.5;  // Adam moves every step by ~0.5 per iteration: destroys the calibrated steps
  opts.holdout = 4;
  Graph gq = g;
  quant::Encodings enc = enc0;
  const auto res = recon::reconstruct(gq, plan, enc, xs, opts);
  int kept = 0;
  for (const auto& r : res.reports) {
    EXPECT_GT(r.holdout_before, 0) << r.name;
    if (r.kept_start) {
      ++kept;
      EXPECT_GT(r.holdout_after, r.holdout_before) << r.name;
    } else {
      EXPECT_LE(r.holdout_after, r.holdout_before) << r.name;
    }
  }
  EXPECT_GT(kept, 0) << "the sabotaged step learning should have been undone somewhere";
  // The network-level check of every pass: a pass that lowered the held-out output SQNR by > 0.1 dB is undone.
  ASSERT_EQ(res.passes.size(), 2u);
  for (const auto& p : res.passes)
    EXPECT_EQ(p.at("kept_start").get<bool>(),
              p.at("holdout_output_sqnr_end_db").get<double>() < p.at("holdout_output_sqnr_start_db").get<double>() - 0.1);
  const std::vector<TensorData> held(xs.end() - 4, xs.end());
  const double calibrated = output_mse(g, quant::make_qdq_graph(g, plan, enc0), held);
  const double learned = output_mse(g, quant::make_qdq_graph(gq, plan, enc), held);
  std::printf("  held-out output MSE: calibrated %.4f, after the guarded sabotage %.4f (%d unit passes kept the start)\n",
              calibrated, learned, kept);
  EXPECT_LT(learned, 1.05 * calibrated);
  // Without held-out images nothing is checked or undone.
  opts.holdout = 0;
  Graph g0 = g;
  quant::Encodings e0 = enc0;
  for (const auto& r : recon::reconstruct(g0, plan, e0, xs, opts).reports) EXPECT_FALSE(r.kept_start);
  const double unguarded = output_mse(g, quant::make_qdq_graph(g0, plan, e0), held);
  std::printf("  without the check: %.4f\n", unguarded);
  EXPECT_GT(unguarded, 1.05 * calibrated) << "the sabotage must hurt, or this test shows nothing";
}

// --time-limit picks the iteration count from measured speed: the choice in closed form, and a real run that
// equals one with --iters set to the printed count. Wall times are printed, not asserted (a shared machine can
// stall any probe); bench/ and docs/RECONSTRUCTION.md, "Time limit", measure how close runs end to the limit.
TEST(Reconstruction, TimeLimitChoosesIterationsThatFit) {
  const auto [g, plan, xs, enc0] = tiny_net(13, 16);
  auto run = [&](double seconds, std::vector<double>* etas) {
    auto opts = fast_options("qdrop");
    opts.time_limit_s = seconds;
    if (etas) opts.progress = [etas](const recon::ReconOptions::Progress& p) { etas->push_back(p.eta_seconds); };
    Graph gq = g;
    quant::Encodings enc = enc0;
    return recon::reconstruct(gq, plan, enc, xs, opts);
  };
  std::vector<double> etas;
  const auto shorter = run(1.5, nullptr), longer = run(4.0, &etas);
  std::printf("  1.5 s: %lld iterations per unit in %.2f s; 4 s: %lld in %.2f s\n", static_cast<long long>(shorter.iters),
              shorter.seconds, static_cast<long long>(longer.iters), longer.seconds);
  EXPECT_EQ(recon::iterations_for_budget(10000, 1000, 90), 100);  // (10 s − 1 s of evaluation) / 90 ms
  EXPECT_EQ(recon::iterations_for_budget(10000, 1000, 90.5), 99);
  EXPECT_EQ(recon::iterations_for_budget(20000, 1000, 90), 211);  // more time, more iterations
  EXPECT_EQ(recon::iterations_for_budget(1500, 1000, 90), recon::kMinTimeLimitIters);  // the limit allows 5
  EXPECT_EQ(recon::iterations_for_budget(500, 1000, 90), recon::kMinTimeLimitIters);   // already over the limit
  EXPECT_GE(shorter.iters, recon::kMinTimeLimitIters);
  EXPECT_GE(longer.iters, recon::kMinTimeLimitIters);
  for (const auto& r : longer.reports) EXPECT_EQ(r.iters, longer.iters);
  ASSERT_FALSE(etas.empty());
  for (double e : etas) EXPECT_GE(e, 0);
  // The probe trains every unit a few iterations and restores it: the run equals one with --iters set to
  // the chosen count (what the log line promises) and no probe, for QDrop and for BRECQ's two passes.
  for (const std::string method : {"qdrop", "brecq"}) {
    auto opts = fast_options(method);
    opts.time_limit_s = 1.5;
    Graph ga = g, gb = g;
    quant::Encodings ea = enc0, eb = enc0;
    const auto timed = recon::reconstruct(ga, plan, ea, xs, opts);
    opts.time_limit_s = 0;
    opts.measure_costs = false;
    opts.iters = timed.iters;
    opts.brecq_act_iters = std::max<int64_t>(1, timed.iters * fast_options(method).brecq_act_iters / fast_options(method).iters);
    recon::reconstruct(gb, plan, eb, xs, opts);
    for (const auto& w : plan.weights)
      EXPECT_EQ(ga.initializers.at(w.tensor).bytes, gb.initializers.at(w.tensor).bytes) << method << ": weights of " << w.tensor;
    for (const auto& [v, a] : ea.activations) EXPECT_EQ(a.scale, eb.activations.at(v).scale) << method << ": scale of " << v;
  }
}

TEST(Reconstruction, SameSeedSameResultAndResumeEqualsUninterrupted) {
  std::mt19937 rng(4);
  const Graph g = two_block_net(rng);
  const auto plan = w4a4_plan(g);
  const auto xs = images(16, rng);
  const quant::Encodings enc0 = mse_calibration(g, plan, xs);
  const fs::path dir = fs::temp_directory_path() / ("inlierq_resume_test_" + std::to_string(::getpid()));
  for (const auto& [method, stop] : std::vector<std::pair<std::string, int>>{{"qdrop", 1}, {"brecq", 4}}) {
    auto opts = fast_options(method);
    opts.iters = 40;
    opts.brecq_act_iters = 20;
    Graph ga = g, gb = g, gc = g;
    quant::Encodings ea = enc0, eb = enc0, ec = enc0;
    recon::reconstruct(ga, plan, ea, xs, opts);
    recon::reconstruct(gc, plan, ec, xs, opts);
    fs::remove_all(dir);
    opts.checkpoint.dir = dir.string();
    opts.checkpoint.stop_after_units = stop;
    const auto partial = recon::reconstruct(gb, plan, eb, xs, opts);
    EXPECT_FALSE(partial.completed);
    EXPECT_TRUE(fs::exists(dir / "state.json"));
    Graph gr = g;
    quant::Encodings er = enc0;
    opts.checkpoint.stop_after_units = -1;
    opts.checkpoint.resume = true;
    const auto resumed = recon::reconstruct(gr, plan, er, xs, opts);
    EXPECT_TRUE(resumed.completed);
    for (const auto& w : plan.weights) {
      EXPECT_EQ(ga.initializers.at(w.tensor).bytes, gc.initializers.at(w.tensor).bytes) << method << ": same seed, same weights";
      EXPECT_EQ(ga.initializers.at(w.tensor).bytes, gr.initializers.at(w.tensor).bytes) << method << ": resumed weights differ";
    }
    for (const auto& [v, a] : ea.activations) {
      EXPECT_EQ(a.scale, er.activations.at(v).scale) << method << ": resumed scale of " << v;
      EXPECT_EQ(a.scale, ec.activations.at(v).scale) << method << ": same seed, scale of " << v;
    }
    // A different seed gives a different result (the test can fail).
    opts.checkpoint.resume = false;
    opts.checkpoint.dir.clear();
    opts.seed = 8;
    Graph gd = g;
    quant::Encodings ed = enc0;
    recon::reconstruct(gd, plan, ed, xs, opts);
    bool any_diff = false;
    for (const auto& w : plan.weights) any_diff |= gd.initializers.at(w.tensor).bytes != ga.initializers.at(w.tensor).bytes;
    for (const auto& [v, a] : ea.activations) any_diff |= a.scale != ed.activations.at(v).scale;
    EXPECT_TRUE(any_diff) << method;
    // A checkpoint from other options is refused.
    opts.checkpoint.dir = dir.string();
    opts.checkpoint.resume = true;
    Graph ge = g;
    quant::Encodings ee = enc0;
    EXPECT_THROW(recon::reconstruct(ge, plan, ee, xs, opts), Error) << method;
  }
  fs::remove_all(dir);
}

TEST(Reconstruction, CacheBudgetSpillsWithoutChangingTheResult) {
  std::mt19937 rng(6);
  const Graph g = two_block_net(rng);
  const auto plan = w4a4_plan(g);
  const auto xs = images(8, rng);
  const quant::Encodings enc0 = mse_calibration(g, plan, xs);
  auto opts = fast_options("adaround");
  opts.iters = 10;
  Graph ga = g, gb = g;
  quant::Encodings ea = enc0, eb = enc0;
  const auto full = recon::reconstruct(ga, plan, ea, xs, opts);
  opts.cache.max_mb = 0;  // everything goes to disk (as float16)
  const auto spilled = recon::reconstruct(gb, plan, eb, xs, opts);
  EXPECT_EQ(full.spilled_bytes, 0u);
  EXPECT_GT(spilled.spilled_bytes, 0u);
  EXPECT_EQ(spilled.peak_cache_bytes, 0u);
  // float16 caches round the inputs: the result may differ slightly but must stay close.
  const double a = output_mse(g, quant::make_qdq_graph(ga, plan, ea), xs), b = output_mse(g, quant::make_qdq_graph(gb, plan, eb), xs);
  EXPECT_NEAR(a, b, 0.2 * a + 1e-6);
}

TEST(Reconstruction, RealYoloxUnitLowersItsOutputError) {
  const Graph g = prepare_for_quantization(load_onnx(model_path("yolox_nano.onnx")), "yolox_nano.onnx");
  const auto plan = w4a4_plan(g);
  std::mt19937 rng(9);
  // Real images are not needed for this check: smooth random fields in YOLOX's 0..255 input range.
  std::vector<TensorData> xs;
  for (int i = 0; i < 4; ++i) {
    at::Tensor t = at::upsample_bilinear2d(at::rand({1, 3, 26, 26}) * 255, {416, 416}, false);
    xs.push_back(rt::from_aten(t.contiguous()));
  }
  quant::CalibrationOptions co;
  co.method = "mse";
  quant::Encodings enc = quant::calibrate(g, plan, xs, co);
  Graph gq = g;
  recon::ReconOptions opts;
  opts.method = "adaround";
  opts.iters = 400;
  opts.batch = 2;
  opts.rounding.lr = 3e-3;
  opts.checkpoint.stop_after_units = 2;  // the stem, then the first depthwise conv (4-bit weights)
  const auto res = recon::reconstruct(gq, plan, enc, xs, opts);
  ASSERT_EQ(res.reports.size(), 2u);
  const auto& r = res.reports[1];
  EXPECT_GT(r.sqnr_after_db, r.sqnr_before_db + 0.1) << r.name;
  EXPECT_LT(r.loss_last, r.loss_first) << r.name;
}

// reconstruct() with InlierQ on (QDrop base) on the tiny net, its prediction conv as the heatmap: one EM fit
// per unit output with inlier mass in (0, 1], every activation group re-initialised from the inlier volumes
// (inlier range inside the full one), the result different from plain QDrop's and better than
// round-to-nearest, and the same bytes for the same seed.
TEST(Reconstruction, InlierQOnTheTinyNet) {
  TinyNet t = tiny_net(21, 24);
  std::mt19937 rng(22);
  const auto test_xs = images(12, rng);
  const double rtn = output_mse(t.g, quant::make_qdq_graph(t.g, t.plan, t.enc0), test_xs);
  auto run = [&](bool inlier) {
    Graph gq = t.g;
    quant::Encodings enc = t.enc0;
    recon::ReconOptions o = fast_options("qdrop");
    o.inlier = inlier;
    o.heatmap_loss.topk = 20;
    o.heatmap_loss.heatmap = {{"sources", {{{"output", "pred"}, {"layout", "channels_positions"}, {"channels", {0, 6}}, {"values", "logits"}}}}};
    o.picture_units = 1, o.picture_images = 2;
    auto res = recon::reconstruct(gq, t.plan, enc, t.xs, o);
    return std::make_tuple(std::move(gq), std::move(enc), std::move(res));
  };
  const auto [g_in, enc_in, res_in] = run(true);
  const auto [g_q, enc_q, res_q] = run(false);
  ASSERT_TRUE(res_in.completed);
  ASSERT_TRUE(res_in.inlier.contains("units") && res_in.inlier.contains("ranges")) << res_in.inlier.dump().substr(0, 300);
  EXPECT_EQ(res_in.inlier["units"].size(), res_in.units.size());
  for (const auto& [value, fit] : res_in.inlier["units"].items()) {
    const double mass = fit["inlier_mass"];
    EXPECT_GT(mass, 0.0) << value;
    EXPECT_LE(mass, 1.0) << value;
    EXPECT_NEAR(fit["priors"][0].get<double>() + fit["priors"][1].get<double>(), 1.0, 1e-6) << value;
  }
  std::set<int> groups;
  for (const auto& a : t.plan.activations)
    if (!a.image) groups.insert(a.group);
  EXPECT_EQ(res_in.inlier["ranges"].size(), groups.size());
  for (const auto& [gid, r] : res_in.inlier["ranges"].items()) {
    EXPECT_GE(r["inlier"][0].get<double>(), r["full"][0].get<double>() - 1e-6) << gid;
    EXPECT_LE(r["inlier"][1].get<double>(), r["full"][1].get<double>() + 1e-6) << gid;
  }
  EXPECT_TRUE(res_q.inlier.is_null() || !res_q.inlier.contains("units"));
  // The report's pictures come from the same gradients and fits: those of saliency_maps() over every image (both
  // keep the gradients in bfloat16, so they agree to the bit; a fit on the two pictured images alone would not).
  ASSERT_EQ(res_in.saliency_maps.size(), 1u);
  EXPECT_TRUE(res_q.saliency_maps.empty());
  const auto& shared = res_in.saliency_maps.front();
  EXPECT_EQ(shared.value, res_in.units.back().outputs.front());
  ASSERT_EQ(shared.saliency.size(), 2u);
  {
    inlier::HeatmapLossOptions loss;
    loss.topk = 20;
    loss.heatmap = {{"sources", {{{"output", "pred"}, {"layout", "channels_positions"}, {"channels", {0, 6}}, {"values", "logits"}}}}};
    const auto own = inlier::saliency_maps(t.g, {shared.value}, t.xs, loss, {}).front();
    EXPECT_EQ(own.rows, shared.rows);
    EXPECT_EQ(own.cols, shared.cols);
    double ds = 0, dp = 0;
    for (size_t n = 0; n < 2; ++n) {
      ASSERT_EQ(shared.saliency[n].size(), static_cast<size_t>(shared.rows * shared.cols));
      for (size_t i = 0; i < shared.saliency[n].size(); ++i) {
        ds = std::max(ds, std::fabs(static_cast<double>(shared.saliency[n][i] - own.saliency[n][i])));
        dp = std::max(dp, std::fabs(static_cast<double>(shared.posterior[n][i] - own.posterior[n][i])));
      }
    }
    EXPECT_LT(ds, 1e-6);
    EXPECT_LT(dp, 1e-6);
    std::printf("  shared pictures vs a pass of their own: saliency %.1e, posterior %.1e\n", ds, dp);
  }
  bool differs = false;
  for (const auto& w : t.plan.weights) differs |= g_in.initializers.at(w.tensor).bytes != g_q.initializers.at(w.tensor).bytes;
  EXPECT_TRUE(differs) << "InlierQ reconstructed exactly what QDrop did";
  // InlierQ minimises an inlier-weighted error, so the plain output MSE is the looser criterion here.
  const double mse = output_mse(t.g, quant::make_qdq_graph(g_in, t.plan, enc_in), test_xs);
  const double mse_q = output_mse(t.g, quant::make_qdq_graph(g_q, t.plan, enc_q), test_xs);
  std::printf("  inlierq output MSE %.4f, qdrop %.4f, round-to-nearest %.4f\n", mse, mse_q, rtn);
  EXPECT_LT(mse, rtn);
  const auto [g_again, enc_again, res_again] = run(true);
  for (const auto& w : t.plan.weights)
    EXPECT_EQ(g_again.initializers.at(w.tensor).bytes, g_in.initializers.at(w.tensor).bytes) << w.tensor;
}

// One QDrop iteration moves every learned step by Adam's first update, lr·sign(g) (bias correction makes
// it exact): by ±lr·2^(4-b) for --step-update absolute (b-bit steps learn at the 4-bit rate scaled to
// their size), by a factor e^(±lr) for log, at 4 and at 8 bits.
TEST(Reconstruction, StepUpdateAbsoluteAndLogMoveStepsByTheirClosedForm) {
  auto [g, plan4, xs, enc4] = tiny_net(21, 16);
  quant::PlacementOptions po;
  po.weight_bits = 4;
  po.act_bits = 8;
  const auto plan8 = quant::derive_plan(g, po);
  const auto enc8 = mse_calibration(g, plan8, xs);
  for (const int bits : {4, 8})
    for (const recon::StepUpdate mode : {recon::StepUpdate::Absolute, recon::StepUpdate::Log}) {
      const auto& plan = bits == 4 ? plan4 : plan8;
      const auto& enc0 = bits == 4 ? enc4 : enc8;
      auto opts = fast_options("qdrop");
      opts.iters = 1;
      opts.holdout = 0;  // nothing undone
      opts.rounding.lr = 0;
      opts.steps.lr = 0.05;
      opts.steps.update = mode;
      Graph gq = g;
      quant::Encodings enc = enc0;
      recon::reconstruct(gq, plan, enc, xs, opts);
      int moved_fully = 0;
      for (const auto& [v, a] : enc.activations) {
        const double s0 = enc0.activations.at(v).scale, s1 = a.scale;
        const double move = mode == recon::StepUpdate::Log ? std::fabs(std::log(s1 / s0)) : std::fabs(s1 - s0);
        const double lr = mode == recon::StepUpdate::Log ? opts.steps.lr : opts.steps.lr * std::ldexp(1.0, 4 - a.bits);
        EXPECT_LE(move, lr * (1 + 1e-4) + 1e-7) << recon::step_update_names().name(mode) << " A" << bits << ": step of " << v << " " << s0 << " -> " << s1;
        moved_fully += move > 0.99 * lr;
      }
      EXPECT_GT(moved_fully, 0) << recon::step_update_names().name(mode) << " A" << bits << ": no step moved by its lr";
    }
  EXPECT_THROW(recon::step_update_names().parse("relative", "--step-update"), Error);
}

// Every row of the method table is a method the pipeline runs: a base method as itself, a composite as each of
// its bases with the inlier stage; unknown names and bases are refused with the table's names.
TEST(ReconMethods, EveryRowOfTheTableResolves) {
  const auto bases = recon::reconstruction_methods();
  ASSERT_FALSE(bases.empty());
  for (const auto& m : recon::reconstruction_method_table()) {
    EXPECT_FALSE(m.description.empty()) << m.name;
    EXPECT_EQ(recon::find_reconstruction_method(m.name), &m);
    pipeline::QuantizeJob job;
    job.method = m.name;
    for (const auto& base : m.bases.empty() ? std::vector<std::string>{""} : m.bases) {
      if (!base.empty()) {
        EXPECT_NE(std::find(bases.begin(), bases.end(), base), bases.end()) << m.name << ": base " << base << " is not a base method";
        job.base = base;
      }
      const auto ro = pipeline::reconstruction_options(job);
      EXPECT_EQ(ro.method, base.empty() ? m.name : base) << m.name;
      EXPECT_EQ(ro.inlier, m.inlier) << m.name;
      EXPECT_NO_THROW(recon::validate_options(ro)) << m.name;
    }
    if (!m.bases.empty()) {
      job.base = m.name;  // a composite is not a base
      EXPECT_THROW(pipeline::reconstruction_options(job), Error) << m.name;
    }
  }
  EXPECT_EQ(recon::find_reconstruction_method("mse"), nullptr);
  recon::ReconOptions o;
  o.method = "inlierq";  // a composite is not a ReconOptions::method
  EXPECT_THROW(recon::validate_options(o), Error);
}

// Every option name table: names unique and non-empty, each name parses back to its value, and an unknown name is
// refused with an error naming the option and every name.
namespace {
template <class E>
void check_name_table(const NameTable<E>& t, const std::string& what) {
  std::set<std::string> seen;
  for (const auto& [value, name] : t.rows) {
    EXPECT_FALSE(name.empty()) << what;
    EXPECT_TRUE(seen.insert(name).second) << what << ": " << name << " twice";
    EXPECT_EQ(t.parse(name, what), value) << what << ": " << name;
    EXPECT_EQ(t.name(value), name) << what;
  }
  try {
    t.parse("no-such-name", what);
    ADD_FAILURE() << what << ": an unknown name was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    for (const auto& n : t.names()) EXPECT_NE(msg.find(n), std::string::npos) << what << ": the error does not list " << n << ": " << msg;
  }
}
}  // namespace

TEST(OptionNames, EveryTableRoundTrips) {
  check_name_table(recon::step_update_names(), "--step-update");
  check_name_table(recon::inlier_init_names(), "--inlier-init");
  check_name_table(inlier::aux_loss_names(), "--aux-loss");
  check_name_table(inlier::topk_selection_names(), "--topk-selection");
  check_name_table(inlier::saliency_names(), "--saliency");
  check_name_table(inlier::weighting_names(), "--inlier-weighting");
  check_name_table(quant::layout_names(), "--layout");
  check_name_table(pipeline::weight_type_names(), "--weight-type");
  check_name_table(pipeline::bias_correction_names(), "--bias-correction");
}
