#pragma once
// How a profile addresses per-position values in an output tensor, shared by the decoders and by the
// heatmap that InlierQ reads: "positions_channels" ([N, P, C], or [N, P] as one channel, or [N, ..., C]
// with the middle dimensions flattened into positions) or "channels_positions" ([N, C, ...], the trailing
// dimensions flattened into positions, e.g. YOLOv8's [N, 84, 8400] or a raw [N, C, H, W] map).
#include <ATen/ATen.h>

#include <initializer_list>
#include <string>

#include <nlohmann/json.hpp>

namespace inlierq::detect {

enum class OutputLayout { PositionsChannels, ChannelsPositions };

OutputLayout parse_layout(const std::string& s, const std::string& where);

// [N, P, C] view of t under the layout; where names the output in errors.
at::Tensor positions_channels(const at::Tensor& t, OutputLayout layout, const std::string& where);

// Throws inlierq::Error naming the first key of j that is not in known, with the known keys listed.
void check_keys(const nlohmann::json& j, std::initializer_list<const char*> known, const std::string& where);

// A profile's "heatmap" definition (the sources InlierQ's label-free loss reads): keys, layouts, channel
// ranges and value kinds; where prefixes the errors.
void validate_heatmap(const nlohmann::json& heatmap, const std::string& where);

}  // namespace inlierq::detect
