#include "recon/checkpoint.h"

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "inlierq/error.h"
#include "util/atomic_file.h"

namespace inlierq::recon {

namespace fs = std::filesystem;

namespace {

UnitReport report_from_json(const nlohmann::json& r) {
  UnitReport u;
  u.name = r.at("unit"), u.kind = r.at("kind"), u.pass = r.at("pass"), u.iters = r.at("iters");
  u.sqnr_before_db = r.at("sqnr_before_db"), u.sqnr_after_db = r.at("sqnr_after_db");
  u.loss_first = r.at("loss_first"), u.loss_last = r.at("loss_last"), u.seconds = r.at("seconds");
  u.holdout_before = r.value("holdout_loss_before", 0.0), u.holdout_after = r.value("holdout_loss_after", 0.0);
  u.kept_start = r.value("kept_start", false);
  return u;
}

}  // namespace

void write_checkpoint(const std::string& dir, const CheckpointState& st, int64_t& kill_counter) {
  fs::create_directories(dir);
  std::string blob;
  nlohmann::json wj = nlohmann::json::array();
  for (const auto& [tensor, hard] : st.hard_weights) {
    const at::Tensor h = hard.to(at::kCPU).to(at::kFloat).contiguous();
    wj.push_back({{"tensor", tensor}, {"offset", blob.size()}, {"numel", h.numel()}});
    blob.append(static_cast<const char*>(h.data_ptr()), static_cast<size_t>(h.numel()) * 4);
  }
  const std::string wfile = "weights-" + std::to_string(st.pass) + "-" + std::to_string(st.units_done) + ".bin";
  write_file_atomically((fs::path(dir) / wfile).string(), blob);
  // The new weights are on disk, the state that names them is not yet: the worst moment to die. A test
  // kills the process here (tests/py/test_signals.py); the previous state.json must still load.
  if (const char* k = std::getenv("INLIERQ_TEST_KILL_IN_CHECKPOINT"); k && std::atoll(k) == ++kill_counter) std::raise(SIGKILL);
  nlohmann::json reports = nlohmann::json::array();
  for (const auto& r : st.reports) reports.push_back(r.to_json());
  nlohmann::json scales = nlohmann::json::object();
  for (const auto& [gid, s] : st.act_scales) {
    uint32_t bits;
    std::memcpy(&bits, &s, 4);
    scales[std::to_string(gid)] = bits;  // exact float bits
  }
  nlohmann::json state{{"run", st.run}, {"pass", st.pass}, {"units_done", st.units_done}, {"iters", st.iters},
                       {"weights_file", wfile}, {"weights", wj}, {"act_scale_bits", scales},
                       {"reports", reports}};
  write_file_atomically((fs::path(dir) / "state.json").string(), state.dump(1));
  // Older weight files are no longer referenced; temporary files of a killed run are litter.
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if ((name.rfind("weights-", 0) == 0 && name != wfile) || name.rfind("state.json.tmp.", 0) == 0) fs::remove(e.path());
  }
}

CheckpointState read_checkpoint(const std::string& dir, const std::string& run,
                                const std::function<int64_t(const std::string&)>& numel_of) {
  if (dir.empty()) throw Error("--resume needs a checkpoint directory");
  const auto state_path = fs::path(dir) / "state.json";
  std::ifstream f(state_path);
  if (!f) throw Error("--resume: no checkpoint at '" + state_path.string() + "'");
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw Error(state_path.string() + ": corrupt checkpoint: " + e.what());
  }
  if (st.value("run", std::string()) != run)
    throw Error("--resume: the checkpoint in '" + dir +
                "' was written by a run with a different model, plan, calibration set or options");
  CheckpointState out;
  out.run = run;
  const auto wpath = fs::path(dir) / st.at("weights_file").get<std::string>();
  std::ifstream wf(wpath, std::ios::binary);
  const std::string blob((std::istreambuf_iterator<char>(wf)), std::istreambuf_iterator<char>());
  for (const auto& w : st.at("weights")) {
    const std::string tensor = w.at("tensor").get<std::string>();
    const size_t off = w.at("offset").get<size_t>(), numel = w.at("numel").get<size_t>();
    if (numel_of(tensor) != static_cast<int64_t>(numel) || off + numel * 4 > blob.size())
      throw Error("--resume: checkpoint weights in '" + wpath.string() + "' do not match the model");
    at::Tensor h = at::empty({static_cast<int64_t>(numel)}, at::kFloat);
    std::memcpy(h.data_ptr(), blob.data() + off, numel * 4);
    out.hard_weights.emplace_back(tensor, h);
  }
  for (const auto& [k, bits] : st.at("act_scale_bits").items()) {
    const uint32_t b = bits.get<uint32_t>();
    float s;
    std::memcpy(&s, &b, 4);
    out.act_scales[std::stoi(k)] = s;
  }
  for (const auto& r : st.at("reports")) out.reports.push_back(report_from_json(r));
  out.pass = st.at("pass");
  out.units_done = st.at("units_done");
  out.iters = st.value("iters", static_cast<int64_t>(-1));
  return out;
}

std::string checkpoint_run_key(const ReconOptions& o, int shards, int64_t holdout, int64_t images) {
  nlohmann::json j{{"fingerprint", o.checkpoint.fingerprint}, {"method", o.method}, {"iters", o.iters},
                   {"batch", o.batch}, {"seed", o.seed}, {"lr_rounding", o.rounding.lr},
                   {"lr_act", o.steps.lr}, {"brecq_lr_act", o.steps.brecq_lr}, {"step_update", step_update_names().name(o.steps.update)}, {"brecq_act_iters", o.brecq_act_iters},
                   {"drop_prob", o.qdrop.drop_prob}, {"input_mix", o.qdrop.input_mix}, {"lambda", o.rounding.lambda},
                   {"beta", {o.rounding.beta_start, o.rounding.beta_end}}, {"warmup", o.rounding.warmup}, {"rec_p", o.rec_p},
                   {"brecq_act_p", o.brecq_act_p}, {"max_block_compute", o.max_block_compute}, {"shards", shards}, {"holdout", holdout},
                   {"time_limit_s", o.time_limit_s},
                   {"fisher", o.fisher}, {"topk", o.heatmap_loss.topk}, {"aux_loss", inlier::aux_loss_names().name(o.heatmap_loss.aux_loss)},
                   {"topk_selection", inlier::topk_selection_names().name(o.heatmap_loss.topk_selection)}, {"inlier", o.inlier}, {"saliency", inlier::saliency_names().name(o.inlier_split.saliency)},
                   {"inlier_weighting", inlier::weighting_names().name(o.inlier_split.weighting)}, {"inlier_quantile", o.inlier_split.quantile}, {"inlier_init", inlier_init_names().name(o.inlier_init)},
                   {"inlier_fisher", o.inlier_fisher},
                   {"em", {o.inlier_split.em_max_iters, o.inlier_split.em_tolerance, o.inlier_split.em_variance_floor,
                           o.inlier_split.em_min_prior, o.inlier_split.em_min_separation}},
                   {"images", images}};
  return j.dump();
}

}  // namespace inlierq::recon
