// JPEG/PNG decode time: inlierq's decoder (libjpeg-turbo, libpng) against stb_image, the decoder it
// replaced, on the same files in the same run, alternating rounds.
//   bench_decode DIR... [--rounds 3]
// Prints one JSON line: files, total bytes, per decoder the median over rounds of the total seconds
// (files read into memory first, so disk time is not counted).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include "inlierq/image.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<std::string> dirs;
  int rounds = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rounds" && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
    else dirs.push_back(a);
  }
  if (dirs.empty()) {
    std::fprintf(stderr, "usage: bench_decode DIR... [--rounds 3]\n");
    return 2;
  }
  std::vector<std::string> files;
  for (const auto& d : dirs)
    for (const auto& e : fs::recursive_directory_iterator(d)) {
      const std::string ext = e.path().extension().string();
      if (e.is_regular_file() && (ext == ".jpg" || ext == ".png")) files.push_back(e.path().string());
    }
  std::sort(files.begin(), files.end());
  std::vector<std::string> bytes;
  size_t total = 0;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    bytes.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    total += bytes.back().size();
  }
  using clock = std::chrono::steady_clock;
  std::vector<double> ours, stb;
  size_t checksum = 0;  // keeps the decodes from being optimised away
  for (int r = 0; r < rounds; ++r) {
    auto t0 = clock::now();
    for (size_t i = 0; i < files.size(); ++i) {
      const auto img = inlierq::decode_image(reinterpret_cast<const uint8_t*>(bytes[i].data()), bytes[i].size(), files[i]);
      checksum += img.pixels[img.pixels.size() / 2];
    }
    ours.push_back(std::chrono::duration<double>(clock::now() - t0).count());
    t0 = clock::now();
    for (size_t i = 0; i < files.size(); ++i) {
      int w, h, n;
      stbi_uc* px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes[i].data()), static_cast<int>(bytes[i].size()),
                                          &w, &h, &n, 3);
      if (!px) {
        std::fprintf(stderr, "stb cannot decode %s\n", files[i].c_str());
        return 1;
      }
      checksum += px[static_cast<size_t>(w) * h * 3 / 2];
      stbi_image_free(px);
    }
    stb.push_back(std::chrono::duration<double>(clock::now() - t0).count());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf("{\"files\": %zu, \"bytes\": %zu, \"rounds\": %d, \"inlierq_s\": %.4f, \"stb_s\": %.4f, \"checksum\": %zu}\n",
              files.size(), total, rounds, median(ours), median(stb), checksum);
  return 0;
}
