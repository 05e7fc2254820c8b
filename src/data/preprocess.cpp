#include "inlierq/preprocess.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "inlierq/error.h"

namespace inlierq {
namespace {

using json = nlohmann::json;

// ---- PIL convention: Pillow's Resample.c (precompute_coeffs + the *_8bpc passes) -------------------

constexpr int kPilBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS

struct PilCoeffs {
  int ksize = 0;
  std::vector<int> first, count;  // per output pixel: first source index, number of taps
  std::vector<int32_t> k;         // fixed-point weights, ksize per output pixel
};

PilCoeffs pil_coeffs(int in_size, int out_size) {
  PilCoeffs c;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);  // widen the triangle when shrinking: antialiasing
  const double support = 1.0 * filterscale;
  const double ss = 1.0 / filterscale;  // multiplied, not divided, as Pillow does: same last bit
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double ww = 0;
    for (int x = 0; x < xmax; ++x) {
      const double d = std::abs((x + xmin - center + 0.5) * ss);
      w[x] = d < 1.0 ? 1.0 - d : 0.0;
      ww += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(0.5 + v * (1 << kPilBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t pil_clip8(int32_t acc) { return static_cast<uint8_t>(std::clamp(acc >> kPilBits, 0, 255)); }

// One pass along x (horizontal) or y; Pillow rounds to uint8 between the passes, so we do too.
Image pil_pass(const Image& in, int out_size, bool horizontal) {
  const int C = in.channels;
  const PilCoeffs c = pil_coeffs(horizontal ? in.width : in.height, out_size);
  Image out(horizontal ? out_size : in.width, horizontal ? in.height : out_size, C);
  for (int y = 0; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) {
      const int o = horizontal ? x : y;
      const int32_t* k = &c.k[static_cast<size_t>(o) * c.ksize];
      uint8_t* dst = out.at(x, y);
      for (int ch = 0; ch < C; ++ch) {
        int32_t acc = 1 << (kPilBits - 1);
        for (int i = 0; i < c.count[o]; ++i) {
          const int s = c.first[o] + i;
          acc += (horizontal ? in.at(s, y) : in.at(x, s))[ch] * k[i];
        }
        dst[ch] = pil_clip8(acc);
      }
    }
  return out;
}

Image resize_pil(const Image& img, int w, int h) {
  if (w == img.width) return pil_pass(img, h, false);
  if (h == img.height) return pil_pass(img, w, true);
  // Pillow 13 does the vertical pass first when the height shrinks by more than twice as many pixels as
  // the width (Pillow PR #9549; the rule was fitted on 4,500 size pairs); earlier Pillow always went
  // horizontal first. The order matters by at most 1 level, through the uint8 rounding between passes.
  if (h < img.height && img.height - h > 2 * (img.width - w)) return pil_pass(pil_pass(img, h, false), w, true);
  return pil_pass(pil_pass(img, w, true), h, false);
}

// ---- cv2 convention: OpenCV resize INTER_LINEAR on uint8 (imgproc/src/resize.cpp) ------------------
// Reproduced to the bit, rounding included: 11-bit weights, an exact integer horizontal pass, and the
// vertical pass of its SIMD kernel (VResizeLinearVec_32s8u), which drops 4 bits before a 16-bit
// multiply-high. Checked against libopencv_imgproc 4.6 (x86-64) on random sizes, up and down; its switch
// to INTER_AREA for exact 2x shrinking gives the same numbers, so it needs no special case.

constexpr int kCvOne = 1 << 11;  // INTER_RESIZE_COEF_SCALE

struct CvTaps {
  std::vector<int> i0, i1;  // source indices, clamped to the image
  std::vector<int> w0, w1;  // fixed-point weights
};

// OpenCV clamps the coordinate (weight 0 on the outside pixel) for columns but only clamps the row
// index for rows, so edge rows blend a row with itself using rounded weights that need not sum to 2048.
CvTaps cv2_taps(int in_size, int out_size, bool clamp_coordinate) {
  CvTaps T;
  const double scale = 1.0 / (static_cast<double>(out_size) / in_size);  // OpenCV's 1/inv_scale
  for (int d = 0; d < out_size; ++d) {
    float f = static_cast<float>((d + 0.5) * scale - 0.5);
    int s = static_cast<int>(std::floor(f));
    f -= static_cast<float>(s);
    if (clamp_coordinate) {
      if (s < 0) s = 0, f = 0;
      if (s >= in_size - 1) s = in_size - 1, f = 0;
    }
    T.i0.push_back(std::clamp(s, 0, in_size - 1));
    T.i1.push_back(std::clamp(s + 1, 0, in_size - 1));
    T.w0.push_back(static_cast<int>(std::lrint((1.f - f) * kCvOne)));  // cvRound: nearest, ties to even
    T.w1.push_back(static_cast<int>(std::lrint(f * kCvOne)));
  }
  return T;
}

Image resize_cv2(const Image& img, int w, int h) {
  const int C = img.channels;
  const CvTaps X = cv2_taps(img.width, w, true), Y = cv2_taps(img.height, h, false);
  const size_t row_len = static_cast<size_t>(w) * C;
  std::vector<int32_t> rows(static_cast<size_t>(img.height) * row_len);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < w; ++x) {
      const uint8_t *a = img.at(X.i0[x], y), *b = img.at(X.i1[x], y);
      int32_t* r = &rows[y * row_len + static_cast<size_t>(x) * C];
      for (int c = 0; c < C; ++c) r[c] = a[c] * X.w0[x] + b[c] * X.w1[x];
    }
  Image out(w, h, C);
  for (int y = 0; y < h; ++y) {
    const int32_t *a = &rows[Y.i0[y] * row_len], *b = &rows[Y.i1[y] * row_len];
    uint8_t* dst = out.at(0, y);
    for (size_t i = 0; i < row_len; ++i) {
      const int32_t v = (((a[i] >> 4) * Y.w0[y]) >> 16) + (((b[i] >> 4) * Y.w1[y]) >> 16);
      dst[i] = static_cast<uint8_t>(std::clamp((v + 2) >> 2, 0, 255));
    }
  }
  return out;
}

// ---- JSON ------------------------------------------------------------------------------------------

template <typename E>
struct EnumName { E value; const char* name; };
const EnumName<ResizeMode> kResize[] = {{ResizeMode::Stretch, "stretch"}, {ResizeMode::Letterbox, "letterbox"}};
const EnumName<Interp> kInterp[] = {{Interp::Pil, "pil"}, {Interp::Cv2, "cv2"}};
const EnumName<Align> kAlign[] = {{Align::TopLeft, "top_left"}, {Align::Center, "center"}};
const EnumName<LetterboxRound> kRound[] = {{LetterboxRound::Floor, "floor"}, {LetterboxRound::Nearest, "nearest"}};
const EnumName<ChannelOrder> kOrder[] = {{ChannelOrder::RGB, "rgb"}, {ChannelOrder::BGR, "bgr"}};
const EnumName<Layout> kLayout[] = {{Layout::NCHW, "nchw"}, {Layout::NHWC, "nhwc"}};

template <typename E, size_t N>
const char* enum_name(const EnumName<E> (&table)[N], E v) {
  for (const auto& e : table)
    if (e.value == v) return e.name;
  return "?";
}

template <typename E, size_t N>
E enum_value(const EnumName<E> (&table)[N], const json& j, const char* key) {
  const std::string s = j.get<std::string>();
  std::string options;
  for (const auto& e : table) {
    if (s == e.name) return e.value;
    options += std::string(options.empty() ? "" : ", ") + e.name;
  }
  throw Error(std::string("preprocessing spec: '") + key + "' must be one of " + options + ", got '" + s + "'");
}

std::array<float, 3> three_floats(const json& v, const char* key) {
  if (!v.is_array() || v.size() != 3)
    throw Error(std::string("preprocessing spec: '") + key + "' must be a list of 3 numbers, one per channel");
  return v.get<std::array<float, 3>>();
}

}  // namespace

void PreprocessSpec::validate() const {
  auto fail = [](const std::string& m) { throw Error("preprocessing spec: " + m); };
  if (width <= 0 || height <= 0)
    fail("input width and height must be positive, got " + std::to_string(width) + "x" + std::to_string(height));
  if (!std::isfinite(scale) || scale == 0) fail("scale must be finite and non-zero");
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c])) fail("mean must be finite");
    if (!std::isfinite(std[c]) || std[c] == 0) fail("std must be finite and non-zero");
  }
  if (!std::isfinite(pad_value)) fail("pad_value must be finite");
}

namespace {

struct Preset {
  const char* name;
  int size;
  void (*apply)(PreprocessSpec&);
};
const Preset kPresets[] = {
    {"yolox", 416,
     [](PreprocessSpec& s) {
       s.channels = ChannelOrder::BGR;
       s.resize = ResizeMode::Letterbox;
       s.pad_value = 114;
     }},
    {"nanodet", 416,
     [](PreprocessSpec& s) {
       s.channels = ChannelOrder::BGR;
       s.resize = ResizeMode::Letterbox;
       s.align = Align::Center;
       s.pad_after_normalize = true;
       s.mean = {103.53f, 116.28f, 123.675f};
       s.std = {57.375f, 57.12f, 58.395f};
     }},
    {"fastestdet", 352,
     [](PreprocessSpec& s) {
       s.channels = ChannelOrder::BGR;
       s.scale = 1.0f / 255.0f;
     }},
    {"yolov5", 640,
     [](PreprocessSpec& s) {
       s.resize = ResizeMode::Letterbox;
       s.letterbox_round = LetterboxRound::Nearest;
       s.align = Align::Center;
       s.pad_value = 114;
       s.scale = 1.0f / 255.0f;
     }},
};

std::string preset_list() {
  std::string names;
  for (const auto& p : kPresets) names += (names.empty() ? "" : ", ") + std::string(p.name);
  return names;
}

const Preset* find_preset(const std::string& name) {
  for (const auto& p : kPresets)
    if (name == p.name) return &p;
  return nullptr;
}

}  // namespace

std::vector<std::string> preprocess_preset_names() {
  std::vector<std::string> v;
  for (const auto& p : kPresets) v.push_back(p.name);
  return v;
}

PreprocessSpec preprocess_preset(const std::string& name, int size) {
  const Preset* p = find_preset(name);
  if (!p) throw Error("unknown preprocessing preset '" + name + "' (known: " + preset_list() + ")");
  PreprocessSpec s;
  s.interp = Interp::Cv2;
  p->apply(s);
  s.width = s.height = size ? size : p->size;
  return s;
}

void to_json(json& j, const PreprocessSpec& s) {
  j = json{{"width", s.width},
           {"height", s.height},
           {"resize", enum_name(kResize, s.resize)},
           {"interp", enum_name(kInterp, s.interp)},
           {"align", enum_name(kAlign, s.align)},
           {"letterbox_round", enum_name(kRound, s.letterbox_round)},
           {"pad_value", s.pad_value},
           {"pad_after_normalize", s.pad_after_normalize},
           {"channel_order", enum_name(kOrder, s.channels)},
           {"scale", s.scale},
           {"mean", s.mean},
           {"std", s.std},
           {"layout", enum_name(kLayout, s.layout)}};
}

void from_json(const json& j, PreprocessSpec& s) {
  if (!j.is_object()) throw Error("preprocessing spec must be a JSON object");
  try {
    if (j.contains("preset")) s = preprocess_preset(j.at("preset").get<std::string>());
    for (const auto& [key, v] : j.items()) {
      if (key == "preset") continue;
      else if (key == "width") s.width = v.get<int>();
      else if (key == "height") s.height = v.get<int>();
      else if (key == "resize") s.resize = enum_value(kResize, v, "resize");
      else if (key == "interp") s.interp = enum_value(kInterp, v, "interp");
      else if (key == "align") s.align = enum_value(kAlign, v, "align");
      else if (key == "letterbox_round") s.letterbox_round = enum_value(kRound, v, "letterbox_round");
      else if (key == "pad_value") s.pad_value = v.get<float>();
      else if (key == "pad_after_normalize") s.pad_after_normalize = v.get<bool>();
      else if (key == "channel_order") s.channels = enum_value(kOrder, v, "channel_order");
      else if (key == "scale") s.scale = v.get<float>();
      else if (key == "mean") s.mean = three_floats(v, "mean");
      else if (key == "std") s.std = three_floats(v, "std");
      else if (key == "layout") s.layout = enum_value(kLayout, v, "layout");
      else
        throw Error("preprocessing spec: unknown key '" + key + "' (known: preset, width, height, resize, interp, align, "
                    "letterbox_round, pad_value, pad_after_normalize, channel_order, scale, mean, std, layout)");
    }
  } catch (const json::exception& e) {
    throw Error(std::string("preprocessing spec: ") + e.what());
  }
  s.validate();
}

PreprocessSpec load_preprocess_spec(const std::string& arg) {
  const std::string name = arg.substr(0, arg.find(':'));
  if (find_preset(name)) {
    int size = 0;
    if (name.size() != arg.size()) {
      const std::string num = arg.substr(name.size() + 1);
      char* end = nullptr;
      const long v = std::strtol(num.c_str(), &end, 10);
      if (num.empty() || *end || v <= 0 || v > 65536) throw Error("preset '" + arg + "': bad input size");
      size = static_cast<int>(v);
    }
    return preprocess_preset(name, size);
  }
  std::string text = arg;
  const bool inline_json = !arg.empty() && arg.find_first_not_of(" \t\n") != std::string::npos &&
                           arg[arg.find_first_not_of(" \t\n")] == '{';
  if (!inline_json) {
    std::ifstream f(arg);
    if (!f) throw Error("preprocessing spec '" + arg + "': not a preset (" + preset_list() + ") and cannot open it as a file: " + std::strerror(errno));
    text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error("preprocessing spec '" + (inline_json ? std::string("<inline>") : arg) + "': invalid JSON: " + e.what());
  }
  return j.get<PreprocessSpec>();
}

std::array<float, 4> InputTransform::to_original(const std::array<float, 4>& b, bool clip) const {
  std::array<float, 4> o{(b[0] - offset_x) / scale_x, (b[1] - offset_y) / scale_y,
                         (b[2] - offset_x) / scale_x, (b[3] - offset_y) / scale_y};
  if (clip) {
    for (int i : {0, 2}) o[i] = std::clamp(o[i], 0.f, static_cast<float>(orig_width));
    for (int i : {1, 3}) o[i] = std::clamp(o[i], 0.f, static_cast<float>(orig_height));
  }
  return o;
}

std::array<float, 4> InputTransform::to_input(const std::array<float, 4>& b) const {
  return {b[0] * scale_x + offset_x, b[1] * scale_y + offset_y, b[2] * scale_x + offset_x,
          b[3] * scale_y + offset_y};
}

void to_json(json& j, const InputTransform& t) {
  j = json{{"orig_width", t.orig_width},       {"orig_height", t.orig_height},
           {"input_width", t.input_width},     {"input_height", t.input_height},
           {"resized_width", t.resized_width}, {"resized_height", t.resized_height},
           {"scale_x", t.scale_x},             {"scale_y", t.scale_y},
           {"offset_x", t.offset_x},           {"offset_y", t.offset_y}};
}

Image resize_image(const Image& img, int width, int height, Interp interp) {
  if (width <= 0 || height <= 0 || img.width <= 0 || img.height <= 0)
    throw Error("resize: sizes must be positive (" + std::to_string(img.width) + "x" + std::to_string(img.height) +
                " -> " + std::to_string(width) + "x" + std::to_string(height) + ")");
  if (width == img.width && height == img.height) return img;
  return interp == Interp::Pil ? resize_pil(img, width, height) : resize_cv2(img, width, height);
}

Preprocessed preprocess(const Image& img, const PreprocessSpec& spec) {
  spec.validate();
  if (img.channels != 3 || img.width <= 0 || img.height <= 0)
    throw Error("preprocess: expected a non-empty RGB image, got " + std::to_string(img.width) + "x" +
                std::to_string(img.height) + "x" + std::to_string(img.channels));
  const int W = spec.width, H = spec.height;
  Preprocessed out;
  InputTransform& t = out.transform;
  t.orig_width = img.width;
  t.orig_height = img.height;
  t.input_width = W;
  t.input_height = H;
  t.resized_width = W;
  t.resized_height = H;
  int ox = 0, oy = 0;
  if (spec.resize == ResizeMode::Letterbox) {
    // In double like Python: r = min(H/h, W/w), size = int(w·r) (YOLOX) or round(w·r) (YOLOv5).
    const double r = std::min(static_cast<double>(H) / img.height, static_cast<double>(W) / img.width);
    const auto size = [&](int n) {
      const double v = n * r;
      return static_cast<int>(spec.letterbox_round == LetterboxRound::Nearest ? std::nearbyint(v) : v);
    };
    t.resized_width = std::clamp(size(img.width), 1, W);
    t.resized_height = std::clamp(size(img.height), 1, H);
    if (spec.align == Align::Center) {
      ox = (W - t.resized_width) / 2;
      oy = (H - t.resized_height) / 2;
    }
  }
  t.scale_x = static_cast<float>(t.resized_width) / img.width;
  t.scale_y = static_cast<float>(t.resized_height) / img.height;
  t.offset_x = static_cast<float>(ox);
  t.offset_y = static_cast<float>(oy);
  const Image resized = resize_image(img, t.resized_width, t.resized_height, spec.interp);

  // Per output channel: a 256-entry table of normalised values, and the pad value.
  const bool bgr = spec.channels == ChannelOrder::BGR;
  float lut[3][256], pad[3];
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) lut[c][v] = (static_cast<float>(v) * spec.scale - spec.mean[c]) / spec.std[c];
    pad[c] = spec.pad_after_normalize ? spec.pad_value : (spec.pad_value * spec.scale - spec.mean[c]) / spec.std[c];
  }

  const bool nchw = spec.layout == Layout::NCHW;
  out.tensor.dtype = DType::Float;
  out.tensor.shape = nchw ? std::vector<int64_t>{1, 3, H, W} : std::vector<int64_t>{1, H, W, 3};
  out.tensor.bytes.resize(static_cast<size_t>(W) * H * 3 * sizeof(float));
  float* dst = out.tensor.as<float>();
  const size_t plane = static_cast<size_t>(W) * H;
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) {
      const int sx = x - ox, sy = y - oy;
      const bool inside = sx >= 0 && sy >= 0 && sx < resized.width && sy < resized.height;
      const uint8_t* px = inside ? resized.at(sx, sy) : nullptr;
      const size_t p = static_cast<size_t>(y) * W + x;
      for (int c = 0; c < 3; ++c) {
        const float v = inside ? lut[c][px[bgr ? 2 - c : c]] : pad[c];
        dst[nchw ? c * plane + p : p * 3 + c] = v;
      }
    }
  return out;
}

}  // namespace inlierq
