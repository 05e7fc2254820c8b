// minmax: the running min / max (ALGORITHMS.md §2). One pass, no histogram.
#include "quant/calibrators.h"

namespace inlierq::quant {

const Calibrator kMinmaxCalibrator = {
    "minmax", "[running min, running max]", false, false,
    [](const GroupStatistics& g, const CalibrationOptions&) { return std::pair<double, double>{g.min, g.max}; },
    nullptr};

}  // namespace inlierq::quant
