#pragma once
// Cached activations over the calibration set, within a memory budget (internal: exposes ATen).
#include <ATen/ATen.h>

#include <map>
#include <string>

namespace inlierq::recon {

// Holds whole-calibration-set tensors [N, ...] by key. A tensor that does not fit the budget in float32
// is kept in float16; one that does not fit in float16 either goes to a file in the spill directory.
// get() always returns float32 on the CPU.
class ActivationStore {
 public:
  ActivationStore(size_t budget_bytes, std::string spill_dir);
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  // half: store float16 even when float32 would fit (weights that tolerate 3 significant digits).
  void put(const std::string& key, const at::Tensor& t, bool half = false);
  at::Tensor get(const std::string& key) const;
  bool has(const std::string& key) const { return entries_.count(key) != 0; }
  void erase(const std::string& key);
  void clear();

  size_t bytes_in_memory() const { return bytes_; }
  size_t peak_bytes_in_memory() const { return peak_; }
  size_t spilled_bytes() const { return spilled_total_; }
  size_t half_entries() const { return halves_; }

 private:
  struct Entry {
    at::Tensor t;       // undefined when spilled
    std::string file;   // spill file (float16 raw)
    std::vector<int64_t> shape;
    size_t bytes = 0;   // in memory
  };
  size_t budget_;
  std::string spill_dir_;
  bool own_spill_dir_ = false;
  std::map<std::string, Entry> entries_;
  size_t bytes_ = 0, peak_ = 0, spilled_total_ = 0, halves_ = 0;
  size_t next_file_ = 0;
};

}  // namespace inlierq::recon
