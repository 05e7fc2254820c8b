#pragma once
// `--method auto` (docs/QUANTIZATION.md §6): the calibration configuration chosen by the label-free fidelity
// estimate on held-out calibration images. Internal to the pipeline.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/pipeline.h"

namespace inlierq::pipeline {

struct AutoChoice {
  quant::QuantPlan plan;
  quant::Encodings enc;
  std::string calibrator, weight_method;
  bool separate_concat_scales = false, quantize_head = false;
  std::vector<SensitivityEntry> sensitivity;  // of the chosen calibration, when the fallback step ran
  quant::BiasCorrection bias_correction;      // to apply to the graph before export (no shifts: none chosen)
  size_t fallback_groups = 0;
  std::map<std::string, std::string> group_calibrators;  // activation value (one per group) -> its own calibrator
  Fidelity fidelity;
  double integer_mac_fraction = 0, latency_ratio = -1;  // of the choice; latency only with a latency budget
  bool within_budget = true;                            // false: no trial met the budget (the closest is chosen)
  nlohmann::json trials = nlohmann::json::array();  // every configuration measured, in order
  int chosen_trial = -1;                            // the index of the choice in trials
};

struct AutoChoiceInputs {
  const Graph* graph = nullptr;
  quant::PlacementOptions placement;
  // Calibrates the plan with each of the activation calibrators (in shared passes) and a weight method (the job's
  // options otherwise); keyed by calibrator.
  std::function<std::map<std::string, quant::Encodings>(const quant::QuantPlan&, const std::vector<std::string>& calibrators,
                                                        const std::string& weight_method)>
      calibrate;
  std::string weight_method = "mse";  // the first weight method tried
  const FidelityReference* reference = nullptr;
  std::vector<TensorData> sensitivity_inputs;  // calibration images for the fallback ranking (4 suffice to rank)
  std::string device = "cpu";
  int max_fallback = 3;            // groups the fallback step may leave in floating point (0: no fallback step)
  bool choose_weight_method = true, choose_concat_scales = true, choose_head = true;
  // Another calibrator for each of the most harmful groups (off by default: it raised the held-out agreement on three
  // of the four shared models and lowered their mean real mAP, docs/QUANTIZATION.md §4a).
  bool choose_group_calibrators = false;
  // Calibration images bias correction measures on (empty: no bias-correction step).
  std::vector<TensorData> bias_inputs;
  // Trials outside the budget are never chosen over one within it. A latency budget needs latency_ratio.
  Budget budget;
  std::function<double(const Graph& qdq)> latency_ratio;  // ONNX Runtime latency over FP32's; throws when it cannot
  // The file a trial is timed as: the export's weight storage (quant::make_qdq_graph's defaults when unset).
  std::function<Graph(const Graph&, const quant::QuantPlan&, const quant::Encodings&)> export_qdq;
};

AutoChoice choose_calibration(const AutoChoiceInputs& in, const Events& ev);

// a is a better configuration than b: higher agreement mAP, or equal agreement (within 1e-9) and higher output
// SQNR; SQNR alone when agreement is undefined (no reference boxes).
bool better_fidelity(const Fidelity& a, const Fidelity& b);

}  // namespace inlierq::pipeline
