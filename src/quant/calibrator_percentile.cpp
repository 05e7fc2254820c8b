// percentile: the (100 − p) % and p % values of the histogram (ALGORITHMS.md §2).
#include "inlierq/error.h"
#include "quant/calibrators.h"

namespace inlierq::quant {

const Calibrator kPercentileCalibrator = {
    "percentile", "the (100 - p) % and p % values (p = --percentile)", true, false,
    [](const GroupStatistics& g, const CalibrationOptions& o) -> std::pair<double, double> {
      const auto r = percentile_range(*g.hist, o.percentile);
      return {r.first, r.second};
    },
    [](const CalibrationOptions& o) {
      if (!(o.percentile > 50 && o.percentile <= 100))
        throw Error("--percentile must be in (50, 100], got " + std::to_string(o.percentile));
    }};

}  // namespace inlierq::quant
