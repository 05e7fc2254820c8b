#pragma once
// What the command files share: registration, progress printing and small output helpers.
#include <CLI/CLI.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "inlierq/names.h"
#include "inlierq/pipeline.h"
#include "util/atomic_file.h"  // make_output_dir

namespace inlierq::cli {

// A registered subcommand and what runs when it was given; `run` returns the exit status.
struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;
};

Command add_inspect(CLI::App& app);
Command add_infer(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_detect(CLI::App& app);
Command add_compare(CLI::App& app);
Command add_saliency(CLI::App& app);
Command add_quantize(CLI::App& app, const int& threads);

// The prepared graph (BatchNorm folded, opset converted) and its quantization plan, for inspect --plan /
// --units and saliency. The profile name is only validated: placement is derived from the graph.
std::pair<Graph, quant::QuantPlan> prepared_plan(const std::string& model, const std::string& profile_name,
                                                 const std::string& preset, bool quantize_head = false,
                                                 const std::vector<std::string>& exclude = {},
                                                 const std::string& layout = "auto");

// A flag whose values are the names of `table`; --help lists them after `help`. The text is turned into `target`
// by the returned resolver, which the command calls first: an unknown name is an inlierq::Error naming the flag and
// the table's names (exit status 1, as every other bad option).
template <class E>
std::function<void()> add_named_option(CLI::App* sub, const std::string& flag, E& target, const NameTable<E>& table,
                                       const std::string& help) {
  auto text = std::make_shared<std::string>(table.name(target));
  sub->add_option(flag, *text, help + " (" + table.list() + ")")->default_val(*text);
  return [text, &target, &table, flag] { target = table.parse(*text, flag); };
}

// "built-in profile (yolox, ...) or JSON path (docs/PROFILES.md)"
std::string profile_help();
// The FP32 (or QDQ) model with its profile, for eval and detect.
Detector open_detector(const std::string& model, const std::string& profile, const std::string& device);

// Progress lines on stderr: on a terminal one line redrawn a few times per second, in a log one line per
// ~10 % of each loop; what, how far, rate, ETA.
class ProgressPrinter {
 public:
  void operator()(const std::string& what, size_t done, size_t total, double elapsed, const std::string& unit = "images");

 private:
  std::string what_;
  std::chrono::steady_clock::time_point last_{};
  size_t next_log_ = 0;
  bool tty_ = false, started_ = false;
};

// Events that print progress, status lines and warnings to stderr (what every long command shows).
pipeline::Events console_events();

}  // namespace inlierq::cli
