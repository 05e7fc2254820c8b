#pragma once
// Output decoders: raw network outputs (batch N) -> candidate boxes in network-input pixels, before
// NMS. A decoder kind is reusable by any model whose outputs follow its layout.
#include <ATen/ATen.h>

#include <memory>

#include "inlierq/detect.h"
#include "runtime/executor.h"

namespace inlierq::detect {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::vector<std::vector<BoxDetection>> decode(const rt::TensorMap& outputs, int input_w, int input_h,
                                                        float score_threshold) const = 0;
};

// Throws inlierq::Error naming the profile field when the decoder config does not fit the graph.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& config, const Graph& g, const std::string& profile_name);

}  // namespace inlierq::detect
