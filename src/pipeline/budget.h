#pragma once
// What a configuration costs against `--budget` (docs/QUANTIZATION.md §4b). Internal to the pipeline.
#include <set>
#include <string>

#include "inlierq/pipeline.h"

namespace inlierq::pipeline {

// Share of the compute MACs of g in `integer_nodes` (tests/py/test_qdq_vs_ort.py checks quant::integer_compute_nodes
// against ONNX Runtime's optimised graph).
double integer_mac_fraction(const Graph& g, const std::set<std::string>& integer_nodes);
// The same for a calibrated plan as the export will write it (with its requantizers).
double integer_mac_fraction(const Graph& g, const quant::QuantPlan& plan, const quant::Encodings& enc);
// Before calibration: as if every scale group had a grid of its own (calibrated groups differ in scale but by
// coincidence, so this equals the calibrated fraction but for such coincidences).
double integer_mac_fraction(const Graph& g, const quant::QuantPlan& plan);

}  // namespace inlierq::pipeline
