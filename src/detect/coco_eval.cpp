// COCO bbox evaluation, a transcription of pycocotools' COCOeval (evaluate + accumulate + summarize)
// with its exact tie-breaking and floating-point order, indexed per (category, image) for speed.
#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "inlierq/coco_eval.h"
#include "inlierq/error.h"

namespace inlierq::coco {
namespace {

constexpr int T = 10, R = 101, A = 4, M = 3;
constexpr int kMaxDets[M] = {1, 10, 100};
constexpr double kAreaLo[A] = {0, 0, 32 * 32, 96 * 96};
constexpr double kAreaHi[A] = {1e10, 32 * 32, 96 * 96, 1e10};
const char* const kAreaLabel[A] = {"all", "small", "medium", "large"};

// numpy.linspace as COCOeval builds its thresholds (i * step + start, endpoint stored exactly): a
// recall or IoU that lands exactly on a threshold must compare the same way as in numpy.
template <int N>
std::array<double, N> linspace(double start, double stop) {
  std::array<double, N> v{};
  const double step = (stop - start) / (N - 1);
  for (int i = 0; i < N - 1; ++i) v[i] = i * step + start;
  v[N - 1] = stop;
  return v;
}
const std::array<double, T> kIouThrs = linspace<T>(0.5, 0.95);
const std::array<double, R> kRecThrs = linspace<R>(0.0, 1.0);

// maskApi.c bbIou, operation for operation; a crowd region is measured against the detection alone.
double box_iou(const Box& d, const Box& g, bool crowd) {
  double w = std::fmin(d.w + d.x, g.w + g.x) - std::fmax(d.x, g.x);
  if (w <= 0) return 0;
  double h = std::fmin(d.h + d.y, g.h + g.y) - std::fmax(d.y, g.y);
  if (h <= 0) return 0;
  double i = w * h, da = d.w * d.h, ga = g.w * g.h;
  return i / (crowd ? da : da + ga - i);
}

// Items grouped by cell with input order kept inside a cell (a counting sort); cell -1 drops an item.
struct Buckets {
  std::vector<size_t> start;
  std::vector<size_t> items;
  Buckets(const std::vector<long>& cell_of, size_t num_cells) : start(num_cells + 1, 0) {
    for (long c : cell_of)
      if (c >= 0) ++start[c + 1];
    for (size_t c = 0; c < num_cells; ++c) start[c + 1] += start[c];
    items.resize(start.back());
    std::vector<size_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < cell_of.size(); ++i)
      if (cell_of[i] >= 0) items[fill[cell_of[i]]++] = i;
  }
  size_t size(size_t c) const { return start[c + 1] - start[c]; }
  const size_t* begin(size_t c) const { return items.data() + start[c]; }
};

enum : uint8_t { kFP = 0, kTP = 1, kIgnored = 2 };

// A detection among the first 100 of its image, with its outcome per (area range, IoU threshold).
struct DetOutcome {
  double score;
  int rank;  // position in its image after the score sort; maxDets keeps rank < maxDet
  std::array<uint8_t, A * T> code;
};

// COCOeval.computeIoU + evaluateImg for one (image, category), all area ranges. dts are sorted and
// truncated; num_gt[a] counts the GT that is not ignored in area range a.
void evaluate_cell(const std::vector<const Annotation*>& gts, const std::vector<const Detection*>& dts,
                   std::vector<DetOutcome>& out, std::array<size_t, A>& num_gt) {
  const size_t G = gts.size(), D = dts.size(), first = out.size();
  std::vector<double> iou(D * G);
  for (size_t d = 0; d < D; ++d)
    for (size_t g = 0; g < G; ++g) iou[d * G + g] = box_iou(dts[d]->bbox, gts[g]->bbox, gts[g]->iscrowd);
  for (size_t d = 0; d < D; ++d) out.push_back({dts[d]->score, static_cast<int>(d), {}});

  std::vector<size_t> order;  // GT in matching order: ignored last, otherwise file order
  std::vector<uint8_t> ignored(G), taken(G);
  for (int a = 0; a < A; ++a) {
    order.clear();
    for (size_t g = 0; g < G; ++g) {
      double area = gts[g]->area;
      ignored[g] = gts[g]->iscrowd || area < kAreaLo[a] || area > kAreaHi[a];
      if (!ignored[g]) order.push_back(g);
    }
    num_gt[a] += order.size();
    for (size_t g = 0; g < G; ++g)
      if (ignored[g]) order.push_back(g);

    for (int t = 0; t < T; ++t) {
      std::fill(taken.begin(), taken.end(), 0);
      for (size_t d = 0; d < D; ++d) {
        // Greedy: best IoU >= threshold; on equal IoU the later GT wins; a crowd can absorb many
        // detections; once a real GT matched, ignored GT (sorted last) are not considered.
        double best = std::min(kIouThrs[t], 1 - 1e-10);
        long m = -1;
        for (size_t k = 0; k < G; ++k) {
          size_t g = order[k];
          if (taken[g] && !gts[g]->iscrowd) continue;
          if (m >= 0 && !ignored[m] && ignored[g]) break;
          if (iou[d * G + g] < best) continue;
          best = iou[d * G + g];
          m = static_cast<long>(g);
        }
        uint8_t code;
        if (m >= 0) {
          taken[m] = 1;
          code = ignored[m] ? kIgnored : kTP;
        } else {
          double area = dts[d]->bbox.w * dts[d]->bbox.h;  // loadRes sets area = w*h
          code = area < kAreaLo[a] || area > kAreaHi[a] ? kIgnored : kFP;
        }
        out[first + d].code[a * T + t] = code;
      }
    }
  }
}

// Mean of the entries > -1 (COCOeval.summarize), -1 when there are none.
struct Mean {
  double sum = 0;
  size_t n = 0;
  void add(double v) {
    if (v > -1) sum += v, ++n;
  }
  double get() const { return n ? sum / static_cast<double>(n) : -1; }
};

}  // namespace

EvalResult evaluate(const Dataset& gt, const std::vector<Detection>& dets, const std::vector<int64_t>& img_ids) {
  std::unordered_map<int64_t, long> img_index;  // GT image id -> position in the evaluated subset, or -1
  for (const Image& im : gt.images) img_index.emplace(im.id, -1);
  std::vector<int64_t> imgs = img_ids;
  if (imgs.empty())
    for (const auto& kv : img_index) imgs.push_back(kv.first);
  std::sort(imgs.begin(), imgs.end());  // COCOeval: np.unique(imgIds); the order breaks score ties
  imgs.erase(std::unique(imgs.begin(), imgs.end()), imgs.end());
  for (size_t i = 0; i < imgs.size(); ++i) {
    auto it = img_index.find(imgs[i]);
    if (it == img_index.end())
      throw Error("COCO evaluation: image id " + std::to_string(imgs[i]) + " is not in the ground truth");
    it->second = static_cast<long>(i);
  }

  std::vector<Category> cats = gt.categories;
  std::stable_sort(cats.begin(), cats.end(), [](const Category& a, const Category& b) { return a.id < b.id; });
  cats.erase(std::unique(cats.begin(), cats.end(), [](const Category& a, const Category& b) { return a.id == b.id; }),
             cats.end());
  std::unordered_map<int64_t, long> cat_index;
  for (size_t k = 0; k < cats.size(); ++k) cat_index.emplace(cats[k].id, static_cast<long>(k));

  const size_t I = imgs.size(), K = cats.size();
  auto cell_of = [&](int64_t image_id, int64_t category_id) -> long {
    auto ii = img_index.find(image_id);
    auto kk = cat_index.find(category_id);
    if (ii == img_index.end() || ii->second < 0 || kk == cat_index.end()) return -1;
    return kk->second * static_cast<long>(I) + ii->second;
  };
  std::vector<long> gt_cell(gt.annotations.size()), dt_cell(dets.size());
  for (size_t j = 0; j < gt.annotations.size(); ++j)
    gt_cell[j] = cell_of(gt.annotations[j].image_id, gt.annotations[j].category_id);
  EvalResult res;
  for (size_t j = 0; j < dets.size(); ++j) {
    const Detection& d = dets[j];
    if (!img_index.count(d.image_id))  // pycocotools' loadRes refuses such results too
      throw Error("COCO evaluation: detection " + std::to_string(j) + " is on image id " + std::to_string(d.image_id) +
                  ", which is not in the ground truth");
    if (std::isnan(d.score)) throw Error("COCO evaluation: detection " + std::to_string(j) + " has a NaN score");
    dt_cell[j] = cell_of(d.image_id, d.category_id);
    res.num_detections += dt_cell[j] >= 0;
  }
  const Buckets gt_by_cell(gt_cell, K * I), dt_by_cell(dt_cell, K * I);

  // precision[t][r][k][a][m] and recall[t][k][a][m], as COCOeval.accumulate lays them out.
  std::vector<double> precision(size_t(T) * R * K * A * M, -1), recall(size_t(T) * K * A * M, -1);
  auto P = [&](int t, int r, size_t k, int a, int m) -> double& {
    return precision[(((size_t(t) * R + r) * K + k) * A + a) * M + m];
  };
  auto Rc = [&](int t, size_t k, int a, int m) -> double& { return recall[((size_t(t) * K + k) * A + a) * M + m]; };

  std::vector<const Annotation*> gts;
  std::vector<const Detection*> dts;
  std::vector<DetOutcome> outcomes;
  std::vector<size_t> sorted;
  std::vector<const DetOutcome*> kept;  // sorted outcomes within maxDets
  std::vector<double> rc, pr;
  for (size_t k = 0; k < K; ++k) {
    outcomes.clear();
    std::array<size_t, A> num_gt{};
    for (size_t i = 0; i < I; ++i) {
      const size_t c = k * I + i;
      gts.clear();
      dts.clear();
      for (const size_t* p = gt_by_cell.begin(c); p != gt_by_cell.begin(c) + gt_by_cell.size(c); ++p)
        gts.push_back(&gt.annotations[*p]);
      for (const size_t* p = dt_by_cell.begin(c); p != dt_by_cell.begin(c) + dt_by_cell.size(c); ++p)
        dts.push_back(&dets[*p]);
      if (gts.empty() && dts.empty()) continue;
      // np.argsort(-scores, kind='mergesort'): ties keep file order.
      std::stable_sort(dts.begin(), dts.end(), [](const Detection* a, const Detection* b) { return a->score > b->score; });
      if (dts.size() > size_t(kMaxDets[M - 1])) dts.resize(kMaxDets[M - 1]);
      evaluate_cell(gts, dts, outcomes, num_gt);
    }
    // Outcomes are concatenated in image order, so a stable sort breaks ties as accumulate() does.
    sorted.resize(outcomes.size());
    for (size_t j = 0; j < sorted.size(); ++j) sorted[j] = j;
    std::stable_sort(sorted.begin(), sorted.end(),
                     [&](size_t a, size_t b) { return outcomes[a].score > outcomes[b].score; });

    for (int m = 0; m < M; ++m) {
      kept.clear();
      for (size_t j : sorted)
        if (outcomes[j].rank < kMaxDets[m]) kept.push_back(&outcomes[j]);
      const size_t nd = kept.size();
      for (int a = 0; a < A; ++a) {
        if (num_gt[a] == 0) continue;
        const double npig = static_cast<double>(num_gt[a]);
        for (int t = 0; t < T; ++t) {
          rc.resize(nd);
          pr.resize(nd);
          double tp = 0, fp = 0;
          for (size_t j = 0; j < nd; ++j) {
            uint8_t code = kept[j]->code[a * T + t];
            tp += code == kTP;
            fp += code == kFP;
            rc[j] = tp / npig;
            pr[j] = tp / (fp + tp + DBL_EPSILON);
          }
          Rc(t, k, a, m) = nd ? rc.back() : 0;
          for (size_t j = nd; j-- > 1;) pr[j - 1] = std::max(pr[j - 1], pr[j]);  // precision envelope
          size_t j = 0;  // np.searchsorted(rc, recThrs, side='left')
          for (int r = 0; r < R; ++r) {
            while (j < nd && rc[j] < kRecThrs[r]) ++j;
            P(t, r, k, a, m) = j < nd ? pr[j] : 0;
          }
        }
      }
    }
  }

  // COCOeval.summarize: iou < 0 means all thresholds; .50 and .75 are kIouThrs[0] and [5].
  auto ap = [&](int t_only, int a, int m) {
    Mean mean;
    for (int t = 0; t < T; ++t)
      if (t_only < 0 || t == t_only)
        for (int r = 0; r < R; ++r)
          for (size_t k = 0; k < K; ++k) mean.add(P(t, r, k, a, m));
    return mean.get();
  };
  auto ar = [&](int a, int m) {
    Mean mean;
    for (int t = 0; t < T; ++t)
      for (size_t k = 0; k < K; ++k) mean.add(Rc(t, k, a, m));
    return mean.get();
  };
  res.stats = {ap(-1, 0, 2), ap(0, 0, 2), ap(5, 0, 2), ap(-1, 1, 2), ap(-1, 2, 2), ap(-1, 3, 2),
               ar(0, 0),     ar(0, 1),    ar(0, 2),    ar(1, 2),     ar(2, 2),     ar(3, 2)};
  for (size_t k = 0; k < K; ++k) {
    Mean mean;
    for (int t = 0; t < T; ++t)
      for (int r = 0; r < R; ++r) mean.add(P(t, r, k, 0, 2));
    res.per_class.push_back({cats[k].id, cats[k].name, mean.get()});
  }
  res.num_images = I;
  return res;
}

std::string format_summary(const EvalResult& r) {
  struct Line {
    bool ap;
    const char* iou;
    int area, max_dets;
  };
  static const Line kLines[12] = {{true, "0.50:0.95", 0, 100}, {true, "0.50", 0, 100},  {true, "0.75", 0, 100},
                                  {true, "0.50:0.95", 1, 100}, {true, "0.50:0.95", 2, 100}, {true, "0.50:0.95", 3, 100},
                                  {false, "0.50:0.95", 0, 1},  {false, "0.50:0.95", 0, 10}, {false, "0.50:0.95", 0, 100},
                                  {false, "0.50:0.95", 1, 100}, {false, "0.50:0.95", 2, 100}, {false, "0.50:0.95", 3, 100}};
  std::string out;
  for (int i = 0; i < 12; ++i) {
    const Line& l = kLines[i];
    out += fmt::format(" {:<18} {} @[ IoU={:<9} | area={:>6} | maxDets={:>3} ] = {:.3f}\n",
                       l.ap ? "Average Precision" : "Average Recall", l.ap ? "(AP)" : "(AR)", l.iou,
                       kAreaLabel[l.area], l.max_dets, r.stats[i]);
  }
  return out;
}

std::string summary_json(const EvalResult& r) {
  nlohmann::ordered_json j;
  for (size_t i = 0; i < kStatNames.size(); ++i) j[kStatNames[i]] = r.stats[i];
  j["num_images"] = r.num_images;
  j["num_detections"] = r.num_detections;
  j["per_class"] = nlohmann::ordered_json::array();
  for (const ClassAP& c : r.per_class) j["per_class"].push_back({{"category_id", c.category_id}, {"name", c.name}, {"AP", c.ap}});
  return j.dump();
}

}  // namespace inlierq::coco
