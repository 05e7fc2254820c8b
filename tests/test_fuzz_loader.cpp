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
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"
#include "test_helpers.h"

using namespace inlierq;

namespace {

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}

// Offsets favour the first 64 KiB and the last 4 KiB: the graph's nodes are serialised before the
// initializers and its inputs/outputs after them, so uniform offsets would mostly hit weight bytes.
size_t pick_offset(std::mt19937& rng, size_t size) {
  if (size == 0) return 0;
  const int region = static_cast<int>(rng() % 10);
  if (region < 5) return rng() % std::min<size_t>(size, 64 << 10);
  if (region < 7) return size - 1 - rng() % std::min<size_t>(size, 4 << 10);
  return rng() % size;
}

std::string mutate(std::string s, std::mt19937& rng, std::string& log) {
  const int count = 1 + static_cast<int>(rng() % 3);
  for (int k = 0; k < count && !s.empty(); ++k) {
    const size_t at = pick_offset(rng, s.size());
    const size_t len = 1 + rng() % 16;
    switch (rng() % 5) {
      case 0:
        s[at] = static_cast<char>(s[at] ^ (1u << (rng() % 8)));
        log += " flip@" + std::to_string(at);
        break;
      case 1:
        s.resize(at);
        log += " truncate@" + std::to_string(at);
        break;
      case 2: {
        std::string ins(len, '\0');
        for (auto& c : ins) c = static_cast<char>(rng());
        s.insert(at, ins);
        log += " insert" + std::to_string(len) + "@" + std::to_string(at);
        break;
      }
      case 3:
        s.erase(at, len);
        log += " delete" + std::to_string(len) + "@" + std::to_string(at);
        break;
      default:
        for (size_t i = at; i < std::min(s.size(), at + len); ++i) s[i] = static_cast<char>(rng());
        log += " overwrite" + std::to_string(len) + "@" + std::to_string(at);
    }
  }
  return s;
}

// Field-level edits of the parsed model: byte mutants mostly die in protobuf framing, these reach the
// checker, shape inference, our own graph validation and the kernels' attribute handling.
std::string mutate_structure(const std::string& bytes, std::mt19937& rng, std::string& log) {
  onnx::ModelProto model;
  model.ParseFromString(bytes);
  auto* g = model.mutable_graph();
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint32_t>(std::max(n, 1))); };
  auto any_value = [&]() -> std::string {
    const auto& n = g->node(pick(g->node_size()));
    return n.output_size() ? n.output(0) : n.op_type();
  };
  const int count = 1 + pick(3);
  for (int k = 0; k < count; ++k) {
    const int idx = pick(g->node_size());
    auto* n = g->mutable_node(idx);
    switch (pick(10)) {
      case 0:
        n->set_op_type(g->node(pick(g->node_size())).op_type());
        log += " optype(" + n->name() + ")=" + n->op_type();
        break;
      case 1:
        if (n->input_size()) n->set_input(pick(n->input_size()), pick(4) ? any_value() : "");
        log += " input(" + n->name() + ")";
        break;
      case 2:
        if (n->output_size()) n->set_output(pick(n->output_size()), any_value());
        log += " output(" + n->name() + ")";
        break;
      case 3:
        log += " delete(" + n->name() + ")";
        g->mutable_node()->DeleteSubrange(idx, 1);
        break;
      case 4: {
        if (!n->attribute_size()) break;
        auto* a = n->mutable_attribute(pick(n->attribute_size()));
        const int64_t vals[] = {-1, 0, 1, 2, 3, 7, 1 << 20, -(int64_t(1) << 40)};
        const int64_t v = vals[pick(8)];
        if (a->ints_size()) a->set_ints(pick(a->ints_size()), v);
        else if (pick(2)) a->add_ints(v);
        else a->set_i(v);
        if (pick(4) == 0) a->set_f(std::vector<float>{-1.f, 0.f, 1e30f, NAN}[pick(4)]);
        log += " attr(" + n->name() + "." + a->name() + ")=" + std::to_string(v);
        break;
      }
      case 5:
        if (n->attribute_size()) n->mutable_attribute()->DeleteSubrange(pick(n->attribute_size()), 1);
        log += " dropattr(" + n->name() + ")";
        break;
      case 6: {
        if (!g->initializer_size()) break;
        auto* t = g->mutable_initializer(pick(g->initializer_size()));
        if (t->dims_size() && pick(2)) t->set_dims(pick(t->dims_size()), pick(5) - 1);
        else t->set_data_type(1 + pick(16));
        log += " init(" + t->name() + ")";
        break;
      }
      case 7: {
        auto* shape = g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
        if (shape->dim_size()) shape->mutable_dim(pick(shape->dim_size()))->set_dim_value(pick(5) - 1);
        else shape->add_dim()->set_dim_value(1);
        log += " inputdim";
        break;
      }
      case 8:
        model.mutable_opset_import(0)->set_version(pick(20));
        log += " opset=" + std::to_string(model.opset_import(0).version());
        break;
      default: {
        auto* m = g->mutable_node()->Mutable(pick(g->node_size()));
        std::swap(*n, *m);
        log += " swap(" + n->name() + "," + m->name() + ")";
      }
    }
    if (!g->node_size()) break;
  }
  return model.SerializeAsString();
}

// One forward pass on random data of the declared input shapes; false when the shapes are unusable.
bool run_once(const Graph& g) {
  // Mutated pads or sizes can make shape inference promise tensors of many GB; running those would test
  // the machine's memory, not the code.
  for (const auto& [_, v] : g.value_info) {
    double numel = 1;
    for (const auto& d : v.shape) numel *= std::max<int64_t>(d.value, 1);
    if (numel > 5e7) return false;
  }
  rt::Executor ex(g);
  rt::TensorMap inputs;
  for (const auto& in : g.inputs) {
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (const auto& d : in.shape) {
      shape.push_back(d.value > 0 ? d.value : 1);
      numel *= shape.back();
      if (numel > (1 << 20)) return false;  // a mutated dimension; not worth the memory
    }
    inputs[in.name] = in.dtype == DType::Float ? at::rand(shape) : at::zeros(shape, rt::to_scalar_type(in.dtype));
  }
  ex.run(inputs);
  return true;
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
  std::mt19937 rng(static_cast<uint32_t>(env_int("INLIERQ_FUZZ_SEED", 20240611)));

  std::map<std::string, int> reasons;
  int loaded = 0, rejected = 0, run_attempts = 0, runs_ok = 0, run_skipped = 0, run_errors = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < mutants; ++i) {
    const size_t m = static_cast<size_t>(i) % originals.size();
    std::string log;
    const bool structural = i % 4 == 3;
    const std::string bytes = structural ? mutate_structure(originals[m], rng, log) : mutate(originals[m], rng, log);
    if (i < first) continue;
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
      (run_once(g) ? runs_ok : run_skipped)++;
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
