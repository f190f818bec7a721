// McpServer: the agent's tools (serve/Tools) as a Model Context Protocol server over stdio - `ppu mcp`.
// JSON-RPC 2.0, one message per line, as MCP's stdio transport carries it: initialize (answering the
// client's protocol version when it is one of kMcpProtocolVersions, else the newest), ping,
// tools/list (each tool's name, description and inputSchema) and tools/call (the result as one text
// content item, isError set for a tool error); notifications get no answer. A malformed line, a
// message that is not a request, an unknown method or bad params get JSON-RPC's error objects
// (-32700, -32600, -32601, -32602) and the server goes on.
//
//   ToolSet tools(parse_tool_spec("search=kb.sqlite"));
//   serve_mcp(tools, std::cin, std::cout, {.user = "alice"});   // until the client closes stdin
#pragma once

#include <array>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>

#include "serve/Tools.hpp"

namespace ppu::serve {

inline constexpr std::array<std::string_view, 3> kMcpProtocolVersions = {"2025-06-18", "2025-03-26", "2024-11-05"};

struct McpOptions {
  std::string user = "mcp";  // whose memories the memory tools read and write
};

// The answer to one line (a JSON-RPC message), or nullopt for a notification.
std::optional<std::string> handle_mcp_line(ToolSet& tools, std::string_view line, const McpOptions& options);

// Answers lines from `in` on `out` (flushed after each) until `in` ends.
void serve_mcp(ToolSet& tools, std::istream& in, std::ostream& out, const McpOptions& options);

}  // namespace ppu::serve
