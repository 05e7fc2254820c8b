#include "cli.h"

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <memory>

#include "inlierq/detect.h"
#include "inlierq/error.h"
#include "inlierq/onnx_io.h"
#include "inlierq/transforms.h"

namespace inlierq::cli {

std::pair<Graph, quant::QuantPlan> prepared_plan(const std::string& model, const std::string& profile_name,
                                                 const std::string& preset, bool quantize_head,
                                                 const std::vector<std::string>& exclude, const std::string& layout) {
  pipeline::QuantizeJob job;
  job.preset = preset;
  job.layout = quant::parse_layout(layout);
  job.quantize_head = quantize_head;
  job.exclude = exclude;
  if (!profile_name.empty()) load_profile(profile_name);
  Graph g = prepare_for_quantization(load_onnx(model), model);
  quant::QuantPlan plan = quant::derive_plan(g, pipeline::placement_options(job));
  return {std::move(g), std::move(plan)};
}

std::string profile_help() {
  std::string help = "built-in profile (";
  for (const auto& n : builtin_profile_names()) help += (help.back() == '(' ? "" : ", ") + n;
  return help + ") or JSON path (docs/PROFILES.md)";
}

Detector open_detector(const std::string& model, const std::string& profile, const std::string& device) {
  DetectorOptions opts;
  opts.session.device = device;
  return Detector(load_onnx(model), load_profile(profile), opts);
}

void ProgressPrinter::operator()(const std::string& what, size_t done, size_t total, double elapsed, const std::string& unit) {
  if (!started_ || what != what_) {
    what_ = what, next_log_ = 0, last_ = {}, started_ = true;
    tty_ = isatty(2) != 0;
  }
  const auto now = std::chrono::steady_clock::now();
  if (done != total) {
    if (tty_ && now - last_ < std::chrono::milliseconds(250)) return;
    if (!tty_ && done < next_log_) return;
  }
  last_ = now;
  next_log_ = done + std::max<size_t>(1, total / 10);
  const double rate = done / std::max(elapsed, 1e-9);
  fmt::print(stderr, "{}[{}] {}/{} {}, {:.1f} {}/s, ETA {:.0f} s{}", tty_ ? "\r" : "", what, done, total, unit, rate,
             unit == "images" ? "img" : unit,
             done ? (total - done) / rate : 0.0, tty_ ? "   " : "\n");
  if (tty_ && done == total) fmt::print(stderr, "\n");
}

pipeline::Events console_events() {
  pipeline::Events ev;
  auto printer = std::make_shared<ProgressPrinter>();
  ev.progress = [printer](const std::string& what, size_t done, size_t total, double elapsed, const std::string& unit) {
    (*printer)(what, done, total, elapsed, unit);
  };
  const bool tty = isatty(2) != 0;
  ev.log = [tty](const std::string& line) { fmt::print(stderr, "{}{}\n", tty ? "\r\033[K" : "", line); };
  ev.warning = [](const std::string& line) { fmt::print(stderr, "warning: {}\n", line); };
  return ev;
}

}  // namespace inlierq::cli
