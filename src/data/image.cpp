#include "inlierq/image.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "inlierq/error.h"
#include "util/atomic_file.h"

// Only the formats we promise: anything else fails with stb's "unknown image type" instead of being
// half-supported (stb's GIF/PSD/HDR readers have quirks we do not want to document).
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO  // all reads go through read_bytes so that OS errors are reported with errno
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace inlierq {
namespace {

// Empty string on success, else the OS's reason.
std::string read_bytes(const std::string& path, std::string& bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return "is a directory";
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::strerror(errno);
  bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return f.bad() ? std::strerror(errno) : "";
}

std::string stb_reason() {
  const char* r = stbi_failure_reason();
  std::string s = r ? r : "unknown error";
  if (s == "unknown image type") return "not a JPEG, PNG or BMP file (unsupported or corrupt)";
  return s;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) throw Error("cannot decode image '" + name + "': file is empty");
  if (size > static_cast<size_t>(INT32_MAX)) throw Error("cannot decode image '" + name + "': file too large");
  int w = 0, h = 0, n = 0;
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &n, 3);
  if (!px) throw Error("cannot decode image '" + name + "': " + stb_reason());
  Image img;
  img.width = w;
  img.height = h;
  img.channels = 3;
  img.pixels.assign(px, px + static_cast<size_t>(w) * h * 3);
  stbi_image_free(px);
  return img;
}

Image load_image(const std::string& path) {
  std::string bytes;
  if (std::string why = read_bytes(path, bytes); !why.empty())
    throw Error("cannot read image '" + path + "': " + why);
  return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

std::string probe_image(const std::string& path, int* width, int* height) {
  std::string bytes;
  if (std::string why = read_bytes(path, bytes); !why.empty()) return why;
  if (bytes.empty()) return "file is empty";
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()),
                             &w, &h, &n))
    return stb_reason();
  if (width) *width = w;
  if (height) *height = h;
  return "";
}

std::string encode_png(const Image& img) {
  if (img.channels != 1 && img.channels != 3 && img.channels != 4)
    throw Error("PNG needs 1, 3 or 4 channels, got " + std::to_string(img.channels));
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != static_cast<size_t>(img.width) * img.height * img.channels)
    throw Error("image buffer does not match its size");
  std::string out;
  auto sink = [](void* ctx, void* data, int n) { static_cast<std::string*>(ctx)->append(static_cast<char*>(data), n); };
  if (!stbi_write_png_to_func(sink, &out, img.width, img.height, img.channels, img.pixels.data(),
                              img.width * img.channels))
    throw Error("cannot encode PNG");
  return out;
}

void save_png(const std::string& path, const Image& img) {
  std::string out;
  try {
    out = encode_png(img);
  } catch (const Error& e) {
    throw Error("cannot write '" + path + "': " + e.what());
  }
  write_file_atomically(path, out);
}

}  // namespace inlierq
