#include "inlierq/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>

namespace inlierq::report {

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += t[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = uint8_t(in[i]) << 16;
    out += t[v >> 18], out += t[(v >> 12) & 63], out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[v >> 18], out += t[(v >> 12) & 63], out += t[(v >> 6) & 63], out += '=';
  }
  return out;
}

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

namespace {
// Dark blue → cyan → yellow → red.
void heat(float v, uint8_t rgb[3]) {
  v = std::clamp(v, 0.0f, 1.0f);
  const float stops[4][3] = {{20, 30, 140}, {0, 200, 220}, {250, 230, 40}, {220, 30, 20}};
  const float x = v * 3;
  const int k = std::min(2, static_cast<int>(x));
  const float f = x - k;
  for (int c = 0; c < 3; ++c) rgb[c] = static_cast<uint8_t>(stops[k][c] * (1 - f) + stops[k + 1][c] * f);
}
}  // namespace

Image overlay(const Image& img, const std::vector<float>& map, int rows, int cols,
              const std::function<std::pair<float, float>(float, float)>& to_cell, float alpha) {
  Image out = img;
  if (out.channels != 3) return out;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      const auto [cx, cy] = to_cell(x + 0.5f, y + 0.5f);
      const int c = static_cast<int>(std::floor(cx)), r = static_cast<int>(std::floor(cy));
      if (c < 0 || r < 0 || c >= cols || r >= rows) continue;
      uint8_t rgb[3];
      heat(map[static_cast<size_t>(r) * cols + c], rgb);
      uint8_t* p = out.at(x, y);
      for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(p[k] * (1 - alpha) + rgb[k] * alpha);
    }
  return out;
}

Image side_by_side(const std::vector<Image>& images) {
  int w = 0, h = 0;
  for (const auto& im : images) w += im.width + 4, h = std::max(h, im.height);
  Image out(std::max(1, w - 4), std::max(1, h), 3, 255);
  int x0 = 0;
  for (const auto& im : images) {
    for (int y = 0; y < im.height; ++y)
      for (int x = 0; x < im.width; ++x) {
        const uint8_t* s = im.at(x, y);
        uint8_t* d = out.at(x0 + x, y);
        for (int k = 0; k < 3; ++k) d[k] = s[std::min(k, im.channels - 1)];
      }
    x0 += im.width + 4;
  }
  return out;
}

namespace {

// A plot's frame: linear axes over [x_lo, x_hi] × [y_lo, y_hi], title, five ticks per axis, the x-axis label and, when
// budget_x > 0, a dashed vertical budget line.
struct PlotFrame {
  double width, height, x_lo, x_hi, y_lo, y_hi;
  double ml = 44, mr = 12, mt = 24, mb = 30;
  double pw() const { return width - ml - mr; }
  double ph() const { return height - mt - mb; }
  double X(double v) const { return ml + (v - x_lo) / (x_hi - x_lo) * pw(); }
  double Y(double v) const { return mt + ph() - (v - y_lo) / (y_hi - y_lo) * ph(); }
  std::string open(const std::string& title, const std::string& x_label, const std::function<std::string(double)>& x_tick,
                   const std::function<std::string(double)>& y_tick, double budget_x) const {
    std::string svg = fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">)", width, height);
    svg += fmt::format(R"(<rect width="{}" height="{}" fill="white"/><text x="{}" y="15" font-weight="bold">{}</text>)", width, height, ml, title);
    svg += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="black"/><line x1="{0}" y1="{3}" x2="{0}" y2="{1}" stroke="black"/>)",
                       ml, mt + ph(), ml + pw(), mt);
    for (int k = 0; k <= 4; ++k) {
      const double xv = x_lo + (x_hi - x_lo) * k / 4, yv = y_lo + (y_hi - y_lo) * k / 4;
      svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">{}</text>)", X(xv), mt + ph() + 14, x_tick(xv));
      svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="end">{}</text>)", ml - 3, Y(yv) + 4, y_tick(yv));
    }
    svg += fmt::format(R"(<text x="{:.1f}" y="{}" text-anchor="end">{}</text>)", ml + pw(), height - 2, x_label);
    if (budget_x > 0)
      svg += fmt::format(R"(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{3:.1f}" y="{4}" fill="#d62728">budget</text>)",
                         X(budget_x), mt, mt + ph(), X(budget_x) + 3, mt + 10);
    return svg;
  }
};

}  // namespace

std::string frontier_svg(const nlohmann::json& trials, int chosen, double min_int8_macs, int width, int height) {
  struct Point {
    double share, agreement;
    int index;
    bool within;
  };
  std::vector<Point> pts;
  for (size_t i = 0; i < trials.size(); ++i) {
    const auto& t = trials[i];
    const double a = t.contains("fidelity") ? t["fidelity"].value("agreement_map", -1.0) : -1.0;
    if (a < 0 || !t.contains("integer_mac_fraction")) continue;
    pts.push_back({t["integer_mac_fraction"].get<double>(), a, static_cast<int>(i), t.value("within_budget", true)});
  }
  double x_lo = 1, y_lo = 1, y_hi = 0;
  for (const auto& p : pts) {
    x_lo = std::min(x_lo, p.share);
    y_lo = std::min(y_lo, p.agreement);
    y_hi = std::max(y_hi, p.agreement);
  }
  if (min_int8_macs > 0) x_lo = std::min(x_lo, min_int8_macs);
  x_lo = std::max(0.0, std::floor(x_lo * 10 - 0.5) / 10);
  const double x_hi = 1.0;
  if (pts.empty()) y_lo = 0, y_hi = 1;
  const double pad = std::max(0.01, (y_hi - y_lo) * 0.08);
  y_lo = std::max(0.0, y_lo - pad), y_hi = std::min(1.0, y_hi + pad);
  if (y_hi <= y_lo) y_hi = y_lo + 0.01;
  const PlotFrame f{static_cast<double>(width), static_cast<double>(height), x_lo, x_hi, y_lo, y_hi};
  const auto X = [&](double v) { return f.X(v); };
  const auto Y = [&](double v) { return f.Y(v); };
  std::string svg = f.open("agreement mAP against MACs in integer kernels", "share of conv MACs in integer 8-bit kernels",
                           [](double v) { return fmt::format("{:g} %", std::round(1000 * v) / 10); },
                           [](double v) { return fmt::format("{:.3f}", v); }, min_int8_macs);
  // The frontier: from the largest share down, the best agreement at that share or above.
  std::vector<Point> sorted = pts;
  std::sort(sorted.begin(), sorted.end(), [](const Point& a, const Point& b) {
    return a.share != b.share ? a.share > b.share : a.agreement > b.agreement;
  });
  std::string path;
  double best = -1;
  for (const auto& p : sorted) {
    if (p.agreement <= best) continue;
    if (!path.empty()) path += fmt::format(" L{:.1f},{:.1f}", X(p.share), Y(best));
    path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", X(p.share), Y(p.agreement));
    best = p.agreement;
  }
  if (!path.empty()) svg += fmt::format(R"(<path d="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>)", path);
  for (const auto& p : pts) {
    svg += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"><title>trial {}: {:.0f} %, {:.4f}</title></circle>)",
                       X(p.share), Y(p.agreement), p.within ? "#1f77b4" : "#aaaaaa", p.index + 1, 100 * p.share, p.agreement);
    if (p.index == chosen)
      svg += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="7" fill="none" stroke="#d62728" stroke-width="2"/>)", X(p.share), Y(p.agreement));
  }
  return svg + "</svg>";
}

std::string weight_bits_svg(const nlohmann::json& wb, int width, int height) {
  struct Point {
    double bits, db;
    bool chosen;
  };
  std::vector<Point> path;
  const Point* chosen = nullptr;
  for (const auto& p : wb.value("frontier", nlohmann::json::array()))
    path.push_back({p.value("average_bits", 0.0), p.value("sqnr_db", 0.0), p.value("chosen", false)});
  for (const auto& p : path)
    if (p.chosen) chosen = &p;
  const double budget = wb.value("budget_bits", 0.0);
  double x_lo = budget > 0 ? budget : 8, x_hi = budget > 0 ? budget : 2, y_lo = 1e9, y_hi = -1e9;
  for (const auto& p : path) {
    x_lo = std::min(x_lo, p.bits), x_hi = std::max(x_hi, p.bits);
    y_lo = std::min(y_lo, p.db), y_hi = std::max(y_hi, p.db);
  }
  if (path.empty()) x_lo = 4, x_hi = 8, y_lo = 0, y_hi = 1;
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  const double pad = std::max(0.5, (y_hi - y_lo) * 0.08);
  y_lo -= pad, y_hi += pad;
  const PlotFrame f{static_cast<double>(width), static_cast<double>(height), x_lo, x_hi, y_lo, y_hi};
  const auto X = [&](double v) { return f.X(v); };
  const auto Y = [&](double v) { return f.Y(v); };
  std::string svg = f.open("output SQNR (weights quantized, activations in float) against average weight bits",
                           "average bits per weight parameter (dB on the vertical axis)",
                           [](double v) { return fmt::format("{:.2f}", v); }, [](double v) { return fmt::format("{:.1f}", v); }, budget);
  std::string d;
  for (const auto& p : path)
    if (!p.chosen) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", X(p.bits), Y(p.db));
  if (!d.empty()) svg += fmt::format(R"(<path d="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>)", d);
  for (const auto& p : path)
    if (!p.chosen)
      svg += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="2.5" fill="#1f77b4"><title>{:.2f} bits: {:.2f} dB</title></circle>)",
                         X(p.bits), Y(p.db), p.bits, p.db);
  if (chosen)
    svg += fmt::format(R"(<circle cx="{0:.1f}" cy="{1:.1f}" r="6" fill="none" stroke="#d62728" stroke-width="2"><title>chosen: {2:.2f} bits, {3:.2f} dB</title></circle>)",
                       X(chosen->bits), Y(chosen->db), chosen->bits, chosen->db);
  return svg + "</svg>";
}

std::string mixture_svg(const nlohmann::json& fit, const std::string& title, int width, int height) {
  const auto& hist = fit.at("histogram");
  const double lo = hist.value("lo", -5.0), hi = hist.value("hi", 5.0);
  const auto counts = hist.at("counts").get<std::vector<double>>();
  double total = 0;
  for (double c : counts) total += c;
  const int bins = static_cast<int>(counts.size());
  const double bw = bins ? (hi - lo) / bins : 1;
  const double ml = 36, mr = 10, mt = 24, mb = 26;
  const double pw = width - ml - mr, ph = height - mt - mb;
  auto dens_of = [&](double s) {
    double d[2];
    for (int k = 0; k < 2; ++k) {
      const double m = fit.at("means")[k], v = fit.at("variances")[k], p = fit.at("priors")[k];
      d[k] = p * std::exp(-(s - m) * (s - m) / (2 * v)) / std::sqrt(2 * M_PI * v);
    }
    return std::array<double, 2>{d[0], d[1]};
  };
  double ymax = 1e-12;
  for (double c : counts) ymax = std::max(ymax, total > 0 ? c / (total * bw) : 0);
  for (int i = 0; i <= 200; ++i) {
    const auto d = dens_of(lo + (hi - lo) * i / 200);
    ymax = std::max(ymax, d[0] + d[1]);
  }
  auto X = [&](double s) { return ml + (s - lo) / (hi - lo) * pw; };
  auto Y = [&](double d) { return mt + ph - d / ymax * ph; };
  std::string svg = fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">)", width, height);
  svg += fmt::format(R"(<rect width="{}" height="{}" fill="white"/><text x="{}" y="15" font-weight="bold">{}</text>)", width, height, ml, html_escape(title));
  for (int i = 0; i < bins; ++i) {
    const double d = total > 0 ? counts[i] / (total * bw) : 0;
    svg += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="#b9c6d8"/>)", X(lo + i * bw), Y(d),
                       std::max(0.5, X(lo + (i + 1) * bw) - X(lo + i * bw) - 0.5), mt + ph - Y(d));
  }
  const bool fallback = fit.value("fallback", false);
  const char* colors[3] = {"#d62728", "#2ca02c", "#333333"};
  for (int k = 0; k < 3; ++k) {
    std::string path;
    for (int i = 0; i <= 200; ++i) {
      const double s = lo + (hi - lo) * i / 200;
      const auto d = dens_of(s);
      const double v = k == 2 ? d[0] + d[1] : d[k];
      path += fmt::format("{}{:.1f},{:.1f} ", i ? "L" : "M", X(s), Y(v));
    }
    svg += fmt::format(R"(<path d="{}" fill="none" stroke="{}" stroke-width="{}"{}/>)", path, colors[k], k == 2 ? 1.2 : 1.8,
                       k == 2 ? R"( stroke-dasharray="4,3")" : "");
  }
  svg += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="black"/>)", ml, mt + ph, ml + pw);
  for (int t = static_cast<int>(std::ceil(lo)); t <= static_cast<int>(std::floor(hi)); ++t)
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle">{}</text>)", X(t), mt + ph + 14, t);
  svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" fill="#d62728">anomaly μ={:.2f} π={:.2f}</text>)", ml + 4, mt + 12,
                     fit.at("means")[0].get<double>(), fit.at("priors")[0].get<double>());
  svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" fill="#2ca02c">inlier μ={:.2f} π={:.2f}{}</text>)", ml + 4, mt + 26,
                     fit.at("means")[1].get<double>(), fit.at("priors")[1].get<double>(), fallback ? " (fallback: uniform)" : "");
  if (fit.contains("ashman_d"))
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" fill="#555">Ashman D={:.2f}{}</text>)", ml + 4, mt + 40,
                       fit.at("ashman_d").get<double>(), fit.at("ashman_d").get<double>() < 2 ? " (< 2: not clearly bimodal)" : "");
  svg += fmt::format(R"(<text x="{:.1f}" y="{}" text-anchor="end">standardised log saliency</text></svg>)", ml + pw, height - 1);
  return svg;
}

std::string quantize_report_html(const pipeline::QuantizeJob& job, const pipeline::QuantizeResult& res, const std::vector<Figure>& figures) {
  const nlohmann::json& meta = res.encodings_meta;  // the encodings' record: auto's choice and the configuration dump
  const std::string preset = fmt::format("w{}a{}", res.weight_bits, res.act_bits);
  std::string h = R"(<!DOCTYPE html><html><head><meta charset="utf-8"><title>inlierq report</title><style>
body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#eef}td.l,th.l{text-align:left}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}figure{display:inline-block;margin:6px}figcaption{font-size:12px}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}</style></head><body>)";
  h += "<h1>inlierq quantization report</h1>";
  h += fmt::format("<p>Model <code>{}</code>, profile <code>{}</code>, preset <b>{}</b>, method <b>{}</b>, {} calibration images.</p>",
                   html_escape(job.model), html_escape(res.profile), preset, html_escape(res.method), res.calibration_images);
  if (res.evaluation) {
    const auto& e = *res.evaluation;
    h += "<h2>Accuracy</h2><table><tr><th class=l>model</th><th>mAP</th><th>AP50</th><th>Δ mAP</th></tr>";
    h += fmt::format("<tr><td class=l>FP32</td><td>{:.4f}</td><td>{:.4f}</td><td></td></tr>", e.fp32.stats[0], e.fp32.stats[1]);
    h += fmt::format("<tr><td class=l>{}</td><td>{:.4f}</td><td>{:.4f}</td><td>{:+.4f}</td></tr></table>", preset, e.quantized.stats[0],
                     e.quantized.stats[1], e.quantized.stats[0] - e.fp32.stats[0]);
    h += fmt::format("<p>{} images of {}.</p>", e.images, html_escape(e.annotations));
  }
  if (res.fidelity) {
    // Label-free: what a user without labels can check, on calibration-folder images never calibrated on.
    const auto& f = *res.fidelity;
    h += fmt::format("<h2>Label-free fidelity</h2><p>On {} held-out calibration images, the quantized model's detections scored "
                     "against the FP32 model's detections with score ≥ {:.2g} ({} boxes) as ground truth.</p>",
                     f.images, f.reference_score, f.reference_boxes);
    h += "<table><tr><th>agreement mAP</th><th>agreement AP50</th><th>output SQNR (dB)</th><th>heatmap top-K loss FP32</th>"
         "<th>heatmap top-K loss quantized</th></tr>";
    h += fmt::format("<tr><td>{:.4f}</td><td>{:.4f}</td><td>{:.2f}</td><td>{}</td><td>{}</td></tr></table>", f.agreement_map,
                     f.agreement_map50, f.output_sqnr_db, f.heatmap_loss_fp32 >= 0 ? fmt::format("{:.4f}", f.heatmap_loss_fp32) : "",
                     f.heatmap_loss >= 0 ? fmt::format("{:.4f}", f.heatmap_loss) : "");
  }
  if (meta.contains("weight_bits_budget")) {
    const auto& wb = meta["weight_bits_budget"];
    int raised = 0;
    for (const auto& l : wb["layers"]) raised += l.value("raised", false);
    h += fmt::format("<h2>Weight bits within the budget</h2><p>Budget: average ≤ {:g} bits per weight parameter. {} of {} "
                     "low-bit weights raised to {} bits: average {:.2f} → {:.2f} bits. Each weight's harm measured alone "
                     "(output SQNR with only it quantized) on {} calibration images; raised in decreasing order of noise per "
                     "added bit while the budget allows.</p>",
                     wb.value("budget_bits", 0.0), raised, wb["layers"].size(), wb.value("high_bits", 8),
                     wb.value("average_bits_before", 0.0), wb.value("average_bits", 0.0), wb.value("images", 0));
    h += "<figure>" + weight_bits_svg(wb) +
         "<figcaption>Measured along the order: every weight at the preset's bits (left), then each candidate raised in turn; "
         "ringed: the assignment written.</figcaption></figure>";
    h += "<table><tr><th class=l>node</th><th>parameters</th><th>output SQNR alone (dB)</th><th>bits</th></tr>";
    for (const auto& l : wb["layers"])
      h += fmt::format("<tr><td class=l>{}</td><td>{}</td><td>{:.2f}</td><td>{}</td></tr>", html_escape(l.value("node", std::string())),
                       l.value("params", 0), l.value("sqnr_db", 0.0), l.value("raised", false) ? wb.value("high_bits", 8) : l.value("bits", 0));
    h += "</table>";
  }
  if (res.method == "auto" && meta.contains("auto")) {
    const auto& a = meta["auto"];
    h += fmt::format("<h2>Automatic calibration choice</h2><p>Chosen: calibrator <b>{}</b>, weights {}, {} concat scales, {} "
                     "activation group(s) left in floating point, bias correction {}. Every configuration measured, in order:</p>",
                     html_escape(res.init_method), html_escape(a.value("weight_method", std::string())),
                     a.value("separate_concat_scales", false) ? "separate" : "shared", res.fallback_groups,
                     res.bias_corrected_convs ? fmt::format("of {} convs", res.bias_corrected_convs) : std::string("off"));
    const nlohmann::json trials = res.auto_trials.is_array() ? res.auto_trials : nlohmann::json::array();
    const nlohmann::json budget = a.value("budget", nlohmann::json::object());
    if (!budget.empty())
      h += fmt::format("<p>Budget: {}; {}.</p>", html_escape(budget.dump()),
                       a.value("within_budget", false) ? "the choice is within it" : "<b>no configuration tried meets it</b>; the closest was chosen");
    const int chosen = a.value("chosen_trial", -1);
    h += "<figure>" + frontier_svg(trials, chosen, budget.value("min_int8_macs", 0.0)) +
         "<figcaption>Each trial's agreement mAP on the held-out images against its share of MACs in integer kernels; grey: "
         "outside the budget; ringed: the written file.</figcaption></figure>";
    h += "<table><tr><th class=l>configuration</th><th>agreement mAP</th><th>output SQNR (dB)</th><th>int8 MACs</th><th>latency × FP32</th></tr>";
    for (const auto& t : trials)
      h += fmt::format("<tr><td class=l>{}</td><td>{:.4f}</td><td>{:.2f}</td><td>{}</td><td>{}</td></tr>", html_escape(t.value("config", std::string())),
                       t["fidelity"].value("agreement_map", -1.0), t["fidelity"].value("output_sqnr_db", 0.0),
                       t.contains("integer_mac_fraction") ? fmt::format("{:.1f} %", 100 * t["integer_mac_fraction"].get<double>()) : "",
                       t.contains("latency_ratio") ? fmt::format("{:.2f}", t["latency_ratio"].get<double>()) : "");
    h += "</table>";
  }
  {
    const auto& s = res.seconds;
    h += "<h2>Timings</h2><table><tr><th>load + prepare</th><th>images</th><th>calibration</th><th>reconstruction</th><th>export</th></tr>";
    h += fmt::format("<tr><td>{:.2f} s</td><td>{:.2f} s</td><td>{:.2f} s</td><td>{:.2f} s</td><td>{:.2f} s</td></tr></table>", s.prepare,
                     s.images, s.calibration, s.reconstruction, s.export_and_write);
  }
  if (res.recon) {
    const auto& r = *res.recon;
    h += fmt::format("<h2>Reconstruction: per-unit SQNR</h2><p>{} iterations per unit, batch {}, seed {}; {:.1f} s; peak activation cache {:.0f} MB. "
                     "SQNR of the unit output against FP on the quantized-prefix inputs, before (round-to-nearest, initial ranges) and after.</p>",
                     r.iters, job.recon.batch, job.seed, r.seconds, r.peak_cache_bytes / 1048576.0);
    h += "<table><tr><th>pass</th><th class=l>unit</th><th class=l>kind</th><th>iterations</th><th>loss first</th><th>loss last</th>"
         "<th>SQNR before (dB)</th><th>SQNR after (dB)</th><th>seconds</th></tr>";
    for (const auto& u : r.reports)
      h += fmt::format("<tr><td>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:.1f}</td><td>{:.1f}</td><td>{:.1f}</td></tr>",
                       u.pass, html_escape(u.name), u.kind, u.iters, u.loss_first, u.loss_last, u.sqnr_before_db, u.sqnr_after_db, u.seconds);
    h += "</table>";
    const auto& in = r.inlier;
    if (in.is_object() && in.contains("ranges")) {
      h += "<h2>Activation ranges: full vs inlier volumes</h2><table><tr><th>group</th><th>full min</th><th>full max</th>"
           "<th>inlier-init min</th><th>inlier-init max</th><th>scale before</th><th>scale</th></tr>";
      std::vector<std::pair<int, nlohmann::json>> rows;
      for (const auto& [gid, v] : in["ranges"].items()) rows.emplace_back(std::stoi(gid), v);
      std::sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
      for (const auto& [gid, v] : rows)
        h += fmt::format("<tr><td>{}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:.4g}</td><td>{:.4g}</td></tr>", gid,
                         v["full"][0].get<double>(), v["full"][1].get<double>(), v["inlier"][0].get<double>(), v["inlier"][1].get<double>(),
                         v["scale_before"].get<double>(), v["scale"].get<double>());
      h += "</table>";
    }
    if (in.is_object() && in.contains("units")) {
      h += "<h2>EM fits per unit output</h2><div>";
      for (const auto& [v, fit] : in["units"].items())
        if (fit.contains("histogram")) h += "<figure>" + mixture_svg(fit, v) + "</figure>";
      h += "</div>";
    }
  }
  if (!figures.empty()) {
    h += "<h2>Saliency and inlier posterior on calibration images</h2><div>";
    for (const auto& f : figures)
      h += "<figure><img src=\"data:image/png;base64," + base64(f.png) + "\" style=\"max-width:560px\"><figcaption>" +
           html_escape(f.caption) + "</figcaption></figure>";
    h += "</div>";
  }
  {
    const auto& p = res.plan;
    h += fmt::format("<h2>Placement</h2><p>Layout <b>{}</b>: {} weight quantizers, {} activation quantizers, {} compute nodes in floating point.</p>",
                     quant::layout_name(p.layout), p.weights.size(), p.activations.size(), p.float_nodes.size());
    h += fmt::format("<p>Exported file {:.2f} MB (FP32 {:.2f} MB), weights stored as {}; {:.1f} % of the compute MACs in integer kernels.</p>",
                     res.bytes / 1e6, res.fp32_bytes / 1e6, html_escape(res.weight_storage), 100 * res.integer_mac_fraction);
    const auto& l = res.ort_latency;
    if (l.is_object() && l.contains("quantized_ms")) {
      h += fmt::format("<p>ONNX Runtime {} (CPU, 1 thread, median of {} runs): FP32 {:.2f} ms, this file {:.2f} ms (<b>{:.2f}×</b>).</p>",
                       html_escape(l.value("onnxruntime", std::string())), l.value("runs", 0), l["fp32_ms"].get<double>(),
                       l["quantized_ms"].get<double>(), l["ratio"].get<double>());
    } else if (l.is_object()) {
      h += "<p>ONNX Runtime latency: skipped (" + html_escape(l.value("skipped", std::string())) + ").</p>";
    }
    if (!p.float_nodes.empty()) {
      // Whatever stays in floating point is a choice the user should see, with its reason.
      h += "<table><tr><th class=l>compute node in floating point</th><th class=l>why</th></tr>";
      for (size_t i = 0; i < p.float_nodes.size(); ++i)
        h += "<tr><td class=l>" + html_escape(p.float_nodes[i]) + "</td><td class=l>" +
             html_escape(i < p.float_reasons.size() ? p.float_reasons[i] : std::string()) + "</td></tr>";
      h += "</table>";
    }
  }
  if (!res.skipped_images.empty()) {
    h += "<h2>Calibration images skipped</h2><p>These files in the calibration folder did not decode; the next "
         "files in path order were used instead.</p><table><tr><th class=l>file and reason</th></tr>";
    for (const auto& w : res.skipped_images) h += "<tr><td class=l>" + html_escape(w) + "</td></tr>";
    h += "</table>";
  }
  nlohmann::json config = meta;
  for (const char* k : {"plan", "reconstruction", "calibration_files", "sensitivity", "skipped_images", "auto"}) config.erase(k);
  h += "<h2>Configuration</h2><pre>" + html_escape(config.dump(1)) + "</pre></body></html>\n";
  return h;
}

}  // namespace inlierq::report
