#include "detect/output_view.h"

#include "inlierq/error.h"
#include "inlierq/graph.h"

namespace inlierq::detect {

OutputLayout parse_layout(const std::string& s, const std::string& where) {
  if (s == "positions_channels") return OutputLayout::PositionsChannels;
  if (s == "channels_positions") return OutputLayout::ChannelsPositions;
  throw Error(where + ": layout must be 'positions_channels' or 'channels_positions', got '" + s + "'");
}

at::Tensor positions_channels(const at::Tensor& t, OutputLayout layout, const std::string& where) {
  if (layout == OutputLayout::PositionsChannels) {
    if (t.dim() == 2) return t.unsqueeze(2);
    if (t.dim() == 3) return t;
    if (t.dim() > 3) return t.reshape({t.size(0), -1, t.size(-1)});
    throw Error(where + ": layout positions_channels needs [N, P] or [N, P, C], got " + shape_str(t.sizes().vec()));
  }
  if (t.dim() < 3) throw Error(where + ": layout channels_positions needs [N, C, P...], got " + shape_str(t.sizes().vec()));
  return t.flatten(2).transpose(1, 2);
}

void check_keys(const nlohmann::json& j, std::initializer_list<const char*> known, const std::string& where) {
  if (!j.is_object()) throw Error(where + " must be a JSON object");
  for (const auto& [key, _] : j.items()) {
    bool ok = false;
    for (const char* k : known) ok = ok || key == k;
    if (ok) continue;
    std::string list;
    for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    throw Error(where + ": unknown key '" + key + "' (known: " + list + ")");
  }
}

void validate_heatmap(const nlohmann::json& h, const std::string& where) {
  check_keys(h, {"sources"}, where);
  if (!h.contains("sources")) return;
  if (!h["sources"].is_array()) throw Error(where + ".sources must be an array");
  for (const auto& src : h["sources"]) {
    const std::string w = where + ".sources[]";
    check_keys(src, {"output", "layout", "channels", "objectness_channel", "objectness_output", "values"}, w);
    if (!src.contains("output") || !src["output"].is_string()) throw Error(w + ": needs an 'output' name");
    for (const char* key : {"layout", "values", "objectness_output"})
      if (src.contains(key) && !src[key].is_string()) throw Error(w + ": '" + key + "' must be a string");
    parse_layout(src.value("layout", "positions_channels"), w);
    const auto& ch = src.contains("channels") ? src["channels"] : nlohmann::json();
    if (!ch.is_array() || ch.size() != 2 || !ch[0].is_number_integer() || !ch[1].is_number_integer() ||
        ch[0].get<int64_t>() < 0 || ch[1].get<int64_t>() <= ch[0].get<int64_t>())
      throw Error(w + ": needs 'channels': [begin, end) with 0 <= begin < end, got " + ch.dump());
    if (src.contains("objectness_channel") &&
        (!src["objectness_channel"].is_number_integer() || src["objectness_channel"].get<int64_t>() < 0))
      throw Error(w + ": 'objectness_channel' must be a non-negative integer, got " + src["objectness_channel"].dump());
    const std::string values = src.value("values", "probabilities");
    if (values != "probabilities" && values != "logits")
      throw Error(w + ": values must be 'probabilities' or 'logits', got '" + values + "'");
  }
}

}  // namespace inlierq::detect
