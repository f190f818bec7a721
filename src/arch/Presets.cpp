#include "arch/Presets.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "arch/Error.hpp"

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

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot open file ({})", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw UserError(fmt::format("{}: read error", path));
  return ss.str();
}

PresetText preset_text(std::string_view kind, std::string_view noun, std::string_view name_or_path) {
  const bool is_path = name_or_path.find('/') != std::string_view::npos ||
                       (name_or_path.size() > 5 && name_or_path.substr(name_or_path.size() - 5) == ".json");
  if (is_path) {
    std::string path(name_or_path);
    return {read_text_file(path), path};
  }
  if (auto text = builtin_preset(kind, name_or_path))
    return {std::string(*text), fmt::format("<built-in>/{}/{}.json", kind, name_or_path)};
  std::string known;
  for (const auto& n : builtin_preset_names(kind)) known += (known.empty() ? "" : ", ") + n;
  throw UserError(fmt::format("unknown {} '{}'; known {}s: {} (or give a path to a {} .json file)", noun, name_or_path,
                              noun, known, noun));
}

}  // namespace ppu
