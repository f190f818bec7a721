#include "report/JsonDoc.hpp"

#include <iostream>

namespace ppu {

nlohmann::json json_document(std::string_view command, nlohmann::json results, nlohmann::json extra) {
  nlohmann::json doc = {{"schema_version", kJsonSchemaVersion}, {"command", std::string(command)}};
  doc["results"] = results.is_array() ? std::move(results) : nlohmann::json::array({std::move(results)});
  for (auto& [k, v] : extra.items()) doc[k] = v;
  return doc;
}

void print_json_document(std::string_view command, nlohmann::json results, nlohmann::json extra) {
  std::cout << json_document(command, std::move(results), std::move(extra)).dump(2) << '\n';
}

nlohmann::json json_text_or_null(const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); }

}  // namespace ppu
