// Built-in presets: the JSON files under presets/<kind>/ are compiled into the binary (see
// cmake/EmbedPresets.cmake), so `ppu` works from any directory without an install step.
//
//   auto text = builtin_preset("chips", "h100");   // the file's text, or nullopt
//   auto p = find_builtin_preset("chips", "H100");  // names match ignoring case: p->name == "h100"
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "arch/Error.hpp"

namespace ppu {

std::optional<std::string_view> builtin_preset(std::string_view kind, std::string_view name);
std::vector<std::string> builtin_preset_names(std::string_view kind);  // sorted

// The built-in preset `kind`/`name` with `name` compared ignoring case ("H100" finds "h100"): its own
// name and its file's text; nullopt when there is none.
struct BuiltinPreset {
  std::string name;
  std::string_view text;
};
std::optional<BuiltinPreset> find_builtin_preset(std::string_view kind, std::string_view name);

// The error for a name that is no built-in preset of `kind`: "unknown <noun> 'x'; did you mean 'y'?
// known <noun>s: a, b, c <alternative>", the suggestions from nearest_names (arch/NameSuggestions.hpp).
// `alternative` ends the message, e.g. "(or give a path to a chip .json file)"; may be empty.
UserError unknown_preset_error(std::string_view kind, std::string_view noun, std::string_view name,
                               std::string_view alternative);

// Reads a whole file; throws UserError naming `path` if it cannot be read.
std::string read_text_file(const std::string& path);

// A preset file's text and the origin to name in messages: a file if `name_or_path` ends in ".json"
// or contains '/', else the built-in preset `kind`/`name` ("chips", "nodes", "clusters"), the name
// compared ignoring case. Throws unknown_preset_error for an unknown name.
struct PresetText {
  std::string text;
  std::string origin;
};
PresetText preset_text(std::string_view kind, std::string_view noun, std::string_view name_or_path);

}  // namespace ppu
