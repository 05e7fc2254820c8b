#pragma once
// A quick ONNX Runtime latency of a quantized file next to its FP32 model, through the Python onnxruntime
// package when it is importable (inlierq itself does not link ONNX Runtime).
#include <string>

#include <nlohmann/json.hpp>

namespace inlierq::cli {

// {"fp32_ms", "quantized_ms", "ratio", "threads", "runs", "onnxruntime"} (medians of alternating runs, one
// thread), or {"skipped": "<why>"} when python3 or onnxruntime is missing or the run fails. The interpreter
// is $INLIERQ_PYTHON, else python3.
nlohmann::json ort_latency(const std::string& fp32_model, const std::string& quantized_model, int runs = 20);

}  // namespace inlierq::cli
