#include <fmt/format.h>

#include <filesystem>
#include <algorithm>
#include <iostream>
#include <nlohmann/json.hpp>

#include "arch/ChipSpec.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"
#include "cli/Commands.hpp"
#include "models/AtomicFile.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"

namespace ppu::cli {

std::vector<std::string> expand_names(const std::string& list, const char* option, const std::vector<std::string>& all) {
  if (list == "all") return all;
  std::vector<std::string> out;
  for (size_t i = 0; i <= list.size();) {
    const size_t j = std::min(list.find(',', i), list.size());
    if (j == i) throw UserError(fmt::format("{} '{}': an empty name in the list; write names separated by commas", option, list));
    out.push_back(list.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

std::vector<std::string> AssumedMarks::among(const ChipSpec& c, std::initializer_list<std::string_view> keys) {
  const std::vector<std::string> all = assumed_fields(c);
  std::vector<std::string> out;
  for (auto k : keys)
    if (std::find(all.begin(), all.end(), k) != all.end()) out.emplace_back(k);
  return out;
}

std::string AssumedMarks::mark(const ChipSpec& c, const std::string& label, std::initializer_list<std::string_view> keys) {
  const std::vector<std::string> a = among(c, keys);
  if (a.empty()) return label;
  auto& noted = noted_[c.name];
  for (const auto& k : a)
    if (std::find(noted.begin(), noted.end(), k) == noted.end()) noted.push_back(k);
  return label + "*";
}

std::string AssumedMarks::legend() const {
  std::string out;
  for (const auto& [chip, keys] : noted_) {
    std::string list;
    for (const auto& k : keys) list += (list.empty() ? "" : ", ") + k;
    out += fmt::format("* assumed, not published: {} {} (ppu chips show {} gives the reasoning)\n", chip, list, chip);
  }
  return out;
}

std::vector<std::string> expand_chips(const std::string& chip) { return expand_names(chip, "--chip", chip_preset_names()); }

std::string wrap_text(const std::string& text, const std::string& indent) {
  if (text.empty()) return "";
  std::string out;
  for (const std::string& line : wrap_words(text, kShowTextWidth)) out += indent + line + '\n';
  return out;
}

namespace {
std::string tf(const Quantity& q) { return q.present ? fmt::format("{:.1f}", q.value / 1e12) : "-"; }
}  // namespace

int cmd_chips_list(bool json) {
  nlohmann::json out = nlohmann::json::array();
  Table t({"chip", "name", "BF16 TFLOPS", "FP8 TFLOPS", "HBM GB", "HBM TB/s", "links x GB/s (per dir)", "host GB/s",
           "power W", "cores"});
  bool any_assumed = false;
  for (const auto& name : chip_preset_names()) {
    const ChipSpec c = load_chip(name);
    // A '*' on every value the preset assumes rather than cites.
    auto mark = [&](const Quantity& q, std::string text) {
      if (!q.present || q.assumed.empty()) return text;
      any_assumed = true;
      return text + "*";
    };
    t.add_row({c.name, c.display_name, mark(c.matrix_bf16, tf(c.matrix_bf16)), mark(c.matrix_fp8, tf(c.matrix_fp8)),
               mark(c.hbm_size, fmt::format("{:.0f}", c.hbm_size.value / 1e9)),
               mark(c.hbm_bandwidth, fmt::format("{:.2f}", c.hbm_bandwidth.value / 1e12)),
               mark(c.chip_link_bandwidth, fmt::format("{} x {:.0f}", c.num_cores() ? static_cast<int>(c.chip_links.value) : 0,
                                                       c.chip_link_bandwidth.value / 1e9)),
               mark(c.host_link_bandwidth, fmt::format("{:.1f}", c.host_link_bandwidth.value / 1e9)),
               mark(c.power, fmt::format("{:.0f}", c.power.value)), mark(c.cores, fmt::format("{}", c.num_cores()))});
    out.push_back({{"chip", c.name},
                   {"display_name", c.display_name},
                   {"matrix_bf16_flops_per_s", c.matrix_bf16.value},
                   {"matrix_fp8_flops_per_s", c.matrix_fp8.present ? nlohmann::json(c.matrix_fp8.value) : nlohmann::json()},
                   {"hbm_bytes", c.hbm_size.value},
                   {"hbm_bandwidth_bytes_per_s", c.hbm_bandwidth.value},
                   {"chip_links", static_cast<int64_t>(c.chip_links.value)},
                   {"chip_link_bandwidth_bytes_per_s", c.chip_link_bandwidth.value},
                   {"host_link_bandwidth_bytes_per_s", c.host_link_bandwidth.value},
                   {"power_w", c.power.value},
                   {"cores", c.num_cores()},
                   {"assumed_fields", AssumedMarks::among(c, {"matrix_bf16", "matrix_fp8", "hbm_size", "hbm_bandwidth",
                                                              "chip_links", "chip_link_bandwidth", "host_link_bandwidth",
                                                              "power", "cores"})}});
  }
  if (json) print_json_document("chips", out);
  else
    std::cout << t.render() << (any_assumed ? "* assumed, not published (the preset gives its reasoning)\n" : "")
              << "\n'ppu chips show NAME' lists every field with its unit and source.\n";
  return 0;
}

int cmd_chips_show(const std::string& name_or_path, bool json) {
  const ChipSpec c = load_chip(name_or_path);
  nlohmann::json fields = nlohmann::json::object();
  Table t({"field", "value", "SI value", "basis", "source or reason"});
  t.set_max_width(4, kShowTextWidth);
  for (const auto& f : chip_fields()) {
    const Quantity& q = c.*(f.member);
    if (!q.present) {
      t.add_row({std::string(f.key), "-", "-", "absent", std::string(f.description)});
      fields[std::string(f.key)] = nullptr;
      continue;
    }
    const bool assumed = !q.assumed.empty();
    t.add_row({std::string(f.key), q.text, format_quantity(f.dim, q.value), assumed ? "assumed" : "published",
               assumed ? q.assumed : q.source});
    fields[std::string(f.key)] = quantity_record(q);
  }
  if (json) {
    const nlohmann::json chip = {{"chip", c.name}, {"display_name", c.display_name}, {"vendor", c.vendor},
                                 {"file", json_text_or_null(c.file)}, {"notes", json_text_or_null(c.notes)},
                                 {"fields", fields}};
    print_json_document("chips show", nlohmann::json::array({chip}));
  } else {
    std::cout << fmt::format("{} ({}, {})\nfrom {}\n", c.display_name, c.name, c.vendor, c.file);
    std::cout << wrap_text(c.notes) << '\n' << t.render();
  }
  return 0;
}

int cmd_chips_export(const ChipExportOptions& o) {
  const auto preset = find_builtin_preset("chips", o.name);
  if (!preset) throw unknown_preset_error("chips", "chip", o.name, "(export writes a built-in preset)");
  if (o.out.empty()) {
    std::cout << preset->text;
    return 0;
  }
  std::error_code ec;
  if (std::filesystem::exists(o.out, ec) && !o.force)
    throw UserError(fmt::format("--out {}: the file exists; give another path, or add --force to replace it", o.out));
  write_file_atomically(o.out, [&](std::ostream& os) { os << preset->text; });
  std::cout << fmt::format("wrote chip '{}' to {}: edit it, check it with 'ppu chips show {}', then pass the path to "
                           "--chip\n",
                           preset->name, o.out, o.out);
  return 0;
}

}  // namespace ppu::cli
