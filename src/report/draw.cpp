#include <stb/stb_easy_font.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "inlierq/detect.h"

namespace inlierq {
namespace {

struct Rgb { uint8_t r, g, b; };

Rgb class_colour(int label) {
  // Golden-angle hue steps keep neighbouring class indices visually distinct.
  float h = std::fmod(label * 137.508f, 360.f) / 60.f;
  float x = 1 - std::fabs(std::fmod(h, 2.f) - 1);
  float r = 0, g = 0, b = 0;
  switch (static_cast<int>(h)) {
    case 0: r = 1; g = x; break;
    case 1: r = x; g = 1; break;
    case 2: g = 1; b = x; break;
    case 3: g = x; b = 1; break;
    case 4: r = x; b = 1; break;
    default: r = 1; b = x; break;
  }
  return {static_cast<uint8_t>(40 + 215 * r), static_cast<uint8_t>(40 + 215 * g), static_cast<uint8_t>(40 + 215 * b)};
}

void fill(Image& img, int x0, int y0, int x1, int y1, Rgb c) {
  x0 = std::max(x0, 0), y0 = std::max(y0, 0), x1 = std::min(x1, img.width), y1 = std::min(y1, img.height);
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      uint8_t* p = &img.pixels[(static_cast<size_t>(y) * img.width + x) * img.channels];
      p[0] = c.r, p[1] = c.g, p[2] = c.b;
    }
}

// Renders text at (x, y) with stb_easy_font's quads, scaled by an integer factor.
void text(Image& img, int x, int y, const std::string& s, Rgb c, int scale) {
  static char buffer[64 * 1024];
  int quads = stb_easy_font_print(0, 0, const_cast<char*>(s.c_str()), nullptr, buffer, sizeof(buffer));
  const float* v = reinterpret_cast<const float*>(buffer);
  for (int q = 0; q < quads; ++q) {
    const float* quad = v + q * 16;  // 4 vertices × (x, y, z, rgba-as-float)
    int qx0 = static_cast<int>(quad[0]), qy0 = static_cast<int>(quad[1]);
    int qx1 = static_cast<int>(quad[8]), qy1 = static_cast<int>(quad[9]);
    fill(img, x + qx0 * scale, y + qy0 * scale, x + qx1 * scale, y + qy1 * scale, c);
  }
}

}  // namespace

Image draw_detections(const Image& src, const std::vector<BoxDetection>& dets, const std::vector<std::string>& names,
                      float min_score) {
  Image img = src;
  const int thick = std::max(1, std::min(img.width, img.height) / 300);
  const int scale = std::max(1, std::min(img.width, img.height) / 400);
  for (const auto& d : dets) {
    if (d.score < min_score) continue;
    Rgb c = class_colour(d.label);
    int x0 = static_cast<int>(d.xyxy[0]), y0 = static_cast<int>(d.xyxy[1]);
    int x1 = static_cast<int>(d.xyxy[2]), y1 = static_cast<int>(d.xyxy[3]);
    fill(img, x0, y0, x1, y0 + thick, c);
    fill(img, x0, y1 - thick, x1, y1, c);
    fill(img, x0, y0, x0 + thick, y1, c);
    fill(img, x1 - thick, y0, x1, y1, c);
    char label[128];
    std::snprintf(label, sizeof(label), "%s %.2f",
                  d.label >= 0 && d.label < static_cast<int>(names.size()) ? names[d.label].c_str() : "?", d.score);
    const int tw = stb_easy_font_width(label) * scale, th = 10 * scale;
    const int ty = y0 - th >= 0 ? y0 - th : y0;
    fill(img, x0, ty, x0 + tw + 2 * scale, ty + th, c);
    text(img, x0 + scale, ty + scale, label, {0, 0, 0}, scale);
  }
  return img;
}

}  // namespace inlierq
