#pragma once
// Runs the shards of a reconstruction mini-batch on several threads, each with one intra-op thread.
// ATen's intra-op parallelism barely helps at reconstruction sizes (many small convolutions and
// elementwise ops: FastestDet's FP forward + backward of a unit is 1.1× faster on 2 threads than on 1),
// whereas independent shards scale with the cores. The caller (thread 0) runs shard 0 itself.
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace inlierq::recon {

class ShardPool {
 public:
  // `threads` in total, the calling thread included; every worker calls `init` once when it starts.
  ShardPool(int threads, std::function<void()> init);
  ~ShardPool();
  ShardPool(const ShardPool&) = delete;
  ShardPool& operator=(const ShardPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  // fn(k) for k in [0, n); shard k runs on thread k mod threads(). Rethrows the first exception.
  void run(int n, const std::function<void(int)>& fn);

 private:
  void work(int id);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_ = 0;
  long generation_ = 0;
  int pending_ = 0;
  int ready_ = 0;
  bool stop_ = false;
  std::function<void()> init_;
  std::vector<std::exception_ptr> errors_;
};

}  // namespace inlierq::recon
