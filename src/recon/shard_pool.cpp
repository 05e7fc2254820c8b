#include "recon/shard_pool.h"

namespace inlierq::recon {

ShardPool::ShardPool(int threads, std::function<void()> init) : init_(std::move(init)) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  // Every worker's init has run before the first task (init may touch process-wide settings).
  std::unique_lock<std::mutex> lk(mu_);
  done_.wait(lk, [&] { return ready_ == static_cast<int>(workers_.size()); });
}

ShardPool::~ShardPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ShardPool::work(int id) {
  if (init_) init_();
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++ready_;
  }
  done_.notify_all();
  long seen = 0;
  for (;;) {
    const std::function<void(int)>* fn;
    int n;
    {
      std::unique_lock<std::mutex> lk(mu_);
      start_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_, n = n_;
    }
    for (int k = id; k < n; k += threads()) {
      try {
        (*fn)(k);
      } catch (...) {
        errors_[static_cast<size_t>(k)] = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_.notify_all();
    }
  }
}

void ShardPool::run(int n, const std::function<void(int)>& fn) {
  errors_.assign(static_cast<size_t>(n), nullptr);
  if (!workers_.empty() && n > 1) {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn, n_ = n, pending_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  const bool parallel = !workers_.empty() && n > 1;
  if (parallel) start_.notify_all();
  for (int k = 0; k < n; k += parallel ? threads() : 1) {
    try {
      fn(k);
    } catch (...) {
      errors_[static_cast<size_t>(k)] = std::current_exception();
    }
  }
  if (parallel) {
    std::unique_lock<std::mutex> lk(mu_);
    done_.wait(lk, [&] { return pending_ == 0; });
  }
  for (auto& e : errors_)
    if (e) std::rethrow_exception(e);
}

}  // namespace inlierq::recon
