// Streamed activation calibration and per-channel weight-scale initialisation (ALGORITHMS.md §2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <tuple>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "quant/calibrators.h"
#include "quant/range_search.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::quant {

namespace {
QuantGrid grid_of(int bits, bool symmetric) { return QuantGrid{bits, symmetric}; }
}  // namespace

int64_t WeightEncoding::qn() const { return grid_of(bits, symmetric).qn(); }
int64_t WeightEncoding::qp() const { return grid_of(bits, symmetric).qp(); }
int64_t ActEncoding::qn() const { return grid_of(bits, symmetric).qn(); }
int64_t ActEncoding::qp() const { return grid_of(bits, symmetric).qp(); }

namespace {

struct GroupStats {
  std::vector<std::string> members;
  int bits = 8;
  bool symmetric = false;
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  std::unique_ptr<Histogram> hist;      // values over [min, max]
  std::unique_ptr<Histogram> abs_hist;  // |x| over [0, max|x|] (entropy)
  bool seen = false;
  bool image = false;  // holds the network input (ActSite::image)
  bool silu = true;    // every member is a SiLU pre-activation (ActSite::silu_input)
  // Per-slice calibrators: this batch's member tensors until the batch ends, and the sums of the slices'
  // optima.
  std::vector<at::Tensor> pending;
  double slice_lo_sum = 0, slice_hi_sum = 0;
  int slices = 0;
};

// The raw float data of a dense CPU tensor in whatever memory order it has (order does not matter
// for min/max or histograms).
at::Tensor dense_cpu_float(const at::Tensor& x) {
  at::Tensor t = x.device().is_cpu() ? x : x.to(at::kCPU);
  if (t.scalar_type() != at::kFloat) t = t.to(at::kFloat);
  if (!t.is_contiguous() && !t.is_contiguous(at::MemoryFormat::ChannelsLast)) t = t.contiguous();
  return t;
}

std::pair<float, float> weight_channel_range(const std::vector<float>& v, const std::string& method, QuantGrid grid) {
  if (method == "mse") return mse_range_exact(v.data(), v.size(), grid);
  float mn = std::numeric_limits<float>::infinity(), mx = -std::numeric_limits<float>::infinity();
  for (float x : v) mn = std::min(mn, x), mx = std::max(mx, x);
  if (grid.symmetric) {
    const float t = std::max(std::fabs(mn), std::fabs(mx));
    return {-t, t};
  }
  return {mn, mx};
}

}  // namespace

std::map<std::string, WeightEncoding> calibrate_weights(const Graph& g, const QuantPlan& plan, const std::string& weight_method) {
  if (weight_method != "minmax" && weight_method != "mse")
    throw Error("unknown weight calibration method '" + weight_method + "' (expected minmax or mse)");
  std::map<std::string, WeightEncoding> out;
  // Independent per tensor, so spread over the intra-op threads.
  std::vector<WeightEncoding> wencs(plan.weights.size());
  std::vector<std::string> werrors(plan.weights.size());
  at::parallel_for(0, static_cast<int64_t>(plan.weights.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t wi = begin; wi < end; ++wi) {
      const auto& w = plan.weights[wi];
      try {
        const TensorData& t = g.initializers.at(w.tensor);
        const int64_t rank = static_cast<int64_t>(t.shape.size());
        if (w.axis >= rank) throw Error("weight '" + w.tensor + "' has no axis " + std::to_string(w.axis));
        const int64_t channels = t.shape[w.axis];
        int64_t inner = 1, outer = 1;
        for (int64_t d = w.axis + 1; d < rank; ++d) inner *= t.shape[d];
        for (int64_t d = 0; d < w.axis; ++d) outer *= t.shape[d];
        WeightEncoding& we = wencs[wi];
        we.tensor = w.tensor;
        we.bits = w.bits;
        we.symmetric = w.symmetric;
        we.axis = w.axis;
        const QuantGrid grid = grid_of(w.bits, w.symmetric);
        const float* data = t.as<float>();
        std::vector<float> values;
        for (int64_t c = 0; c < channels; ++c) {
          values.clear();
          for (int64_t o = 0; o < outer; ++o)
            for (int64_t i = 0; i < inner; ++i) {
              const float x = data[(o * channels + c) * inner + i];
              if (!std::isfinite(x))
                throw Error("weight '" + w.tensor + "' of node '" + w.node + "' contains " + (std::isnan(x) ? "NaN" : "Inf") +
                            " in channel " + std::to_string(c));
              values.push_back(x);
            }
          auto [lo, hi] = weight_channel_range(values, weight_method, grid);
          const AffineParams p = calibrated_params(lo, hi, grid);
          we.scale.push_back(p.scale);
          we.zero_point.push_back(p.zero_point);
        }
      } catch (const std::exception& e) {
        werrors[wi] = e.what();
      }
    }
  });
  for (size_t wi = 0; wi < plan.weights.size(); ++wi) {
    if (!werrors[wi].empty()) throw Error(werrors[wi]);
    out[plan.weights[wi].tensor] = std::move(wencs[wi]);
  }
  return out;
}

Encodings calibrate(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                    const CalibrationOptions& opts) {
  return calibrate_methods(g, plan, inputs, opts, {opts.method}).at(opts.method);
}

std::map<std::string, Encodings> calibrate_methods(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                                   const CalibrationOptions& opts, const std::vector<std::string>& methods) {
  if (methods.empty()) throw Error("calibrate_methods: no calibrator named");
  std::vector<const Calibrator*> cals;
  bool need_hist = false, need_abs_hist = false;
  int slice_images = 0;
  for (const auto& m : methods) {
    const Calibrator& c = find_calibrator(m);
    CalibrationOptions o = opts;
    o.method = m;
    if (c.validate) c.validate(o);
    cals.push_back(&c);
    need_hist |= c.histogram && !c.histogram_of_abs;
    need_abs_hist |= c.histogram && c.histogram_of_abs;
    if (c.per_slice_images > 0) {
      if (slice_images > 0 && slice_images != c.per_slice_images)
        throw Error("calibrators with different slice sizes cannot share passes");
      slice_images = c.per_slice_images;
    }
  }
  if (g.inputs.size() != 1) throw Error("calibration needs a model with one input; it has " + std::to_string(g.inputs.size()));
  if (inputs.empty()) throw Error("no calibration images");

  // Biases of quantized compute nodes become int32 codes (or stay float where they would not fit): a
  // non-finite one would reach OUT.onnx, so it is refused here with its name.
  {
    std::unordered_map<std::string, const Node*> node_by_name;
    for (const auto& n : g.nodes) node_by_name[n.name] = &n;
    for (const auto& w : plan.weights) {
      auto it = node_by_name.find(w.node);
      if (it == node_by_name.end() || it->second->inputs.size() < 3) continue;
      auto b = g.initializers.find(it->second->inputs[2]);
      if (b == g.initializers.end() || b->second.dtype != DType::Float) continue;
      const float* d = b->second.as<float>();
      for (int64_t i = 0; i < b->second.numel(); ++i)
        if (!std::isfinite(d[i]))
          throw Error("bias '" + b->first + "' of node '" + w.node + "' contains " + (std::isnan(d[i]) ? "NaN" : "Inf") +
                      " at index " + std::to_string(i));
    }
  }

  Encodings enc;  // the weights; copied into each method's encodings
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  auto seconds_since = [](clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); };
  enc.weights = calibrate_weights(g, plan, opts.weight_method);
  const double weight_seconds = seconds_since(t_start);
  const auto t_acts = clock::now();
  // ---- activations
  std::vector<GroupStats> groups(plan.num_groups);
  std::unordered_map<std::string, int> group_of;
  for (const auto& a : plan.activations) {
    auto& gs = groups.at(a.group);
    gs.members.push_back(a.value);
    gs.bits = a.bits;
    gs.symmetric = a.symmetric;
    gs.image = gs.image || a.image;
    gs.silu = gs.silu && a.silu_input;
    group_of[a.value] = a.group;
  }
  rt::ExecutorOptions eo;
  eo.device = at::Device(opts.device);
  for (const auto& a : plan.activations) eo.hooked.insert(a.value);
  rt::Executor ex(g, eo);
  const std::string input_name = g.inputs[0].name;
  const int passes = need_hist || need_abs_hist ? 2 : 1;
  const size_t batch = static_cast<size_t>(std::max(1, opts.batch));

  // The mse optimum of each slice of `slice_images` images of the batch just run, over the group's members
  // together (one histogram per slice over the slice's own range), the same search as the mse row's.
  CalibrationOptions slice_opts = opts;
  slice_opts.method = "mse";
  auto add_slice_optima = [&](int64_t images) {
    for (auto& gs : groups) {
      if (gs.pending.empty()) continue;
      const QuantGrid grid = grid_of(gs.bits, gs.symmetric);
      for (int64_t s = 0; s < images; s += slice_images) {
        const int64_t len = std::min<int64_t>(slice_images, images - s);
        std::vector<at::Tensor> parts;
        double lo = std::numeric_limits<double>::infinity(), hi = -lo;
        for (const auto& t : gs.pending) {
          parts.push_back(dense_cpu_float(t.narrow(0, s, len).contiguous()));
          auto [mn, mx] = at::aminmax(parts.back());
          lo = std::min(lo, mn.item<double>()), hi = std::max(hi, mx.item<double>());
        }
        Histogram h(lo, hi, opts.histogram_bins);
        for (const auto& p : parts) h.add(p.data_ptr<float>(), static_cast<size_t>(p.numel()));
        const auto r = kMseCalibrator.range(GroupStatistics{lo, hi, &h, grid, gs.silu}, slice_opts);
        gs.slice_lo_sum += r.first, gs.slice_hi_sum += r.second, ++gs.slices;
      }
      gs.pending.clear();
    }
  };

  size_t batch_begin = 0;  // first image of the batch being run, for error messages
  auto run_pass = [&](int pass, const std::function<void(GroupStats&, const std::string&, const at::Tensor&)>& observe) {
    rt::RunOptions ro;
    ro.value_hook = [&](const std::string& name, const at::Tensor& t) -> at::Tensor {
      auto it = group_of.find(name);
      if (it != group_of.end()) observe(groups[it->second], name, t);
      return t;
    };
    ro.hook_inputs = true;
    for (size_t i = 0; i < inputs.size(); i += batch) {
      batch_begin = i;
      at::Tensor x = rt::to_aten_batch(inputs, i, i + batch).to(eo.device);
      ex.run({{input_name, x}}, ro);
      if (pass == 1 && slice_images > 0) add_slice_optima(x.size(0));
      if (opts.progress) opts.progress(pass, passes, std::min(inputs.size(), i + batch), inputs.size());
    }
  };

  GraphIndex index(g);
  run_pass(1, [&](GroupStats& gs, const std::string& name, const at::Tensor& t) {
    // Over a flat view of the dense memory: reductions over a channels-last tensor's logical order are slower.
    const at::Tensor flat = t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous()
                                ? t.permute({0, 2, 3, 1}).reshape({-1})
                                : t.reshape({-1});
    auto [mn, mx] = at::aminmax(flat);
    const double lo = mn.item<double>(), hi = mx.item<double>();
    if (!std::isfinite(lo) || !std::isfinite(hi)) {
      // A range cannot hold them, and one NaN would make every scale of the group NaN.
      const bool nan = std::isnan(lo) || std::isnan(hi) || at::isnan(flat).any().item<bool>();
      const Node* p = index.producer(name);
      const size_t last = std::min(inputs.size(), batch_begin + batch) - 1;
      // The batch's files when the caller named the inputs, else their positions.
      std::string where;
      for (size_t k = batch_begin; k <= last; ++k)
        where += (where.empty() ? "" : ", ") + (k < opts.input_names.size() ? opts.input_names[k] : "#" + std::to_string(k));
      throw Error("activation '" + name + "'" + (p ? " (output of " + p->op_type + " node '" + p->name + "')" : std::string()) +
                  " is " + (nan ? "NaN" : "Inf") + " on the calibration batch of " + where +
                  ": the FP32 model itself computes it there, and no quantization range can hold it");
    }
    gs.min = std::min(gs.min, lo);
    gs.max = std::max(gs.max, hi);
    gs.seen = true;
    // A copy: the executor may reuse the buffer of a value later in the same run.
    if (slice_images > 0 && !gs.image) gs.pending.push_back(t.clone());
  });
  for (const auto& gs : groups)
    if (!gs.seen) throw Error("activation '" + gs.members.at(0) + "' was never computed during calibration");

  if (passes == 2) {
    for (auto& gs : groups) {
      if (need_hist) gs.hist = std::make_unique<Histogram>(gs.min, gs.max, opts.histogram_bins);
      if (need_abs_hist)
        gs.abs_hist = std::make_unique<Histogram>(0.0, std::max(std::fabs(gs.min), std::fabs(gs.max)), opts.histogram_bins);
    }
    run_pass(2, [](GroupStats& gs, const std::string&, const at::Tensor& t) {
      if (gs.hist) {
        at::Tensor d = dense_cpu_float(t);
        gs.hist->add(d.data_ptr<float>(), static_cast<size_t>(d.numel()));
      }
      if (gs.abs_hist) {
        at::Tensor d = dense_cpu_float(at::abs(t));
        gs.abs_hist->add(d.data_ptr<float>(), static_cast<size_t>(d.numel()));
      }
    });
  }

  const double forward_seconds = seconds_since(t_acts);
  std::map<std::string, Encodings> out;
  for (size_t mi = 0; mi < methods.size(); ++mi) {
    const Calibrator& calibrator = *cals[mi];
    CalibrationOptions o = opts;
    o.method = methods[mi];
    Encodings& e = out[methods[mi]];
    e.weights = enc.weights;
    const auto t_search = clock::now();
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      auto& gs = groups[gi];
      const QuantGrid grid = grid_of(gs.bits, gs.symmetric);
      double lo = gs.min, hi = gs.max;
      // The network input is an image of 8-bit pixels: its min/max grid keeps it (nearly) exact, where a
      // search over its histogram would clip pixel values.
      const Histogram* hist = !calibrator.histogram ? nullptr : calibrator.histogram_of_abs ? gs.abs_hist.get() : gs.hist.get();
      GroupStatistics stats{gs.min, gs.max, hist, grid, gs.silu};
      if (gs.slices > 0) stats.slice_lo = gs.slice_lo_sum / gs.slices, stats.slice_hi = gs.slice_hi_sum / gs.slices;
      stats.slices = gs.slices;
      if (!gs.image) std::tie(lo, hi) = calibrator.range(stats, o);
      if (gs.symmetric) {
        const double t = std::max(std::fabs(lo), std::fabs(hi));
        lo = -t, hi = t;
      }
      const AffineParams p = calibrated_params(static_cast<float>(lo), static_cast<float>(hi), grid);
      for (const auto& v : gs.members) {
        ActEncoding ae;
        ae.value = v;
        ae.bits = gs.bits;
        ae.symmetric = gs.symmetric;
        ae.group = static_cast<int>(gi);
        ae.scale = p.scale;
        ae.zero_point = p.zero_point;
        ae.observed_min = static_cast<float>(gs.min);
        ae.observed_max = static_cast<float>(gs.max);
        e.activations[v] = ae;
      }
    }
    e.meta = {{"method", o.method}, {"weight_method", opts.weight_method}, {"calibration_images", inputs.size()},
              {"histogram_bins", opts.histogram_bins}};
    if (o.method == "percentile") e.meta["percentile"] = opts.percentile;
    if (calibrator.per_slice_images > 0) e.meta["slice_images"] = calibrator.per_slice_images;
    e.meta["seconds"] = {{"weights", weight_seconds}, {"activation_passes", forward_seconds},
                         {"range_search", seconds_since(t_search)}};
    if (methods.size() > 1) e.meta["calibrated_with"] = methods;  // the passes were shared
  }
  return out;
}

}  // namespace inlierq::quant
