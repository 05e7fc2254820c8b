#pragma once
#include <string>

namespace inlierq {
// Writes to "<path>.tmp.<pid>" and renames it over path, so an interrupted run never leaves a torn file
// and a failed write (full disk, file-size limit) leaves the previous file as it was; the error says why.
void write_file_atomically(const std::string& path, const std::string& bytes);
// Throws inlierq::Error if path exists and overwrite is false.
void ensure_writable(const std::string& path, bool overwrite);
// Throws inlierq::Error, before any long work, when path's folder is missing or not writable.
void ensure_output_folder(const std::string& path);
// Creates `dir` and its parents; Error naming it when it cannot be created or is not a directory.
void make_output_dir(const std::string& dir);

// An exclusive advisory lock (flock) on "<path>.lock" for as long as the object lives, so two runs cannot
// write the same outputs at once; the second gets an error naming the first one's pid.
class OutputLock {
 public:
  explicit OutputLock(const std::string& path);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  std::string lock_path_;
  int fd_ = -1;
};
}  // namespace inlierq
