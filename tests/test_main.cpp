#include <gtest/gtest.h>

#include "inlierq/runtime.h"
#include <malloc.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>

namespace {
// ATen's global generator is not seeded the same way in every process here (tests drawing from it saw
// new data on every run), so every test starts from the same seed, whatever ran before it.
class SeedEveryTest : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo&) override { at::manual_seed(0); }
};
}  // namespace

int main(int argc, char** argv) {
  // Large tensors otherwise hit this VM's slow page-fault path on every allocation.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  at::set_num_threads(2);
  inlierq::single_threaded_blas();
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedEveryTest);
  return RUN_ALL_TESTS();
}
