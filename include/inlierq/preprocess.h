#pragma once
// Declarative model-input preprocessing: resize or letterbox, channel order, normalisation, layout.
// A PreprocessSpec round-trips through JSON, so a model's input convention can live in a config file.
#include <array>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "inlierq/graph.h"
#include "inlierq/image.h"

namespace inlierq {

enum class ResizeMode { Stretch, Letterbox };  // "stretch": plain resize to W×H; "letterbox": keep aspect
// Both are bilinear with pixel centres at (x + 0.5)·in/out − 0.5 and uint8 output; they differ when shrinking:
//  Pil: PIL Image.resize(BILINEAR): the triangle filter widens with the scale factor (antialiasing).
//       Bit-exact with Pillow 13's fixed-point code, including its rounding between the two passes.
//  Cv2: cv2.resize(INTER_LINEAR): always the 2 nearest source pixels, no antialiasing (aliases when
//       shrinking by more than 2). Bit-exact with OpenCV 4.6's fixed-point uint8 path on x86-64.
enum class Interp { Pil, Cv2 };
enum class Align { TopLeft, Center };  // letterbox placement; centred offsets round down
enum class ChannelOrder { RGB, BGR };
enum class Layout { NCHW, NHWC };
// Letterbox size from r = min(H/h, W/w): int(w·r) (YOLOX, NanoDet) or round(w·r), ties to even like
// Python's round() (YOLOv5's letterbox).
enum class LetterboxRound { Floor, Nearest };

// Pipeline: decoded RGB uint8 → resize (rounded to uint8, as the reference pipelines do) → pad → reorder
// channels → value = (pixel·scale − mean[c]) / std[c], with c in the OUTPUT channel order.
// pad_value is a pixel value (0..255) normalised like any pixel, unless pad_after_normalize, in which case
// it is written as-is into the normalised tensor (NanoDet's reference pads with 0 after normalising).
struct PreprocessSpec {
  int width = 0, height = 0;  // network input size, required
  ResizeMode resize = ResizeMode::Stretch;
  Interp interp = Interp::Cv2;
  Align align = Align::TopLeft;
  LetterboxRound letterbox_round = LetterboxRound::Floor;
  float pad_value = 0;
  bool pad_after_normalize = false;
  ChannelOrder channels = ChannelOrder::RGB;
  float scale = 1;
  std::array<float, 3> mean{0, 0, 0};
  std::array<float, 3> std{1, 1, 1};
  Layout layout = Layout::NCHW;

  void validate() const;  // throws Error
};

// The bundled detectors' conventions (see shared/assets/README.md); size 0 keeps the default
// (yolox 416, nanodet 416, fastestdet 352, yolov5 640). All use cv2 INTER_LINEAR, as their demos do.
//  yolox:      letterbox int(w·r), top-left, pad 114, BGR, 0..255
//  nanodet:    letterbox int(w·r), centred, pad 0 after normalisation, BGR, (x − mean) / std
//  fastestdet: stretch, BGR, /255
//  yolov5:     letterbox round(w·r), centred, pad 114, RGB, /255
PreprocessSpec preprocess_preset(const std::string& name, int size = 0);
std::vector<std::string> preprocess_preset_names();

// "yolox" / "yolox:640" (a preset), inline JSON ("{...}"), or the path of a JSON file. JSON objects may
// name a "preset" and override some of its fields; unknown keys are an error, so typos do not pass silently.
PreprocessSpec load_preprocess_spec(const std::string& arg);

void to_json(nlohmann::json& j, const PreprocessSpec& s);
void from_json(const nlohmann::json& j, PreprocessSpec& s);

// Geometry of one preprocessed image. Coordinates are continuous pixel coordinates in both frames
// (0 = left edge of the first pixel), so input = original · scale + offset exactly for both resize
// conventions. scale is the resize actually done (resized / original size); for YOLOX's int(w·r)
// that can be a hair below r, which is why boxes are mapped with it rather than with r.
struct InputTransform {
  int orig_width = 0, orig_height = 0;
  int input_width = 0, input_height = 0;
  int resized_width = 0, resized_height = 0;  // the image's area inside the input; the rest is padding
  float scale_x = 1, scale_y = 1;
  float offset_x = 0, offset_y = 0;

  // Box corners [x1, y1, x2, y2], network input → original image (clipped to it when clip).
  std::array<float, 4> to_original(const std::array<float, 4>& xyxy, bool clip = true) const;
  std::array<float, 4> to_input(const std::array<float, 4>& xyxy) const;
};
void to_json(nlohmann::json& j, const InputTransform& t);

struct Preprocessed {
  TensorData tensor;  // Float, [1, C, H, W] or [1, H, W, C]
  InputTransform transform;
};

// Resizes an image of any channel count to width×height with the given bilinear convention.
Image resize_image(const Image& img, int width, int height, Interp interp);

Preprocessed preprocess(const Image& img, const PreprocessSpec& spec);
inline Preprocessed preprocess_file(const std::string& path, const PreprocessSpec& spec) {
  return preprocess(load_image(path), spec);
}

}  // namespace inlierq
