#include "quant/calibrators.h"

#include "inlierq/error.h"

namespace inlierq::quant {

const std::vector<const Calibrator*>& calibrators() {
  static const std::vector<const Calibrator*> table = {&kMinmaxCalibrator, &kPercentileCalibrator, &kEntropyCalibrator,
                                                       &kMseCalibrator, &kAvgMseCalibrator};
  return table;
}

std::vector<std::string> calibration_methods() {
  std::vector<std::string> names;
  for (const auto* c : calibrators()) names.push_back(c->name);
  return names;
}

const Calibrator& find_calibrator(const std::string& name) {
  for (const auto* c : calibrators())
    if (name == c->name) return *c;
  throw Error("unknown calibration method '" + name + "' (expected " + join_names(calibration_methods()) + ")");
}

}  // namespace inlierq::quant
