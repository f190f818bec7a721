// Fuzzes `ppu mcp`'s message handling (serve/McpServer handle_mcp_line over serve/Tools): the input is
// one line as a client would send it. With no tool files opened (ToolSet of an empty spec), every
// path that needs no database runs: JSON-RPC parsing and its error objects, initialize's version
// choice, tools/list, tools/call's argument checks and unknown-tool errors.
// Finding: any exception (none may escape: every mistake is a JSON-RPC error or a tool error), or an
// answer that is not one line of valid JSON.
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "FuzzInput.hpp"
#include "serve/McpServer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu::serve;
  static ToolSet tools{ToolSpec{}};
  const auto answer = handle_mcp_line(tools, ppu::fuzz::text(data, size), {});
  if (answer && (answer->find('\n') != std::string::npos || !nlohmann::json::accept(*answer))) {
    std::fprintf(stderr, "not one line of JSON: %s\n", answer->c_str());
    std::abort();
  }
  return 0;
}
