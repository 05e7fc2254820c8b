// Per-quantizer sensitivity: how much each activation scale group alone degrades the outputs.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "quant/fake_quant.h"
#include "quant/sqnr.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::quant {

std::vector<GroupSensitivity> activation_sensitivity(const Graph& g, const QuantPlan& plan, const Encodings& enc,
                                                     const std::vector<TensorData>& inputs, const std::string& device,
                                                     const std::function<void(size_t, size_t)>& progress,
                                                     const OutputWeights& inlier_weights) {
  if (inputs.empty()) throw Error("sensitivity analysis needs at least one input");
  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  for (const auto& a : plan.activations) eo.hooked.insert(a.value);
  rt::Executor ex(g, eo);
  const at::Tensor x = rt::to_aten_batch(inputs).to(eo.device);
  const std::string in = g.inputs.at(0).name;
  const auto reference = ex.run({{in, x}});
  std::vector<std::string> outputs;
  for (const auto& o : g.outputs) outputs.push_back(o.name);
  std::map<std::string, at::Tensor> weights;
  for (const auto& [name, w] : inlier_weights) weights[name] = rt::to_aten(w).to(eo.device);

  std::vector<GroupSensitivity> out(plan.num_groups);
  for (int gi = 0; gi < plan.num_groups; ++gi) out[gi].group = gi;
  for (const auto& a : plan.activations) out.at(a.group).values.push_back(a.value);
  for (int gi = 0; gi < plan.num_groups; ++gi) {
    std::set<std::string> members(out[gi].values.begin(), out[gi].values.end());
    rt::RunOptions ro;
    ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
      if (!members.count(name)) return t;
      const ActEncoding& e = enc.activations.at(name);
      return fake_quant(t, at::full({1}, e.scale, t.options()), at::full({1}, (double)e.zero_point, t.options()), e.qn(), e.qp());
    };
    ro.hook_inputs = true;
    const auto got = ex.run({{in, x}}, ro);
    const OutputSqnr s = output_sqnr(outputs, reference, got, weights);
    out[gi].sqnr_db = s.plain, out[gi].inlier_sqnr_db = s.inlier;
    if (progress) progress(gi + 1, plan.num_groups);
  }
  std::sort(out.begin(), out.end(), [](const GroupSensitivity& a, const GroupSensitivity& b) { return a.sqnr_db < b.sqnr_db; });
  return out;
}

std::vector<GroupSensitivity> eight_bit_sensitivity(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                                    CalibrationOptions co, const std::function<void(size_t, size_t)>& progress) {
  QuantPlan at8 = plan;
  for (auto& a : at8.activations) a.bits = std::max(a.bits, 8);
  // Weights stay in floating point here; only the activation grids are measured.
  co.weight_method = "minmax";
  co.progress = {};
  const Encodings enc = calibrate(g, at8, inputs, co);
  return activation_sensitivity(g, at8, enc, inputs, co.device, progress);
}

void drop_activation_groups(QuantPlan& plan, Encodings& enc, const std::vector<int>& groups, const std::string& reason) {
  std::set<int> drop(groups.begin(), groups.end());
  std::vector<ActSite> kept;
  for (auto& a : plan.activations) {
    if (drop.count(a.group)) {
      enc.activations.erase(a.value);
      plan.float_activations.push_back(a.value);
      plan.float_activation_reasons.push_back(reason);
    } else {
      kept.push_back(a);
    }
  }
  plan.activations = std::move(kept);
}

}  // namespace inlierq::quant
