// inlierq command-line interface: one file per command (cmd_*.cpp); this file registers them, parses the
// command line and turns exceptions into exit statuses (README, "Exit statuses").
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <vector>

#include "cli.h"
#include "inlierq/error.h"
#include "inlierq/interrupt.h"
#include "inlierq/runtime.h"

using namespace inlierq;

int main(int argc, char** argv) {
  reexec_with_passive_openmp(argv);
  install_interrupt_handlers();
  CLI::App app{"inlierq: post-training quantization for object detectors"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (0 = ATen's default, which is 1 on some VMs); reconstruction runs its shards on this many threads (0 = every core)");
  const std::vector<cli::Command> commands = {cli::add_inspect(app), cli::add_infer(app),    cli::add_eval(app),
                                              cli::add_detect(app),  cli::add_compare(app), cli::add_saliency(app),
                                              cli::add_quantize(app, threads)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    init_runtime(threads);
    for (const auto& c : commands)
      if (*c.sub) return c.run();
  } catch (const Interrupted& e) {
    // 128 + the signal number, as a shell reports a process the signal killed.
    if (e.outputs_written()) fmt::print(stderr, "{}\n", e.what());
    else fmt::print(stderr, "{}; nothing was written (existing outputs are untouched)\n", e.what());
    return 128 + e.signal();
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    // Only the first line: c10::Error appends a C++ backtrace that would bury the message.
    const std::string what = e.what();
    fmt::print(stderr, "internal error: {}\n", what.substr(0, what.find('\n')));
    return 3;
  }
  return 0;
}
