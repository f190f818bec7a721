// Built-in presets: the JSON files under presets/<kind>/ are compiled into the binary (see
// cmake/EmbedPresets.cmake), so `ppu` works from any directory without an install step.
//
//   auto text = builtin_preset("chips", "h100");   // the file's text, or nullopt
//   auto p = find_builtin_preset("chips", "H100");  // names match ignoring case: p->name == "h100"
#pragma once

#include <cstdint>
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

// Reads a whole file; throws UserError naming `path` if it cannot be read. No size limit: for files a
// user's own input may make large on purpose (corpora); small inputs go through read_input_file.
std::string read_text_file(const std::string& path);

// Size caps of the small JSON inputs, each far above any real file (presets and config.json are a few
// KB; Llama 3's tokenizer.json is 9 MB, Gemma 3's 33 MB, a 1T-parameter model's safetensors index about 2 MB), so that
// /dev/zero or a mistyped multi-GB file is refused before it fills memory.
inline constexpr uint64_t kPresetFileMaxBytes = uint64_t{16} << 20;     // chip/node/cluster presets, config.json
inline constexpr uint64_t kTokenizerFileMaxBytes = uint64_t{64} << 20;   // tokenizer.json
inline constexpr uint64_t kIndexFileMaxBytes = uint64_t{64} << 20;       // model.safetensors.index.json

// Reads the whole of `path`, a `what` ("chip file", "tokenizer.json"), only if it is a regular file
// (after symlinks) of at most `max_bytes`. UserError, naming the path and `what`:
//   "<path>: cannot open file (<reason>)"
//   "<path>: a chip file must be a regular file, not a directory"   (or a character device, FIFO, ...)
//   "<path>: a chip file is at most 16 MiB; this one is larger"
std::string read_input_file(const std::string& path, std::string_view what, uint64_t max_bytes);

// A preset file's text and the origin to name in messages: a file if `name_or_path` ends in ".json"
// or contains '/', else the built-in preset `kind`/`name` ("chips", "nodes", "clusters"), the name
// compared ignoring case. A file is read with read_input_file ("<noun> file", kPresetFileMaxBytes).
// Throws unknown_preset_error for an unknown name.
struct PresetText {
  std::string text;
  std::string origin;
};
PresetText preset_text(std::string_view kind, std::string_view noun, std::string_view name_or_path);

}  // namespace ppu
