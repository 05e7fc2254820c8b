// Decoder kinds: "yolox" (anchor-free grid, exp(wh)), "gfl" (generalised focal loss distributions,
// NanoDet), "fastestdet" (single map with tanh offsets and image-relative sizes); "decoded" (boxes
// decoded inside the graph) lives in decoded_boxes.cpp.
#include <cmath>

#include "detect/decoder.h"
#include "detect/output_view.h"
#include "inlierq/error.h"

namespace inlierq::detect {
namespace {

using nlohmann::json;

const at::Tensor& output(const rt::TensorMap& outs, const std::string& name) {
  auto it = outs.find(name);
  if (it == outs.end()) throw Error("decoder: output '" + name + "' was not produced");
  return it->second;
}

std::vector<int64_t> strides_of(const json& c, const std::string& where) {
  if (!c.contains("strides") || !c["strides"].is_array() || c["strides"].empty())
    throw Error(where + ": decoder.strides must be a non-empty array");
  return c["strides"].get<std::vector<int64_t>>();
}

class YoloxDecoder : public Decoder {
 public:
  YoloxDecoder(const json& c, const Graph& g, const std::string& where)
      : output_(c.value("output", "")), strides_(strides_of(c, where)), mode_(class_mode(c, where)) {
    check_keys(c, {"kind", "output", "strides", "class_mode"}, where + ": decoder");
    require_output(g, output_, where + ": decoder.output");
  }
  std::vector<std::vector<BoxDetection>> decode(const rt::TensorMap& outs, int W, int H, float thr) const override {
    at::Tensor p = output(outs, output_).to(at::kFloat);
    if (p.dim() != 3 || p.size(2) < 6) throw Error("yolox decoder: output '" + output_ + "' must be [N, A, 5+C], got " + shape_str(p.sizes().vec()));
    std::vector<at::Tensor> grids, strides;
    for (int64_t s : strides_) {
      int64_t h = H / s, w = W / s;
      at::Tensor ys = at::arange(h, at::kFloat).view({h, 1}).expand({h, w});
      at::Tensor xs = at::arange(w, at::kFloat).view({1, w}).expand({h, w});
      grids.push_back(at::stack({xs, ys}, -1).reshape({h * w, 2}));
      strides.push_back(at::full({h * w, 1}, static_cast<float>(s)));
    }
    at::Tensor grid = at::cat(grids).to(p.device()), stride = at::cat(strides).to(p.device());
    if (grid.size(0) != p.size(1))
      throw Error("yolox decoder: " + std::to_string(p.size(1)) + " positions in '" + output_ + "' but strides " +
                  "give " + std::to_string(grid.size(0)) + " for a " + std::to_string(W) + "x" + std::to_string(H) + " input");
    at::Tensor xy = (p.narrow(2, 0, 2) + grid) * stride;
    at::Tensor half_wh = at::exp(p.narrow(2, 2, 2)) * stride / 2;
    at::Tensor boxes = at::cat({xy - half_wh, xy + half_wh}, 2);
    at::Tensor obj = p.select(2, 4), cls = p.narrow(2, 5, p.size(2) - 5);
    std::vector<std::vector<BoxDetection>> result(p.size(0));
    for (int64_t n = 0; n < p.size(0); ++n) {
      if (mode_ == ClassMode::Best) {
        auto [conf, label] = cls[n].max(1);
        collect(result[n], boxes[n], obj[n] * conf, label, thr);
      } else {
        collect(result[n], boxes[n], obj[n].unsqueeze(1) * cls[n], at::Tensor(), thr);
      }
    }
    return result;
  }

 private:
  std::string output_;
  std::vector<int64_t> strides_;
  ClassMode mode_;
};

class GflDecoder : public Decoder {
 public:
  GflDecoder(const json& c, const Graph& g, const std::string& where) : mode_(class_mode(c, where)) {
    check_keys(c, {"kind", "levels", "reg_max", "center", "class_mode"}, where + ": decoder");
    if (!c.contains("levels") || !c["levels"].is_array() || c["levels"].empty())
      throw Error(where + ": decoder.levels must be a non-empty array of {scores, boxes, stride}");
    for (const auto& l : c["levels"]) {
      Level lv{l.value("scores", ""), l.value("boxes", ""), l.value("stride", int64_t(0))};
      if (lv.stride <= 0) throw Error(where + ": decoder.levels[].stride must be positive");
      require_output(g, lv.scores, where + ": decoder.levels[].scores");
      require_output(g, lv.boxes, where + ": decoder.levels[].boxes");
      levels_.push_back(lv);
    }
    reg_max_ = c.value("reg_max", 7);
    std::string center = c.value("center", "legacy");
    if (center == "legacy") legacy_center_ = true;
    else if (center == "half_cell") legacy_center_ = false;
    else throw Error(where + ": decoder.center must be 'legacy' ((s-1)/2 offset) or 'half_cell'");
  }
  std::vector<std::vector<BoxDetection>> decode(const rt::TensorMap& outs, int W, int H, float thr) const override {
    std::vector<at::Tensor> all_boxes, all_scores;
    for (const auto& lv : levels_) {
      at::Tensor sc = output(outs, lv.scores).to(at::kFloat), reg = output(outs, lv.boxes).to(at::kFloat);
      const int64_t s = lv.stride, h = (H + s - 1) / s, w = (W + s - 1) / s, bins = reg_max_ + 1;
      if (sc.dim() != 3 || reg.dim() != 3 || sc.size(1) != h * w || reg.size(1) != h * w || reg.size(2) != 4 * bins)
        throw Error("gfl decoder: level stride " + std::to_string(s) + " expects scores [N," + std::to_string(h * w) +
                    ",C] and boxes [N," + std::to_string(h * w) + "," + std::to_string(4 * bins) + "], got " +
                    shape_str(sc.sizes().vec()) + " and " + shape_str(reg.sizes().vec()));
      at::Tensor dist = at::softmax(reg.view({reg.size(0), h * w, 4, bins}), -1)
                            .matmul(at::arange(bins, reg.options())) * static_cast<float>(s);
      const float off = legacy_center_ ? (s - 1) / 2.0f : s / 2.0f;
      at::Tensor cy = at::arange(h, reg.options()).view({h, 1}).expand({h, w}).reshape(-1) * s + off;
      at::Tensor cx = at::arange(w, reg.options()).view({1, w}).expand({h, w}).reshape(-1) * s + off;
      at::Tensor x1 = (cx - dist.select(2, 0)).clamp(0, W), y1 = (cy - dist.select(2, 1)).clamp(0, H);
      at::Tensor x2 = (cx + dist.select(2, 2)).clamp(0, W), y2 = (cy + dist.select(2, 3)).clamp(0, H);
      all_boxes.push_back(at::stack({x1, y1, x2, y2}, -1));
      all_scores.push_back(sc);
    }
    at::Tensor boxes = at::cat(all_boxes, 1), scores = at::cat(all_scores, 1);
    std::vector<std::vector<BoxDetection>> result(boxes.size(0));
    for (int64_t n = 0; n < boxes.size(0); ++n) {
      if (mode_ == ClassMode::Best) {
        auto [conf, label] = scores[n].max(1);
        collect(result[n], boxes[n], conf, label, thr);
      } else {
        collect(result[n], boxes[n], scores[n], at::Tensor(), thr);
      }
    }
    return result;
  }

 private:
  struct Level {
    std::string scores, boxes;
    int64_t stride;
  };
  std::vector<Level> levels_;
  int reg_max_ = 7;
  bool legacy_center_ = true;
  ClassMode mode_;
};

class FastestDetDecoder : public Decoder {
 public:
  FastestDetDecoder(const json& c, const Graph& g, const std::string& where)
      : output_(c.value("output", "")), obj_pow_(c.value("objectness_power", 0.6)),
        cls_pow_(c.value("class_power", 0.4)), mode_(class_mode(c, where)) {
    check_keys(c, {"kind", "output", "offset_activation", "size_activation", "objectness_power", "class_power",
                   "class_mode"},
               where + ": decoder");
    require_output(g, output_, where + ": decoder.output");
    // FastestDet's head applies sigmoid (objectness) and softmax (classes) in the graph but leaves the
    // four box channels raw; its demo applies tanh to the offsets and sigmoid to the sizes.
    const std::string oa = c.value("offset_activation", "tanh"), sa = c.value("size_activation", "sigmoid");
    if (oa != "tanh" && oa != "none") throw Error(where + ": decoder.offset_activation must be 'tanh' or 'none', got '" + oa + "'");
    if (sa != "sigmoid" && sa != "none") throw Error(where + ": decoder.size_activation must be 'sigmoid' or 'none', got '" + sa + "'");
    tanh_offsets_ = oa == "tanh";
    sigmoid_sizes_ = sa == "sigmoid";
  }
  std::vector<std::vector<BoxDetection>> decode(const rt::TensorMap& outs, int W, int H, float thr) const override {
    at::Tensor p = output(outs, output_).to(at::kFloat);
    if (p.dim() != 4 || p.size(1) < 6) throw Error("fastestdet decoder: output '" + output_ + "' must be [N, 5+C, H, W], got " + shape_str(p.sizes().vec()));
    const int64_t gh = p.size(2), gw = p.size(3);
    at::Tensor flat = p.flatten(2).transpose(1, 2);  // [N, HW, 5+C]
    at::Tensor gy = at::arange(gh, p.options()).view({gh, 1}).expand({gh, gw}).reshape(-1);
    at::Tensor gx = at::arange(gw, p.options()).view({1, gw}).expand({gh, gw}).reshape(-1);
    at::Tensor off = flat.narrow(2, 1, 2), size = flat.narrow(2, 3, 2);
    if (tanh_offsets_) off = at::tanh(off);
    if (sigmoid_sizes_) size = at::sigmoid(size);
    at::Tensor cx = (off.select(2, 0) + gx) / gw * W, cy = (off.select(2, 1) + gy) / gh * H;
    at::Tensor bw = size.select(2, 0) * W / 2, bh = size.select(2, 1) * H / 2;
    at::Tensor boxes = at::stack({cx - bw, cy - bh, cx + bw, cy + bh}, -1);
    at::Tensor obj = at::pow(flat.select(2, 0).clamp_min(0), obj_pow_);
    at::Tensor cls = flat.narrow(2, 5, flat.size(2) - 5);
    std::vector<std::vector<BoxDetection>> result(p.size(0));
    for (int64_t n = 0; n < p.size(0); ++n) {
      if (mode_ == ClassMode::Best) {
        auto [conf, label] = cls[n].max(1);
        collect(result[n], boxes[n], obj[n] * at::pow(conf.clamp_min(0), cls_pow_), label, thr);
      } else {
        collect(result[n], boxes[n], obj[n].unsqueeze(1) * at::pow(cls[n].clamp_min(0), cls_pow_), at::Tensor(), thr);
      }
    }
    return result;
  }

 private:
  std::string output_;
  double obj_pow_, cls_pow_;
  ClassMode mode_;
  bool tanh_offsets_ = true, sigmoid_sizes_ = true;
};

}  // namespace

ClassMode class_mode(const json& c, const std::string& where) {
  std::string m = c.value("class_mode", "best");
  if (m == "best") return ClassMode::Best;
  if (m == "all") return ClassMode::All;
  throw Error(where + ": decoder.class_mode must be 'best' or 'all', got '" + m + "'");
}

void require_output(const Graph& g, const std::string& name, const std::string& where) {
  for (const auto& o : g.outputs)
    if (o.name == name) return;
  std::string names;
  for (const auto& o : g.outputs) names += (names.empty() ? "" : ", ") + o.name;
  throw Error(where + ": the model has no output '" + name + "' (outputs: " + names + ")");
}

void collect(std::vector<BoxDetection>& dst, const at::Tensor& boxes_in, const at::Tensor& scores_in,
             const at::Tensor& labels_in, float thr) {
  at::Tensor boxes = boxes_in.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor scores = scores_in.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor idx = (scores > thr).nonzero();  // [M, 2] (position, class) or [M, 1]
  if (idx.size(0) == 0) return;
  idx = idx.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const float* bp = boxes.data_ptr<float>();
  const float* sp = scores.data_ptr<float>();
  const int64_t K = scores.dim() == 2 ? scores.size(1) : 1;
  at::Tensor labels = labels_in.defined() ? labels_in.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  const int64_t* lp = labels.defined() ? labels.data_ptr<int64_t>() : nullptr;
  for (int64_t m = 0; m < idx.size(0); ++m) {
    int64_t p = ip[m * idx.size(1)];
    int64_t c = idx.size(1) > 1 ? ip[m * idx.size(1) + 1] : 0;
    BoxDetection d;
    for (int k = 0; k < 4; ++k) d.xyxy[k] = bp[p * 4 + k];
    d.score = sp[p * K + c];
    d.label = static_cast<int>(lp ? lp[p] : c);
    dst.push_back(d);
  }
}

std::unique_ptr<Decoder> make_decoder(const json& c, const Graph& g, const std::string& where) {
  if (!c.is_object() || !c.contains("kind")) throw Error(where + ": decoder must be an object with a 'kind'");
  // A field of the wrong type (a null stride, a string where a number goes) surfaces as nlohmann's
  // exception; it becomes an Error naming the profile.
  try {
    if (!c["kind"].is_string()) throw Error(where + ": decoder.kind must be a string");
    const std::string kind = c["kind"].get<std::string>();
    if (kind == "yolox") return std::make_unique<YoloxDecoder>(c, g, where);
    if (kind == "gfl") return std::make_unique<GflDecoder>(c, g, where);
    if (kind == "fastestdet") return std::make_unique<FastestDetDecoder>(c, g, where);
    if (kind == "decoded") return make_decoded_boxes_decoder(c, g, where);
    throw Error(where + ": unknown decoder kind '" + kind + "' (known: yolox, gfl, fastestdet, decoded)");
  } catch (const json::exception& e) {
    throw Error(where + ": invalid decoder: " + e.what());
  }
}

}  // namespace inlierq::detect
