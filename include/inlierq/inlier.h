#pragma once
// InlierQ's per-volume saliency and inlier posteriors as plain maps (for pictures). Torch-free.
#include <map>
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

// InlierQ's volume weights at the graph outputs (docs/QUANTIZATION.md §4d): one FP forward + backward of the top-K
// heatmap loss over `inputs`, the mixture's weights (split.weighting) of every position of each heatmap source, shaped
// to broadcast against that output; an output that is not a source gets the weights of the one source with as many
// positions (NanoDet's box maps), and outputs that match none are absent. For quant::OutputWeights.
std::map<std::string, TensorData> output_inlier_weights(const Graph& g, const std::vector<TensorData>& inputs,
                                                        const HeatmapLossOptions& loss, const InlierSplitOptions& split,
                                                        const std::string& device = "cpu");

}  // namespace inlierq::inlier
