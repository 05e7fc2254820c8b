// saliency: InlierQ's per-volume saliency and inlier posterior over images, with the EM fits.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "cli.h"
#include "inlierq/error.h"
#include "inlierq/inlier.h"
#include "inlierq/report.h"
#include "util/atomic_file.h"

namespace inlierq::cli {

namespace {

namespace fs = std::filesystem;

struct SaliencyArgs {
  std::string model, profile, out_dir, preset = "w4a4", device = "cpu";
  std::vector<std::string> images, units;
  inlier::HeatmapLossOptions loss;
  inlier::InlierSplitOptions split;
  bool force = false;
  std::vector<std::function<void()>> named;  // the named flags' resolvers (add_named_option)
};

// Per chosen unit output: IMAGE_STEM.VALUE.png (saliency | inlier posterior over the image) and
// VALUE.histogram.svg (standardised log-saliency histogram with the fitted mixture), plus saliency.json.
int run(SaliencyArgs& a) {
  for (const auto& resolve : a.named) resolve();
  const ModelProfile profile = load_profile(a.profile);
  const auto [g, plan] = prepared_plan(a.model, "", a.preset);
  const auto units = recon::derive_units(g, plan);
  std::vector<std::string> values;
  for (const auto& want : a.units) {
    if (want == "all") {
      for (const auto& u : units) values.insert(values.end(), u.outputs.begin(), u.outputs.end());
      continue;
    }
    bool found = false;
    for (const auto& u : units) {
      if (u.name == want) values.insert(values.end(), u.outputs.begin(), u.outputs.end()), found = true;
      else if (std::find(u.outputs.begin(), u.outputs.end(), want) != u.outputs.end()) values.push_back(want), found = true;
    }
    if (!found) throw Error("--unit '" + want + "' names no reconstruction unit or unit output (see inspect --units)");
  }
  // Default: the outputs of the last 3 units, the feature maps next to the head.
  if (values.empty())
    for (size_t i = units.size() > 3 ? units.size() - 3 : 0; i < units.size(); ++i) values.push_back(units[i].outputs.front());
  std::vector<TensorData> inputs;
  std::vector<InputTransform> transforms;
  for (const auto& f : a.images) {
    Preprocessed p = preprocess(load_image(f), profile.preprocess);
    inputs.push_back(std::move(p.tensor));
    transforms.push_back(p.transform);
  }
  make_output_dir(a.out_dir);
  inlier::HeatmapLossOptions loss = a.loss;
  loss.heatmap = profile.heatmap;
  const auto maps = inlier::saliency_maps(g, values, inputs, loss, a.split, a.device);
  std::vector<std::string> written;
  auto out = [&](const std::string& name) {
    const std::string path = (fs::path(a.out_dir) / name).string();
    ensure_writable(path, a.force);
    written.push_back(path);
    return path;
  };
  nlohmann::json summary = nlohmann::json::object();
  for (const auto& m : maps) {
    std::string safe = m.value;
    for (char& c : safe) if (c == '/' || c == ':' || c == ' ') c = '_';
    write_file_atomically(out(safe + ".histogram.svg"),
                          report::mixture_svg(m.fit, m.value + fmt::format(" ({}×{}, {} images)", m.rows, m.cols, inputs.size())));
    summary[m.value] = m.fit;
    const auto figs = report::saliency_figures({m}, a.images, transforms, 100000);
    for (size_t i = 0; i < figs.size(); ++i)
      save_png(out(fs::path(a.images[i]).stem().string() + "." + safe + ".png"), figs[i].second);
    fmt::print("{} ({}×{}): EM means {:.2f} / {:.2f}, inlier prior {:.2f}, Ashman D {:.2f}{}\n", m.value, m.rows, m.cols,
               m.fit["means"][0].get<double>(), m.fit["means"][1].get<double>(), m.fit["priors"][1].get<double>(),
               m.fit["ashman_d"].get<double>(), m.fit["fallback"].get<bool>() ? " (fallback to uniform weights)" : "");
  }
  write_file_atomically(out("saliency.json"), summary.dump(1) + "\n");
  fmt::print("wrote {} files to {}\n", written.size(), a.out_dir);
  return 0;
}

}  // namespace

Command add_saliency(CLI::App& app) {
  auto a = std::make_shared<SaliencyArgs>();
  auto* sub = app.add_subcommand("saliency", "InlierQ's per-volume saliency and inlier posterior: PNG overlays and EM histograms");
  sub->add_option("model", a->model, "FP32 ONNX model")->required();
  sub->add_option("--profile", a->profile, "built-in profile or JSON path (its heatmap definition is used)")->required();
  sub->add_option("images", a->images, "image files")->required();
  sub->add_option("-o,--output-dir", a->out_dir, "directory for the PNGs, SVGs and saliency.json")->required();
  sub->add_option("--unit", a->units, "unit name or unit output value (repeatable; 'all'); default: the last 3 units");
  sub->add_option("--preset", a->preset, "bit widths used to derive the units (placement)")->default_val("w4a4");
  sub->add_option("--topk", a->loss.topk, "K of the top-K heatmap loss")->default_val(a->loss.topk);
  a->named.push_back(add_named_option(sub, "--aux-loss", a->loss.aux_loss, inlier::aux_loss_names(), "top-K loss"));
  a->named.push_back(add_named_option(sub, "--topk-selection", a->loss.topk_selection, inlier::topk_selection_names(),
                                      "which heatmap entries are the top K"));
  a->named.push_back(add_named_option(sub, "--saliency", a->split.saliency, inlier::saliency_names(), "per-volume saliency"));
  sub->add_option("--device", a->device, "cpu or cuda[:N]");
  sub->add_flag("--force", a->force, "overwrite existing files");
  return {sub, [a] { return run(*a); }};
}

}  // namespace inlierq::cli
