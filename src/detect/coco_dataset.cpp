// Reading and writing COCO instances and results JSON.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inlierq/coco_eval.h"
#include "inlierq/error.h"
#include "util/atomic_file.h"

namespace inlierq::coco {
namespace {

using json = nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open '" + path + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(source + ": not valid JSON (" + e.what() + ")");
  }
}

// One JSON object of a list, with enough context to name it in error messages.
class Entry {
 public:
  Entry(const json& j, const std::string& source, std::string where)
      : j_(j), source_(source), where_(std::move(where)) {
    if (!j.is_object()) fail("is not an object");
  }
  [[noreturn]] void fail(const std::string& what) const { throw Error(source_ + ": " + where_ + " " + what); }
  bool has(const char* key) const { return j_.contains(key); }
  const json& at(const char* key) const {
    auto it = j_.find(key);
    if (it == j_.end()) fail(std::string("is missing '") + key + "'");
    return *it;
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) fail(std::string("has a non-numeric '") + key + "'");
    return v.get<double>();
  }
  // Ids written by Python tools are sometimes floats (139.0); accept integral values.
  int64_t id(const char* key) const {
    const json& v = at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
    }
    fail(std::string("has a non-integer '") + key + "'");
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) fail(std::string("has a non-string '") + key + "'");
    return v.get<std::string>();
  }
  Box box(const char* key) const {
    const json& v = at(key);
    if (!v.is_array() || v.size() != 4 || !std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_number(); }))
      fail(std::string("has a '") + key + "' that is not [x, y, width, height]");
    return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()};
  }

 private:
  const json& j_;
  const std::string& source_;
  std::string where_;
};

const json& list_field(const json& root, const char* key, const std::string& source) {
  auto it = root.find(key);
  if (it == root.end()) throw Error(source + ": missing top-level '" + key + "' list (not a COCO instances file?)");
  if (!it->is_array()) throw Error(source + ": top-level '" + key + "' is not a list");
  return *it;
}

std::string where(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

}  // namespace

Dataset parse_dataset(const std::string& json_text, const std::string& source) {
  json root = parse_json(json_text, source);
  if (!root.is_object()) throw Error(source + ": expected a COCO instances object at the top level");
  Dataset ds;
  const json& images = list_field(root, "images", source);
  for (size_t i = 0; i < images.size(); ++i) {
    Entry e(images[i], source, where("images", i));
    Image im{e.id("id"), e.str("file_name")};
    if (e.has("width")) im.width = static_cast<int>(e.number("width"));
    if (e.has("height")) im.height = static_cast<int>(e.number("height"));
    ds.images.push_back(std::move(im));
  }
  const json& cats = list_field(root, "categories", source);
  for (size_t i = 0; i < cats.size(); ++i) {
    Entry e(cats[i], source, where("categories", i));
    ds.categories.push_back({e.id("id"), e.str("name")});
  }
  const json& anns = list_field(root, "annotations", source);
  ds.annotations.reserve(anns.size());
  for (size_t i = 0; i < anns.size(); ++i) {
    Entry e(anns[i], source, where("annotations", i));
    Annotation a;
    a.id = e.has("id") ? e.id("id") : static_cast<int64_t>(i + 1);
    a.image_id = e.id("image_id");
    a.category_id = e.id("category_id");
    a.bbox = e.box("bbox");
    a.area = e.number("area");
    if (e.has("iscrowd")) {
      const json& c = e.at("iscrowd");
      if (!c.is_boolean() && !c.is_number()) e.fail("has a non-numeric 'iscrowd'");
      a.iscrowd = c.is_boolean() ? c.get<bool>() : c.get<double>() != 0;
    }
    ds.annotations.push_back(a);
  }
  return ds;
}

Dataset load_dataset(const std::string& path) { return parse_dataset(read_text(path), path); }

std::vector<Detection> parse_detections(const std::string& json_text, const std::string& source) {
  json root = parse_json(json_text, source);
  if (!root.is_array()) throw Error(source + ": expected a list of detections (COCO results format)");
  std::vector<Detection> dets;
  dets.reserve(root.size());
  for (size_t i = 0; i < root.size(); ++i) {
    Entry e(root[i], source, "detection " + std::to_string(i));
    dets.push_back({e.id("image_id"), e.id("category_id"), e.box("bbox"), e.number("score")});
  }
  return dets;
}

std::vector<Detection> load_detections(const std::string& path) { return parse_detections(read_text(path), path); }

std::string detections_to_json(const std::vector<Detection>& dets) {
  json out = json::array();
  for (const Detection& d : dets)
    out.push_back({{"image_id", d.image_id},
                   {"category_id", d.category_id},
                   {"bbox", {d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h}},
                   {"score", d.score}});
  return out.dump() + "\n";
}

void save_detections(const std::string& path, const std::vector<Detection>& dets) {
  write_file_atomically(path, detections_to_json(dets));
}

}  // namespace inlierq::coco
