#pragma once
// The activation calibrators as a table (ONNX Runtime's calibrators chosen by name): one row per
// calibrator, each defined in its own calibrator_<name>.cpp. calibrate() streams the statistics a row asks
// for and calls its range(); tests loop over the table, so a new row is tested without a new test.
#include <string>
#include <utility>
#include <vector>

#include "inlierq/names.h"
#include "inlierq/quant.h"
#include "quant/range_search.h"

namespace inlierq::quant {

// What calibrate() has gathered for one scale group when it asks a calibrator for the group's range.
struct GroupStatistics {
  double min = 0, max = 0;          // running min / max over every member and image
  const Histogram* hist = nullptr;  // the second pass's histogram (null for one-pass calibrators)
  QuantGrid grid;
  bool silu_input = false;          // every member is a SiLU pre-activation
  // Per-slice calibrators: the mean of the mse optima of the slices of `per_slice_images` images (0 slices
  // when no row asked for them).
  double slice_lo = 0, slice_hi = 0;
  int slices = 0;
};

struct Calibrator {
  const char* name;
  const char* summary;    // one line, for --help and error messages
  bool histogram;         // needs the second pass: a histogram over [min, max] ...
  bool histogram_of_abs;  // ... or of |x| over [0, max|x|]
  // The (unsymmetrised) range of a group; calibrate() makes it symmetric where the grid is.
  std::pair<double, double> (*range)(const GroupStatistics& g, const CalibrationOptions& o);
  void (*validate)(const CalibrationOptions& o);  // option checks; may be null
  // > 0: calibrate() also finds the mse optimum of every slice of this many images of each batch and hands
  // the slices' mean to range() (GroupStatistics::slice_lo / slice_hi).
  int per_slice_images = 0;
  bool in_auto = true;  // a candidate of `--method auto`
};

extern const Calibrator kMinmaxCalibrator, kPercentileCalibrator, kEntropyCalibrator, kMseCalibrator, kAvgMseCalibrator;

const std::vector<const Calibrator*>& calibrators();
// Error listing the known names when there is no calibrator `name`.
const Calibrator& find_calibrator(const std::string& name);
using inlierq::join_names;  // include/inlierq/names.h

}  // namespace inlierq::quant
