// `--method auto`: every calibrator, (opt-in) another calibrator for each of the most harmful activation groups, a
// greedy fallback of the most harmful groups (then the calibrators again with it), the other weight method, separate
// concat scales and a quantized head, each kept only when the held-out fidelity says so (docs/QUANTIZATION.md §4a).
#include "pipeline/auto_choice.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "inlierq/error.h"
#include "pipeline/budget.h"
#include "pipeline/progress.h"
#include "quant/calibrators.h"

namespace inlierq::pipeline {

bool better_fidelity(const Fidelity& a, const Fidelity& b) {
  if (a.agreement_map >= 0 && b.agreement_map >= 0) {
    if (a.agreement_map > b.agreement_map + 1e-9) return true;
    if (a.agreement_map < b.agreement_map - 1e-9) return false;
  }
  return a.output_sqnr_db > b.output_sqnr_db;
}

namespace {

// What a fallback step must gain to be worth a quantizer in floating point: one point of agreement mAP, or
// 0.5 dB of output SQNR when agreement is undefined.
bool worth_a_fallback(const Fidelity& with, const Fidelity& without) {
  if (with.agreement_map >= 0 && without.agreement_map >= 0) return with.agreement_map >= without.agreement_map + 0.01;
  return with.output_sqnr_db >= without.output_sqnr_db + 0.5;
}

// Agreement this close to 1 leaves nothing for a fallback to recover.
constexpr double kAgreementGoodEnough = 0.97;

// A quantized head may cost this much agreement mAP (0.3 dB of SQNR when undefined): it makes the file faster and
// deployable as one integer graph, and differences this small are within the noise of a few held-out images.
bool head_is_affordable(const Fidelity& with, const Fidelity& without) {
  if (with.agreement_map >= 0 && without.agreement_map >= 0) return with.agreement_map >= without.agreement_map - 0.005;
  return with.output_sqnr_db >= without.output_sqnr_db - 0.3;
}

// Fallback candidates tried, most harmful first; at most AutoChoiceInputs::max_fallback of them are kept.
constexpr int kFallbackCandidates = 6;

// What another calibrator for one group must gain: half a fallback's point of agreement (0.25 dB of SQNR when
// undefined). It costs nothing in size or speed, but it is the best of three trials per group, and a gain this
// small is what the maximum of three equal configurations on 16 images shows by chance.
bool worth_a_group_calibrator(const Fidelity& with, const Fidelity& without) {
  if (with.agreement_map >= 0 && without.agreement_map >= 0) return with.agreement_map >= without.agreement_map + 0.005;
  return with.output_sqnr_db >= without.output_sqnr_db + 0.25;
}

struct Config {
  std::string calibrator, weight_method;
  bool separate_concat = false, quantize_head = false, bias_correction = false;
  // Activation values whose groups stay in floating point: one per group, by name, so that the choice carries
  // over to plans with other groups (separate concat scales, a quantized head).
  std::vector<std::string> fallback;
  // Groups calibrated by another calibrator than `calibrator`: activation value (one per group, by name, as the
  // fallback) -> calibrator.
  std::map<std::string, std::string> group_calibrator;
  std::string name() const {
    std::string s = calibrator + (weight_method == "minmax" ? "+wmm" : "") + (separate_concat ? "+sep" : "") +
                    (quantize_head ? "+head" : "") + (bias_correction ? "+bc" : "");
    if (!group_calibrator.empty()) {
      std::vector<std::string> parts;
      for (const auto& [v, m] : group_calibrator) parts.push_back(v + ":" + m);
      s += "+gc[" + quant::join_names(parts, "") + "]";
    }
    if (!fallback.empty()) s += "+fb[" + quant::join_names(fallback, "") + "]";
    return s;
  }
  // Every calibrator the configuration's encodings come from.
  std::vector<std::string> calibrators() const {
    std::vector<std::string> out{calibrator};
    for (const auto& [v, m] : group_calibrator)
      if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
    return out;
  }
};

// Gives the groups of the config's group_calibrator values the ranges of their own calibrator (`by_calibrator`:
// encodings of this plan, keyed by calibrator). A value the plan does not quantize is skipped.
void apply_group_calibrators(const Config& c, const quant::QuantPlan& plan, quant::Encodings& enc,
                             const std::map<std::string, quant::Encodings>& by_calibrator) {
  for (const auto& [value, method] : c.group_calibrator) {
    int group = -1;
    for (const auto& a : plan.activations)
      if (a.value == value) group = a.group;
    if (group < 0) continue;
    const auto& source = by_calibrator.at(method).activations;
    for (const auto& a : plan.activations)
      if (a.group == group) enc.activations[a.value] = source.at(a.value);
  }
}

// Leaves the groups holding the config's fallback values in floating point.
void apply_fallback(const Config& c, quant::QuantPlan& plan, quant::Encodings& enc) {
  if (c.fallback.empty()) return;
  const std::set<std::string> values(c.fallback.begin(), c.fallback.end());
  std::set<int> groups;
  for (const auto& a : plan.activations)
    if (values.count(a.value)) groups.insert(a.group);
  quant::drop_activation_groups(plan, enc, {groups.begin(), groups.end()}, "sensitivity fallback (auto)");
}

// What a configuration costs against the budget.
struct Cost {
  double int8_macs = 0;
  double latency = -1;  // measured only under a latency budget
};

bool within(const Budget& b, const Cost& c) {
  return (b.min_int8_macs <= 0 || c.int8_macs >= b.min_int8_macs - 1e-12) && (b.max_latency <= 0 || c.latency <= b.max_latency);
}

// Between two costs outside the budget: a is closer to it than b when fewer MACs miss the integer kernels.
// Latency does not rank trials outside a latency budget: the quick per-trial measurement is too noisy for it
// (YOLOX-Nano, one run: 1.30-1.62× FP32 for near-identical graphs), and ranking by it chose trials 0.044 and
// 0.063 mAP worse that were no faster when timed again (docs/RESULTS.md); the fidelity decides instead.
bool closer(const Budget& bu, const Cost& a, const Cost& b) {
  if (bu.min_int8_macs <= 0) return false;
  const double sa = std::max(0.0, bu.min_int8_macs - a.int8_macs), sb = std::max(0.0, bu.min_int8_macs - b.int8_macs);
  return sa < sb - 1e-12;
}

}  // namespace

AutoChoice choose_calibration(const AutoChoiceInputs& in, const Events& ev) {
  if (!in.graph || !in.reference || !in.calibrate) throw Error("choose_calibration: graph, reference and calibrate are required");
  if (in.budget.max_latency > 0 && !in.latency_ratio) throw Error("choose_calibration: a latency budget needs latency_ratio");
  const Graph& g = *in.graph;
  const Budget& budget = in.budget;
  const auto started = std::chrono::steady_clock::now();
  AutoChoice best;
  bool have_best = false;
  Config best_config;
  Cost best_cost;
  const auto log = [&](const std::string& line) {
    if (ev.log) ev.log(line);
  };
  const auto measure = [&](const Config& c, const Graph& qdq, const Cost& cost) {
    const Fidelity f = in.reference->measure(qdq);
    nlohmann::json trial = {{"config", c.name()}, {"calibrator", c.calibrator}, {"weight_method", c.weight_method},
                            {"separate_concat_scales", c.separate_concat}, {"quantize_head", c.quantize_head},
                            {"fallback", c.fallback}, {"bias_correction", c.bias_correction}, {"fidelity", f.to_json()}, {"integer_mac_fraction", cost.int8_macs}};
    if (cost.latency >= 0) trial["latency_ratio"] = cost.latency;
    if (!budget.empty()) trial["within_budget"] = within(budget, cost);
    best.trials.push_back(std::move(trial));
    log(fmt::format("[auto] {:<22} agreement mAP {:.4f}, output SQNR {:.2f} dB, int8 MACs {:.0f} %{}  ({:.0f} s)", c.name(),
                    f.agreement_map, f.output_sqnr_db, 100 * cost.int8_macs,
                    cost.latency >= 0 ? fmt::format(", latency {:.2f}× FP32", cost.latency) : std::string(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()));
    return f;
  };
  // With an integer-MAC budget that the float head alone would break, every trial quantizes the head: the
  // budget leaves no other way, and the fallback step then spends what is left of it.
  quant::PlacementOptions base_placement = in.placement;
  if (budget.min_int8_macs > 0 && in.choose_head && !base_placement.quantize_head &&
      integer_mac_fraction(g, quant::derive_plan(g, base_placement)) < budget.min_int8_macs) {
    base_placement.quantize_head = true;
    log(fmt::format("[auto] budget {}: the floating-point head leaves too few MACs in integer kernels; the head is quantized "
                    "in every trial", budget.to_string()));
  }
  const quant::QuantPlan plan_default = quant::derive_plan(g, base_placement);
  const auto plan_of = [&](const Config& c) {
    quant::PlacementOptions po = base_placement;
    po.share_concat_scales = !c.separate_concat;
    po.quantize_head = c.quantize_head;
    return po.share_concat_scales == base_placement.share_concat_scales && po.quantize_head == base_placement.quantize_head
               ? plan_default
               : quant::derive_plan(g, po);
  };
  // Measures a configuration (calibrated here unless given) and makes it the best when it is within the budget and
  // the best is not; when both are within it and `accept(its fidelity, the best's)` (default: better); or when both
  // are outside and it is closer, or as close and better. A configuration that breaks an integer-MAC budget the
  // best meets is not measured (its cost is known before).
  const auto uses_default_plan = [&](const Config& c) {
    return c.separate_concat == !base_placement.share_concat_scales && c.quantize_head == base_placement.quantize_head;
  };
  // Every calibrator's encodings of the default plan (step 1), which the group calibrators of configurations on that
  // plan take their ranges from.
  std::map<std::string, quant::Encodings> calibrated;
  // `given`: the configuration's encodings without its group calibrators and fallback (calibrated here when null);
  // `final_encodings`: they already have the group calibrators (the bias-correction step).
  const auto try_config = [&](const Config& c, const quant::Encodings* given = nullptr,
                              const std::function<bool(const Fidelity&, const Fidelity&)>& accept = better_fidelity,
                              bool final_encodings = false) {
    quant::QuantPlan plan = plan_of(c);
    quant::Encodings enc;
    if (given) {
      enc = *given;
      if (!final_encodings && !c.group_calibrator.empty()) {
        if (uses_default_plan(c)) apply_group_calibrators(c, plan, enc, calibrated);
        else apply_group_calibrators(c, plan, enc, in.calibrate(plan, c.calibrators(), c.weight_method));
      }
    } else {
      const auto own = in.calibrate(plan, c.calibrators(), c.weight_method);
      enc = own.at(c.calibrator);
      apply_group_calibrators(c, plan, enc, own);
    }
    apply_fallback(c, plan, enc);  // (the plan needs it also when the encodings have it)
    Cost cost;
    cost.int8_macs = integer_mac_fraction(g, plan, enc);
    if (have_best && within(budget, best_cost) && budget.min_int8_macs > 0 && cost.int8_macs < budget.min_int8_macs - 1e-12) {
      log(fmt::format("[auto] {:<22} not measured: int8 MACs {:.0f} % < budget {:.0f} %", c.name(), 100 * cost.int8_macs,
                      100 * budget.min_int8_macs));
      return false;
    }
    quant::BiasCorrection bc;
    Graph corrected;
    if (c.bias_correction) {
      bc = quant::compute_bias_correction(g, plan, enc, in.bias_inputs, in.device);
      corrected = g;
      quant::apply_bias_correction(corrected, bc);
    }
    const Graph qdq = quant::make_qdq_graph(c.bias_correction ? corrected : g, plan, enc);
    if (budget.max_latency > 0) {  // timed as the export writes it: with its requantizers
      quant::QuantPlan p = plan;
      quant::Encodings e = enc;
      quant::add_requantizers(g, p, e);
      cost.latency = in.latency_ratio(in.export_qdq ? in.export_qdq(g, p, e) : quant::make_qdq_graph(g, p, e));
    }
    const Fidelity f = measure(c, qdq, cost);
    bool taken = !have_best;
    if (!taken) {
      const bool in_new = within(budget, cost), in_best = within(budget, best_cost);
      if (in_new != in_best) taken = in_new;
      else if (in_new) taken = accept(f, best.fidelity);
      else taken = closer(budget, cost, best_cost) || (!closer(budget, best_cost, cost) && better_fidelity(f, best.fidelity));
    }
    if (taken) {
      best.plan = std::move(plan);
      best.enc = std::move(enc);
      best.fidelity = f;
      best_config = c;
      best_cost = cost;
      best.bias_correction = std::move(bc);
      best.chosen_trial = static_cast<int>(best.trials.size()) - 1;
      have_best = true;
    }
    return taken;
  };
  // 1. Activation calibrator, all from the same two passes.
  std::vector<std::string> methods;
  for (const auto* c : quant::calibrators())
    if (c->in_auto) methods.push_back(c->name);
  calibrated = in.calibrate(plan_default, methods, in.weight_method);
  for (const auto& m : methods)
    try_config({m, in.weight_method, !base_placement.share_concat_scales, base_placement.quantize_head, false, {}, {}},
               &calibrated.at(m));
  // 2. Fallback: the groups that alone hurt the outputs most, one at a time, each kept only when it pays for itself;
  // then the calibrators again with those groups in floating point (what suits the rest may differ).
  if (in.max_fallback > 0 && !in.sensitivity_inputs.empty() && !(best.fidelity.agreement_map >= kAgreementGoodEnough)) {
    ProgressReporter sp(ev, "sensitivity (one quantizer group at a time)", best.plan.num_groups, ProgressReporter::clock::now(), "groups");
    const auto sens = quant::activation_sensitivity(g, best.plan, best.enc, in.sensitivity_inputs, in.device,
                                                    [&](size_t d, size_t) { sp.update(d); });
    for (const auto& s : sens) best.sensitivity.push_back({s.values, s.sqnr_db});
    // 2a. (Opt-in) another calibrator for each of the most harmful groups, kept when it gains half a point of
    // agreement. Each group gets three tries, and the best of them on 16 images is mostly chance: on the four shared
    // models it raised the chosen file's agreement on three and real mAP on one (docs/QUANTIZATION.md §4a).
    for (int k = 0; in.choose_group_calibrators && k < kFallbackCandidates && k < static_cast<int>(sens.size()) &&
                    !(best.fidelity.agreement_map >= kAgreementGoodEnough);
         ++k) {
      const std::string value = sens[k].values.front();
      const Config start = best_config;
      // Each alternative must gain on the configuration without it; the best of those that do is kept.
      const Fidelity reference = best.fidelity;
      for (const auto& m : methods) {
        if (m == start.calibrator) continue;
        Config c = start;
        c.group_calibrator[value] = m;
        try_config(c, &calibrated.at(c.calibrator), [&](const Fidelity& f, const Fidelity& b) {
          return worth_a_group_calibrator(f, reference) && better_fidelity(f, b);
        });
      }
    }
    // (Candidates a budget rules out before measuring do not count.)
    for (int k = 0, tried = 0; tried < kFallbackCandidates && k < static_cast<int>(sens.size()) &&
                               static_cast<int>(best_config.fallback.size()) < in.max_fallback &&
                               !(best.fidelity.agreement_map >= kAgreementGoodEnough);
         ++k) {
      Config c = best_config;
      c.fallback.push_back(sens[k].values.front());
      const size_t before = best.trials.size();
      try_config(c, &calibrated.at(c.calibrator), worth_a_fallback);
      tried += best.trials.size() > before;
    }
    // Groups can matter only together (one harmful quantizer masks the gain of removing the next): the prefixes of
    // the ranking, when the single steps kept none.
    for (int k = 2; best_config.fallback.empty() && k <= std::min<int>(in.max_fallback, static_cast<int>(sens.size())) &&
                    !(best.fidelity.agreement_map >= kAgreementGoodEnough);
         ++k) {
      Config c = best_config;
      for (int i = 0; i < k; ++i) c.fallback.push_back(sens[i].values.front());
      try_config(c, &calibrated.at(c.calibrator), worth_a_fallback);
    }
    if (!best_config.fallback.empty()) {
      const std::string first = best_config.calibrator;
      for (const auto& m : methods)
        if (m != first) {
          Config c = best_config;
          c.calibrator = m;
          try_config(c, &calibrated.at(m));
        }
    }
  }
  // 3. Weight range method: the activation ranges do not depend on it, so only the weights are recalibrated.
  if (in.choose_weight_method) {
    Config c = best_config;
    c.weight_method = in.weight_method == "mse" ? "minmax" : "mse";
    quant::Encodings enc = calibrated.at(c.calibrator);
    enc.weights = quant::calibrate_weights(g, plan_of(c), c.weight_method);
    enc.meta["weight_method"] = c.weight_method;
    try_config(c, &enc);
  }
  // 4. Concat scales, 5. the detection head, each on the best so far.
  if (in.choose_concat_scales && base_placement.share_concat_scales) {
    Config c = best_config;
    c.separate_concat = true;
    try_config(c);
  }
  if (in.choose_head && !base_placement.quantize_head) {
    Config c = best_config;
    c.quantize_head = true;
    try_config(c, nullptr, head_is_affordable);
  }
  // 6. Bias correction of the best: each quantized conv's output mean moved back to FP32's.
  if (!in.bias_inputs.empty()) {
    Config c = best_config;
    c.bias_correction = true;
    try_config(c, &best.enc, better_fidelity, true);  // copied before the best can change
  }
  best.calibrator = best_config.calibrator;
  best.weight_method = best_config.weight_method;
  best.separate_concat_scales = best_config.separate_concat;
  best.quantize_head = best_config.quantize_head;
  best.fallback_groups = best_config.fallback.size();
  best.group_calibrators = best_config.group_calibrator;
  best.integer_mac_fraction = best_cost.int8_macs;
  best.latency_ratio = best_cost.latency;
  best.within_budget = within(budget, best_cost);
  if (!best.within_budget)
    log(fmt::format("[auto] no configuration tried meets the budget {}; chose the closest (int8 MACs {:.0f} %{})",
                    budget.to_string(), 100 * best_cost.int8_macs,
                    best_cost.latency >= 0 ? fmt::format(", latency {:.2f}× FP32", best_cost.latency) : std::string()));
  log(fmt::format("[auto] chose {}: agreement mAP {:.4f}, output SQNR {:.2f} dB on {} held-out images", best_config.name(),
                  best.fidelity.agreement_map, best.fidelity.output_sqnr_db, best.fidelity.images));
  return best;
}

}  // namespace inlierq::pipeline
