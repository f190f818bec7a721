// serve/OpenAi: the request bodies `ppu serve` accepts, field by field, and one test per kind of bad
// body asserting its status, the field it names and the message.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "serve/OpenAi.hpp"

using namespace ppu;
using namespace ppu::serve;
using models::ChatRole;

namespace {

// The ApiError a body gets (status 0 and empty when it parses).
struct Refusal {
  int status = 0;
  std::string param, message;
};
Refusal refusal(std::string_view body, bool chat = true) {
  try {
    if (chat) parse_chat_request(body);
    else parse_completion_request(body);
  } catch (const ApiError& e) {
    return {e.status(), e.param(), e.what()};
  }
  return {};
}

}  // namespace

TEST(OpenAiApi, ChatFieldsAreRead) {
  const ApiRequest r = parse_chat_request(R"({
    "model": "tiny", "stream": true, "stream_options": {"include_usage": true},
    "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
      {"role": "assistant", "content": null, "reasoning_content": "use the tool",
       "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    "tool_choice": "auto", "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 20,
    "seed": -3, "presence_penalty": 1.5, "frequency_penalty": -0.5, "stop": ["\n\n", "END"], "user": "u1", "n": 1,
    "logprobs": false, "chat_template_kwargs": {"enable_thinking": false}, "some_future_field": {"x": 1}})");
  EXPECT_TRUE(r.chat);
  EXPECT_EQ(r.model, "tiny");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, ChatRole::kSystem);
  EXPECT_EQ(r.messages[1].content, "Weather\nin Paris?");
  EXPECT_EQ(r.messages[2].role, ChatRole::kAssistant);
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[2].reasoning_content, "use the tool");
  ASSERT_EQ(r.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[2].tool_calls[0].id, "call_1");
  EXPECT_EQ(r.messages[2].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[2].tool_calls[0].arguments, R"({"city": "Paris"})");  // verbatim
  EXPECT_EQ(r.messages[3].role, ChatRole::kTool);
  EXPECT_EQ(r.messages[3].content, "18 C");
  ASSERT_EQ(r.tools.size(), 1u);
  // Key order as given (the template renders the tool with it).
  EXPECT_EQ(r.tools[0].dump(), R"({"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}})");
  EXPECT_EQ(r.tool_choice, "auto");
  EXPECT_EQ(r.max_tokens, 7);  // max_completion_tokens wins
  EXPECT_DOUBLE_EQ(r.sampling.temperature, 0.5);
  EXPECT_DOUBLE_EQ(r.sampling.top_p, 0.9);
  EXPECT_EQ(r.sampling.top_k, 20);
  EXPECT_EQ(r.seed, static_cast<uint64_t>(-3));
  EXPECT_DOUBLE_EQ(r.sampling.presence_penalty, 1.5);
  EXPECT_DOUBLE_EQ(r.sampling.frequency_penalty, -0.5);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(r.user, "u1");
  EXPECT_EQ(r.enable_thinking, false);
}

TEST(OpenAiApi, DefaultsAndNullsAreOpenAis) {
  const ApiRequest r = parse_chat_request(
      R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": null, "stop": null, "top_k": -1,
          "tools": null, "seed": null})");
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_DOUBLE_EQ(r.sampling.temperature, 1.0);  // OpenAI's default
  EXPECT_DOUBLE_EQ(r.sampling.top_p, 1.0);
  EXPECT_EQ(r.sampling.top_k, 0);  // vLLM's -1: no limit
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_TRUE(r.stop.empty());
  EXPECT_TRUE(r.tools.empty());
  EXPECT_FALSE(r.enable_thinking.has_value());
  EXPECT_EQ(parse_chat_request(R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "##"})").stop,
            std::vector<std::string>{"##"});
}

TEST(OpenAiApi, CompletionPrompts) {
  EXPECT_EQ(parse_completion_request(R"({"model": "m", "prompt": "abc", "echo": true})").prompt_text, "abc");
  EXPECT_TRUE(parse_completion_request(R"({"model": "m", "prompt": "abc", "echo": true})").echo);
  EXPECT_EQ(parse_completion_request(R"({"model": "m", "prompt": ["one"]})").prompt_text, "one");
  const ApiRequest ids = parse_completion_request(R"({"model": "m", "prompt": [1, 2, 151643]})");
  EXPECT_TRUE(ids.prompt_text.empty());
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{1, 2, 151643}));
  EXPECT_EQ(parse_completion_request(R"({"model": "m", "prompt": [[4, 5]]})").prompt_ids, (std::vector<int32_t>{4, 5}));
  EXPECT_FALSE(parse_completion_request(R"({"model": "m", "prompt": "x"})").chat);
}

TEST(OpenAiApi, EveryBadBodyIsA400NamingTheField) {
  struct Case {
    const char* param;       // the error's param
    const char* in_message;  // the field as the message names it ("": not checked)
    const char* says;        // what the message says
    bool chat = true;
  };
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  const auto with = [&](const std::string& extra) { return R"({"model": "m", )" + msgs + ", " + extra + "}"; };
  const std::vector<std::pair<std::string, Case>> cases = {
      {"{", {"", "", "malformed JSON"}},
      {"", {"", "", "malformed JSON"}},
      {R"({"model": "m", "x": 1e999999})", {"", "", "malformed JSON"}},
      {"[1, 2]", {"", "", "must be an object"}},
      {R"({"messages": [{"role": "user", "content": "hi"}]})", {"model", "model", "missing"}},
      {R"({"model": 5, "messages": []})", {"model", "model", "must be a string, not number"}},
      {R"({"model": "m"})", {"messages", "messages", "missing"}},
      {R"({"model": "m", "messages": {}})", {"messages", "messages", "must be an array"}},
      {R"({"model": "m", "messages": []})", {"messages", "messages", "empty"}},
      {R"({"model": "m", "messages": ["hi"]})", {"messages[0]", "messages[0]", "must be an object, not string"}},
      {R"({"model": "m", "messages": [{"content": "hi"}]})", {"messages[0].role", "messages[0].role", "missing"}},
      {R"({"model": "m", "messages": [{"role": "robot", "content": "hi"}]})",
       {"messages[0].role", "messages[0].role", "'robot'; valid: system, developer, user, assistant, tool"}},
      {R"({"model": "m", "messages": [{"role": "user"}]})", {"messages[0].content", "messages[0].content", "missing"}},
      {R"({"model": "m", "messages": [{"role": "user", "content": 3}]})",
       {"messages[0].content", "messages[0].content", "a string or an array of text parts"}},
      {R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})",
       {"messages[0].content[0].type", "messages[0].content[0].type", "text parts only"}},
      {R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]})",
       {"messages[0].tool_calls[0].function.name", "", "missing or empty"}},
      {R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}]})",
       {"messages[0].tool_calls[0].function.arguments", "", "a JSON string"}},
      {with(R"("stream": "yes")"), {"stream", "stream", "must be a boolean, not string"}},
      {with(R"("stream_options": {"include_usage": true})"), {"stream_options", "", "only allowed when 'stream' is true"}},
      {with(R"("max_tokens": 0)"), {"max_tokens", "max_tokens", "valid: 1 to"}},
      {with(R"("max_tokens": 2.5)"), {"max_tokens", "max_tokens", "a whole number"}},
      {with(R"("max_tokens": "5")"), {"max_tokens", "max_tokens", "must be an integer"}},
      {with(R"("max_completion_tokens": -1)"), {"max_completion_tokens", "", "valid: 1 to"}},
      {with(R"("temperature": 2.5)"), {"temperature", "temperature", "valid: from 0 to 2"}},
      {with(R"("temperature": -0.1)"), {"temperature", "temperature", "valid"}},
      {with(R"("top_p": 0)"), {"top_p", "top_p", "valid: above 0 to 1"}},
      {with(R"("top_k": -2)"), {"top_k", "top_k", "valid"}},
      {with(R"("presence_penalty": 3)"), {"presence_penalty", "", "valid: from -2 to 2"}},
      {with(R"("frequency_penalty": "a")"), {"frequency_penalty", "", "must be a number"}},
      {with(R"("seed": 1.5)"), {"seed", "seed", "must be an integer"}},
      {with(R"("n": 2)"), {"n", "n", "one choice per request"}},
      {with(R"("logprobs": true)"), {"logprobs", "logprobs", "not supported"}},
      {with(R"("top_logprobs": 2)"), {"top_logprobs", "", "not supported"}},
      {with(R"("stop": 5)"), {"stop", "stop", "a string or an array of strings"}},
      {with(R"("stop": ["a", 1])"), {"stop[1]", "stop[1]", "must be a string"}},
      {with(R"("stop": ["a", "b", "c", "d", "e"])"), {"stop", "stop", "up to 4"}},
      {with(R"("stop": "")"), {"stop", "stop", "empty string"}},
      {with(R"("tools": {})"), {"tools", "tools", "must be an array"}},
      {with(R"("tools": [{"type": "retrieval"}])"), {"tools[0].type", "", "valid: function"}},
      {with(R"("tools": [{"type": "function"}])"), {"tools[0].function", "", "missing"}},
      {with(R"("tools": [{"type": "function", "function": {"description": "x"}}])"), {"tools[0].function.name", "", "missing"}},
      {with(R"("tools": [{"type": "function", "function": {"name": "f", "parameters": []}}])"),
       {"tools[0].function.parameters", "", "an object"}},
      {with(R"("tool_choice": "required")"), {"tool_choice", "tool_choice", "guided decoding"}},
      {with(R"("tool_choice": {"type": "function", "function": {"name": "f"}})"), {"tool_choice", "", "guided decoding"}},
      {with(R"("tool_choice": "sometimes")"), {"tool_choice", "", "valid: \"auto\", \"none\""}},
      {with(R"("chat_template_kwargs": {"enable_thinking": "no"})"),
       {"chat_template_kwargs.enable_thinking", "", "must be a boolean"}},
      {with(R"("user": 7)"), {"user", "user", "must be a string"}},
      {R"({"model": "m"})", {"prompt", "prompt", "missing", false}},
      {R"({"model": "m", "prompt": ""})", {"prompt", "prompt", "empty", false}},
      {R"({"model": "m", "prompt": []})", {"prompt", "prompt", "empty array", false}},
      {R"({"model": "m", "prompt": ["a", "b"]})", {"prompt", "prompt", "holds 2 prompts", false}},
      {R"({"model": "m", "prompt": [1, -2]})", {"prompt", "prompt", "token 1 is -2", false}},
      {R"({"model": "m", "prompt": [1, "a"]})", {"prompt", "prompt", "token 1 is \"a\"", false}},
      {R"({"model": "m", "prompt": 5})", {"prompt", "prompt", "a string or an array of token ids", false}},
      {R"({"model": "m", "prompt": "x", "echo": 1})", {"echo", "echo", "must be a boolean", false}},
  };
  for (const auto& [body, c] : cases) {
    SCOPED_TRACE(body);
    const Refusal r = refusal(body, c.chat);
    EXPECT_EQ(r.status, 400);
    EXPECT_EQ(r.param, c.param);
    EXPECT_NE(r.message.find(c.says), std::string::npos) << r.message;
    if (*c.in_message) {
      EXPECT_NE(r.message.find(c.in_message), std::string::npos) << r.message;
    }
  }
}

TEST(OpenAiApi, ErrorBodyIsOpenAisObject) {
  const auto j = nlohmann::json::parse(error_body(ApiError(404, "no such model", "model", "model_not_found")));
  EXPECT_EQ(j["error"]["message"], "no such model");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "model");
  EXPECT_EQ(j["error"]["code"], "model_not_found");
  const auto k = nlohmann::json::parse(error_body(ApiError(429, "full")));
  EXPECT_EQ(k["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(k["error"]["param"].is_null());
  EXPECT_TRUE(k["error"]["code"].is_null());
  EXPECT_EQ(ApiError(401, "").type(), "authentication_error");
  EXPECT_EQ(ApiError(503, "").type(), "service_unavailable_error");
  EXPECT_EQ(ApiError(500, "").type(), "server_error");
  // Invalid UTF-8 in a message (a user's bytes quoted back) still gives valid JSON.
  EXPECT_NO_THROW(nlohmann::json::parse(error_body(ApiError(400, std::string("bad \xff byte")))));
}
