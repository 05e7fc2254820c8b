// The reconstruction methods, one row each: what a method's passes learn (ALGORITHMS.md §4–5). A new method
// is a row here; the CLI, the pipeline's validation and the tests (ReconMethods.*) read the table.
#include "recon/methods.h"

#include <algorithm>

#include "inlierq/error.h"

namespace inlierq::recon {
namespace {

struct MethodRow {
  ReconMethod info;
  bool layerwise = false;  // one unit per compute layer
  std::function<std::vector<PassSpec>(const ReconOptions&)> passes;  // empty for composites
};

const std::vector<MethodRow>& method_rows() {
  static const std::vector<MethodRow> rows = {
      {{"adaround", "AdaRound: learned weight rounding, layer by layer, activations in float while learning", {}, false},
       true,
       [](const ReconOptions& o) { return std::vector<PassSpec>{{1, true, false, false, 1, 0, o.rec_p, 0, o.iters}}; }},
      {{"brecq", "BRECQ: learned weight rounding per block, then the activation steps (pass 2)", {}, false},
       false,
       [](const ReconOptions& o) {
         return std::vector<PassSpec>{{1, true, false, false, 1, 0, o.rec_p, 0, o.iters},
                                      {2, false, true, true, 1, 0, o.brecq_act_p, o.steps.brecq_lr, o.brecq_act_iters}};
       }},
      {{"qdrop", "QDrop: weight rounding and activation steps learned together per block, activation quantization dropped at random", {}, false},
       false,
       [](const ReconOptions& o) {
         return std::vector<PassSpec>{{1, true, true, true, o.qdrop.drop_prob, o.qdrop.input_mix, o.rec_p, o.steps.lr, o.iters}};
       }},
      {{"inlierq", "InlierQ: a base method (--base) on inlier-weighted losses and inlier-aware ranges", {"qdrop", "brecq"}, true},
       false,
       {}},
  };
  return rows;
}

const MethodRow& row_of(const std::string& name) {
  for (const auto& r : method_rows())
    if (r.info.name == name && r.passes) return r;
  throw Error("unknown reconstruction method '" + name + "' (expected " + join_names(reconstruction_methods()) + ")");
}

}  // namespace

const NameTable<StepUpdate>& step_update_names() {
  static const NameTable<StepUpdate> t{{{StepUpdate::Absolute, "absolute"}, {StepUpdate::Log, "log"}}};
  return t;
}
const NameTable<InlierInit>& inlier_init_names() {
  static const NameTable<InlierInit> t{
      {{InlierInit::MseInlier, "mse_inlier"}, {InlierInit::MinmaxInlier, "minmax_inlier"}, {InlierInit::None, "none"}}};
  return t;
}

const std::vector<ReconMethod>& reconstruction_method_table() {
  static const std::vector<ReconMethod> table = [] {
    std::vector<ReconMethod> t;
    for (const auto& r : method_rows()) t.push_back(r.info);
    return t;
  }();
  return table;
}

const ReconMethod* find_reconstruction_method(const std::string& name) {
  for (const auto& m : reconstruction_method_table())
    if (m.name == name) return &m;
  return nullptr;
}

std::vector<std::string> reconstruction_methods() {
  std::vector<std::string> v;
  for (const auto& m : reconstruction_method_table())
    if (m.bases.empty()) v.push_back(m.name);
  return v;
}

std::vector<std::string> all_reconstruction_methods() {
  std::vector<std::string> v;
  for (const auto& m : reconstruction_method_table()) v.push_back(m.name);
  return v;
}

std::vector<PassSpec> method_passes(const ReconOptions& o) { return row_of(o.method).passes(o); }
bool method_is_layerwise(const std::string& method) { return row_of(method).layerwise; }

}  // namespace inlierq::recon
