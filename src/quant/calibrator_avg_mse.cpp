// avg_mse: the mse optimum of every 2-image slice of the calibration set, averaged (QDrop's COCO
// initialisation, its AvgMSEFastObserver on batches of 2). One whole-set search is dominated by the images
// with the widest tails; the mean of per-slice optima is usually tighter (docs/RECONSTRUCTION.md).
#include "quant/calibrators.h"

namespace inlierq::quant {

const Calibrator kAvgMseCalibrator = {
    "avg_mse", "the mean over 2-image slices of each slice's Lp (p = 2.4) optimum (QDrop's COCO init)", false, false,
    [](const GroupStatistics& g, const CalibrationOptions&) -> std::pair<double, double> {
      if (g.slices == 0) return {g.min, g.max};
      return {g.slice_lo, g.slice_hi};
    },
    nullptr, 2, false};

}  // namespace inlierq::quant
