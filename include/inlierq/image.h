#pragma once
// 8-bit images: decoding JPEG (libjpeg-turbo), PNG (libpng), BMP (stb_image); writing PNG. Torch-free.
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

// Images with more pixels are refused from their header, before any allocation (PIL's
// DecompressionBombError limit, 2 × Image.MAX_IMAGE_PIXELS).
inline constexpr int64_t kMaxImagePixels = 178956970;

// Decodes a JPEG (libjpeg-turbo), PNG (libpng) or BMP (stb_image) file to RGB, with the pixels PIL's
// Image.open(path).convert("RGB") gives: gray is replicated; CMYK/YCCK JPEGs are read with Adobe's
// inverted polarity and converted as PIL does; palettes are expanded; alpha and tRNS are dropped (not
// composited); 16-bit PNGs keep their high byte (PIL does the same for RGB; for 16-bit gray PIL clips
// values above 255 instead, which we do not copy); gAMA/iCCP are ignored.
// A truncated or corrupt file is an error, as in PIL (libjpeg would fill the missing rows with grey).
// EXIF orientation is NOT applied: pixels come in stored order, as from PIL's Image.open (without
// ImageOps.exif_transpose) and cv2.imread(..., IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION). Plain
// cv2.imread does rotate, so photos with an orientation tag differ from an OpenCV pipeline.
// Throws Error naming the file when it cannot be read, is corrupt, too large, or in another format
// (GIF, TIFF, WebP, ...).
Image load_image(const std::string& path);
Image decode_image(const uint8_t* data, size_t size, const std::string& name);

// Header-only check, no pixel decoding: "" if the file looks like a decodable JPEG/PNG/BMP of an
// accepted size, else the reason. A file that passes can still fail in load_image when its pixel data is
// truncated or corrupt.
std::string probe_image(const std::string& path, int* width = nullptr, int* height = nullptr);

// Writes 1-, 3- or 4-channel images; atomic (see util/atomic_file.h).
void save_png(const std::string& path, const Image& img);
// The PNG file bytes (for embedding in HTML).
std::string encode_png(const Image& img);

}  // namespace inlierq
