#pragma once
// The on-disk format of a reconstruction checkpoint (docs/RECONSTRUCTION.md, "Determinism, progress,
// checkpoints"): DIR/state.json plus one weights file that the state names, both written atomically.
// Internal header (exposes ATen). The reconstructor decides what goes in; this file only writes and reads it.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "inlierq/recon.h"

namespace inlierq::recon {

struct CheckpointState {
  std::string run;         // the options' key: a checkpoint of another run is refused
  int pass = 1;
  size_t units_done = 0;
  int64_t iters = -1;      // iterations per unit the run chose (-1 in checkpoints that predate the field)
  std::vector<std::pair<std::string, at::Tensor>> hard_weights;  // weight tensor → hardened values (float)
  std::map<int, float> act_scales;                                 // scale group → learned step (exact bits)
  std::vector<UnitReport> reports;
};

// Writes the weights file, then state.json that names it, then removes the weights files it replaced.
// `kill_counter` counts the checkpoints this process wrote: when it reaches INLIERQ_TEST_KILL_IN_CHECKPOINT,
// the process is killed between the two writes (tests/py/test_signals.py).
void write_checkpoint(const std::string& dir, const CheckpointState& state, int64_t& kill_counter);

// Reads DIR's checkpoint; refuses a missing or corrupt one and one whose run key is not `run`. The weights
// come back flat (CPU float), in the order of the state; `numel_of(tensor)` gives the model's element count
// of each (-1 for an unknown tensor), which they must match.
CheckpointState read_checkpoint(const std::string& dir, const std::string& run,
                                const std::function<int64_t(const std::string&)>& numel_of);

// The options that decide a run's results, as a key that a checkpoint must match to be resumed: every
// option that changes what is learned, the shard count and held-out images, and the run's fingerprint.
std::string checkpoint_run_key(const ReconOptions& opts, int shards, int64_t holdout, int64_t images);

}  // namespace inlierq::recon
