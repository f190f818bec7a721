// Tools: the agent's tools as one set, called by name with JSON arguments - what `ppu mcp` offers over
// MCP and what `ppu serve` will run for the model. Each tool has a JSON Schema for its arguments; a
// call checks them against it.
//
//   ToolSet tools(parse_tool_spec("search=kb.sqlite,memory=mem.sqlite,code"));
//   for (const ToolDef& t : tools.definitions()) offer(t.name, t.description, t.parameters);
//   ToolResult r = tools.call("search", {{"query", "paged attention"}}, "alice");
//   r.text;       // "1. docs/serving.md (score 7.31)\n   ... the [paged] [attention] kernel ..."
//   r.is_error;   // true for an unknown tool, arguments that do not match, a locked database ...
//   tools.call("code", {{"code", "print(6 * 7)"}}, "alice").text;   // "exit status 0\nstdout:\n42\n"
//
// The tools: `search` (query, limit: serve/SearchIndex), `memory_save` (text), `memory_recall`
// (query, limit), `memory_list` (limit, offset), `memory_forget` (id) (serve/MemoryStore; every call
// is the caller's user's), `code` (code, timeout_s: a Python 3 program run in serve/Sandbox; its exit
// status, stdout and stderr). A mistake in a call is a tool error returned as text, never an
// exception: the model reads it and the conversation goes on. So is a program the sandbox stopped (a
// time, CPU or output limit), a sandbox that could not start, and a busy sandbox pool (then
// ToolResult::busy is set too: `ppu serve` answers 429). The set's files are opened when it is built, so
// a missing index, a foreign database or a missing bubblewrap is the user's mistake at start-up
// (UserError).
//
// Thread-safe: search and memory calls are serialized (each is a few milliseconds of SQLite); code
// calls run in parallel, bounded by the sandbox pool (SandboxConfig::max_running, max_waiting).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve/Sandbox.hpp"

namespace ppu::serve {

class SearchIndex;
class MemoryStore;

// Which tools, from "search=kb.sqlite,memory=mem.sqlite[,code]".
struct ToolSpec {
  std::string search_db;  // empty: no search tool
  std::string memory_db;  // empty: no memory tools
  bool code = false;      // the sandboxed Python interpreter
  SandboxConfig sandbox;  // its limits and pool (defaults unless the caller sets them)
};

// Parses a --tools value. UserError naming the entry for an unknown tool, a missing "=FILE", "code"
// with a file, a tool given twice, an empty list.
ToolSpec parse_tool_spec(std::string_view text);

struct ToolDef {
  std::string name;
  std::string description;
  nlohmann::ordered_json parameters;  // JSON Schema of the arguments object
};

struct ToolResult {
  std::string text;
  bool is_error = false;
  bool busy = false;  // the code sandbox pool was full: try again later (an HTTP server's 429)
};

// The `code` tool's text for a sandbox run: how it ended ("exit status N", or "stopped: ..." for a
// limit), then "stdout:" and "stderr:" sections (those with output; "... [truncated]" after a capped
// one), or "(no output)". Its ToolResult is an error when a limit or signal stopped the program.
ToolResult code_tool_result(const SandboxResult& r, const SandboxLimits& limits);

// Why `args` does not match `schema` (the subset tools use: an object with typed properties -
// string, integer, number, boolean - required ones, integer bounds, no others), or "" when it does.
std::string check_arguments(const nlohmann::ordered_json& schema, const nlohmann::json& args);

class ToolSet {
 public:
  // Opens the spec's files. UserError naming the file: a missing search index, a foreign database;
  // for `code`, the sandbox's (Sandbox::Sandbox: bad limits, bubblewrap or python3 missing).
  explicit ToolSet(const ToolSpec& spec);
  ~ToolSet();
  ToolSet(const ToolSet&) = delete;
  ToolSet& operator=(const ToolSet&) = delete;

  const std::vector<ToolDef>& definitions() const { return defs_; }
  // The code tool's sandbox pool (its stats: running, waiting, peaks, busy answers), or null.
  const Sandbox* sandbox() const { return sandbox_.get(); }
  // Runs `name` with `arguments` for `user` (file comment).
  ToolResult call(std::string_view name, const nlohmann::json& arguments, std::string_view user);

 private:
  ToolResult run(const ToolDef& def, const nlohmann::json& args, std::string_view user);
  ToolResult run_code(const ToolDef& def, const nlohmann::json& args);

  std::unique_ptr<SearchIndex> search_;
  std::unique_ptr<MemoryStore> memory_;
  std::unique_ptr<Sandbox> sandbox_;
  std::vector<ToolDef> defs_;
  std::mutex mu_;  // the SQLite handles
};

}  // namespace ppu::serve
