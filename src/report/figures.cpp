// Saliency | posterior panels over calibration images, for the report and `inlierq saliency`.
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>

#include "inlierq/report.h"

namespace inlierq::report {

Image thumbnail(const Image& img, int max_side) {
  const int side = std::max(img.width, img.height);
  if (side <= max_side) return img;
  const double f = static_cast<double>(max_side) / side;
  Image out(std::max(1, static_cast<int>(img.width * f)), std::max(1, static_cast<int>(img.height * f)), img.channels);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const uint8_t* s = img.at(std::min(img.width - 1, static_cast<int>(x / f)), std::min(img.height - 1, static_cast<int>(y / f)));
      std::copy(s, s + img.channels, out.at(x, y));
    }
  return out;
}

std::vector<std::pair<std::string, Image>> saliency_figures(const std::vector<inlier::SaliencyMaps>& maps,
                                                            const std::vector<std::string>& paths,
                                                            const std::vector<InputTransform>& transforms, int max_side) {
  std::vector<std::pair<std::string, Image>> out;
  for (size_t i = 0; i < paths.size(); ++i) {
    const Image full = load_image(paths[i]);
    const Image img = thumbnail(full, max_side);
    const float sx = static_cast<float>(full.width) / img.width, sy = static_cast<float>(full.height) / img.height;
    const InputTransform& t = transforms[i];
    for (const auto& m : maps) {
      auto to_cell = [&](float x, float y) {
        const float ix = x * sx * t.scale_x + t.offset_x, iy = y * sy * t.scale_y + t.offset_y;
        return std::pair<float, float>{ix / t.input_width * m.cols, iy / t.input_height * m.rows};
      };
      out.push_back({fmt::format("{} at {} ({}×{}): saliency | inlier posterior",
                                 std::filesystem::path(paths[i]).filename().string(), m.value, m.rows, m.cols),
                     side_by_side({overlay(img, m.saliency[i], m.rows, m.cols, to_cell),
                                   overlay(img, m.posterior[i], m.rows, m.cols, to_cell)})});
    }
  }
  return out;
}

}  // namespace inlierq::report
