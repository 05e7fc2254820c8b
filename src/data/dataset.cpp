#include "inlierq/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "inlierq/error.h"
#include "inlierq/image.h"

namespace fs = std::filesystem;

namespace inlierq {
namespace {

bool has_image_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp";
}

// Candidate image files of dir (or dir itself when it is a file), sorted by path.
std::vector<std::string> list_image_files(const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (ec || !fs::exists(st)) throw Error("image folder '" + dir + "' does not exist");
  std::vector<std::string> candidates;
  if (fs::is_regular_file(st)) {
    candidates.push_back(dir);
    return candidates;
  }
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
  if (ec) throw Error("cannot list image folder '" + dir + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw Error("cannot list image folder '" + dir + "': " + ec.message());
    std::error_code fe;
    if (it->is_regular_file(fe) && has_image_extension(it->path())) candidates.push_back(it->path().string());
  }
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

void throw_if_empty(const ImageFolder& folder, bool had_candidates, const char* what) {
  if (!folder.paths.empty()) return;
  std::string msg = "image folder '" + folder.root + "' contains no " + what + " image";
  if (!had_candidates) msg += " (looked for .jpg, .jpeg, .png, .bmp, recursively)";
  for (size_t i = 0; i < folder.warnings.size() && i < 3; ++i) msg += "\n  skipped " + folder.warnings[i];
  if (folder.warnings.size() > 3) msg += "\n  ... and " + std::to_string(folder.warnings.size() - 3) + " more";
  throw Error(msg);
}

}  // namespace

ImageFolder scan_image_folder(const std::string& dir, size_t limit) {
  ImageFolder folder;
  folder.root = dir;
  const std::vector<std::string> candidates = list_image_files(dir);
  for (const auto& p : candidates) {
    if (limit && folder.paths.size() >= limit) break;
    if (std::string why = probe_image(p); why.empty())
      folder.paths.push_back(p);
    else
      folder.warnings.push_back(p + ": " + why);
  }
  throw_if_empty(folder, !candidates.empty(), "readable");
  return folder;
}

ImageFolder load_image_folder(const std::string& dir, size_t count,
                              const std::function<void(size_t, const std::string&, Image&&)>& on_image) {
  ImageFolder folder;
  folder.root = dir;
  const std::vector<std::string> candidates = list_image_files(dir);
  for (const auto& p : candidates) {
    if (count && folder.paths.size() >= count) break;
    Image img;
    try {
      img = load_image(p);
    } catch (const Error& e) {
      folder.warnings.push_back(e.what());
      continue;
    }
    folder.paths.push_back(p);
    on_image(folder.paths.size() - 1, p, std::move(img));
  }
  throw_if_empty(folder, !candidates.empty(), "decodable");
  return folder;
}

std::string yolo_label_path(const std::string& image_path) {
  std::string p = image_path;
  const std::string from = "/images/", to = "/labels/";
  if (const size_t pos = p.rfind(from); pos != std::string::npos) p.replace(pos, from.size(), to);
  else if (p.rfind("images/", 0) == 0) p.replace(0, from.size() - 1, to.substr(1));
  return fs::path(p).replace_extension(".txt").string();
}

std::vector<LabeledBox> load_yolo_labels(const std::string& label_path, int image_width, int image_height) {
  std::vector<LabeledBox> boxes;
  std::ifstream f(label_path);
  if (!f) {
    std::error_code ec;
    if (!fs::exists(label_path, ec)) return boxes;
    throw Error("cannot open label file '" + label_path + "'");
  }
  std::string line;
  for (int line_no = 1; std::getline(f, line); ++line_no) {
    std::istringstream ss(line);
    std::vector<double> v;
    std::string tok;
    auto bad = [&](const std::string& why) {
      return Error("label file '" + label_path + "' line " + std::to_string(line_no) + ": " + why + ": '" + line + "'");
    };
    while (ss >> tok) {
      char* end = nullptr;
      const double d = std::strtod(tok.c_str(), &end);
      if (*end || !std::isfinite(d)) throw bad("not a number '" + tok + "'");
      v.push_back(d);
    }
    if (v.empty()) continue;
    if (v[0] < 0 || v[0] != std::floor(v[0])) throw bad("class must be a non-negative integer");
    LabeledBox b;
    b.class_id = static_cast<int>(v[0]);
    if (v.size() == 5) {
      b.x = static_cast<float>((v[1] - v[3] / 2) * image_width);
      b.y = static_cast<float>((v[2] - v[4] / 2) * image_height);
      b.w = static_cast<float>(v[3] * image_width);
      b.h = static_cast<float>(v[4] * image_height);
    } else if (v.size() >= 7 && v.size() % 2 == 1) {  // polygon: bounding box of its points
      double x0 = v[1], x1 = v[1], y0 = v[2], y1 = v[2];
      for (size_t i = 1; i < v.size(); i += 2) {
        x0 = std::min(x0, v[i]), x1 = std::max(x1, v[i]);
        y0 = std::min(y0, v[i + 1]), y1 = std::max(y1, v[i + 1]);
      }
      b.x = static_cast<float>(x0 * image_width);
      b.y = static_cast<float>(y0 * image_height);
      b.w = static_cast<float>((x1 - x0) * image_width);
      b.h = static_cast<float>((y1 - y0) * image_height);
    } else {
      throw bad("expected 'class cx cy w h' (or a polygon), got " + std::to_string(v.size()) + " values");
    }
    if (b.w < 0 || b.h < 0) throw bad("negative box size");
    boxes.push_back(b);
  }
  return boxes;
}

}  // namespace inlierq
