// The one shape of every `--json` document (docs/json.md): an object with the schema version, the
// command that made it and its results, always a list (one entry per chip, preset, size or case, even
// when there is one):
//
//   {"schema_version": 1, "command": "bench gemm", "results": [{"chip": "h100", "time_s": 1.2e-5, ...}]}
//
// Keys are snake_case with the SI unit as suffix (_s, _bytes, _bytes_per_s, _flops_per_s, _w, _j),
// ratios are fractions (0.56, never 56%), a missing value is null (never ""), and records that name
// things (ops, collectives) are lists of objects, never keys built from free text.
// docs/schemas/<command>.schema.json describes each command's document; tests/cli/json_documents.py
// checks every command's output against its schema and these conventions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ppu {

// Bumped when a key is renamed or removed or its meaning changes (adding keys keeps the version).
inline constexpr int kJsonSchemaVersion = 1;

// {"schema_version", "command", "results", and `extra`'s keys}; `results` not an array becomes a
// one-element list.
nlohmann::json json_document(std::string_view command, nlohmann::json results,
                             nlohmann::json extra = nlohmann::json::object());
// Prints json_document(...) with two-space indents and a newline to stdout.
void print_json_document(std::string_view command, nlohmann::json results,
                         nlohmann::json extra = nlohmann::json::object());

// `s`, or null when it is empty.
nlohmann::json json_text_or_null(const std::string& s);

}  // namespace ppu
