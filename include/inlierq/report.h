#pragma once
// Pictures and the self-contained HTML report of a quantize run. Torch-free.
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/image.h"
#include "inlierq/inlier.h"
#include "inlierq/pipeline.h"
#include "inlierq/preprocess.h"

namespace inlierq::report {

std::string base64(const std::string& bytes);
std::string html_escape(const std::string& s);

// A [rows × cols] map of values in [0, 1] alpha-blended over `img` in a heat colour ramp. `to_cell` maps
// an image pixel centre (x, y) to continuous map coordinates (col, row); pixels mapping outside are left.
Image overlay(const Image& img, const std::vector<float>& map, int rows, int cols,
              const std::function<std::pair<float, float>(float, float)>& to_cell, float alpha = 0.55f);
// Images side by side (same height), with a 4-pixel white gap.
Image side_by_side(const std::vector<Image>& images);

// SVG of the standardised-score histogram with the fitted two-Gaussian mixture (inlierq's EM JSON:
// means, variances, priors, histogram{lo, hi, counts}, fallback).
std::string mixture_svg(const nlohmann::json& fit, const std::string& title, int width = 420, int height = 220);

// SVG of `--method auto`'s trials (meta.auto.trials): agreement mAP against the share of MACs in integer kernels,
// the frontier (the best agreement at each share or above) as a line, the chosen trial (index `chosen`, -1: none)
// ringed, and the budget's minimum share, when given (> 0), as a dashed line. Trials without agreement are left out.
std::string frontier_svg(const nlohmann::json& trials, int chosen, double min_int8_macs, int width = 480, int height = 260);
// --budget weight-bits: the measured output SQNR against average weight bits along the greedy order, the chosen
// assignment ringed, the budget dashed (quant::WeightBitsChoice::to_json()).
std::string weight_bits_svg(const nlohmann::json& weight_bits_budget, int width = 480, int height = 260);

// Nearest-neighbour downscale so that the longer side is at most max_side.
Image thumbnail(const Image& img, int max_side);
// Per image and map: (caption, saliency | inlier posterior side by side over the image, at most max_side
// pixels on the longer side). transforms[i] is paths[i]'s preprocessing geometry.
std::vector<std::pair<std::string, Image>> saliency_figures(const std::vector<inlier::SaliencyMaps>& maps,
                                                            const std::vector<std::string>& paths,
                                                            const std::vector<InputTransform>& transforms, int max_side);

struct Figure {
  std::string caption;
  std::string png;  // PNG bytes
};
// The report of a quantize run, from its typed result: configuration, timings, fidelity and mAP, per-unit SQNR
// before / after reconstruction, full vs inlier activation ranges, EM fits, figures, placement and what stayed in
// floating point. The encodings' record (result.encodings_meta) supplies auto's choice and the configuration dump.
std::string quantize_report_html(const pipeline::QuantizeJob& job, const pipeline::QuantizeResult& result,
                                 const std::vector<Figure>& figures);

}  // namespace inlierq::report
