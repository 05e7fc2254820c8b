#pragma once
// Quantization: placement of quantizers, calibration, QDQ/encodings/TensorRT export. Torch-free.
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "inlierq/names.h"
#include "inlierq/graph.h"

namespace inlierq::quant {

// ---- placement (ALGORITHMS.md §3) -------------------------------------------------------------------

// Where activation quantizers go, for the backend that will run the file (docs/QUANTIZATION.md, "Layouts").
enum class QdqLayout {
  // Every op an integer kernel can run reads and writes quantized tensors: compute outputs (after a
  // Relu/Clip, which ONNX Runtime folds into the QuantizeLinear), the outputs of Sigmoid, LeakyRelu,
  // Mul, Add and pooling ops whose inputs are quantized. ONNX Runtime's QDQ optimizer then turns every
  // quantized Conv, Add, Mul, Sigmoid, Concat and pooling op into its QLinear kernel.
  Ort,
  // Block outputs only: after the activation that follows a compute op (including x·sigmoid(x)) and
  // after a residual Add, the points where TensorRT's explicit quantization fuses.
  Block,
  // Ort when activations are 8-bit, Block below: sub-8-bit grids need a Clip before the QuantizeLinear,
  // which stops ORT's fusion anyway, and every extra quantizer costs accuracy at 4 bit.
  Auto,
};
const NameTable<QdqLayout>& layout_names();  // auto | ort | block
const char* layout_name(QdqLayout l);
QdqLayout parse_layout(const std::string& name);  // Error naming --layout and listing the names otherwise

struct PlacementOptions {
  QdqLayout layout = QdqLayout::Auto;
  int weight_bits = 8;
  int act_bits = 8;
  bool weight_symmetric = true;   // TensorRT accepts only symmetric weights
  bool act_symmetric = false;
  int first_layer_bits = 8;       // weights of convs that read the network input
  bool quantize_head = false;     // heads: weights at head_bits for the last convs, outputs never quantized
  int head_last_bits = 8;
  // Concat inputs share one scale (ALGORITHMS §3; TensorRT then concatenates int8 without requantizing).
  bool share_concat_scales = true;
  // Block layout: leave block outputs that only floating-point nodes read (the float head's input) unquantized,
  // as QDrop's COCO code does. Off by default: measured worse on FastestDet W4A4 (docs/RECONSTRUCTION.md).
  // The ORT layout always quantizes compute outputs (QLinearConv writes them).
  bool float_inputs_of_float_nodes = false;
  std::vector<std::string> exclude;  // node names (or activation value names) kept in floating point
  // {"nodes": {"<node or value name>": {"weight_bits": N, "act_bits": N, "exclude": true}}}
  nlohmann::json overrides;
  // Weight bits chosen per compute node by `--budget weight-bits` (assign_weight_bits); a config override wins.
  std::map<std::string, int> budget_weight_bits;
};

struct WeightSite {
  std::string node;    // the compute node
  std::string tensor;  // its weight initializer
  int bits = 8;
  bool symmetric = true;
  int axis = 0;        // output-channel axis of the weight tensor
  std::string reason;
};

struct ActSite {
  std::string value;     // the quantized tensor; its consumers see the quantized value
  std::string producer;  // the node producing it
  int bits = 8;
  bool symmetric = false;
  int group = 0;         // sites in one group share one scale (inputs of a Concat)
  // The network input, possibly after grid-preserving ops (YOLOX's Focus slices): 8-bit pixels, calibrated
  // by min/max at the first layer's bit width.
  bool image = false;
  // Read only by x·sigmoid(x) (the ORT layout's SiLU pre-activation): the mse calibrator measures its error
  // after the SiLU, which maps the whole negative tail to ≈ 0.
  bool silu_input = false;
  std::string reason;
};

struct QuantPlan {
  QdqLayout layout = QdqLayout::Ort;
  std::vector<WeightSite> weights;
  std::vector<ActSite> activations;
  int num_groups = 0;
  std::vector<std::string> head_nodes;      // compute nodes recognised as detection head
  std::vector<std::string> first_nodes;     // compute nodes reading the network input
  std::vector<std::string> float_nodes;     // compute nodes left in floating point, with why
  std::vector<std::string> float_reasons;
  std::vector<std::string> float_activations;  // activation quantizers removed after placement, with why
  std::vector<std::string> float_activation_reasons;
  nlohmann::json to_json() const;
  std::string format() const;  // human-readable table
};

// Derives the plan from the graph (after prepare_for_quantization): weights of Conv/ConvTranspose/Gemm/
// MatMul with constant weights, activation quantizers on compute-block outputs (after the fused
// activation, after a residual Add), inputs of quantized compute nodes always on a grid, Concat inputs
// sharing one scale, heads kept in floating point. Throws Error on unknown names in exclude/overrides.
QuantPlan derive_plan(const Graph& g, const PlacementOptions& opts);

// Compute nodes whose Q/DQ pattern ONNX Runtime fuses into an integer kernel: quantized weight, an input
// on a quantizer's grid (directly or through grid-preserving ops) and an 8-bit quantized output (directly or
// after a Relu / Clip that ORT folds into the QuantizeLinear; a sub-8-bit quantizer's Clip stops the fusion). A model of ORT's rule, checked against ORT's
// optimised graph by tests/py/test_qdq_vs_ort.py.
std::vector<std::string> integer_compute_nodes(const Graph& g, const QuantPlan& plan);

// Compute nodes recognised as the detection head (see docs/QUANTIZATION.md for the rule).
std::vector<std::string> find_head_nodes(const Graph& g);

// ---- calibration (ALGORITHMS.md §2) -----------------------------------------------------------------

struct WeightEncoding {
  std::string tensor;
  int bits = 8;
  bool symmetric = true;
  int axis = 0;
  std::vector<float> scale;
  std::vector<int64_t> zero_point;
  int64_t qn() const;
  int64_t qp() const;
};

struct ActEncoding {
  std::string value;
  int bits = 8;
  bool symmetric = false;
  int group = 0;
  float scale = 1;
  int64_t zero_point = 0;
  float observed_min = 0, observed_max = 0;  // over the calibration set (the group's, for groups)
  int64_t qn() const;
  int64_t qp() const;
};

struct Encodings {
  std::map<std::string, WeightEncoding> weights;   // by tensor name
  std::map<std::string, ActEncoding> activations;  // by value name
  nlohmann::json meta;                             // method, options, calibration images, ...
};

struct CalibrationOptions {
  std::string method = "minmax";       // minmax | percentile | entropy | mse | avg_mse
  std::string weight_method = "mse";   // minmax | mse (per output channel)
  double percentile = 99.99;
  int histogram_bins = 2048;
  int batch = 8;
  std::string device = "cpu";
  std::vector<std::string> input_names;  // optional, one per input (file paths): named in errors
  // Called after each batch of each pass: (pass, passes, images done, images).
  std::function<void(int, int, size_t, size_t)> progress;
};

std::vector<std::string> calibration_methods();

// Calibrates activation ranges on the FP32 graph (streamed: running min/max, then one histogram per
// quantizer group; no activation is stored) and initialises per-channel weight scales.
// inputs: preprocessed images, each [1, C, H, W] float (the graph's single input).
Encodings calibrate(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                    const CalibrationOptions& opts);

// The per-channel weight encodings alone (what calibrate() puts in Encodings::weights): minmax | mse.
std::map<std::string, WeightEncoding> calibrate_weights(const Graph& g, const QuantPlan& plan, const std::string& weight_method);

// calibrate() for several activation calibrators at once: one min/max pass and one histogram pass (of x and/or
// |x|, whichever they need) shared by all, and the same weight encodings in each; keyed by method. Each
// result equals calibrate() with that method.
std::map<std::string, Encodings> calibrate_methods(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                                   const CalibrationOptions& opts, const std::vector<std::string>& methods);

// ---- export -----------------------------------------------------------------------------------------

// Outputs of grid-preserving ops (Concat, MaxPool, Resize nearest, Reshape, Slice, Split, ...) whose data
// inputs all carry one encoding get a QuantizeLinear/DequantizeLinear pair with that same encoding: an exact
// identity (the values are already on that grid) that lets the backend run the op and its consumers on
// integers (ONNX Runtime needs DQ → op → Q around such ops, and a DequantizeLinear in front of every
// Conv). Appended to the plan (reason "requantized ...", same group) and to the encodings; call after
// calibration and reconstruction, before make_qdq_graph. Returns how many were added.
size_t add_requantizers(const Graph& g, QuantPlan& plan, Encodings& enc);

// The QDQ graph: int8 weights with per-axis DequantizeLinear, Quantize/DequantizeLinear pairs on the
// activations, a Clip to the b-bit range before sub-8-bit activation quantizers. Opset ≥ 13.
struct ExportOptions {
  // Symmetric weight codes stored as uint8 with zero point 128 instead of int8 with zero point 0: the same
  // values, but ONNX Runtime then runs U8U8 integer kernels, which do not saturate. Its U8S8 kernels on x86
  // CPUs without VNNI add pairs of u8·s8 products in int16 and saturate (FastestDet W8A8 on such a CPU:
  // mAP 0.030 with int8 weights, 0.133 with uint8; docs/QUANTIZATION.md). TensorRT needs int8 weights.
  bool unsigned_weights = false;
};
Graph make_qdq_graph(const Graph& g, const QuantPlan& plan, const Encodings& enc, const ExportOptions& opts = {});

// Where int8 weight storage is exact in ONNX Runtime on every x86 CPU. Without VNNI its U8S8 conv kernels add
// each pair of neighbouring u8·s8 products in int16 and saturate; depthwise convs never do. For each Conv of an
// exported file whose weights are stored as uint8 at zero point 128 (the ORT layout), the accumulator error that
// int8 storage would get from that saturation, measured on `images` (at most `max_positions` output positions
// per image and group, evenly strided), as an SQNR against the exact accumulator; throws without images.
// docs/QUANTIZATION.md §2a.
struct U8S8Check {
  std::string conv;
  bool depthwise = false;  // ORT's depthwise kernels widen to 32 bits: never saturates, not measured
  double accumulator_sqnr_db = std::numeric_limits<double>::infinity();  // +inf: no pair saturated
  int64_t saturated_pairs = 0, pairs = 0;
};
std::vector<U8S8Check> check_u8s8_saturation(const Graph& qdq, const std::vector<TensorData>& images,
                                             int64_t max_positions = 4096);
// Stores the weights of the listed Convs (uint8 codes at zero point 128) as int8 at zero point 0: the same
// values. A weight also read by an unlisted node keeps its storage. Returns the Convs whose weights are now int8.
std::set<std::string> store_conv_weights_signed(Graph& qdq, const std::set<std::string>& convs);
nlohmann::json encodings_json(const Encodings& enc);
// TensorRT's text calibration cache (scale = amax/127 per 8-bit activation tensor, hex float32).
std::string tensorrt_cache(const Encodings& enc);

}  // namespace inlierq::quant

namespace inlierq::quant {

// ---- sensitivity ------------------------------------------------------------------------------------

struct GroupSensitivity {
  int group = 0;
  std::vector<std::string> values;
  double sqnr_db = 0;  // of the graph outputs when only this group is quantized (higher = harmless)
  double inlier_sqnr_db = std::numeric_limits<double>::quiet_NaN();  // the same, inlier-weighted (OutputWeights)
};

// Per graph output, weights that broadcast against it (inlier::output_inlier_weights): the inlier-weighted output
// SQNR sums w·ref² and w·(ref − q)² over the outputs present. Empty: no inlier-weighted figure.
using OutputWeights = std::map<std::string, TensorData>;
// Which figure ranks weights for the budget: plain output SQNR, or the inlier-weighted one (docs/QUANTIZATION.md §4d).
enum class SensitivityError { Output, Inlier };
const NameTable<SensitivityError>& sensitivity_error_names();

// Quantizes one activation scale group at a time (weights and every other activation in floating
// point) and measures the SQNR of all graph outputs against the FP32 outputs over `inputs`; sorted
// from most to least harmful. Costs one forward pass per group.
// `--budget weight-bits=B` (docs/QUANTIZATION.md §4c): which weights of a low-bit plan to raise to `high_bits` so
// that the average weight bits (over every quantized weight parameter) stay ≤ B and the outputs follow FP32 best.
struct WeightLayerSensitivity {
  std::string node, tensor;
  int64_t params = 0;
  int bits = 0;         // the plan's bits
  double sqnr_db = 0;   // of the graph outputs with only this weight quantized at `bits` (activations in float)
  double inlier_sqnr_db = std::numeric_limits<double>::quiet_NaN();  // the same, inlier-weighted (OutputWeights)
  bool raised = false;  // chosen for high_bits
};
struct WeightBitsPoint {
  double average_bits = 0;
  double sqnr_db = 0;   // of the graph outputs with every weight quantized as assigned (activations in float)
  bool chosen = false;  // the assignment returned
};
struct WeightBitsChoice {
  double budget_bits = 0, average_bits_before = 0, average_bits = 0;
  int high_bits = 8;
  int64_t params = 0;                          // quantized weight parameters
  std::vector<WeightLayerSensitivity> layers;  // the candidates (weights below high_bits), most harmful per bit first
  std::vector<WeightBitsPoint> frontier;       // measured along that order, from none raised to all
  std::map<std::string, int> node_bits;        // what to put in PlacementOptions::budget_weight_bits
  SensitivityError ranked_by = SensitivityError::Output;  // which SQNR ordered `layers`
  nlohmann::json to_json() const;
};
// Measures each candidate weight's output SQNR alone (one forward per weight on `inputs`, weights calibrated by
// `weight_method` at the plan's bits), models the error of an assignment as the sum of its low-bit weights' noise
// powers, and raises weights in decreasing order of noise per added bit while the budget allows (greedy knapsack).
// Nodes in `fixed` (explicit per-node bits) are never candidates. Throws Error when the plan's own bits already
// average more than `max_average_bits`.
// Average bits over the plan's quantized weight parameters (a tensor two nodes share counts once).
double average_weight_bits(const Graph& g, const QuantPlan& plan);
// Error naming the budget when the plan's own bits already average more than max_average_bits.
void check_weight_bits_budget(const Graph& g, const QuantPlan& plan, double max_average_bits, int high_bits = 8);
WeightBitsChoice assign_weight_bits(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                    double max_average_bits, const std::string& weight_method, const std::string& device,
                                    const std::set<std::string>& fixed = {}, int high_bits = 8,
                                    const std::function<void(size_t, size_t)>& progress = {},
                                    const OutputWeights& inlier_weights = {},
                                    SensitivityError rank_by = SensitivityError::Output);

std::vector<GroupSensitivity> activation_sensitivity(const Graph& g, const QuantPlan& plan, const Encodings& enc,
                                                     const std::vector<TensorData>& inputs, const std::string& device,
                                                     const std::function<void(size_t, size_t)>& progress = {},
                                                     const OutputWeights& inlier_weights = {});

// activation_sensitivity() with every group at 8 bits (or more, where the plan says so), calibrated by `co` on
// `inputs`: what each group costs on the grid of a W8A8 model, whatever bits the plan gives it. A group an 8-bit
// grid alone takes to a few dB holds channels of incompatible ranges, which no lower bit width or rounding can
// keep (docs/RECONSTRUCTION.md, "Automatic fallback"). Group numbers are the plan's.
std::vector<GroupSensitivity> eight_bit_sensitivity(const Graph& g, const QuantPlan& plan, const std::vector<TensorData>& inputs,
                                                    CalibrationOptions co, const std::function<void(size_t, size_t)>& progress = {});

// The plan and encodings with the given activation groups left in floating point.
void drop_activation_groups(QuantPlan& plan, Encodings& enc, const std::vector<int>& groups, const std::string& reason);

// ---- bias correction (docs/QUANTIZATION.md §3a) --------------------------------------------------------

struct BiasShift {
  std::vector<double> shift;  // added to the bias, per output channel
  double relative = 0;        // RMS of the shift over RMS of the channels' standard deviations
};
struct BiasCorrection {
  std::map<std::string, BiasShift> shifts;  // by Conv node
};

// Empirical bias correction: for every Conv with quantized weights, in topological order, the bias shift that gives
// what the next layer reads in the QDQ graph (the output after the activation that alone reads the conv, and after
// the quantizers on the way; the corrections before it applied) the FP32 model's per-channel mean over `inputs` (one
// batch), rounded to the grid of the bias the export writes. One forward pass of the FP32 and QDQ graphs together.
BiasCorrection compute_bias_correction(const Graph& g, const QuantPlan& plan, const Encodings& enc,
                                       const std::vector<TensorData>& inputs, const std::string& device = "cpu");
// Adds the shifts to the convs' float biases (a conv without one gets one; a shared bias is copied first).
void apply_bias_correction(Graph& g, const BiasCorrection& bc);

}  // namespace inlierq::quant
