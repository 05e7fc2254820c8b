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
  // True when the outputs are already the final detections (after NMS inside the graph): the detector
  // then keeps the best max_detections without running NMS again.
  virtual bool final_detections() const { return false; }
};

enum class ClassMode { Best, All };  // best class per position, or every class above threshold
// decoder.class_mode of config c ("best" by default); where names the profile in errors.
ClassMode class_mode(const nlohmann::json& c, const std::string& where);
// Throws inlierq::Error naming `where` and listing the model's outputs when it has no output `name`.
void require_output(const Graph& g, const std::string& name, const std::string& where);

// Appends the detections of one image whose score passes thr: boxes [P, 4] xyxy, and either scores [P]
// with labels [P] (one class per position) or scores [P, C] with no labels (every class).
void collect(std::vector<BoxDetection>& dst, const at::Tensor& boxes, const at::Tensor& scores,
             const at::Tensor& labels, float thr);

std::unique_ptr<Decoder> make_decoded_boxes_decoder(const nlohmann::json& config, const Graph& g,
                                                    const std::string& profile_name);

// Throws inlierq::Error naming the profile field when the decoder config does not fit the graph.
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& config, const Graph& g, const std::string& profile_name);

}  // namespace inlierq::detect
