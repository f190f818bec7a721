// serve/Tools and serve/McpServer: the --tools list, argument checking against each tool's schema,
// every tool's answer, tool errors returned as text (never exceptions), and MCP's JSON-RPC messages
// line by line, errors included.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "TestUtil.hpp"
#include "serve/McpServer.hpp"
#include "serve/SearchIndex.hpp"
#include "serve/Tools.hpp"

using namespace ppu;
using namespace ppu::serve;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A search index of two documents and an empty memory store, fresh for each test.
struct Files {
  std::string search, memory;
  explicit Files(const std::string& name) {
    const fs::path dir = test::temp_path(name + "-docs");
    fs::remove_all(dir);
    fs::create_directories(dir);
    test::write_file((dir / "ppu.md").string(), "The PPU has 96 GB of HBM2e and seven chip-to-chip links.");
    test::write_file((dir / "gpu.md").string(), "An H100 has 80 GB of HBM3.");
    search = test::temp_path(name + "-kb.sqlite");
    memory = test::temp_path(name + "-mem.sqlite");
    for (const auto& p : {search, memory})
      for (const char* s : {"", "-wal", "-shm"}) fs::remove(p + s);
    SearchIndex::open(search, SearchIndex::Mode::kCreate).index_folder(dir.string());
  }
  ToolSpec spec() const { return parse_tool_spec("search=" + search + ",memory=" + memory); }
};

}  // namespace

TEST(Tools, SpecParsing) {
  const ToolSpec s = parse_tool_spec("memory=m.sqlite,search=k.sqlite");
  EXPECT_EQ(s.search_db, "k.sqlite");
  EXPECT_EQ(s.memory_db, "m.sqlite");
  EXPECT_EQ(parse_tool_spec("search=a=b.sqlite").search_db, "a=b.sqlite");
  test::expect_error([] { parse_tool_spec(""); }, {"--tools: empty"});
  test::expect_error([] { parse_tool_spec("search=k.sqlite,browser=x"); }, {"'browser=x' is not a tool", "valid: search"});
  test::expect_error([] { parse_tool_spec("search"); }, {"'search' needs its file", "search=FILE.sqlite"});
  test::expect_error([] { parse_tool_spec("memory=a,memory=b"); }, {"'memory' is given twice"});
  test::expect_error([] { parse_tool_spec("search=k,coder"); }, {"'coder' is not a tool", "memory=FILE.sqlite, code"});
  test::expect_error([] { parse_tool_spec("search=k,"); }, {"'' is not a tool"});
}

TEST(Tools, ArgumentsAreCheckedAgainstTheSchema) {
  const nlohmann::ordered_json schema = {
      {"type", "object"},
      {"properties", {{"query", {{"type", "string"}}}, {"limit", {{"type", "integer"}, {"minimum", 1}, {"maximum", 20}}}}},
      {"required", {"query"}},
      {"additionalProperties", false}};
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}}), "");
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}, {"limit", 20}}), "");
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}, {"limit", 3.0}}), "");
  EXPECT_EQ(check_arguments(schema, json::array()), "the arguments must be a JSON object, not array");
  EXPECT_EQ(check_arguments(schema, {{"limit", 2}}), "missing argument 'query'");
  EXPECT_EQ(check_arguments(schema, {{"query", 5}}), "argument 'query' must be a string, not integer");
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}, {"limit", 2.5}}), "argument 'limit' must be an integer, not number");
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}, {"limit", 0}}), "argument 'limit' is 0; valid: 1 to 20");
  EXPECT_EQ(check_arguments(schema, {{"query", "x"}, {"lang", "en"}}), "unknown argument 'lang'; this tool takes: query, limit");
}

TEST(Tools, EveryToolAnswers) {
  Files f("tools-answers");
  ToolSet tools(f.spec());
  std::vector<std::string> names;
  for (const ToolDef& d : tools.definitions()) names.push_back(d.name);
  EXPECT_EQ(names, (std::vector<std::string>{"search", "memory_save", "memory_recall", "memory_list", "memory_forget"}));
  ToolResult r = tools.call("search", {{"query", "HBM2e links"}}, "alice");
  EXPECT_FALSE(r.is_error);
  EXPECT_TRUE(r.text.starts_with("1. ppu.md (score ")) << r.text;
  EXPECT_NE(r.text.find("[HBM2e]"), std::string::npos) << r.text;
  EXPECT_EQ(tools.call("search", {{"query", "zebra"}}, "alice").text, "no documents match");
  EXPECT_EQ(tools.call("memory_save", {{"text", "likes short answers"}}, "alice").text, "saved as memory 1");
  EXPECT_EQ(tools.call("memory_recall", {{"query", "short answers"}}, "alice").text, "[1] likes short answers");
  EXPECT_EQ(tools.call("memory_list", json::object(), "alice").text, "[1] likes short answers");
  EXPECT_EQ(tools.call("memory_list", json::object(), "bob").text, "nothing remembered");  // alice's are hers
  r = tools.call("memory_forget", {{"id", 1}}, "bob");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "there is no memory 1 of yours");
  EXPECT_EQ(tools.call("memory_forget", {{"id", 1}}, "alice").text, "forgot memory 1");
  EXPECT_EQ(tools.call("memory_recall", {{"query", "short"}}, "alice").text, "nothing remembered matches");
}

TEST(Tools, MistakesAreToolErrorsNotExceptions) {
  Files f("tools-errors");
  ToolSet tools(f.spec());
  ToolResult r = tools.call("browse", {{"url", "x"}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "no tool named 'browse'; the tools are: search, memory_save, memory_recall, memory_list, memory_forget");
  r = tools.call("search", {{"q", "x"}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "search: missing argument 'query'");
  r = tools.call("memory_save", {{"text", std::string(20000, 'x')}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_NE(r.text.find("memory_save: memory: a text of 20000 bytes"), std::string::npos) << r.text;
  r = tools.call("memory_save", {{"text", "x"}}, "");
  EXPECT_TRUE(r.is_error);
  EXPECT_NE(r.text.find("no user"), std::string::npos) << r.text;
}

TEST(Tools, MissingOrForeignFilesAreStartUpErrors) {
  const std::string missing = test::temp_path("tools-no-index.sqlite");
  fs::remove(missing);
  test::expect_error([&] { ToolSet t(parse_tool_spec("search=" + missing)); }, {missing, "no such index file"});
  Files f("tools-foreign");
  // The memory store is not a search index.
  ToolSet{parse_tool_spec("memory=" + f.memory)};
  test::expect_error([&] { ToolSet t(parse_tool_spec("search=" + f.memory)); }, {f.memory, "not a search index of ours"});
}

TEST(Mcp, AnswersEachMessage) {
  Files f("mcp-messages");
  ToolSet tools(f.spec());
  const McpOptions o{.user = "alice"};
  const auto ask = [&](const json& m) {
    const auto a = handle_mcp_line(tools, m.dump(), o);
    return a ? json::parse(*a) : json();
  };
  json a = ask({{"jsonrpc", "2.0"}, {"id", 1}, {"method", "initialize"},
                {"params", {{"protocolVersion", "2025-03-26"}, {"capabilities", json::object()},
                            {"clientInfo", {{"name", "t"}, {"version", "1"}}}}}});
  EXPECT_EQ(a["id"], 1);
  EXPECT_EQ(a["result"]["protocolVersion"], "2025-03-26");  // the client's, which we speak
  EXPECT_TRUE(a["result"]["capabilities"].contains("tools"));
  EXPECT_EQ(a["result"]["serverInfo"]["name"], "openppu");
  a = ask({{"jsonrpc", "2.0"}, {"id", 2}, {"method", "initialize"}, {"params", {{"protocolVersion", "1999-01-01"}}}});
  EXPECT_EQ(a["result"]["protocolVersion"], std::string(kMcpProtocolVersions[0]));  // else our newest
  EXPECT_FALSE(handle_mcp_line(tools, R"({"jsonrpc":"2.0","method":"notifications/initialized"})", o).has_value());
  EXPECT_EQ(ask({{"jsonrpc", "2.0"}, {"id", "p"}, {"method", "ping"}})["result"], json::object());
  a = ask({{"jsonrpc", "2.0"}, {"id", 3}, {"method", "tools/list"}});
  ASSERT_EQ(a["result"]["tools"].size(), 5u);
  EXPECT_EQ(a["result"]["tools"][0]["name"], "search");
  EXPECT_EQ(a["result"]["tools"][0]["inputSchema"]["required"], json::array({"query"}));
  a = ask({{"jsonrpc", "2.0"}, {"id", 4}, {"method", "tools/call"},
           {"params", {{"name", "search"}, {"arguments", {{"query", "H100"}}}}}});
  EXPECT_EQ(a["result"]["isError"], false);
  EXPECT_EQ(a["result"]["content"][0]["type"], "text");
  EXPECT_TRUE(a["result"]["content"][0]["text"].get<std::string>().starts_with("1. gpu.md")) << a.dump();
  a = ask({{"jsonrpc", "2.0"}, {"id", 5}, {"method", "tools/call"}, {"params", {{"name", "nope"}}}});
  EXPECT_EQ(a["result"]["isError"], true);  // a tool error: the model reads it
}

TEST(Mcp, ProtocolErrors) {
  Files f("mcp-errors");
  ToolSet tools(f.spec());
  const auto code = [&](std::string_view line) {
    const json a = json::parse(*handle_mcp_line(tools, line, {}));
    return a["error"]["code"].get<int>();
  };
  EXPECT_EQ(code("{not json"), -32700);
  EXPECT_EQ(code("[1,2]"), -32600);
  EXPECT_EQ(code(R"({"jsonrpc":"2.0","id":1})"), -32600);
  EXPECT_EQ(code(R"({"jsonrpc":"2.0","id":1,"method":"resources/list"})"), -32601);
  EXPECT_EQ(code(R"({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}})"), -32602);
  // The stdio loop: blank lines skipped, one answer line per request, none for notifications.
  std::istringstream in("\n" R"({"jsonrpc":"2.0","id":1,"method":"ping"})" "\n"
                        R"({"jsonrpc":"2.0","method":"notifications/initialized"})" "\n{bad\n");
  std::ostringstream out;
  serve_mcp(tools, in, out, {});
  EXPECT_EQ(out.str(), R"({"jsonrpc":"2.0","id":1,"result":{}})" "\n"
                       R"({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error: the line is not JSON"}})" "\n");
}
