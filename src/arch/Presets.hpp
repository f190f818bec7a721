// Built-in presets: the JSON files under presets/<kind>/ are compiled into the binary (see
// cmake/EmbedPresets.cmake), so `ppu` works from any directory without an install step.
//
//   auto text = builtin_preset("chips", "h100");   // the file's text, or nullopt
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ppu {

std::optional<std::string_view> builtin_preset(std::string_view kind, std::string_view name);
std::vector<std::string> builtin_preset_names(std::string_view kind);  // sorted

// Reads a whole file; throws UserError naming `path` if it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace ppu
