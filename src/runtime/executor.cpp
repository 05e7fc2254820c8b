#include "runtime/executor.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "inlierq/error.h"
#include "runtime/tensor_convert.h"

namespace inlierq::rt {
namespace {

std::string describe_shapes(const Tensors& ts) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < ts.size(); ++i) {
    if (i) os << ", ";
    if (!ts[i].defined()) { os << "-"; continue; }
    os << c10::toString(ts[i].scalar_type()) << shape_str(ts[i].sizes().vec());
  }
  os << ")";
  return os.str();
}

bool is_float(at::ScalarType t) { return at::isFloatingType(t); }

// Runs a kernel or factory so that whatever it throws becomes one inlierq::Error naming the node: kernels
// may throw c10::Error, inlierq::Error without node context (e.g. from to_scalar_type) or std exceptions
// (std::out_of_range, std::bad_alloc, ...) on malformed models.
// `where` is a callable so that the input shapes are only described on failure.
template <typename W, typename F>
auto with_node_context(const Node& n, W&& where, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    if (std::string(e.what()).find(n.describe()) != std::string::npos) throw;
    throw Error(n.describe() + where() + ": " + e.what());
  } catch (const c10::Error& e) {
    throw Error(n.describe() + where() + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error(n.describe() + where() + ": " + e.what());
  }
}

}  // namespace

std::vector<int64_t> Executor::static_shape(const std::string& name) const {
  if (auto it = graph_.initializers.find(name); it != graph_.initializers.end()) return it->second.shape;
  const ValueInfo* v = graph_.find_value(name);
  std::vector<int64_t> s;
  if (!v || !v->has_shape) return s;
  for (const auto& d : v->shape) {
    if (d.value < 0) return {};
    s.push_back(d.value);
  }
  return s;
}

Executor::Executor(const Graph& g, ExecutorOptions opts) : graph_(g), opts_(opts) {
  auto slot = [&](const std::string& name) {
    auto it = slot_of_.find(name);
    if (it != slot_of_.end()) return it->second;
    int id = static_cast<int>(slot_names_.size());
    slot_of_[name] = id;
    slot_names_.push_back(name);
    constants_.emplace_back();
    return id;
  };
  for (const auto& [name, t] : graph_.initializers) {
    try {
      constants_[slot(name)] = to_aten(t).to(opts_.device);
    } catch (const Error& e) {
      throw Error("initializer '" + name + "': " + e.what());
    }
  }
  if (opts_.channels_last)
    for (const auto& n : graph_.nodes)
      if (n.op_type == "Conv" && n.inputs.size() > 1)
        if (auto it = slot_of_.find(n.inputs[1]); it != slot_of_.end() && constants_[it->second].dim() == 4)
          constants_[it->second] = constants_[it->second].contiguous(at::MemoryFormat::ChannelsLast);
  for (const auto& in : graph_.inputs) slot(in.name);

  batch_polymorphic_ = opts_.allow_batch && !graph_.inputs.empty();
  for (const auto& in : graph_.inputs)
    if (!in.has_shape || in.shape.empty() || in.shape[0].value != 1) batch_polymorphic_ = false;

  const auto& registry = OpRegistry::instance();
  std::vector<std::string> unsupported;
  for (const auto& n : graph_.nodes)
    if (!n.domain.empty() || !registry.find(n.op_type)) unsupported.push_back(n.describe());
  if (!unsupported.empty()) {
    std::string msg = "unsupported op(s): ";
    for (size_t i = 0; i < unsupported.size() && i < 10; ++i) msg += (i ? ", " : "") + unsupported[i];
    if (unsupported.size() > 10) msg += ", ... (" + std::to_string(unsupported.size()) + " in all)";
    throw Error(msg);
  }

  // All slots exist before any kernel is built, so constants_ never reallocates afterwards and the
  // constant_input lookup stays valid for as long as the executor lives.
  for (const auto& n : graph_.nodes) {
    for (const auto& in : n.inputs) if (!in.empty()) slot(in);
    for (const auto& out : n.outputs) if (!out.empty()) slot(out);
  }
  // NoGrad rather than InferenceMode: folded constants must stay usable in runs that record autograd.
  at::NoGradGuard no_grad;
  for (const auto& n : graph_.nodes) {
    Step st;
    st.node = &n;
    for (const auto& in : n.inputs) st.inputs.push_back(in.empty() ? -1 : slot_of_.at(in));
    for (const auto& out : n.outputs) st.outputs.push_back(out.empty() ? -1 : slot_of_.at(out));
    OpContext ctx{n, graph_.opset, nullptr, batch_polymorphic_, {}, {}};
    for (const auto& in : n.inputs) ctx.exported_input_shapes.push_back(static_shape(in));
    for (const auto& out : n.outputs) ctx.exported_output_shapes.push_back(static_shape(out));
    ctx.constant_input = [this, ins = st.inputs](size_t i) -> const at::Tensor* {
      if (i >= ins.size() || ins[i] < 0) return nullptr;
      const auto& c = constants_[ins[i]];
      return c.defined() ? &c : nullptr;
    };
    st.kernel = with_node_context(n, [] { return std::string(); }, [&] { return (*registry.find(n.op_type))(ctx); });
    bool all_const = opts_.fold_constants && !n.inputs.empty();
    Tensors ins;
    for (auto s : st.inputs) {
      if (s >= 0 && (!constants_[s].defined() || opts_.replaceable.count(slot_names_[s]))) all_const = false;
      ins.push_back(s >= 0 ? constants_[s] : at::Tensor());
    }
    if (all_const) {
      Tensors outs = with_node_context(n, [&] { return " failed on constant inputs " + describe_shapes(ins); }, [&] { return st.kernel(ins); });
      for (size_t i = 0; i < st.outputs.size() && i < outs.size(); ++i)
        if (st.outputs[i] >= 0) constants_[st.outputs[i]] = outs[i];
      continue;
    }
    steps_.push_back(std::move(st));
  }

  std::unordered_set<int> protected_slots;
  for (const auto& o : graph_.outputs) protected_slots.insert(slot(o.name));
  std::unordered_set<int> unfusable = protected_slots;
  for (const auto& v : opts_.hooked)
    if (auto it = slot_of_.find(v); it != slot_of_.end()) unfusable.insert(it->second);
  if (opts_.fuse_silu) fuse_silu(unfusable);

  // Free each intermediate after its last reader; graph outputs are never freed.
  std::vector<int> last_use(slot_names_.size(), -1);
  for (size_t i = 0; i < steps_.size(); ++i)
    for (auto s : steps_[i].inputs)
      if (s >= 0) last_use[s] = static_cast<int>(i);
  for (size_t s = 0; s < last_use.size(); ++s)
    if (last_use[s] >= 0 && !constants_[s].defined() && !protected_slots.count(static_cast<int>(s)))
      steps_[last_use[s]].free_after.push_back(static_cast<int>(s));
}

Executor::~Executor() = default;

// x * Sigmoid(x) is SiLU: one pass over memory instead of two, and no intermediate tensor. Only when
// the Sigmoid output feeds nothing else, so no consumer or graph output loses a value.
void Executor::fuse_silu(const std::unordered_set<int>& protected_slots) {
  std::unordered_map<int, int> consumers;
  std::unordered_map<int, size_t> producer;
  for (size_t i = 0; i < steps_.size(); ++i) {
    for (auto s : steps_[i].inputs)
      if (s >= 0) consumers[s]++;
    for (auto s : steps_[i].outputs)
      if (s >= 0) producer[s] = i;
  }
  std::vector<bool> removed(steps_.size(), false);
  for (auto& st : steps_) {
    if (st.node->op_type != "Mul" || st.inputs.size() != 2) continue;
    for (int k = 0; k < 2; ++k) {
      const int sig = st.inputs[k], x = st.inputs[1 - k];
      auto p = producer.find(sig);
      if (sig < 0 || x < 0 || p == producer.end()) continue;
      const Step& ps = steps_[p->second];
      if (ps.node->op_type != "Sigmoid" || ps.inputs.size() != 1 || ps.inputs[0] != x) continue;
      if (consumers[sig] != 1 || protected_slots.count(sig)) continue;
      removed[p->second] = true;
      st.inputs = {x};
      st.kernel = [](const Tensors& in) -> Tensors { return {at::silu(in[0])}; };
      break;
    }
  }
  std::vector<Step> kept;
  for (size_t i = 0; i < steps_.size(); ++i)
    if (!removed[i]) kept.push_back(std::move(steps_[i]));
  steps_ = std::move(kept);
}

const at::Tensor* Executor::constant(const std::string& name) const {
  auto it = slot_of_.find(name);
  if (it == slot_of_.end() || !constants_[it->second].defined()) return nullptr;
  return &constants_[it->second];
}

void Executor::check_inputs(const TensorMap& inputs) const {
  for (const auto& [name, _] : inputs) {
    bool known = false;
    for (const auto& in : graph_.inputs) known |= in.name == name;
    if (!known) {
      std::string names;
      for (const auto& in : graph_.inputs) names += (names.empty() ? "'" : ", '") + in.name + "'";
      throw Error("unknown input '" + name + "'; " + (names.empty() ? "the model has no inputs" : "the model's inputs are " + names));
    }
  }
  for (const auto& in : graph_.inputs) {
    auto it = inputs.find(in.name);
    if (it == inputs.end()) throw Error("missing input '" + in.name + "' " + in.shape_string());
    const at::Tensor& t = it->second;
    if (!t.defined()) throw Error("input '" + in.name + "' is empty");
    if (in.dtype != DType::Undefined && to_dtype(t.scalar_type()) != in.dtype)
      throw Error("input '" + in.name + "' has type " + dtype_name(to_dtype(t.scalar_type())) +
                  ", the model expects " + dtype_name(in.dtype));
    if (in.has_shape) {
      bool ok = static_cast<size_t>(t.dim()) == in.shape.size();
      for (size_t d = 0; ok && d < in.shape.size(); ++d) {
        if (in.shape[d].value < 0 || (d == 0 && batch_polymorphic_)) continue;
        ok = t.size(static_cast<int64_t>(d)) == in.shape[d].value;
      }
      if (!ok)
        throw Error("input '" + in.name + "' has shape " + shape_str(t.sizes().vec()) + ", the model expects " +
                    in.shape_string() + (batch_polymorphic_ ? " (any batch size)" : ""));
    }
    if (opts_.check_finite && is_float(t.scalar_type()) && !at::isfinite(t).all().item<bool>())
      throw Error("input '" + in.name + "' contains NaN or Inf values");
  }
}

TensorMap Executor::run(const TensorMap& inputs, const RunOptions& ro) const {
  check_inputs(inputs);
  const bool needs_grad = ro.track_grad || ro.record_autograd || (ro.overrides && [&] {
    for (auto& [_, t] : *ro.overrides) if (t.requires_grad()) return true;
    return false;
  }());
  std::optional<c10::InferenceMode> inference;
  if (!needs_grad) inference.emplace();

  std::vector<at::Tensor> slots = constants_;
  if (ro.overrides)
    for (const auto& [name, t] : *ro.overrides) {
      auto it = slot_of_.find(name);
      if (it == slot_of_.end()) throw Error("override '" + name + "' names no value of the graph");
      slots[it->second] = t;
    }
  for (const auto& in : graph_.inputs) {
    at::Tensor t = inputs.at(in.name).to(opts_.device);
    if (opts_.channels_last && t.dim() == 4 && t.scalar_type() == at::kFloat)
      t = t.contiguous(at::MemoryFormat::ChannelsLast);
    if (ro.track_grad && is_float(t.scalar_type())) t = t.detach().requires_grad_(true);
    if (ro.hook_inputs && ro.value_hook) t = ro.value_hook(in.name, t);
    slots[slot_of_.at(in.name)] = t;
  }
  std::unordered_set<int> keep;
  for (const auto& k : ro.keep) {
    auto it = slot_of_.find(k);
    if (it == slot_of_.end()) throw Error("requested value '" + k + "' does not exist in the graph");
    keep.insert(it->second);
  }

  Tensors ins;
  for (const auto& st : steps_) {
    ins.clear();
    for (auto s : st.inputs) ins.push_back(s >= 0 ? slots[s] : at::Tensor());
    const auto t0 = ro.profile ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    Tensors outs = with_node_context(*st.node, [&] { return " failed on inputs " + describe_shapes(ins); },
                                     [&] { return st.kernel(ins); });
    if (ro.profile)
      (*ro.profile)[ro.profile_by_node ? st.node->name : st.node->op_type] +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (outs.size() < st.outputs.size())
      for (size_t i = outs.size(); i < st.outputs.size(); ++i)
        if (st.outputs[i] >= 0) throw Error(st.node->describe() + ": output " + std::to_string(i) + " was not produced");
    for (size_t i = 0; i < st.outputs.size(); ++i) {
      int s = st.outputs[i];
      if (s < 0) continue;
      slots[s] = ro.value_hook ? ro.value_hook(slot_names_[s], outs[i]) : std::move(outs[i]);
    }
    for (auto s : st.free_after)
      if (!keep.count(s)) slots[s] = at::Tensor();
  }

  TensorMap result;
  for (const auto& o : graph_.outputs) result[o.name] = slots[slot_of_.at(o.name)];
  for (auto s : keep) {
    if (!slots[s].defined())
      throw Error("value '" + slot_names_[s] + "' was not computed (fused into SiLU?); build the executor with fuse_silu = false to keep it");
    result[slot_names_[s]] = slots[s];
  }
  return result;
}

Tensors Executor::run_single(const at::Tensor& input, const RunOptions& ro) const {
  if (graph_.inputs.size() != 1)
    throw Error("the model has " + std::to_string(graph_.inputs.size()) + " inputs; run_single needs exactly one");
  auto res = run({{graph_.inputs[0].name, input}}, ro);
  Tensors out;
  for (const auto& o : graph_.outputs) out.push_back(res.at(o.name));
  return out;
}

}  // namespace inlierq::rt
