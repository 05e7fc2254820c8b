#pragma once
// The reconstruction methods' pass schedules (src/recon/methods.cpp). Internal header (exposes ATen).
#include <string>
#include <vector>

#include "inlierq/recon.h"
#include "recon/trainer.h"

namespace inlierq::recon {

// The passes of a base method (opts.method), with their iterations, losses and learning rates. Throws Error
// for a name that is not a base method's.
std::vector<PassSpec> method_passes(const ReconOptions& opts);
// Whether the method's units are single compute layers (AdaRound) instead of blocks.
bool method_is_layerwise(const std::string& method);

}  // namespace inlierq::recon
