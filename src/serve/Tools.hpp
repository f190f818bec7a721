// Tools: the agent's tools as one set, called by name with JSON arguments - what `ppu mcp` offers over
// MCP and what `ppu serve` will run for the model. Each tool has a JSON Schema for its arguments; a
// call checks them against it.
//
//   ToolSet tools(parse_tool_spec("search=kb.sqlite,memory=mem.sqlite"));
//   for (const ToolDef& t : tools.definitions()) offer(t.name, t.description, t.parameters);
//   ToolResult r = tools.call("search", {{"query", "paged attention"}}, "alice");
//   r.text;       // "1. docs/serving.md (score 7.31)\n   ... the [paged] [attention] kernel ..."
//   r.is_error;   // true for an unknown tool, arguments that do not match, a locked database ...
//
// The tools: `search` (query, limit: serve/SearchIndex), `memory_save` (text), `memory_recall`
// (query, limit), `memory_list` (limit, offset), `memory_forget` (id) (serve/MemoryStore; every call
// is the caller's user's). A mistake in a call is a tool error returned as text, never an exception:
// the model reads it and the conversation goes on. The set's files are opened when it is built, so a
// missing index or a foreign database is the user's mistake at start-up (UserError).
//
// Thread-safe: calls are serialized (each is a few milliseconds of SQLite).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ppu::serve {

class SearchIndex;
class MemoryStore;

// Which tools, from "search=kb.sqlite,memory=mem.sqlite[,code]".
struct ToolSpec {
  std::string search_db;  // empty: no search tool
  std::string memory_db;  // empty: no memory tools
};

// Parses a --tools value. UserError naming the entry for an unknown tool, a missing "=FILE", a tool
// given twice, an empty list, and for "code" (the sandboxed interpreter is not built yet).
ToolSpec parse_tool_spec(std::string_view text);

struct ToolDef {
  std::string name;
  std::string description;
  nlohmann::ordered_json parameters;  // JSON Schema of the arguments object
};

struct ToolResult {
  std::string text;
  bool is_error = false;
};

// Why `args` does not match `schema` (the subset tools use: an object with typed properties -
// string, integer, number, boolean - required ones, integer bounds, no others), or "" when it does.
std::string check_arguments(const nlohmann::ordered_json& schema, const nlohmann::json& args);

class ToolSet {
 public:
  // Opens the spec's files. UserError naming the file: a missing search index, a foreign database.
  explicit ToolSet(const ToolSpec& spec);
  ~ToolSet();
  ToolSet(const ToolSet&) = delete;
  ToolSet& operator=(const ToolSet&) = delete;

  const std::vector<ToolDef>& definitions() const { return defs_; }
  // Runs `name` with `arguments` for `user` (file comment).
  ToolResult call(std::string_view name, const nlohmann::json& arguments, std::string_view user);

 private:
  ToolResult run(const ToolDef& def, const nlohmann::json& args, std::string_view user);

  std::unique_ptr<SearchIndex> search_;
  std::unique_ptr<MemoryStore> memory_;
  std::vector<ToolDef> defs_;
  std::mutex mu_;
};

}  // namespace ppu::serve
