#pragma once
// 8-bit images: decoding JPEG/PNG/BMP (stb_image) and writing PNG (stb_image_write). Torch-free.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace inlierq {

// Interleaved 8-bit pixels, row-major, top row first (HWC). Decoded images are always RGB.
struct Image {
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;

  Image() = default;
  Image(int w, int h, int c = 3, uint8_t fill = 0)
      : width(w), height(h), channels(c), pixels(static_cast<size_t>(w) * h * c, fill) {}
  uint8_t* at(int x, int y) { return pixels.data() + (static_cast<size_t>(y) * width + x) * channels; }
  const uint8_t* at(int x, int y) const {
    return pixels.data() + (static_cast<size_t>(y) * width + x) * channels;
  }
};

// Decodes a JPEG, PNG or BMP file to RGB: gray is replicated, alpha is dropped (not composited) and
// 16-bit PNGs keep their high byte, as PIL's convert("RGB") does.
// EXIF orientation is NOT applied: pixels come in stored order, as from PIL's Image.open (without
// ImageOps.exif_transpose) and cv2.imread(..., IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION). Plain
// cv2.imread does rotate, so photos with an orientation tag differ from an OpenCV pipeline.
// JPEG pixels can differ by a few levels from libjpeg's (different IDCT). Throws Error naming the file
// when it cannot be read, is corrupt, or is in another format (GIF, TIFF, WebP, ...).
Image load_image(const std::string& path);
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

// Header-only check, no pixel decoding: "" if the file looks like a decodable JPEG/PNG/BMP, else the
// reason. A file that passes can still fail in load_image when its pixel data is truncated or corrupt.
std::string probe_image(const std::string& path, int* width = nullptr, int* height = nullptr);

// Writes 1-, 3- or 4-channel images; atomic (see util/atomic_file.h).
void save_png(const std::string& path, const Image& img);
// The PNG file bytes (for embedding in HTML).
std::string encode_png(const Image& img);

}  // namespace inlierq
