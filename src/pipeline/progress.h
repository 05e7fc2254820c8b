#pragma once
// A counted loop's progress, reported through Events::progress; each report is an interruption point.
#include <chrono>
#include <string>

#include "inlierq/interrupt.h"
#include "inlierq/pipeline.h"

namespace inlierq::pipeline {

class ProgressReporter {
 public:
  using clock = std::chrono::steady_clock;
  // unit: what `total` counts, plural ("images", "groups").
  ProgressReporter(const Events& ev, std::string what, size_t total, clock::time_point start = clock::now(),
                   std::string unit = "images")
      : ev_(ev), what_(std::move(what)), unit_(std::move(unit)), total_(total), start_(start) {}
  void update(size_t done) const {
    throw_if_interrupted();  // long loops report progress, so this is where they stop on Ctrl-C
    if (ev_.progress) ev_.progress(what_, done, total_, seconds(), unit_);
  }
  double seconds() const { return std::chrono::duration<double>(clock::now() - start_).count(); }

 private:
  const Events& ev_;
  std::string what_, unit_;
  size_t total_;
  clock::time_point start_;
};

}  // namespace inlierq::pipeline
