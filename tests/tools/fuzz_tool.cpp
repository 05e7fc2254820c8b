// Fuzz driver for bench/fuzz.py: feeds deterministically mutated copies of seed files through the code
// that reads untrusted input, and counts what happens. Built with the tests; bench/fuzz.py runs it from
// the sanitizer preset (build-asan: AddressSanitizer + UndefinedBehaviorSanitizer).
//
//   inlierq_fuzz KIND --count N [--first I] [--seed S] [--runs R] [--tmp DIR] SEED...
//
// KIND and its seeds:
//   models       ONNX files: load_onnx_bytes, summarize, derive_plan; R survivors also run forward.
//   images       JPEG/PNG/BMP files: probe_image on the file, decode_image on the bytes, preprocess.
//   profiles     PROFILE.json=MODEL.onnx pairs: load/parse_profile, preprocess, make_decoder + decode of
//                the model's real outputs, NMS, the heatmap and its top-K loss.
//   annotations  COCO instances files: load/parse_dataset, then evaluate with the GT boxes as detections.
//   detections   --annotations GT.json, then COCO results files: load/parse_detections, evaluate.
//
// Every mutant must be accepted or rejected with inlierq::Error. Any other exception is a finding; a
// crash or sanitizer report aborts the process after printing the mutant (its index replays it alone:
// --first I --count I+1). The last stdout line is a JSON summary; the exit status is 1 with findings.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "detect/decoder.h"
#include "fuzz_mutators.h"
#include "inlier/saliency.h"
#include "inlierq/coco_eval.h"
#include "inlierq/detect.h"
#include "inlierq/error.h"
#include "inlierq/image.h"
#include "inlierq/onnx_io.h"
#include "inlierq/preprocess.h"
#include "inlierq/quant.h"
#include "inlierq/runtime.h"
#include "runtime/executor.h"
#include "runtime/tensor_convert.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

using namespace inlierq;

namespace {

std::string g_current;  // the mutant being tried, printed by the sanitizer's death callback

void print_current() { std::fprintf(stderr, "\nfuzz: died on %s\n", g_current.c_str()); }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read seed " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

// Messages start with the file's path; its base name is enough to group them.
std::string shorten_paths(std::string msg, const std::vector<std::string>& paths) {
  for (const auto& p : paths) {
    const std::string base = p.substr(p.find_last_of('/') + 1);
    for (size_t at = msg.find(p); !p.empty() && at != std::string::npos; at = msg.find(p, at + base.size()))
      msg.replace(at, p.size(), base);
  }
  return msg;
}

struct Stats {
  uint64_t tried = 0, accepted = 0, rejected = 0, deep = 0;  // deep: went past parsing into later stages
  std::map<std::string, uint64_t> reasons;
  std::vector<std::string> findings;

  void reject(const std::string& msg) {
    ++rejected;
    // The message's stem without names and numbers, so similar rejections count together.
    std::string stem;
    for (char c : msg.substr(0, 160)) {
      if (c == '\'' || c == '"') stem += '*';
      else if (std::isdigit(static_cast<unsigned char>(c))) stem += '#';
      else stem += c;
    }
    // Drop quoted names: keep text outside *...* pairs.
    std::string out;
    bool quoted = false;
    for (char c : stem) {
      if (c == '*') { quoted = !quoted; if (!quoted) out += "'…'"; continue; }
      if (!quoted) out += c;
    }
    if (out.size() > 70) out.resize(70);
    reasons[out]++;
  }
};

// PNG chunks carry CRC-32s, so most byte mutants die at the first checksum; recomputing them lets half
// the PNG mutants reach the chunk parsers and the inflater.
void fix_png_crcs(std::string& s) {
  size_t at = 8;
  while (at + 12 <= s.size()) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data() + at);
    const uint32_t len = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
    if (len > s.size() - at - 12) break;
    const uint32_t crc = static_cast<uint32_t>(crc32(0, p + 4, len + 4));
    for (int b = 0; b < 4; ++b) s[at + 8 + len + b] = static_cast<char>((crc >> (24 - 8 * b)) & 0xFF);
    at += 12 + len;
  }
}

bool is_png(const std::string& s) { return s.size() > 8 && std::memcmp(s.data(), "\x89PNG\r\n\x1a\n", 8) == 0; }

struct Args {
  std::string kind, tmp = "/tmp", annotations;
  uint64_t count = 1000, first = 0;
  uint32_t seed = 1;
  int runs = 20;
  std::vector<std::string> seeds;
};

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw std::runtime_error("usage: inlierq_fuzz models|images|profiles|annotations|detections --count N SEED...");
  Args a;
  a.kind = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(s + " needs a value");
      return argv[++i];
    };
    if (s == "--count") a.count = std::stoull(value());
    else if (s == "--first") a.first = std::stoull(value());
    else if (s == "--seed") a.seed = static_cast<uint32_t>(std::stoul(value()));
    else if (s == "--runs") a.runs = std::stoi(value());
    else if (s == "--tmp") a.tmp = value();
    else if (s == "--annotations") a.annotations = value();
    else a.seeds.push_back(s);
  }
  if (a.seeds.empty()) throw std::runtime_error("no seed files");
  return a;
}

// Box detections for every GT annotation with a deterministic score: a complete, valid results list.
std::vector<coco::Detection> gt_as_detections(const coco::Dataset& gt) {
  std::vector<coco::Detection> dets;
  for (size_t k = 0; k < gt.annotations.size(); ++k) {
    const auto& a = gt.annotations[k];
    dets.push_back({a.image_id, a.category_id, a.bbox, 0.1 + 0.8 * static_cast<double>(k % 10) / 10});
  }
  return dets;
}

struct ProfileSeed {
  std::string text;
  Graph graph;
  rt::TensorMap outputs;
};

}  // namespace

int main(int argc, char** argv) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_set_death_callback(print_current);
#endif
  std::set_terminate([] {
    print_current();
    std::abort();
  });
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inlierq_fuzz: %s\n", e.what());
    return 2;
  }
  at::set_num_threads(1);
  Stats st;
  const std::string tmp = args.tmp + "/inlierq_fuzz_" + std::to_string(::getpid());
  std::vector<std::string> originals;
  std::vector<ProfileSeed> profiles;
  coco::Dataset gt;
  int runs_done = 0;
  try {
    if (args.kind == "profiles") {
      for (const auto& s : args.seeds) {
        const auto eq = s.find('=');
        if (eq == std::string::npos) throw std::runtime_error("profiles seeds are PROFILE.json=MODEL.onnx, got " + s);
        ProfileSeed ps;
        ps.text = read_file(s.substr(0, eq));
        ps.graph = load_onnx(s.substr(eq + 1));
        const ModelProfile p = parse_profile(nlohmann::json::parse(ps.text), s.substr(0, eq));
        Image gray(97, 61, 3, 114);
        const Preprocessed pre = preprocess(gray, p.preprocess);
        rt::Executor ex(ps.graph);
        ps.outputs = ex.run({{ps.graph.inputs[0].name, rt::to_aten(pre.tensor)}});
        profiles.push_back(std::move(ps));
      }
    } else {
      for (const auto& s : args.seeds) originals.push_back(read_file(s));
      if (args.kind == "detections") gt = coco::load_dataset(args.annotations);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inlierq_fuzz: seeds: %s\n", e.what());
    return 2;
  }
  const size_t num_seeds = args.kind == "profiles" ? profiles.size() : originals.size();
  // Longest first, so a seed "A.json=B.onnx" is shortened before its own "A.json".
  std::vector<std::string> paths = {tmp + ".json", tmp};
  for (const auto& s : args.seeds) {
    paths.push_back(s);
    if (s.find('=') != std::string::npos) paths.push_back(s.substr(0, s.find('='))), paths.push_back(s.substr(s.find('=') + 1));
  }
  std::sort(paths.begin(), paths.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });

  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = args.first; i < args.count; ++i) {
    const size_t m = i % num_seeds;
    auto rng = fuzz::mutant_rng(args.seed, i);
    std::string log;
    const std::string seed_name = args.seeds[m].substr(0, args.seeds[m].find('='));
    g_current = "mutant " + std::to_string(i) + " of " + seed_name + " (while mutating)";
    ++st.tried;
    try {
      if (args.kind == "models") {
        const bool structural = i % 4 == 3;
        const std::string bytes = structural ? fuzz::mutate_model_structure(originals[m], rng, log)
                                             : fuzz::mutate_bytes(originals[m], rng, log);
        g_current = "mutant " + std::to_string(i) + " of " + seed_name + ":" + log;
        Graph g = load_onnx_bytes(bytes, seed_name);
        summarize(g);
        quant::derive_plan(g, quant::PlacementOptions{});
        ++st.deep;
        if (runs_done < args.runs && (structural || i % 16 == 0)) {
          ++runs_done;
          fuzz::run_once(g);
        }
      } else if (args.kind == "images") {
        std::string bytes = fuzz::mutate_bytes(originals[m], rng, log, 2048);
        if (is_png(bytes) && rng() % 2) fix_png_crcs(bytes), log += " crc";
        g_current = "mutant " + std::to_string(i) + " of " + seed_name + ":" + log;
        write_file(tmp, bytes);
        int w = 0, h = 0;
        const std::string probe = probe_image(tmp, &w, &h);
        const Image img = decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), seed_name);
        if (img.pixels.size() != static_cast<size_t>(img.width) * img.height * img.channels || img.channels != 3)
          throw std::logic_error("decoded image has inconsistent size");
        if (probe.empty() && (w != img.width || h != img.height))
          throw std::logic_error("probe_image and decode_image disagree on the size");
        ++st.deep;
        preprocess(img, preprocess_preset("yolox", 64));
      } else if (args.kind == "profiles") {
        const ProfileSeed& ps = profiles[m];
        ModelProfile p;
        if (i % 4 == 0) {
          g_current = "mutant " + std::to_string(i) + " of " + seed_name + ":";
          const std::string text = fuzz::mutate_bytes(ps.text, rng, log, 4096);
          g_current += log;
          write_file(tmp + ".json", text);
          p = load_profile(tmp + ".json");
        } else {
          nlohmann::json doc = nlohmann::json::parse(ps.text);
          fuzz::mutate_json(doc, rng, log);
          g_current = "mutant " + std::to_string(i) + " of " + seed_name + ":" + log;
          p = parse_profile(doc, seed_name);
        }
        ++st.deep;
        Image img(50 + static_cast<int>(rng() % 60), 30 + static_cast<int>(rng() % 60), 3, 90);
        const Preprocessed pre = preprocess(img, p.preprocess);
        auto decoder = detect::make_decoder(p.decoder, ps.graph, p.name);
        auto boxes = decoder->decode(ps.outputs, p.preprocess.width, p.preprocess.height, p.score_threshold);
        for (auto& per_image : boxes) {
          for (auto& d : per_image) d.xyxy = pre.transform.to_original(d.xyxy, true);
          class_wise_nms(per_image, p.nms_iou, p.max_detections);
        }
        if (!p.heatmap.is_null()) {
          const at::Tensor heat = inlier::heatmap_logits(p.heatmap, ps.outputs);
          inlier::topk_aux_loss(heat);
        }
      } else if (args.kind == "annotations" || args.kind == "detections") {
        const bool annotations = args.kind == "annotations";
        std::string text;
        if (i % 4 == 0) {
          text = fuzz::mutate_bytes(originals[m], rng, log, 4096);
        } else {
          nlohmann::json doc = nlohmann::json::parse(originals[m]);
          fuzz::mutate_json(doc, rng, log);
          text = doc.dump();
        }
        g_current = "mutant " + std::to_string(i) + " of " + seed_name + ":" + log;
        if (annotations) {
          const coco::Dataset d = coco::parse_dataset(text, seed_name);
          ++st.deep;
          coco::evaluate(d, gt_as_detections(d));
        } else {
          const auto dets = coco::parse_detections(text, seed_name);
          ++st.deep;
          coco::evaluate(gt, dets);
        }
      } else {
        std::fprintf(stderr, "inlierq_fuzz: unknown kind '%s'\n", args.kind.c_str());
        return 2;
      }
      ++st.accepted;
    } catch (const Error& e) {
      st.reject(shorten_paths(e.what(), paths));
    } catch (const std::exception& e) {
      st.findings.push_back(g_current + ": " + typeid(e).name() + ": " + e.what());
      std::fprintf(stderr, "FINDING %s: %s\n", g_current.c_str(), e.what());
    }
    if ((i + 1) % 5000 == 0) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "fuzz %s: %llu/%llu in %.0f s\n", args.kind.c_str(), static_cast<unsigned long long>(i + 1),
                   static_cast<unsigned long long>(args.count), s);
    }
  }
  std::remove(tmp.c_str());
  std::remove((tmp + ".json").c_str());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json summary = {{"kind", args.kind},         {"first", args.first},       {"count", args.count},
                            {"seed", args.seed},         {"tried", st.tried},         {"accepted", st.accepted},
                            {"rejected", st.rejected},   {"deep", st.deep},           {"forward_runs", runs_done},
                            {"seconds", secs},           {"findings", st.findings},   {"reasons", st.reasons},
#if defined(__SANITIZE_ADDRESS__)
                            {"sanitizers", "address,undefined"}
#else
                            {"sanitizers", "none"}
#endif
  };
  std::printf("%s\n", summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return st.findings.empty() ? 0 : 1;
}
