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

// A preset file's text and the origin to name in messages: a file if `name_or_path` ends in ".json"
// or contains '/', else the built-in preset `kind`/`name` ("chips", "nodes", "clusters"). Throws
// UserError for an unknown name, listing the known ones: "unknown <noun> 'x'; known <noun>s: ...".
struct PresetText {
  std::string text;
  std::string origin;
};
PresetText preset_text(std::string_view kind, std::string_view noun, std::string_view name_or_path);

}  // namespace ppu
