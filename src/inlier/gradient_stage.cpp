// InlierQ's gradient stage and inlier-aware ranges (ALGORITHMS.md §6.1–6.5); see gradient_stage.h.
#include "inlier/gradient_stage.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <set>

#include "inlier/inlier_weights.h"
#include "inlier/saliency.h"
#include "runtime/executor.h"

namespace inlierq::inlier {

nlohmann::json gradient_weights(const Graph& g, const at::Tensor& images, const std::vector<std::string>& values,
                                const GradientStageOptions& opts,
                                const std::function<void(const std::string&, const at::Tensor&, const at::Tensor&)>& sink,
                                std::vector<SaliencyMaps>* maps) {
  rt::ExecutorOptions eo;
  eo.device = at::Device(opts.device);
  eo.fuse_silu = false;  // every chosen value must exist as a tensor
  rt::Executor ex(g, eo);
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < images.size(0); ++i) xs.push_back(images.narrow(0, i, 1));
  const AuxLossOptions ao = aux_options(opts.heatmap_loss);
  if (opts.log) opts.log(fmt::format("[saliency] gradients of the top-{} heatmap loss at {} unit outputs", ao.k, values.size()));
  const InlierOptions io = inlier_options(opts.split);
  nlohmann::json fits = nlohmann::json::object();
  std::map<std::string, SaliencyMaps> pictures;
  const std::set<std::string> pictured(opts.maps_of.begin(), opts.maps_of.end());
  // Reduced per batch: F in float16 and the per-volume raw saliency; the full gradient is never kept.
  aux_loss_reduce(
      ex, opts.heatmap_loss.heatmap, xs, values, ao, 4,
      [&](const std::string&, const at::Tensor& g_full, const at::Tensor& z) {
        // Rounded to bfloat16 as when whole-set gradients were kept in bfloat16: the measured tables
        // came from that, and InlierQ's mAP moves with rounding this small (FastestDet W4A4 seed 0:
        // 0.0356 with, 0.0442 without).
        const at::Tensor gr = g_full.to(at::kBFloat16).to(at::kFloat);
        std::vector<at::Tensor> kept;
        kept.push_back(opts.fisher ? (gr.abs() + 1).pow(2).to(at::kHalf) : at::Tensor());
        kept.push_back(opts.inlier ? raw_saliency(gr, z, io.saliency) : at::Tensor());
        return kept;
      },
      [&](const std::string& v, const std::vector<at::Tensor>& kept) {
        at::Tensor w;
        if (opts.inlier) {
          auto vw = volume_weights_from_raw(kept[1], io);
          w = vw.weights;
          fits[v] = vw.to_json();
          if (maps && pictured.count(v) && vw.weights.dim() == 3) {
            InlierOptions soft = io;
            soft.weighting = Weighting::Soft;  // the pictures show the posterior itself
            pictures[v] = saliency_pictures(v, io.weighting == Weighting::Soft ? vw : volume_weights_from_raw(kept[1], soft), opts.map_images);
          }
          if (opts.log)
            opts.log(fmt::format("[inlierq] {}: EM means {:.2f} / {:.2f}, inlier prior {:.2f}, Ashman D {:.2f}, inlier mass {:.2f}{}", v,
                                 vw.fit.mean[0], vw.fit.mean[1], vw.fit.prior[1], vw.fit.ashman_d(), vw.inlier_mass,
                                 vw.fit.fallback ? " (fallback: " + vw.fit.fallback_reason + ")" : std::string()));
        }
        sink(v, opts.fisher ? kept[0] : at::Tensor(), w);
      },
      opts.inlier && opts.split.saliency == Saliency::GradAct);
  if (maps)
    for (const auto& v : opts.maps_of)
      if (auto it = pictures.find(v); it != pictures.end()) maps->push_back(std::move(it->second));
  return fits;
}

std::map<int, InlierRange> inlier_ranges(const Graph& g, const at::Tensor& images, const std::map<std::string, InlierRangeSite>& sites,
                                         const std::map<int, quant::QuantGrid>& grids, const std::set<std::string>& hooked,
                                         bool mse, const std::string& device) {
  struct Stats {
    double lo = INFINITY, hi = -INFINITY, flo = INFINITY, fhi = -INFINITY;
    std::unique_ptr<quant::Histogram> hist;
  };
  std::map<int, Stats> stats;
  rt::ExecutorOptions eo;
  eo.device = at::Device(device);
  eo.hooked.insert(hooked.begin(), hooked.end());
  rt::Executor ex(g, eo);
  const std::string input = g.inputs.at(0).name;
  const int64_t num = images.size(0);
  const int64_t eb = 8;
  for (int pass = 1; pass <= (mse ? 2 : 1); ++pass) {
    for (int64_t b = 0; b < num; b += eb) {
      const int64_t nb = std::min(eb, num - b);
      rt::RunOptions ro;
      ro.value_hook = [&](const std::string& name, const at::Tensor& x) -> at::Tensor {
        auto site = sites.find(name);
        if (site == sites.end()) return x;
        auto& st = stats[site->second.group];
        const at::Tensor xc = x.to(at::kCPU).to(at::kFloat).contiguous();
        const at::Tensor& uw = site->second.weights;
        at::Tensor w;
        if (uw.defined() && xc.dim() == 4 && uw.dim() == 3) {
          w = at::upsample_nearest2d(uw.narrow(0, b, nb).unsqueeze(1), {xc.size(2), xc.size(3)}).expand_as(xc).contiguous();
        } else {
          w = at::ones_like(xc);
        }
        if (pass == 1) {
          auto [fmn, fmx] = at::aminmax(xc);
          st.flo = std::min(st.flo, fmn.item<double>()), st.fhi = std::max(st.fhi, fmx.item<double>());
          const at::Tensor in = xc.masked_select(w > 0.5);
          if (in.numel() > 0) {
            auto [mn, mx] = at::aminmax(in);
            st.lo = std::min(st.lo, mn.item<double>()), st.hi = std::max(st.hi, mx.item<double>());
          }
        } else {
          if (!st.hist) st.hist = std::make_unique<quant::Histogram>(st.flo, st.fhi, 2048);
          st.hist->add(xc.data_ptr<float>(), static_cast<size_t>(xc.numel()), w.data_ptr<float>());
        }
        return x;
      };
      ex.run({{input, images.narrow(0, b, nb).to(eo.device)}}, ro);
    }
  }
  std::map<int, InlierRange> out;
  for (auto& [gid, st] : stats) {
    const quant::QuantGrid grid = grids.at(gid);
    double lo = st.lo, hi = st.hi;
    if (!std::isfinite(lo)) lo = st.flo, hi = st.fhi;  // no inlier volume seen: keep the full range
    if (mse && st.hist && st.hist->total() > 0) {
      auto r = quant::mse_range(*st.hist, grid);
      lo = r.first, hi = r.second;
    }
    if (grid.symmetric) lo = -std::max(std::fabs(lo), std::fabs(hi)), hi = -lo;
    out[gid] = {st.flo, st.fhi, lo, hi};
  }
  return out;
}

}  // namespace inlierq::inlier
