// Where int8 weight storage is exact in ONNX Runtime on every x86 CPU (docs/QUANTIZATION.md §2a, "Weight storage").
// Without VNNI, ORT's U8S8 conv kernels (MLAS ConvSym and QGEMM, AVX2) multiply uint8 activation codes by int8
// weight codes with vpmaddubsw, which adds each pair of neighbouring products in int16 and saturates. The pairs
// are neighbouring input channels of one kernel tap (ConvSym packs channels in fours), or neighbouring entries of
// the im2col row (tap-major, channel-minor) in QGEMM: the same pairs when the group's channel count is even.
// Depthwise convs never saturate: both depthwise kernels widen the codes to 32 bits before multiplying.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "inlierq/error.h"
#include "inlierq/quant.h"
#include "inlierq/transforms.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

namespace inlierq::quant {

namespace {

constexpr double kInt16Min = -32768.0, kInt16Max = 32767.0;

// A Conv that ORT runs as QLinearConv with uint8 weight codes at zero point 128 (the ORT layout's storage).
struct CandidateConv {
  const Node* conv = nullptr;
  std::string codes;        // the uint8 activation codes it reads (a QuantizeLinear output)
  int64_t input_zero_point = 0;
  const TensorData* weight = nullptr;  // uint8 codes, OIHW
  bool depthwise = false;
};

bool all_equal(const TensorData& t, int64_t value) {
  if (t.dtype != DType::UInt8) return false;
  const uint8_t* p = t.as<uint8_t>();
  return std::all_of(p, p + t.numel(), [&](uint8_t v) { return v == value; });
}

std::vector<CandidateConv> candidate_convs(const Graph& qdq, const GraphIndex& index) {
  std::vector<CandidateConv> out;
  for (const Node& n : qdq.nodes) {
    if (n.op_type != "Conv" || n.inputs.size() < 2) continue;
    const Node* dx = index.producer(n.inputs[0]);
    const Node* dw = index.producer(n.inputs[1]);
    if (!dx || dx->op_type != "DequantizeLinear" || !dw || dw->op_type != "DequantizeLinear") continue;
    if (dw->inputs.size() < 3 || !qdq.is_initializer(dw->inputs[0]) || !qdq.is_initializer(dw->inputs[2])) continue;
    const TensorData& w = qdq.initializers.at(dw->inputs[0]);
    if (w.dtype != DType::UInt8 || w.shape.size() != 4 || !all_equal(qdq.initializers.at(dw->inputs[2]), 128)) continue;
    if (dx->inputs.size() < 3 || !qdq.is_initializer(dx->inputs[2])) continue;
    const TensorData& zx = qdq.initializers.at(dx->inputs[2]);
    if (zx.dtype != DType::UInt8 || zx.numel() != 1) continue;
    const Node* q = index.producer(dx->inputs[0]);
    if (!q || q->op_type != "QuantizeLinear") continue;
    if (n.get_string("auto_pad", "NOTSET") != "NOTSET") continue;  // not analysed: stays uint8
    CandidateConv c;
    c.conv = &n;
    c.codes = dx->inputs[0];
    c.input_zero_point = zx.as<uint8_t>()[0];
    c.weight = &w;
    const int64_t group = n.get_int("group", 1);
    c.depthwise = w.shape[1] == 1 && w.shape[0] == group;
    out.push_back(c);
  }
  return out;
}

// u8·s8 pair sums of `positions` [L, T, C] (codes as float: every sum is an exact integer below 2^24) against
// `weights` [O, T, C], pairs (2i, 2i+1) along C within each T. Returns Σ over (position, output) of the squared
// accumulator error that int16 saturation causes (summed over T and pairs first, as the kernel accumulates).
// Only pairs that can leave int16 for some output channel (x0·max|w0| + x1·max|w1| > 32767) are multiplied out:
// a few per cent of them, where computing all would cost O·T·C per position.
double saturation_error(const at::Tensor& positions, const at::Tensor& weights, int64_t& saturated, int64_t& pairs) {
  at::Tensor x = positions, w = weights;
  if (x.size(2) % 2) {
    x = at::constant_pad_nd(x, {0, 1}, 0.0);
    w = at::constant_pad_nd(w, {0, 1}, 0.0);
  }
  const int64_t L = x.size(0), T = x.size(1), P = x.size(2) / 2, O = w.size(0);
  pairs += L * O * T * P;
  const at::Tensor xp = x.reshape({L, T, P, 2}), wp = w.reshape({O, T, P, 2});
  const at::Tensor bound = (xp * wp.abs().amax(0).unsqueeze(0)).sum(-1);  // [L, T, P]
  const at::Tensor candidates = at::nonzero(bound > kInt16Max);           // [n, 3]: l, t, p
  if (candidates.size(0) == 0) return 0.0;
  at::Tensor error = at::zeros({L, O}, x.options());
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(1, O));
  for (int64_t k = 0; k < candidates.size(0); k += chunk) {
    const at::Tensor c = candidates.narrow(0, k, std::min(chunk, candidates.size(0) - k));
    const at::Tensor l = c.select(1, 0), t = c.select(1, 1), p = c.select(1, 2);
    const at::Tensor xs = xp.index({l, t, p});                                     // [n, 2]
    const at::Tensor ws = wp.permute({1, 2, 0, 3}).index({t, p});          // [n, O, 2]
    const at::Tensor sums = (xs.unsqueeze(1) * ws).sum(-1);                       // [n, O]
    const at::Tensor lost = sums.clamp(kInt16Min, kInt16Max) - sums;
    saturated += (lost != 0).sum().item<int64_t>();
    error.index_add_(0, l, lost);
  }
  return error.to(at::kDouble).pow(2).sum().item<double>();
}

}  // namespace

std::vector<U8S8Check> check_u8s8_saturation(const Graph& qdq, const std::vector<TensorData>& images,
                                             int64_t max_positions) {
  const GraphIndex index(qdq);
  const std::vector<CandidateConv> convs = candidate_convs(qdq, index);
  std::vector<U8S8Check> out(convs.size());
  std::map<std::string, at::Tensor> weights;  // [O, Cg, taps] as float, code − 128
  rt::RunOptions ro;
  std::set<std::string> keep;
  for (size_t i = 0; i < convs.size(); ++i) {
    out[i].conv = convs[i].conv->name;
    out[i].depthwise = convs[i].depthwise;
    if (convs[i].depthwise) continue;
    keep.insert(convs[i].codes);
    const TensorData& w = *convs[i].weight;
    weights[out[i].conv] =
        at::from_blob(const_cast<uint8_t*>(w.as<uint8_t>()), w.shape, at::kByte).to(at::kFloat).sub(128.0).reshape({w.shape[0], w.shape[1], -1});
  }
  if (keep.empty()) return out;
  if (images.empty()) throw Error("u8s8 saturation check: no images to measure the convs on");
  ro.keep.assign(keep.begin(), keep.end());
  rt::ExecutorOptions eo;
  eo.channels_last = false;
  const rt::Executor ex(qdq, eo);
  std::vector<double> e2(convs.size(), 0.0), a2(convs.size(), 0.0);
  for (const TensorData& image : images) {
    const rt::TensorMap values = ex.run({{qdq.inputs.at(0).name, rt::to_aten(image)}}, ro);
    for (size_t i = 0; i < convs.size(); ++i) {
      if (convs[i].depthwise) continue;
      const Node& n = *convs[i].conv;
      const at::Tensor& w = weights.at(out[i].conv);  // [O, Cg, taps]
      const int64_t O = w.size(0), Cg = w.size(1), group = n.get_int("group", 1);
      const std::vector<int64_t> kernel{convs[i].weight->shape[2], convs[i].weight->shape[3]};
      const std::vector<int64_t> pads = n.get_ints("pads", {0, 0, 0, 0});
      const std::vector<int64_t> strides = n.get_ints("strides", {1, 1});
      const std::vector<int64_t> dilations = n.get_ints("dilations", {1, 1});
      const at::Tensor codes = values.at(convs[i].codes).to(at::kFloat).contiguous();  // [N, C, H, W]
      // Padding holds the zero point's code, as in ORT's indirection buffer and im2col.
      const at::Tensor padded = at::constant_pad_nd(codes, {pads[1], pads[3], pads[0], pads[2]},
                                                    static_cast<double>(convs[i].input_zero_point));
      const int64_t taps = kernel[0] * kernel[1];
      for (int64_t b = 0; b < codes.size(0); ++b)
        for (int64_t gi = 0; gi < group; ++gi) {
          const at::Tensor slice = padded.narrow(0, b, 1).narrow(1, gi * Cg, Cg);
          at::Tensor cols = at::im2col(slice, kernel, dilations, {0, 0}, strides)[0];  // [Cg·taps, L], channel-major
          const int64_t L = cols.size(1);
          const int64_t step = (L + max_positions - 1) / max_positions;
          cols = cols.slice(1, 0, L, step);
          // [L', taps, Cg]: tap-major, channel-minor, as ORT's kernels read them.
          const at::Tensor x = cols.view({Cg, taps, -1}).permute({2, 1, 0}).contiguous();
          const at::Tensor wg = w.narrow(0, gi * (O / group), O / group).permute({0, 2, 1}).contiguous();  // [O/g, taps, Cg]
          const int64_t Lp = x.size(0), Og = wg.size(0);
          // Pairs of neighbouring channels within each tap (ConvSym), and of neighbouring entries of the im2col
          // row (QGEMM), which are the same pairs unless Cg is odd; the worse of the two counts.
          int64_t sat = 0, pairs = 0;
          double err = saturation_error(x, wg, sat, pairs);
          if (Cg % 2) {
            int64_t sat_k = 0, pairs_k = 0;
            const double err_k = saturation_error(x.view({Lp, 1, taps * Cg}), wg.view({Og, 1, taps * Cg}), sat_k, pairs_k);
            if (err_k > err) err = err_k, sat = sat_k, pairs = pairs_k;
          }
          e2[i] += err;
          out[i].saturated_pairs += sat;
          out[i].pairs += pairs;
          // The exact accumulator, centred on the input zero point: what the conv's output scales.
          const at::Tensor acc = at::matmul(x.reshape({Lp, taps * Cg}) - static_cast<double>(convs[i].input_zero_point),
                                            wg.reshape({Og, taps * Cg}).t());
          a2[i] += acc.to(at::kDouble).pow(2).sum().item<double>();
        }
    }
  }
  for (size_t i = 0; i < convs.size(); ++i) {
    if (convs[i].depthwise) continue;
    out[i].accumulator_sqnr_db = e2[i] > 0 ? 10.0 * std::log10(a2[i] / e2[i]) : std::numeric_limits<double>::infinity();
  }
  return out;
}

std::set<std::string> store_conv_weights_signed(Graph& qdq, const std::set<std::string>& convs) {
  const GraphIndex index(qdq);
  std::set<std::string> done, stored;
  for (const Node& n : qdq.nodes) {
    if (!convs.count(n.name) || n.inputs.size() < 2) continue;
    const Node* dw = index.producer(n.inputs[1]);
    if (!dw || dw->op_type != "DequantizeLinear" || dw->inputs.size() < 3 || done.count(dw->name)) continue;
    // A weight shared with a node that is not listed keeps its storage.
    bool all_listed = true;
    for (const Node* c : index.consumers(dw->outputs[0])) all_listed = all_listed && convs.count(c->name);
    auto wit = qdq.initializers.find(dw->inputs[0]);
    auto zit = qdq.initializers.find(dw->inputs[2]);
    if (!all_listed || wit == qdq.initializers.end() || zit == qdq.initializers.end() || wit->second.dtype != DType::UInt8 ||
        !all_equal(zit->second, 128))
      continue;
    for (uint8_t& b : wit->second.bytes) b = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(b) - 128));
    wit->second.dtype = DType::Int8;
    zit->second.dtype = DType::Int8;
    std::fill(zit->second.bytes.begin(), zit->second.bytes.end(), uint8_t{0});
    done.insert(dw->name);
    for (const Node* c : index.consumers(dw->outputs[0])) stored.insert(c->name);
  }
  return stored;
}

}  // namespace inlierq::quant
