// The agent's tools from the command line: `ppu index` builds or refreshes a search index of a folder
// (serve/SearchIndex); `ppu mcp` offers the tools over MCP's stdio transport (serve/McpServer).
#include <fmt/format.h>

#include <chrono>
#include <iostream>

#include "Commands.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"
#include "serve/McpServer.hpp"
#include "serve/SearchIndex.hpp"
#include "serve/Tools.hpp"

namespace ppu::cli {

int cmd_index(const IndexOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  serve::SearchIndex kb = serve::SearchIndex::open(o.out, serve::SearchIndex::Mode::kCreate);
  int64_t read = 0;
  auto last = t0;
  const serve::IndexStats st = kb.index_folder(o.folder, [&](const std::string& path) {
    ++read;
    const auto now = std::chrono::steady_clock::now();
    if (now - last > std::chrono::seconds(2)) {  // long runs show they are moving
      std::cerr << fmt::format("index: {} files read, now {}\n", read, path);
      last = now;
    }
  });
  const double host_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t docs = kb.size();
  if (o.json) {
    print_json_document("index", nlohmann::json::array({{{"folder", o.folder},
                                                          {"index", o.out},
                                                          {"documents", docs},
                                                          {"added", st.added},
                                                          {"updated", st.updated},
                                                          {"unchanged", st.unchanged},
                                                          {"removed", st.removed},
                                                          {"skipped", st.skipped},
                                                          {"bytes_read", st.bytes_read},
                                                          {"host_time_s", host_s}}}));
    return 0;
  }
  Table t({"index", "documents", "added", "updated", "unchanged", "removed", "skipped", "read", "host time"});
  t.add_row({o.out, fmt::format("{}", docs), fmt::format("{}", st.added), fmt::format("{}", st.updated),
             fmt::format("{}", st.unchanged), fmt::format("{}", st.removed), fmt::format("{}", st.skipped),
             format_quantity(Dimension::kBytes, static_cast<double>(st.bytes_read)),
             format_quantity(Dimension::kTime, host_s)});
  std::cout << fmt::format("{}: full-text index (SQLite FTS5) of {}\n", o.out, o.folder) << t.render()
            << "skipped: binary (a NUL byte), over 8 MiB or unreadable files; hidden files, folders and links are not "
               "looked at. Run again to pick up changes: only new and changed files are read.\n";
  return 0;
}

int cmd_mcp(const McpCliOptions& o) {
  serve::ToolSet tools(serve::parse_tool_spec(o.tools));
  serve::McpOptions mo;
  mo.user = o.user;
  // stdout carries the protocol only; anything for a person goes to stderr.
  std::cerr << fmt::format("mcp: {} tool{} over stdio (user '{}')\n", tools.definitions().size(),
                           tools.definitions().size() == 1 ? "" : "s", o.user);
  serve::serve_mcp(tools, std::cin, std::cout, mo);
  return 0;
}

}  // namespace ppu::cli
