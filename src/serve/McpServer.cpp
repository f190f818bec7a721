#include "serve/McpServer.hpp"

#include <istream>
#include <ostream>

namespace ppu::serve {

namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

std::string error(const json& id, int code, const std::string& message) {
  return dump({{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}});
}

std::string result(const json& id, ojson r) { return dump({{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(r)}}); }

ojson initialize_result(const json& params) {
  std::string version(kMcpProtocolVersions[0]);
  if (params.is_object() && params.contains("protocolVersion") && params["protocolVersion"].is_string())
    for (const std::string_view v : kMcpProtocolVersions)
      if (params["protocolVersion"].get<std::string>() == v) version = v;
  return {{"protocolVersion", version},
          {"capabilities", {{"tools", {{"listChanged", false}}}}},
          {"serverInfo", {{"name", "openppu"}, {"version", "0.1.0"}}},
          {"instructions",
           "OpenPPU's agent tools: search over an indexed folder, a per-user memory and a sandboxed Python 3 "
           "interpreter (those this server was started with)."}};
}

}  // namespace

std::optional<std::string> handle_mcp_line(ToolSet& tools, std::string_view line, const McpOptions& options) {
  const json msg = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded()) return error(nullptr, -32700, "parse error: the line is not JSON");
  if (!msg.is_object() || !msg.contains("method") || !msg["method"].is_string())
    return error(msg.is_object() ? msg.value("id", json()) : json(), -32600,
                 "invalid request: a JSON-RPC 2.0 object with a string 'method' was expected");
  const std::string method = msg["method"].get<std::string>();
  if (!msg.contains("id")) return std::nullopt;  // a notification (notifications/initialized, ...)
  const json& id = msg["id"];
  const json params = msg.value("params", json::object());
  if (method == "initialize") return result(id, initialize_result(params));
  if (method == "ping") return result(id, ojson::object());
  if (method == "tools/list") {
    ojson list = ojson::array();
    for (const ToolDef& t : tools.definitions())
      list.push_back({{"name", t.name}, {"description", t.description}, {"inputSchema", t.parameters}});
    return result(id, {{"tools", list}});
  }
  if (method == "tools/call") {
    if (!params.is_object() || !params.contains("name") || !params["name"].is_string())
      return error(id, -32602, "invalid params: tools/call needs a string 'name' (and an 'arguments' object)");
    const ToolResult r = tools.call(params["name"].get<std::string>(), params.value("arguments", json::object()),
                                    options.user);
    return result(id, {{"content", ojson::array({{{"type", "text"}, {"text", r.text}}})}, {"isError", r.is_error}});
  }
  return error(id, -32601, "method not found: " + method + "; this server answers initialize, ping, tools/list, tools/call");
}

void serve_mcp(ToolSet& tools, std::istream& in, std::ostream& out, const McpOptions& options) {
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (const auto answer = handle_mcp_line(tools, line, options)) out << *answer << '\n' << std::flush;
  }
}

}  // namespace ppu::serve
