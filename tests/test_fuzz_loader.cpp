// Feeds deterministically mutated copies (three in four byte-level, one in four field-level) of the shared models to the loader (and some of the survivors
// to the executor). Each must load or throw inlierq::Error; any other exception, or a crash, fails.
// INLIERQ_FUZZ_MUTANTS / _RUNS / _SEED override the counts and the seed for longer local runs;
// INLIERQ_FUZZ_VERBOSE=1 prints each mutant before it is tried, INLIERQ_FUZZ_FIRST=N skips to mutant N.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "inlierq/error.h"
#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"
#include "fuzz_mutators.h"
#include "test_helpers.h"

using namespace inlierq;

namespace {

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}

}  // namespace

TEST(FuzzLoader, MutatedModelsLoadOrThrowError) {
  const std::vector<std::string> names = {"yolox_nano.onnx", "nanodet_m_416.onnx", "fastestdet_352.onnx"};
  std::vector<std::string> originals;
  for (const auto& n : names) {
    std::ifstream f(test::model_path(n), std::ios::binary);
    if (!f) GTEST_SKIP() << "shared model " << test::model_path(n) << " not found";
    std::ostringstream ss;
    ss << f.rdbuf();
    originals.push_back(ss.str());
  }
  const int mutants = env_int("INLIERQ_FUZZ_MUTANTS", 2000);
  const int max_runs = env_int("INLIERQ_FUZZ_RUNS", 12);
  const bool verbose = env_int("INLIERQ_FUZZ_VERBOSE", 0) != 0;
  const int first = env_int("INLIERQ_FUZZ_FIRST", 0);  // replays one mutant of a long run
  const auto seed = static_cast<uint32_t>(env_int("INLIERQ_FUZZ_SEED", 20240611));

  std::map<std::string, int> reasons;
  int loaded = 0, rejected = 0, run_attempts = 0, runs_ok = 0, run_skipped = 0, run_errors = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = first; i < mutants; ++i) {
    const size_t m = static_cast<size_t>(i) % originals.size();
    std::string log;
    const bool structural = i % 4 == 3;
    auto rng = fuzz::mutant_rng(seed, static_cast<uint64_t>(i));
    const std::string bytes =
        structural ? fuzz::mutate_model_structure(originals[m], rng, log) : fuzz::mutate_bytes(originals[m], rng, log);
    const std::string what = "mutant " + std::to_string(i) + " of " + names[m] + ":" + log;
    if (verbose) std::fprintf(stderr, "%s\n", what.c_str());  // the last line names a crashing mutant
    Graph g;
    try {
      g = load_onnx_bytes(bytes, names[m]);
      summarize(g);  // what `inspect` does next
      ++loaded;
    } catch (const Error& e) {
      ++rejected;
      std::string msg = e.what();
      msg = msg.substr(names[m].size() + 2, 40);
      reasons[msg.substr(0, msg.find_first_of(":'(0123456789"))]++;
      continue;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": loader threw a non-inlierq exception: " << e.what();
      continue;
    } catch (...) {
      ADD_FAILURE() << what << ": loader threw a non-std exception";
      continue;
    }
    // Surviving byte-level mutants mostly differ only in weight values; field-level ones reach the kernels.
    if (run_attempts >= (structural ? max_runs : max_runs / 4)) continue;
    ++run_attempts;
    try {
      (fuzz::run_once(g) ? runs_ok : run_skipped)++;
    } catch (const Error& e) {
      ++run_errors;
      if (verbose) std::fprintf(stderr, "  run: %s\n", e.what());
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": executor threw a non-inlierq exception: " << e.what();
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("fuzz: %d mutants in %.1f s: %d rejected, %d loaded; executor on %d: %d ran, %d skipped (huge shapes), "
              "%d inlierq::Error\n", mutants, secs, rejected, loaded, run_attempts, runs_ok, run_skipped, run_errors);
  for (const auto& [r, c] : reasons) std::printf("  %5d %s\n", c, r.c_str());
  EXPECT_GT(rejected, 0);
  EXPECT_GT(loaded, 0);
}
