// Label-free fidelity of a quantized detector against its FP32 model (include/inlierq/pipeline.h;
// docs/QUANTIZATION.md §6): agreement mAP, output SQNR and the heatmap's top-K auxiliary loss.
#include <ATen/ATen.h>

#include <cmath>
#include <set>

#include "inlierq/error.h"
#include "inlierq/pipeline.h"
#include "inlier/saliency.h"
#include "pipeline/coco_boxes.h"
#include "quant/sqnr.h"
#include "runtime/tensor_convert.h"

namespace inlierq::pipeline {

nlohmann::json Fidelity::to_json() const {
  nlohmann::json j = {{"images", images},
                      {"reference_score", reference_score},
                      {"reference_boxes", reference_boxes},
                      {"agreement_map", agreement_map},
                      {"agreement_map50", agreement_map50},
                      {"output_sqnr_db", output_sqnr_db}};
  if (heatmap_loss >= 0) j["heatmap_topk_loss"] = {{"fp32", heatmap_loss_fp32}, {"quantized", heatmap_loss}};
  return j;
}

namespace {

struct Pass {
  std::vector<std::vector<BoxDetection>> boxes;    // per image
  std::vector<rt::TensorMap> outputs;  // per batch, converted once (the reference's are reused by every measure())
  double heatmap_loss = -1;                          // summed over images
};

Pass run_pass(const Graph& g, const ModelProfile& profile, const std::vector<TensorData>& inputs,
              const std::vector<InputTransform>& transforms, const FidelityOptions& o) {
  DetectorOptions dopts;
  dopts.session.device = o.device;
  Detector det(g, profile, dopts);
  Pass p;
  const bool heatmap = profile.heatmap.contains("sources");
  inlier::AuxLossOptions ao;
  ao.k = o.topk;
  if (heatmap) p.heatmap_loss = 0;
  const size_t batch = std::max<size_t>(1, o.batch);
  for (size_t b = 0; b < inputs.size(); b += batch) {
    const size_t e = std::min(inputs.size(), b + batch);
    std::map<std::string, TensorData> outs;
    auto boxes = det.detect_preprocessed({inputs.begin() + b, inputs.begin() + e}, {transforms.begin() + b, transforms.begin() + e}, &outs);
    for (auto& bx : boxes) p.boxes.push_back(std::move(bx));
    rt::TensorMap tm;
    for (const auto& [name, t] : outs) tm[name] = rt::to_aten(t);
    if (heatmap) {
      const at::Tensor h = inlier::heatmap_logits(profile.heatmap, tm);
      ao.k = std::min<int64_t>(o.topk, h.size(2));
      p.heatmap_loss += inlier::topk_aux_loss(h.to(at::kFloat), ao).item<double>();
    }
    p.outputs.push_back(std::move(tm));
    if (o.progress) o.progress(e, inputs.size());
  }
  return p;
}

}  // namespace

struct FidelityReference::Impl {
  ModelProfile profile;
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms;
  FidelityOptions opts;
  Pass reference;
  coco::Dataset truth;  // the FP32 detections at or above the reference score
  std::vector<std::string> output_names;
};

FidelityReference::FidelityReference(const Graph& fp32, const ModelProfile& profile, std::vector<TensorData> inputs,
                                     std::vector<InputTransform> transforms, const FidelityOptions& opts)
    : impl_(std::make_unique<Impl>()) {
  if (inputs.empty()) throw Error("fidelity: no images");
  if (inputs.size() != transforms.size()) throw Error("fidelity: one transform per input is needed");
  impl_->profile = profile;
  impl_->inputs = std::move(inputs);
  impl_->transforms = std::move(transforms);
  impl_->opts = opts;
  impl_->reference = run_pass(fp32, profile, impl_->inputs, impl_->transforms, opts);
  for (const auto& o : fp32.outputs) impl_->output_names.push_back(o.name);
  coco::Dataset& d = impl_->truth;
  for (size_t c = 0; c < profile.category_ids.size(); ++c)
    d.categories.push_back({profile.category_ids[c], c < profile.class_names.size() ? profile.class_names[c] : ""});
  for (size_t i = 0; i < impl_->inputs.size(); ++i) {
    const auto& t = impl_->transforms[i];
    d.images.push_back({static_cast<int64_t>(i + 1), "", t.orig_width, t.orig_height});
    for (const auto& b : impl_->reference.boxes[i]) {
      if (b.score < opts.reference_score) continue;
      const coco::Detection c = to_coco(b, static_cast<int64_t>(i + 1), profile);
      coco::Annotation a;
      a.id = static_cast<int64_t>(d.annotations.size() + 1);
      a.image_id = c.image_id;
      a.category_id = c.category_id;
      a.bbox = c.bbox;
      a.area = a.bbox.w * a.bbox.h;
      d.annotations.push_back(a);
    }
  }
}

FidelityReference::~FidelityReference() = default;
size_t FidelityReference::images() const { return impl_->inputs.size(); }

Fidelity FidelityReference::measure(const Graph& quantized) const {
  const Impl& r = *impl_;
  for (const auto& name : r.output_names) {
    bool found = false;
    for (const auto& o : quantized.outputs) found |= o.name == name;
    if (!found) throw Error("fidelity: the quantized model has no output '" + name + "', which the FP32 model has");
  }
  const Pass q = run_pass(quantized, r.profile, r.inputs, r.transforms, r.opts);
  Fidelity f;
  f.images = r.inputs.size();
  f.reference_score = r.opts.reference_score;
  f.reference_boxes = r.truth.annotations.size();
  quant::SqnrSums sums;
  for (size_t b = 0; b < q.outputs.size(); ++b)
    for (const auto& name : r.output_names) {
      const at::Tensor& ref = r.reference.outputs[b].at(name);
      const at::Tensor& got = q.outputs[b].at(name);
      if (ref.sizes() != got.sizes())
        throw Error("fidelity: output '" + name + "' has shape " + shape_str(got.sizes().vec()) + " in the quantized model, " +
                    shape_str(ref.sizes().vec()) + " in the FP32 model");
      sums.add(ref, got);
    }
  f.output_sqnr_db = sums.db();
  if (r.reference.heatmap_loss >= 0) {
    f.heatmap_loss_fp32 = r.reference.heatmap_loss / f.images;
    f.heatmap_loss = q.heatmap_loss / f.images;
  }
  if (!r.truth.annotations.empty()) {
    std::vector<coco::Detection> dets;
    for (size_t i = 0; i < q.boxes.size(); ++i)
      for (const auto& b : q.boxes[i]) dets.push_back(to_coco(b, static_cast<int64_t>(i + 1), r.profile));
    const coco::EvalResult e = coco::evaluate(r.truth, dets);
    f.agreement_map = e.stats[0];
    f.agreement_map50 = e.stats[1];
  }
  return f;
}

}  // namespace inlierq::pipeline
