#include "recon/activation_store.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "inlierq/error.h"

namespace fs = std::filesystem;

namespace inlierq::recon {

ActivationStore::ActivationStore(size_t budget_bytes, std::string spill_dir) : budget_(budget_bytes), spill_dir_(std::move(spill_dir)) {}

ActivationStore::~ActivationStore() {
  clear();
  if (own_spill_dir_) {
    std::error_code ec;
    fs::remove_all(spill_dir_, ec);
  }
}

void ActivationStore::put(const std::string& key, const at::Tensor& t_in, bool prefer_half) {
  erase(key);
  at::Tensor t = t_in.detach().to(at::kCPU).to(at::kFloat).contiguous();
  Entry e;
  e.shape = t.sizes().vec();
  const size_t full = static_cast<size_t>(t.numel()) * 4, half = full / 2;
  if (!prefer_half && bytes_ + full <= budget_) {
    // Own storage when t is a view into a larger tensor (which would otherwise stay alive).
    e.t = t.storage().nbytes() > full ? t.clone() : t;
    e.bytes = full;
  } else if (bytes_ + half <= budget_) {
    e.t = t.to(at::kHalf);
    e.bytes = half;
    ++halves_;
  } else {
    if (spill_dir_.empty()) {
      spill_dir_ = (fs::temp_directory_path() / ("inlierq-cache-" + std::to_string(::getpid()))).string();
      own_spill_dir_ = true;
    }
    std::error_code ec;
    fs::create_directories(spill_dir_, ec);
    e.file = (fs::path(spill_dir_) / ("act" + std::to_string(next_file_++) + ".f16")).string();
    const at::Tensor h = t.to(at::kHalf).contiguous();
    std::ofstream f(e.file, std::ios::binary);
    f.write(static_cast<const char*>(h.data_ptr()), static_cast<std::streamsize>(h.numel() * 2));
    if (!f) throw Error("cannot write activation cache file '" + e.file + "' (disk full? set --cache-dir)");
    spilled_total_ += half;
  }
  bytes_ += e.bytes;
  peak_ = std::max(peak_, bytes_);
  entries_[key] = std::move(e);
}

at::Tensor ActivationStore::get(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw Error("activation cache has no value '" + key + "'");
  const Entry& e = it->second;
  if (e.t.defined()) return e.t.scalar_type() == at::kFloat ? e.t : e.t.to(at::kFloat);
  at::Tensor h = at::empty(e.shape, at::TensorOptions().dtype(at::kHalf));
  std::ifstream f(e.file, std::ios::binary);
  f.read(static_cast<char*>(h.data_ptr()), static_cast<std::streamsize>(h.numel() * 2));
  if (!f) throw Error("cannot read activation cache file '" + e.file + "'");
  return h.to(at::kFloat);
}

void ActivationStore::erase(const std::string& key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  bytes_ -= it->second.bytes;
  if (!it->second.file.empty()) std::remove(it->second.file.c_str());
  entries_.erase(it);
}

void ActivationStore::clear() {
  while (!entries_.empty()) erase(entries_.begin()->first);
}

}  // namespace inlierq::recon
