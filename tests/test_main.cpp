#include <gtest/gtest.h>
#include <malloc.h>

#include <ATen/Parallel.h>

int main(int argc, char** argv) {
  // Large tensors otherwise hit this VM's slow page-fault path on every allocation.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  at::set_num_threads(2);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
