#include "inlierq/pipeline.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace inlierq::pipeline {
namespace {

// Alternating rounds so that load on the machine hits both files alike; medians of all timed runs.
const char* kScript = R"PY(
import json, statistics, sys, time
try:
    import numpy as np
    import onnxruntime as ort
except Exception as e:
    print(json.dumps({"skipped": "onnxruntime not importable (%s)" % e})); sys.exit(0)
fp32, quant, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = (np.random.RandomState(0).rand(*[d if isinstance(d, int) else 1 for d in i.shape]) * 255).astype(np.float32)
    for _ in range(3):
        s.run(None, {i.name: x})
    return s, {i.name: x}
sessions = [session(fp32), session(quant)]
ms = [[], []]
for r in range(4):
    for k, (s, feed) in enumerate(sessions):
        for _ in range((runs + 3) // 4):
            t0 = time.perf_counter()
            s.run(None, feed)
            ms[k].append((time.perf_counter() - t0) * 1e3)
a, b = statistics.median(ms[0]), statistics.median(ms[1])
print(json.dumps({"fp32_ms": a, "quantized_ms": b, "ratio": b / a, "threads": 1, "runs": len(ms[0]),
                  "onnxruntime": ort.__version__}))
)PY";

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

nlohmann::json ort_latency(const std::string& fp32_model, const std::string& quantized_model, int runs) {
  namespace fs = std::filesystem;
  const char* env = std::getenv("INLIERQ_PYTHON");
  const std::string python = env && *env ? env : "python3";
  std::error_code ec;
  const fs::path script = fs::temp_directory_path(ec) / ("inlierq_ort_latency_" + std::to_string(::getpid()) + ".py");
  if (ec) return {{"skipped", "no temporary directory"}};
  {
    std::ofstream f(script);
    f << kScript;
    if (!f) return {{"skipped", "cannot write " + script.string()}};
  }
  const std::string cmd = shell_quote(python) + " " + shell_quote(script.string()) + " " + shell_quote(fp32_model) + " " +
                          shell_quote(quantized_model) + " " + std::to_string(runs) + " 2>/dev/null";
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    ::pclose(p);
  }
  fs::remove(script, ec);
  std::istringstream lines(out);
  std::string line, last;
  while (std::getline(lines, line))
    if (!line.empty()) last = line;
  try {
    nlohmann::json j = nlohmann::json::parse(last);
    if (j.is_object()) return j;
  } catch (const std::exception&) {
  }
  return {{"skipped", python + " with onnxruntime did not run the files"}};
}

}  // namespace inlierq::pipeline
