// FP32 forward latency of one model: prints one JSON line with the median and all samples (ms).
// Usage: bench_latency MODEL.onnx --threads N --runs R [--warmup W] [--batch B] [--device cpu|cuda]
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>

#include "inlierq/onnx_io.h"
#include "inlierq/runtime.h"
#include "runtime/executor.h"

int main(int argc, char** argv) {
  inlierq::reexec_with_passive_openmp(argv);  // the same policy as the CLI
  if (argc < 2) {
    std::cerr << "usage: bench_latency MODEL.onnx [--threads N] [--runs R] [--warmup W] [--batch B] [--device D]\n";
    return 2;
  }
  int threads = 1, runs = 20, warmup = 3, batch = 1;
  std::string device = "cpu";
  bool nchw = false;
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--nchw")) nchw = true;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--runs")) runs = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--batch")) batch = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--device")) device = argv[i + 1];
  }
  try {
    inlierq::init_runtime(threads);
    auto g = inlierq::load_onnx(argv[1]);
    inlierq::rt::ExecutorOptions eo;
    eo.device = at::Device(device);
    eo.check_finite = false;
    eo.channels_last = !nchw;
    inlierq::rt::Executor ex(g, eo);
    std::vector<int64_t> shape;
    for (auto& d : g.inputs.at(0).shape) shape.push_back(d.value > 0 ? d.value : 1);
    shape[0] = batch;
    at::Tensor x = (at::rand(shape) * 255).to(eo.device);
    auto sync = [&] {
      if (eo.device.is_cuda()) at::Tensor().defined(), at::empty({1}, eo.device).cpu();
    };
    for (int i = 0; i < warmup; ++i) ex.run_single(x);
    std::vector<double> ms;
    auto cpu_ms = [] {
      rusage u;
      getrusage(RUSAGE_SELF, &u);
      return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e3 + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e3;
    };
    const double cpu0 = cpu_ms();
    for (int i = 0; i < runs; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      auto out = ex.run_single(x);
      if (eo.device.is_cuda()) out[0].cpu();
      sync();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / batch);
    }
    const double cpu_per_run = (cpu_ms() - cpu0) / runs / batch;
    std::map<std::string, double> profile;
    inlierq::rt::RunOptions ro;
    ro.profile = &profile;
    ro.profile_by_node = std::getenv("INLIERQ_PROFILE_NODES") != nullptr;
    for (int i = 0; i < runs; ++i) ex.run_single(x, ro);
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    double median = sorted[sorted.size() / 2];
    nlohmann::json j{{"model", argv[1]}, {"threads", at::get_num_threads()}, {"batch", batch}, {"device", device},
                     {"median_ms", median}, {"cpu_ms_per_run", cpu_per_run}, {"samples_ms", ms}};
    for (auto& [op, t] : profile) j["profile_ms_per_run"][op] = t / runs;
    std::cout << j.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
