#include "arch/Presets.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "arch/Error.hpp"
#include "arch/NameSuggestions.hpp"
#include "arch/NameTable.hpp"

namespace ppu::presets_generated {
struct Entry {
  std::string_view kind, name, text;
};
extern const Entry kEntries[];
extern const int kNumEntries;
}  // namespace ppu::presets_generated

namespace ppu {

std::optional<std::string_view> builtin_preset(std::string_view kind, std::string_view name) {
  using presets_generated::kEntries;
  for (int i = 0; i < presets_generated::kNumEntries; ++i)
    if (kEntries[i].kind == kind && kEntries[i].name == name) return kEntries[i].text;
  return std::nullopt;
}

std::vector<std::string> builtin_preset_names(std::string_view kind) {
  std::vector<std::string> out;
  for (int i = 0; i < presets_generated::kNumEntries; ++i)
    if (presets_generated::kEntries[i].kind == kind) out.emplace_back(presets_generated::kEntries[i].name);
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<BuiltinPreset> find_builtin_preset(std::string_view kind, std::string_view name) {
  if (auto text = builtin_preset(kind, name)) return BuiltinPreset{std::string(name), *text};
  for (const auto& known : builtin_preset_names(kind))
    if (same_name_ignoring_case(known, name)) return BuiltinPreset{known, *builtin_preset(kind, known)};
  return std::nullopt;
}

UserError unknown_preset_error(std::string_view kind, std::string_view noun, std::string_view name,
                               std::string_view alternative) {
  const std::vector<std::string> known = builtin_preset_names(kind);
  return UserError(fmt::format("unknown {} '{}'; {}known {}s: {}{}{}", noun, name, did_you_mean(name, known), noun,
                               join_names(known), alternative.empty() ? "" : " ", alternative));
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot open file ({})", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw UserError(fmt::format("{}: read error", path));
  return ss.str();
}

std::string read_input_file(const std::string& path, std::string_view what, uint64_t max_bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    throw UserError(fmt::format("{}: cannot open file ({})", path, ec ? ec.message() : std::strerror(ENOENT)));
  if (!fs::is_regular_file(st)) {
    const char* kind = fs::is_directory(st)         ? "a directory"
                       : fs::is_character_file(st) ? "a character device"
                       : fs::is_block_file(st)     ? "a block device"
                       : fs::is_fifo(st)           ? "a FIFO"
                       : fs::is_socket(st)         ? "a socket"
                                                   : "a special file";
    throw UserError(fmt::format("{}: a {} must be a regular file, not {}", path, what, kind));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot open file ({})", path, std::strerror(errno)));
  // Read in chunks until the end or one byte past the cap, rather than trust the size the file system
  // reports (/proc files say 0) or allocate the whole cap up front for a file of a few KB.
  std::string text;
  char chunk[1 << 16];
  while (in && text.size() <= max_bytes) {
    in.read(chunk, sizeof chunk);
    text.append(chunk, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw UserError(fmt::format("{}: read error", path));
  if (text.size() > max_bytes)
    throw UserError(fmt::format("{}: a {} is at most {} MiB; this one is larger", path, what, max_bytes >> 20));
  return text;
}

PresetText preset_text(std::string_view kind, std::string_view noun, std::string_view name_or_path) {
  const bool is_path = name_or_path.find('/') != std::string_view::npos ||
                       (name_or_path.size() > 5 && name_or_path.substr(name_or_path.size() - 5) == ".json");
  if (is_path) {
    std::string path(name_or_path);
    return {read_input_file(path, fmt::format("{} file", noun), kPresetFileMaxBytes), path};
  }
  if (auto p = find_builtin_preset(kind, name_or_path))
    return {std::string(p->text), fmt::format("<built-in>/{}/{}.json", kind, p->name)};
  throw unknown_preset_error(kind, noun, name_or_path, fmt::format("(or give a path to a {} .json file)", noun));
}

}  // namespace ppu
