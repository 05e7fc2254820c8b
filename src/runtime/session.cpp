#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>

#include <optional>

#include "inlierq/error.h"
#include "inlierq/runtime.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq {

struct Session::Impl {
  std::unique_ptr<rt::Executor> exec;
};

namespace {
at::Device parse_device(const std::string& d) {
  std::optional<at::Device> dev;
  try {
    dev.emplace(d);
  } catch (const c10::Error&) {
  }
  // at::Device also parses xla, mps, meta, ...; the executor only knows how to run on these two.
  if (!dev || !(dev->is_cpu() || dev->is_cuda())) throw Error("unknown device '" + d + "' (use cpu or cuda[:N])");
  if (dev->is_cuda() && !at::hasCUDA()) throw Error("device '" + d + "' requested but this build has no CUDA support or no GPU is visible");
  if (dev->is_cuda() && dev->has_index() && dev->index() >= static_cast<int>(at::getNumGPUs()))
    throw Error("device '" + d + "' requested but only " + std::to_string(static_cast<int>(at::getNumGPUs())) + " GPU(s) are visible");
  return *dev;
}
}  // namespace

Session::Session(const Graph& g, const SessionOptions& opts) : impl_(std::make_unique<Impl>()) {
  if (opts.threads > 0) at::set_num_threads(opts.threads);
  rt::ExecutorOptions eo;
  eo.device = parse_device(opts.device);
  impl_->exec = std::make_unique<rt::Executor>(g, eo);
}

Session::~Session() = default;

std::map<std::string, TensorData> Session::run(const std::map<std::string, TensorData>& inputs) {
  rt::TensorMap in;
  for (const auto& [name, t] : inputs) {
    try {
      in[name] = rt::to_aten(t);
    } catch (const Error& e) {
      throw Error("input '" + name + "': " + e.what());
    }
  }
  auto out = impl_->exec->run(in);
  std::map<std::string, TensorData> result;
  for (const auto& o : impl_->exec->graph().outputs) result[o.name] = rt::from_aten(out.at(o.name));
  return result;
}

bool op_supported(const std::string& op_type, const std::string& domain) {
  return domain.empty() && rt::OpRegistry::instance().find(op_type) != nullptr;
}

std::vector<std::string> supported_ops() { return rt::OpRegistry::instance().op_types(); }

void init_runtime(int threads) {
  // glibc's default thresholds make every large tensor allocation page-fault anew on this class of VM.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (threads > 0) at::set_num_threads(threads);
  single_threaded_blas();
}

void single_threaded_blas() {
  // Debian's LibTorch runs the GEMMs of its non-oneDNN convolutions (1×1 convs at one intra-op thread, and
  // every conv backward) through OpenBLAS, whose own pthread pool ignores at::set_num_threads and spins
  // (sched_yield) between calls. On 2 cores it took the second core from everything else: --threads 1
  // ran at 177 % CPU, and two reconstruction shards calling it at once barely overlapped
  // (docs/BENCHMARKS.md, "Cost of a reconstruction iteration").
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(1);
}

void reexec_with_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // on failure, carry on with the default policy
}

}  // namespace inlierq
