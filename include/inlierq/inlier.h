#pragma once
// InlierQ's per-volume saliency and inlier posteriors as plain maps (for pictures). Torch-free.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/graph.h"
#include "inlierq/inlier_options.h"

namespace inlierq::inlier {

struct SaliencyMaps {
  std::string value;
  int rows = 0, cols = 0;
  std::vector<std::vector<float>> saliency;   // per image, row-major: standardised log saliency mapped to [0, 1]
  std::vector<std::vector<float>> posterior;  // per image: P(inlier | score), 0 where the gradient is 0
  nlohmann::json fit;                         // EM fit, histogram (as in the encodings' reconstruction.inlier)
};

// One FP forward + backward of the top-K heatmap loss over `inputs`, then the saliency and EM posterior
// of every volume of each value in `values` (4-D [1, C, H, W] values only), on `device` ("cpu", "cuda:0").
// The pictures show the posterior itself: split.weighting is not used.
std::vector<SaliencyMaps> saliency_maps(const Graph& g, const std::vector<std::string>& values,
                                        const std::vector<TensorData>& inputs, const HeatmapLossOptions& loss,
                                        const InlierSplitOptions& split, const std::string& device = "cpu");

}  // namespace inlierq::inlier
