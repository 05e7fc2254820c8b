#pragma once
// Torch-free facade over the executor, for the CLI and for embedding.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inlierq/graph.h"

namespace inlierq {

struct SessionOptions {
  std::string device = "cpu";  // "cpu" or "cuda[:N]"
  int threads = 0;             // 0 = library default
};

class Session {
 public:
  Session(const Graph& g, const SessionOptions& opts = {});
  ~Session();
  std::map<std::string, TensorData> run(const std::map<std::string, TensorData>& inputs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

bool op_supported(const std::string& op_type, const std::string& domain = "");
std::vector<std::string> supported_ops();
// Process-wide set-up: allocator tuning, thread count (0 keeps the default), single_threaded_blas().
void init_runtime(int threads);
// OpenBLAS (when LibTorch uses it) keeps one thread: parallelism comes from OpenMP and the reconstruction's
// shards, not from a second pool that spins.
void single_threaded_blas();
// OpenMP worker threads spin while idle by default; on a machine shared with other jobs that spinning
// starves them and makes 2-thread runs many times slower. The wait policy is read when the OpenMP
// runtime loads, so when OMP_WAIT_POLICY is unset this sets it to PASSIVE and re-executes the
// program. Call first thing in main(); returns only if no re-exec was needed or it failed.
void reexec_with_passive_openmp(char** argv);

struct ModelSummary {
  std::vector<ValueInfo> inputs, outputs;
  std::map<std::string, int> op_histogram;
  int64_t parameters = 0;  // elements of float initializers
  int64_t macs = 0;        // Conv/ConvTranspose/Gemm/MatMul multiply-accumulates, batch 1
  std::vector<const Node*> unsupported;
};
ModelSummary summarize(const Graph& g);
// Multiply-accumulates of one Conv/ConvTranspose/Gemm/MatMul node at batch 1 (0 for other ops or unknown shapes).
int64_t node_macs(const Graph& g, const Node& n);

}  // namespace inlierq
