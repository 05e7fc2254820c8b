#pragma once
// InlierQ's gradient stage (ALGORITHMS.md §6.1–6.5), as reconstruction uses it: one FP forward + backward of
// the top-K heatmap loss over the calibration set gives, per chosen value, the Fisher factors (|g| + 1)² and
// the per-volume inlier weights of the EM split; and the activation ranges re-initialised from inlier
// volumes. Internal header (exposes ATen); knows nothing of reconstruction units.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/graph.h"
#include "inlierq/inlier.h"
#include "inlierq/inlier_options.h"
#include "quant/range_search.h"

namespace inlierq::inlier {

struct GradientStageOptions {
  HeatmapLossOptions heatmap_loss;
  InlierSplitOptions split;
  bool fisher = false;  // keep F = (|g| + 1)² per element (float16)
  bool inlier = false;  // keep the per-volume inlier weights [N, H, W] of the EM split
  std::string device = "cpu";
  std::function<void(const std::string&)> log;
  // With `inlier`: the saliency and posterior pictures of these values on the first map_images images, from
  // the same gradients and the fit on every image (what the report shows; saliency_maps() without a pass).
  std::vector<std::string> maps_of;
  int64_t map_images = 0;
};

// The gradient stage over `images` [N, C, H, W] at `values` of the FP graph `g`. `sink(value, F, w)` receives
// each value's tensors once all images are done (undefined when not asked for). Returns, with `inlier`, the
// EM fit of every value (VolumeWeights::to_json), else an empty object.
nlohmann::json gradient_weights(const Graph& g, const at::Tensor& images, const std::vector<std::string>& values,
                                const GradientStageOptions& opts,
                                const std::function<void(const std::string&, const at::Tensor&, const at::Tensor&)>& sink,
                                std::vector<SaliencyMaps>* maps = nullptr);

// Activation ranges from inlier volumes only, for the scale groups of the activation values in `sites`: a
// site takes the weight map given with it (the inlier weights of its unit's first output, [N, H, W]),
// resampled (nearest) to its own spatial size, or counts every volume without one. minmax_inlier: min/max
// over volumes with w > 0.5 (mse false); mse: the mse search on a w-weighted histogram. A group with no inlier
// volume keeps its full range. `hooked` are the values the executor keeps as tensors (every quantized
// activation of the plan, as in calibration).
struct InlierRangeSite {
  int group = -1;
  at::Tensor weights;  // [N, H, W] or undefined
};
struct InlierRange {
  double full_lo = 0, full_hi = 0;  // over every volume
  double lo = 0, hi = 0;            // chosen (symmetric grids: ±max)
};
std::map<int, InlierRange> inlier_ranges(const Graph& g, const at::Tensor& images, const std::map<std::string, InlierRangeSite>& sites,
                                         const std::map<int, quant::QuantGrid>& grids, const std::set<std::string>& hooked,
                                         bool mse, const std::string& device);

}  // namespace inlierq::inlier
