#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "arch/ChipSpec.hpp"
#include "cli/Commands.hpp"
#include "report/Table.hpp"

namespace ppu::cli {

std::vector<std::string> expand_chips(const std::string& chip) {
  if (chip == "all") return chip_preset_names();
  return {chip};
}

namespace {
std::string tf(const Quantity& q) { return q.present ? fmt::format("{:.1f}", q.value / 1e12) : "-"; }
}  // namespace

int cmd_chips_list(bool json) {
  nlohmann::json out = nlohmann::json::array();
  Table t({"chip", "name", "BF16 TFLOPS", "FP8 TFLOPS", "HBM GB", "HBM TB/s", "links x GB/s (per dir)", "host GB/s",
           "power W", "cores"});
  for (const auto& name : chip_preset_names()) {
    const ChipSpec c = load_chip(name);
    t.add_row({c.name, c.display_name, tf(c.matrix_bf16), tf(c.matrix_fp8), fmt::format("{:.0f}", c.hbm_size.value / 1e9),
               fmt::format("{:.2f}", c.hbm_bandwidth.value / 1e12),
               fmt::format("{} x {:.0f}", c.num_cores() ? static_cast<int>(c.chip_links.value) : 0, c.chip_link_bandwidth.value / 1e9),
               fmt::format("{:.1f}", c.host_link_bandwidth.value / 1e9), fmt::format("{:.0f}", c.power.value),
               fmt::format("{}", c.num_cores())});
    out.push_back({{"chip", c.name},
                   {"display_name", c.display_name},
                   {"matrix_bf16_flops_per_s", c.matrix_bf16.value},
                   {"matrix_fp8_flops_per_s", c.matrix_fp8.present ? nlohmann::json(c.matrix_fp8.value) : nlohmann::json()},
                   {"hbm_bytes", c.hbm_size.value},
                   {"hbm_bw_bytes_per_s", c.hbm_bandwidth.value},
                   {"chip_links", c.chip_links.value},
                   {"chip_link_bw_bytes_per_s", c.chip_link_bandwidth.value},
                   {"host_link_bw_bytes_per_s", c.host_link_bandwidth.value},
                   {"power_w", c.power.value},
                   {"cores", c.num_cores()}});
  }
  if (json) std::cout << out.dump(2) << '\n';
  else std::cout << t.render() << "\n'ppu chips show NAME' lists every field with its unit and source.\n";
  return 0;
}

int cmd_chips_show(const std::string& name_or_path, bool json) {
  const ChipSpec c = load_chip(name_or_path);
  nlohmann::json fields = nlohmann::json::object();
  Table t({"field", "value", "SI value", "basis", "source or reason"});
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
    fields[std::string(f.key)] = {{"value", q.value},
                                  {"unit", std::string(base_unit(f.dim))},
                                  {"as_written", q.text},
                                  {"basis", assumed ? "assumed" : "published"},
                                  {"source", assumed ? q.assumed : q.source}};
  }
  if (json) {
    std::cout << nlohmann::json{{"chip", c.name}, {"display_name", c.display_name}, {"vendor", c.vendor},
                                {"file", c.file}, {"notes", c.notes}, {"fields", fields}}
                     .dump(2)
              << '\n';
  } else {
    std::cout << fmt::format("{} ({}, {})\nfrom {}\n", c.display_name, c.name, c.vendor, c.file);
    if (!c.notes.empty()) std::cout << c.notes << '\n';
    std::cout << '\n' << t.render();
  }
  return 0;
}

}  // namespace ppu::cli
