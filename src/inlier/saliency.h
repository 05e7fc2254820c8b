#pragma once
// InlierQ's label-free signal (ALGORITHMS.md §6.1–6.3): the heatmap a model profile declares, the top-K
// auxiliary loss on it, and its gradient at chosen intermediate values of the FP model. Internal header
// (exposes ATen).
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/inlier_options.h"
#include "runtime/executor.h"

namespace inlierq::inlier {

// Heatmap logits [N, C, M] from the graph outputs, per the profile's "heatmap" definition: sources are
// concatenated along positions; with an objectness channel the confidence is obj·cls; probabilities
// (a sigmoid or softmax inside the graph) are mapped back to logits, log p − log(1 − p), whose gradient
// through the graph's sigmoid is exactly that of its input (p is clamped to [1e-7, 1 − 1e-7]).
at::Tensor heatmap_logits(const nlohmann::json& definition, const rt::TensorMap& outputs);

struct AuxLossOptions {
  int64_t k = 100;
  AuxLoss form = AuxLoss::Bce;
  TopkSelection selection = TopkSelection::PerClass;
  double focal_gamma = 2.0;
};
// Per image: mean over the selected entries of the loss; summed over images, so that each image's
// gradient is the one it would get alone.
at::Tensor topk_aux_loss(const at::Tensor& heatmap, const AuxLossOptions& opts = {});

// ∂L_aux/∂z for every value in `values`, over `images` (each [1, C, H, W]) in batches, FP model, float32
// CPU tensors [N, ...]. `sink` receives each value's gradient (and, with with_values, the value itself;
// otherwise an undefined tensor) once all images are done.
void aux_loss_gradients(const rt::Executor& ex, const nlohmann::json& heatmap, const std::vector<at::Tensor>& images,
                        const std::vector<std::string>& values, const AuxLossOptions& opts, int batch,
                        const std::function<void(const std::string&, const at::Tensor&, const at::Tensor&)>& sink,
                        bool with_values = false);

// The same pass, reduced per batch so that the full-resolution gradient of the whole calibration set
// never has to exist: `reduce(value, g, z)` maps one batch's gradient (and value, with with_values) to
// the tensors to keep (undefined ones stay undefined); `sink(value, kept)` receives those concatenated
// along dim 0 once all images are done.
using GradientReducer = std::function<std::vector<at::Tensor>(const std::string&, const at::Tensor&, const at::Tensor&)>;
void aux_loss_reduce(const rt::Executor& ex, const nlohmann::json& heatmap, const std::vector<at::Tensor>& images,
                     const std::vector<std::string>& values, const AuxLossOptions& opts, int batch,
                     const GradientReducer& reduce,
                     const std::function<void(const std::string&, const std::vector<at::Tensor>&)>& sink,
                     bool with_values = false);

}  // namespace inlierq::inlier
