#include "inlierq/image.h"

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include <jpeglib.h>
#include <png.h>

#include "inlierq/error.h"
#include "util/atomic_file.h"

// JPEG and PNG go through libjpeg-turbo and libpng, the libraries PIL and OpenCV use, so decoded pixels
// match theirs; stb_image reads only BMP (no dedicated library is worth a dependency for it) and
// stb_image_write writes the report's PNGs.
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
  return r ? r : "unknown error";
}

enum class Format { Jpeg, Png, Bmp, Unknown };

Format sniff(const uint8_t* d, size_t n) {
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return Format::Jpeg;
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return Format::Png;
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return Format::Bmp;
  return Format::Unknown;
}

void check_size(int64_t w, int64_t h) {
  if (w <= 0 || h <= 0) throw Error("image has no pixels (" + std::to_string(w) + "x" + std::to_string(h) + ")");
  if (w * h > kMaxImagePixels)
    throw Error("image is " + std::to_string(w) + "x" + std::to_string(h) + " pixels, more than the limit of " +
                std::to_string(kMaxImagePixels) + " (PIL's decompression-bomb limit); refused before decoding");
}

// ---- JPEG: libjpeg-turbo ---------------------------------------------------------------------------

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

// Errors and corrupt-data warnings (a truncated file, a bad Huffman code) both abort: libjpeg would fill
// the rest of a truncated image with grey and go on, PIL raises "image file is truncated".
void jpeg_fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}
void jpeg_message(j_common_ptr cinfo, int level) {
  if (level < 0) jpeg_fail(cinfo);
}

// PIL's convert("RGB") of a CMYK image (Convert.c cmyk2rgb), on Adobe-inverted values as PIL stores them.
inline uint8_t mul_div_255(int a, int b) {
  const int t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

// Owns the decompressor, so that every exit (a thrown Error after a longjmp included) destroys it.
struct JpegReader {
  jpeg_decompress_struct cinfo{};
  JpegError err;
  Image img;
  std::vector<uint8_t> row;
  JpegReader() {
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = jpeg_fail;
    err.mgr.emit_message = jpeg_message;
    jpeg_create_decompress(&cinfo);
  }
  ~JpegReader() { jpeg_destroy_decompress(&cinfo); }
};

Image decode_jpeg(const uint8_t* data, size_t size, bool header_only) {
  auto r = std::make_unique<JpegReader>();  // all state lives behind a pointer set before setjmp
  jpeg_decompress_struct& cinfo = r->cinfo;
  if (setjmp(r->err.jump)) throw Error(r->err.message);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  check_size(cinfo.image_width, cinfo.image_height);  // a plain throw: r's destructor frees the decompressor
  if (header_only) {
    r->img.width = static_cast<int>(cinfo.image_width);
    r->img.height = static_cast<int>(cinfo.image_height);
    return std::move(r->img);
  }
  // As PIL: the mode follows the component count; 4 components are CMYK with Adobe's inverted polarity.
  const bool cmyk = cinfo.num_components == 4;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // gray is replicated to RGB by libjpeg
  jpeg_start_decompress(&cinfo);
  Image& img = r->img;
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  r->row.resize(static_cast<size_t>(img.width) * cinfo.output_components);
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* dst = img.pixels.data() + static_cast<size_t>(cinfo.output_scanline) * img.width * 3;
    JSAMPROW rows[1] = {cmyk ? r->row.data() : dst};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (!cmyk) continue;
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* c = &r->row[static_cast<size_t>(x) * 4];
      // PIL reads "CMYK;I" (inverted), then convert("RGB"): nk = 255 − k, channel = nk − c·nk/255.
      const int nk = c[3];  // 255 − (255 − raw k)
      for (int k = 0; k < 3; ++k) dst[x * 3 + k] = static_cast<uint8_t>(std::max(0, nk - mul_div_255(255 - c[k], nk)));
    }
  }
  jpeg_finish_decompress(&cinfo);
  return std::move(img);
}

// ---- PNG: libpng -----------------------------------------------------------------------------------

struct PngSource {
  const uint8_t* data;
  size_t size, pos;
};

struct PngState {
  std::jmp_buf jump;
  char message[256] = {};
};

void png_fail(png_structp png, png_const_charp msg) {
  auto* st = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(st->message, sizeof st->message, "%s", msg);
  std::longjmp(st->jump, 1);
}
void png_warn(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "file is truncated");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

struct PngReader {
  PngState st;
  PngSource src;
  png_structp png = nullptr;
  png_infop info = nullptr;
  Image img;
  std::vector<png_bytep> rows;
  ~PngReader() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

Image decode_png(const uint8_t* data, size_t size, bool header_only) {
  auto r = std::make_unique<PngReader>();  // all state lives behind a pointer set before setjmp
  r->src = {data, size, 0};
  r->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r->st, png_fail, png_warn);
  if (!r->png) throw Error("out of memory");
  r->info = png_create_info_struct(r->png);
  if (!r->info) throw Error("out of memory");
  png_structp png = r->png;
  png_infop info = r->info;
  if (setjmp(r->st.jump)) throw Error(r->st.message);
  png_set_read_fn(png, &r->src, png_read_memory);
  // PIL ignores gAMA/iCCP/sRGB and so do we: stored values, no colour management.
  png_read_info(png, info);
  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  check_size(w, h);  // a plain throw: r's destructor frees the reader
  if (header_only) {
    r->img.width = static_cast<int>(w);
    r->img.height = static_cast<int>(h);
    return std::move(r->img);
  }
  const int color = png_get_color_type(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_bit_depth(png, info) == 16) png_set_strip_16(png);  // the high byte, as PIL's "RGB;16B"
  png_set_strip_alpha(png);  // alpha and tRNS are dropped, not composited (PIL's convert("RGB"))
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8)
    png_error(png, "unexpected pixel format after conversion");
  Image& img = r->img;
  img.width = static_cast<int>(w);
  img.height = static_cast<int>(h);
  img.channels = 3;
  img.pixels.resize(static_cast<size_t>(w) * h * 3);
  r->rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) r->rows[y] = img.pixels.data() + static_cast<size_t>(y) * w * 3;
  png_read_image(png, r->rows.data());
  png_read_end(png, nullptr);
  return std::move(img);
}

// header_only: the size only (Image without pixels), from the header.
Image decode(const uint8_t* data, size_t size, bool header_only) {
  if (size == 0) throw Error("file is empty");
  switch (sniff(data, size)) {
    case Format::Jpeg: return decode_jpeg(data, size, header_only);
    case Format::Png: return decode_png(data, size, header_only);
    case Format::Bmp: break;
    case Format::Unknown: throw Error("not a JPEG, PNG or BMP file (unsupported or corrupt)");
  }
  if (size > static_cast<size_t>(INT32_MAX)) throw Error("file too large");
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &n)) throw Error(stb_reason());
  check_size(w, h);
  Image img;
  img.width = w;
  img.height = h;
  img.channels = 3;
  if (header_only) return img;
  stbi_uc* px = stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &n, 3);
  if (!px) throw Error(stb_reason());
  img.pixels.assign(px, px + static_cast<size_t>(w) * h * 3);
  stbi_image_free(px);
  return img;
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  try {
    return decode(data, size, false);
  } catch (const Error& e) {
    throw Error("cannot decode image '" + name + "': " + e.what());
  }
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
  try {
    const Image img = decode(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), true);
    if (width) *width = img.width;
    if (height) *height = img.height;
  } catch (const Error& e) {
    return e.what();
  }
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
