// Tests of models/ChatTemplate: each expected string is written out by hand from the Jinja chat
// template in Qwen3's tokenizer_config.json (the rules are quoted in ChatTemplate.hpp), one test per
// rule of the template: plain turns, the generation prompt with thinking on and off, thinking kept
// only after the last real user query, reasoning from reasoning_content or from <think> in the
// content, tool responses grouped into one user turn, the tool block and assistant tool calls. Then
// the template's tojson against Python's json.dumps (strings written out from Python 3.11; where
// @huggingface/jinja differs it is said), the fixtures that the real Jinja engine rendered
// (tests/data/chat_template_expected.json, tools/chat-template-ref/gen_fixtures.mjs) byte for byte,
// and splitting generated text.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "models/ChatTemplate.hpp"

namespace ppu::models {
namespace {

ChatMessage sys(std::string c) { return {ChatRole::kSystem, std::move(c), std::nullopt}; }
ChatMessage user(std::string c) { return {ChatRole::kUser, std::move(c), std::nullopt}; }
ChatMessage assistant(std::string c) { return {ChatRole::kAssistant, std::move(c), std::nullopt}; }
ChatMessage assistant(std::string c, std::string reasoning) {
  return {ChatRole::kAssistant, std::move(c), std::move(reasoning)};
}
ChatMessage tool(std::string c) { return {ChatRole::kTool, std::move(c), std::nullopt}; }

std::string render(const std::vector<ChatMessage>& m, bool generation_prompt = true, bool thinking = true) {
  return render_chat(m, ChatOptions{.add_generation_prompt = generation_prompt, .enable_thinking = thinking});
}

using Json = nlohmann::ordered_json;

ChatMessage assistant_calls(std::string c, std::vector<ToolCall> calls) {
  ChatMessage m = assistant(std::move(c));
  m.tool_calls = std::move(calls);
  return m;
}

const Json& clock_tool() {
  static const Json tool = Json::parse(R"({"type": "function", "function": {"name": "now", "parameters": {}}})");
  return tool;
}

// The tool block for the single clock_tool(), with `system` folded in (as the template writes it).
std::string clock_tool_block(const std::string& system = "") {
  return "<|im_start|>system\n" + (system.empty() ? "" : system + "\n\n") +
         "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
         "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
         "{\"type\": \"function\", \"function\": {\"name\": \"now\", \"parameters\": {}}}\n</tools>\n\n"
         "For each function call, return a json object with function name and arguments within "
         "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
         "<args-json-object>}\n</tool_call><|im_end|>\n";
}

std::string render_tools(const std::vector<ChatMessage>& m, bool generation_prompt = true) {
  return render_chat(m, ChatOptions{.add_generation_prompt = generation_prompt, .tools = {clock_tool()}});
}

TEST(ChatTemplate, UserTurnThenGenerationPrompt) {
  EXPECT_EQ(render({user("Hi")}), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, HeaderExampleWithThinkingDisabled) {
  // The example in ChatTemplate.hpp: enable_thinking=False appends an empty think block.
  EXPECT_EQ(render({sys("You are terse."), user("2+2?")}, true, false),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplate, WithoutGenerationPrompt) {
  EXPECT_EQ(render({user("Hi")}, false), "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(render({user("Hi")}, false, false), "<|im_start|>user\nHi<|im_end|>\n")
      << "enable_thinking only changes the generation prompt";
}

TEST(ChatTemplate, LaterSystemMessageIsAnOrdinaryTurn) {
  EXPECT_EQ(render({user("x"), sys("late system")}),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>system\nlate system<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, ThinkingOfEarlierTurnsIsDropped) {
  // The assistant turn before the last user query keeps only the text after </think>.
  EXPECT_EQ(render({user("Q1"), assistant("<think>\nfoo\n</think>\n\nHello"), user("Q2")}),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, LastAssistantTurnAlwaysHasAThinkBlock) {
  EXPECT_EQ(render({user("Q"), assistant("A", "R")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n");
  // With no reasoning at all the last turn still gets an (empty) block.
  EXPECT_EQ(render({user("Q"), assistant("A")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
}

TEST(ChatTemplate, ReasoningTakenFromContentIsStrippedOfNewlines) {
  EXPECT_EQ(render({user("Q"), assistant("<think>\n\nR1\nR2\n\n</think>\n\n\nA")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR1\nR2\n</think>\n\nA<|im_end|>\n");
  // Several </think>: reasoning before the first, content after the last.
  EXPECT_EQ(render({user("Q"), assistant("<think>a</think>b</think>c")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\na\n</think>\n\nc<|im_end|>\n");
}

TEST(ChatTemplate, ReasoningContentLeavesContentAsWritten) {
  EXPECT_EQ(render({user("Q"), assistant("<think>ignored</think>shown", "kept")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nkept\n</think>\n\n"
            "<think>ignored</think>shown<|im_end|>\n");
}

TEST(ChatTemplate, ToolResponsesShareOneUserTurn) {
  EXPECT_EQ(render({user("weather?"), assistant("<tool_call>x</tool_call>"), tool("r1"), tool("r2"),
                    assistant("<think>ok</think>It is sunny.")},
                   false),
            "<|im_start|>user\nweather?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\nok\n</think>\n\nIt is sunny.<|im_end|>\n");
}

TEST(ChatTemplate, AssistantTurnsAfterTheQueryWithoutReasoningStayPlainUnlessLast) {
  EXPECT_EQ(render({user("weather?"), assistant("calling"), tool("r1"), assistant("done")}, false),
            "<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\ncalling<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n");
}

TEST(ChatTemplate, WrappedToolResponseFromUserIsNotAQuery) {
  // The last real query is "real", so a1 (after it, with reasoning) keeps its thinking.
  EXPECT_EQ(render({user("real"), assistant("a1", "why"), user("<tool_response>\nr\n</tool_response>"),
                    assistant("a2")}),
            "<|im_start|>user\nreal<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\na1<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Errors) {
  test::expect_error([] { render({}); }, {"no messages"});
  test::expect_error([] { render({ChatMessage{ChatRole::kCount, "x", std::nullopt}}); },
                     {"message 0", "system, user, assistant, tool"});
  test::expect_error([] { parse_chat_role("robot"); }, {"'robot'", "system, user, assistant, tool"});
}

TEST(ChatTemplate, RoleNames) {
  for (size_t i = 0; i < kChatRoleNames.size(); ++i) {
    const auto role = static_cast<ChatRole>(i);
    EXPECT_EQ(parse_chat_role(chat_role_name(role)), role);
  }
}

TEST(ChatTemplateTools, BlockWithoutSystemMessage) {
  EXPECT_EQ(render_tools({user("Time?")}),
            clock_tool_block() + "<|im_start|>user\nTime?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTools, FirstSystemMessageFoldedIntoTheBlock) {
  EXPECT_EQ(render_tools({sys("Be brief."), user("Time?")}),
            clock_tool_block("Be brief.") + "<|im_start|>user\nTime?<|im_end|>\n<|im_start|>assistant\n");
  // An empty system message still adds its "\n\n".
  EXPECT_EQ(render_tools({sys(""), user("x")}, false),
            "<|im_start|>system\n\n\n" + clock_tool_block().substr(std::string("<|im_start|>system\n").size()) +
                "<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplateTools, LaterSystemMessageStaysATurn) {
  EXPECT_EQ(render_tools({user("x"), sys("late")}, false),
            clock_tool_block() + "<|im_start|>user\nx<|im_end|>\n<|im_start|>system\nlate<|im_end|>\n");
}

TEST(ChatTemplateTools, EmptyToolListIsNoTools) {
  EXPECT_EQ(render_chat(std::vector<ChatMessage>{user("Hi")}, ChatOptions{.tools = {}}),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTools, CallsWithoutContentHaveNoLeadingNewline) {
  // Before the last query, so no think block: the first call follows "assistant\n" directly, the
  // next ones after "\n".
  EXPECT_EQ(render({assistant_calls("", {{"c1", "f", R"({"a": 1})"}, {"c2", "g", "{}"}}), user("Q")}, false),
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n"
            "<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call><|im_end|>\n"
            "<|im_start|>user\nQ<|im_end|>\n");
}

TEST(ChatTemplateTools, CallsAfterContentStartOnANewLine) {
  EXPECT_EQ(render({user("Q"), assistant_calls("Checking.", {{"c1", "f", "{}"}})}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nChecking.\n"
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n");
}

TEST(ChatTemplateTools, NewlineRuleLooksAtContentBeforeItsNewlinesAreStripped) {
  // Content "\n" is non-empty, so a newline precedes the call although the think branch prints the
  // content as "" (lstrip). Content that is only a think block is empty after the split: no newline.
  EXPECT_EQ(render({user("Q"), assistant_calls("\n", {{"c1", "f", "{}"}})}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n\n"
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n");
  EXPECT_EQ(render({user("Q"), assistant_calls("<think>\nr\n</think>\n\n", {{"c1", "f", "{}"}})}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\n"
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n");
}

TEST(ChatTemplateTools, NameAndArgumentsAreVerbatim) {
  EXPECT_EQ(render({assistant_calls("", {{"", "odd\"name", "not json {"}}), user("Q")}, false),
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"odd\"name\", \"arguments\": not json {}\n"
            "</tool_call><|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
}

TEST(ChatTemplateTools, ToolCallsOnOtherRolesAreIgnored) {
  ChatMessage u = user("Q");
  u.tool_calls = {{"c", "f", "{}"}};
  EXPECT_EQ(render({u}, false), "<|im_start|>user\nQ<|im_end|>\n");
}

TEST(ChatTemplateTools, TooDeepToolIsAUserError) {
  Json deep = Json::array();
  for (int i = 0; i < kTemplateJsonMaxDepth; ++i) deep = Json::array({deep});
  const std::vector<ChatMessage> chat = {user("x")};
  test::expect_error([&] { render_chat(chat, ChatOptions{.tools = {clock_tool(), deep}}); }, {"tools[1]", "512"});
}

TEST(ChatTemplateToJson, SeparatorsAndKeyOrder) {
  EXPECT_EQ(template_tojson(Json::parse(R"({"b":1,"a":[1,2,{"z":null,"y":true}],"2":false})")),
            R"({"b": 1, "a": [1, 2, {"z": null, "y": true}], "2": false})")
      << "insertion order; @huggingface/jinja moves the integer-like key \"2\" first";
}

TEST(ChatTemplateToJson, EmptyAndNestedContainers) {
  EXPECT_EQ(template_tojson(Json::parse(R"({"e":{},"a":[],"n":[[[]],{"x":{}}]})")),
            R"({"e": {}, "a": [], "n": [[[]], {"x": {}}]})");
  EXPECT_EQ(template_tojson(Json::object()), "{}");
  EXPECT_EQ(template_tojson(Json::array()), "[]");
}

TEST(ChatTemplateToJson, StringsKeepNonAsciiAndEscapeControls) {
  // json.dumps(ensure_ascii=False): only '"', '\\' and bytes below 0x20; \x7f, U+2028 and non-ASCII
  // stay as they are (so does @huggingface/jinja).
  EXPECT_EQ(template_tojson(Json("Zoë \"東京\" \\ \n\r\t\b\f \x01\x1f \x7f \u2028 🌦")),
            "\"Zoë \\\"東京\\\" \\\\ \\n\\r\\t\\b\\f \\u0001\\u001f \x7f \u2028 🌦\"");
  EXPECT_EQ(template_tojson(Json(std::string("nul\0x", 5))), "\"nul\\u0000x\"");
  EXPECT_EQ(template_tojson(Json::parse(R"({"k\"ey":"v"})")), R"({"k\"ey": "v"})");
  // Invalid UTF-8 (not reachable from parsed JSON) passes through instead of throwing.
  EXPECT_EQ(template_tojson(Json(std::string("\xff"))), "\"\xff\"");
}

TEST(ChatTemplateToJson, IntegersAndBooleans) {
  EXPECT_EQ(template_tojson(Json::parse("[0, -5, 120, true, false, null]")), "[0, -5, 120, true, false, null]");
  EXPECT_EQ(template_tojson(Json(std::numeric_limits<int64_t>::min())), "-9223372036854775808");
  EXPECT_EQ(template_tojson(Json(std::numeric_limits<uint64_t>::max())), "18446744073709551615");
}

TEST(ChatTemplateToJson, FloatsArePythonRepr) {
  // Each pair: the JSON text as a request would carry it, and Python's json.dumps of json.loads of it.
  // @huggingface/jinja writes JavaScript's numbers instead: every integral float below 1e21 as an
  // integer ("1", "100000000000000000000", "-0" as "0"), and 1e-5 as "0.00001", 1e-7 as "1e-7".
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1.0", "1.0"},
      {"1e20", "1e+20"},
      {"-0.5", "-0.5"},
      {"1e15", "1000000000000000.0"},
      {"1e16", "1e+16"},
      {"1234567890123456.0", "1234567890123456.0"},
      {"1e-5", "1e-05"},
      {"0.0001", "0.0001"},
      {"1e-7", "1e-07"},
      {"-0.0", "-0.0"},
      {"0.0", "0.0"},
      {"100.0", "100.0"},
      {"123.456", "123.456"},
      {"0.1", "0.1"},
      {"0.00012", "0.00012"},
      {"12345678901234567.0", "1.2345678901234568e+16"},
      {"0.3333333333333333", "0.3333333333333333"},
      {"5e-324", "5e-324"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"2.5e-05", "2.5e-05"},
      {"1e21", "1e+21"},
      {"-1.5e-10", "-1.5e-10"},
      {"9007199254740993.0", "9007199254740992.0"},
  };
  for (const auto& [text, python] : cases) EXPECT_EQ(template_tojson(Json::parse(text)), python) << text;
  EXPECT_EQ(template_tojson(Json::parse(R"({"a": 1.0, "b": [2.50, 1E+2]})")), R"({"a": 1.0, "b": [2.5, 100.0]})");
}

TEST(ChatTemplateToJson, NonFiniteFloatsAsPythonWritesThem) {
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(template_tojson(Json::array({std::nan(""), inf, -inf})), "[NaN, Infinity, -Infinity]");
}

TEST(ChatTemplateToJson, DepthLimit) {
  Json deep = Json::object();
  for (int i = 1; i < kTemplateJsonMaxDepth; ++i) deep = Json::array({deep});
  EXPECT_NO_THROW(template_tojson(deep)) << "exactly kTemplateJsonMaxDepth levels";
  deep = Json::array({deep});
  test::expect_error([&] { template_tojson(deep); }, {"512"});
}

// The messages of one fixture case, from OpenAI's chat format: a call's arguments given as an object
// are rendered the way the template renders them (tojson).
std::vector<ChatMessage> fixture_messages(const Json& messages) {
  std::vector<ChatMessage> out;
  for (const Json& m : messages) {
    ChatMessage msg{parse_chat_role(m.at("role").get<std::string>()), m.at("content").get<std::string>(),
                    std::nullopt};
    if (m.contains("reasoning_content")) msg.reasoning_content = m["reasoning_content"].get<std::string>();
    for (const Json& c : m.value("tool_calls", Json::array())) {
      const Json& f = c.at("function");
      const Json& args = f.at("arguments");
      msg.tool_calls.push_back({c.at("id").get<std::string>(), f.at("name").get<std::string>(),
                                args.is_string() ? args.get<std::string>() : template_tojson(args)});
    }
    out.push_back(std::move(msg));
  }
  return out;
}

TEST(ChatTemplateReference, ReproducesTheJinjaEngineByteForByte) {
  const std::string path = test::fixture("chat_template_expected.json");
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in.good()) << "cannot read " << path << " (tools/chat-template-ref/gen_fixtures.mjs writes it)";
  const Json fixtures = Json::parse(in);
  const Json& cases = fixtures.at("cases");
  EXPECT_GE(cases.size(), 20u);
  for (const Json& c : cases) {
    ChatOptions options{.add_generation_prompt = c.at("add_generation_prompt").get<bool>(),
                        .enable_thinking = c.value("enable_thinking", true)};
    for (const Json& tool : c.value("tools", Json::array())) options.tools.push_back(tool);
    EXPECT_EQ(render_chat(fixture_messages(c.at("messages")), options), c.at("expected").get<std::string>())
        << "case: " << c.at("name").get<std::string>() << " (" << fixtures.at("engine").get<std::string>() << ")";
  }
}

TEST(ThinkingSplit, ClosedBlock) {
  const ThinkingSplit s = split_thinking("<think>\nLet me add.\n2+2=4\n</think>\n\nThe answer is 4.");
  EXPECT_EQ(s.reasoning, "Let me add.\n2+2=4");
  EXPECT_EQ(s.content, "The answer is 4.");
  EXPECT_FALSE(s.in_thinking);
}

TEST(ThinkingSplit, EmptyBlockFromThinkingDisabled) {
  const ThinkingSplit s = split_thinking("<think>\n\n</think>\n\nHi!");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.content, "Hi!");
}

TEST(ThinkingSplit, OnlyClosingTagWhenThePromptOpenedTheBlock) {
  const ThinkingSplit s = split_thinking("reasoning here\n</think>\n\nanswer");
  EXPECT_EQ(s.reasoning, "reasoning here");
  EXPECT_EQ(s.content, "answer");
}

TEST(ThinkingSplit, UnclosedBlock) {
  const ThinkingSplit s = split_thinking("<think>\nstill going");
  EXPECT_EQ(s.reasoning, "still going");
  EXPECT_EQ(s.content, "");
  EXPECT_TRUE(s.in_thinking);
}

TEST(ThinkingSplit, NoBlock) {
  const ThinkingSplit s = split_thinking("\nplain answer");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.content, "\nplain answer") << "without a think block the text is left alone";
  EXPECT_FALSE(s.in_thinking);
}

TEST(ThinkingSplit, FormatReply) {
  const std::string g = "<think>\nhmm\n</think>\n\nYes.";
  EXPECT_EQ(format_reply(g, ThinkingDisplay::kShow), g);
  EXPECT_EQ(format_reply(g, ThinkingDisplay::kStrip), "Yes.");
  EXPECT_EQ(format_reply("<think>\nunfinished", ThinkingDisplay::kStrip), "");
}

}  // namespace
}  // namespace ppu::models
