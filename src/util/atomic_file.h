#pragma once
#include <string>

namespace inlierq {
// Writes to "<path>.tmp.<pid>" and renames it over path, so an interrupted run never leaves a torn file.
void write_file_atomically(const std::string& path, const std::string& bytes);
// Throws inlierq::Error if path exists and overwrite is false.
void ensure_writable(const std::string& path, bool overwrite);
}  // namespace inlierq
