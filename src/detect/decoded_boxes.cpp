// Decoder kind "decoded": outputs whose boxes are already decoded inside the graph (YOLOv5/v7
// [N, P, 4+1+C], YOLOv8/11 [N, 4+C, P], separate box and score tensors, or final post-NMS detections).
// Every layout and convention is a profile field; docs/PROFILES.md lists them.
#include <algorithm>
#include <cmath>
#include <optional>

#include "detect/decoder.h"
#include "detect/output_view.h"
#include "inlierq/error.h"

namespace inlierq::detect {
namespace {

using nlohmann::json;

enum class Activation { None, Sigmoid, Softmax };
enum class BoxFormat { CxCyWH, XYXY, XYWH };

// A channel range [begin, end) of one output, seen as [N, P, C]. end < 0: up to the last channel.
struct ChannelRef {
  std::string field, output;
  OutputLayout layout = OutputLayout::PositionsChannels;
  int64_t begin = 0, end = -1;
  Activation activation = Activation::None;

  at::Tensor read(const rt::TensorMap& outs) const {
    auto it = outs.find(output);
    if (it == outs.end()) throw Error("decoded decoder: output '" + output + "' was not produced");
    const std::string where = "decoder." + field + " (output '" + output + "')";
    at::Tensor t = positions_channels(it->second.to(at::kFloat), layout, where);
    const int64_t C = t.size(2), e = end < 0 ? C : end;
    if (begin >= C || e > C || begin >= e)
      throw Error(where + ": channels [" + std::to_string(begin) + ", " + std::to_string(e) + ") do not fit its " +
                  std::to_string(C) + " channels (" + shape_str(it->second.sizes().vec()) + ")");
    t = t.narrow(2, begin, e - begin);
    if (activation == Activation::Sigmoid) t = at::sigmoid(t);
    if (activation == Activation::Softmax) t = at::softmax(t, 2);
    return t;
  }
};

Activation parse_activation(const json& j, const std::string& where) {
  const std::string a = j.value("activation", "none");
  if (a == "none") return Activation::None;
  if (a == "sigmoid") return Activation::Sigmoid;
  if (a == "softmax") return Activation::Softmax;
  throw Error(where + ".activation must be 'none', 'sigmoid' or 'softmax', got '" + a + "'");
}

// single: the ref names one channel ("channel": k, default 0) rather than a range ("channels": [b, e]).
ChannelRef parse_ref(const json& c, const std::string& field, bool single, const Graph& g, const std::string& where) {
  const std::string w = where + ": decoder." + field;
  const json& j = c.at(field);
  if (field == "boxes")
    check_keys(j, {"output", "layout", "channels", "format", "units"}, w);
  else if (single)
    check_keys(j, {"output", "layout", "channel", "activation"}, w);
  else
    check_keys(j, {"output", "layout", "channels", "activation"}, w);
  ChannelRef r;
  r.field = field;
  r.output = j.value("output", c.value("output", std::string()));
  if (r.output.empty()) throw Error(w + ": no output named (set decoder.output or decoder." + field + ".output)");
  require_output(g, r.output, w);
  r.layout = parse_layout(j.value("layout", c.value("layout", std::string("positions_channels"))), w);
  if (single) {
    r.begin = j.value("channel", int64_t(0));
    r.end = r.begin + 1;
    if (r.begin < 0) throw Error(w + ".channel must be >= 0");
  } else if (j.contains("channels")) {
    const auto ch = j["channels"].get<std::vector<int64_t>>();
    if (ch.size() != 2 || ch[0] < 0 || ch[1] <= ch[0])
      throw Error(w + ".channels must be [begin, end) with 0 <= begin < end");
    r.begin = ch[0];
    r.end = ch[1];
  } else if (field == "boxes") {
    r.begin = 0;
    r.end = 4;
  }
  if (field == "boxes" && r.end - r.begin != 4 && r.end >= 0) throw Error(w + ".channels must span 4 channels");
  if (field != "boxes") r.activation = parse_activation(j, w);
  return r;
}

class DecodedBoxesDecoder : public Decoder {
 public:
  DecodedBoxesDecoder(const json& c, const Graph& g, const std::string& where) {
    check_keys(c, {"kind", "output", "layout", "boxes", "scores", "objectness", "labels", "count", "objectness_power",
                   "class_power", "class_mode", "final"},
               where + ": decoder");
    const std::string w = where + ": decoder";
    for (const char* required : {"boxes", "scores"})
      if (!c.contains(required)) throw Error(w + " (kind 'decoded') needs '" + std::string(required) + "'");
    boxes_ = parse_ref(c, "boxes", false, g, where);
    scores_ = parse_ref(c, "scores", false, g, where);
    if (c.contains("objectness")) objectness_ = parse_ref(c, "objectness", true, g, where);
    if (c.contains("labels")) labels_ = parse_ref(c, "labels", true, g, where);
    if (c.contains("count")) count_ = parse_ref(c, "count", true, g, where);
    const json& b = c["boxes"];
    const std::string fmt = b.value("format", "cxcywh"), units = b.value("units", "pixels");
    if (fmt == "cxcywh") format_ = BoxFormat::CxCyWH;
    else if (fmt == "xyxy") format_ = BoxFormat::XYXY;
    else if (fmt == "xywh") format_ = BoxFormat::XYWH;
    else throw Error(w + ".boxes.format must be 'cxcywh', 'xyxy' or 'xywh' (top-left corner and size), got '" + fmt + "'");
    if (units != "pixels" && units != "normalized")
      throw Error(w + ".boxes.units must be 'pixels' (network input) or 'normalized' (0..1 of the input), got '" + units + "'");
    normalized_ = units == "normalized";
    obj_pow_ = c.value("objectness_power", 1.0);
    cls_pow_ = c.value("class_power", 1.0);
    if (!(obj_pow_ > 0) || !(cls_pow_ > 0)) throw Error(w + ": objectness_power and class_power must be positive");
    all_classes_ = class_mode(c, where) == ClassMode::All;
    final_ = c.value("final", false);
    if (!final_ && (labels_ || count_)) throw Error(w + ": 'labels' and 'count' describe final detections; set \"final\": true");
    if (final_ && all_classes_) throw Error(w + ": final detections have one class each; class_mode 'all' does not apply");
  }

  bool final_detections() const override { return final_; }

  std::vector<std::vector<BoxDetection>> decode(const rt::TensorMap& outs, int W, int H, float thr) const override {
    at::Tensor b = boxes_.read(outs), s = scores_.read(outs);
    const int64_t N = b.size(0), P = b.size(1);
    auto same_positions = [&](const at::Tensor& t, const ChannelRef& r) {
      if (t.size(0) != N || t.size(1) != P)
        throw Error("decoded decoder: decoder." + r.field + " (output '" + r.output + "') has " + std::to_string(t.size(0)) +
                    " images x " + std::to_string(t.size(1)) + " positions, decoder.boxes (output '" + boxes_.output +
                    "') " + std::to_string(N) + " x " + std::to_string(P));
    };
    same_positions(s, scores_);
    at::Tensor x1, y1, x2, y2;
    const at::Tensor c0 = b.select(2, 0), c1 = b.select(2, 1), c2 = b.select(2, 2), c3 = b.select(2, 3);
    if (format_ == BoxFormat::CxCyWH) {
      x1 = c0 - c2 / 2, y1 = c1 - c3 / 2, x2 = c0 + c2 / 2, y2 = c1 + c3 / 2;
    } else if (format_ == BoxFormat::XYWH) {
      x1 = c0, y1 = c1, x2 = c0 + c2, y2 = c1 + c3;
    } else {
      x1 = c0, y1 = c1, x2 = c2, y2 = c3;
    }
    at::Tensor boxes = at::stack({x1, y1, x2, y2}, -1);
    if (normalized_) boxes = boxes * at::tensor({float(W), float(H), float(W), float(H)}, boxes.options());
    if (cls_pow_ != 1.0) s = at::pow(s.clamp_min(0), cls_pow_);
    if (objectness_) {
      at::Tensor o = objectness_->read(outs);
      same_positions(o, *objectness_);
      if (obj_pow_ != 1.0) o = at::pow(o.clamp_min(0), obj_pow_);
      s = s * o;
    }
    std::vector<std::vector<BoxDetection>> result(N);
    at::Tensor labels, counts;
    if (labels_) {
      labels = labels_->read(outs);
      same_positions(labels, *labels_);
    }
    if (count_) counts = count_->read(outs);
    for (int64_t n = 0; n < N; ++n) {
      if (!final_) {
        if (all_classes_) {
          collect(result[n], boxes[n], s[n], at::Tensor(), thr);
        } else {
          auto [conf, label] = s[n].max(1);
          collect(result[n], boxes[n], conf, label, thr);
        }
        continue;
      }
      auto [conf, label] = s[n].max(1);
      if (labels.defined()) {
        label = at::round(labels[n].squeeze(1)).to(at::kLong);
        conf = conf.masked_fill(label < 0, 0);  // padding rows of fixed-size NMS outputs carry label -1
      }
      if (counts.defined()) {
        const int64_t valid = std::clamp<int64_t>(static_cast<int64_t>(counts[n].flatten()[0].item<float>()), 0, P);
        conf = conf.clone();
        conf.narrow(0, valid, P - valid).zero_();
      }
      collect(result[n], boxes[n], conf, label.clamp_min(0), thr);
    }
    return result;
  }

 private:
  ChannelRef boxes_, scores_;
  std::optional<ChannelRef> objectness_, labels_, count_;
  BoxFormat format_ = BoxFormat::CxCyWH;
  bool normalized_ = false, all_classes_ = false, final_ = false;
  double obj_pow_ = 1, cls_pow_ = 1;
};

}  // namespace

std::unique_ptr<Decoder> make_decoded_boxes_decoder(const json& c, const Graph& g, const std::string& where) {
  return std::make_unique<DecodedBoxesDecoder>(c, g, where);
}

}  // namespace inlierq::detect
