// serve/Server's agent loop: a request naming the server's tools is run server-side - the model's
// tool calls executed, their results appended as tool messages, generation continued - driven by
// genuine Qwen3 replies (Qwen's function-calling guide, tests/data/agent/qwen3_weather.json) through
// ScriptedEngine, a test double at the server's engine boundary (ServingEngine) that replays recorded
// replies token by token. What the model is shown next (the prompt of each round) is checked against
// the chat template rendering the expected conversation; the tiny model on the real Engine checks the
// plumbing.
#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>
#include <mutex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "QwenTokenizer.hpp"
#include "TestUtil.hpp"
#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "models/ChatTemplate.hpp"
#include "serve/Server.hpp"

using namespace ppu;
using namespace ppu::serve;
using nlohmann::json;

namespace {

using test::qwen3;

const json& weather() {
  static const json j = [] {
    std::ifstream in(test::fixture("agent/qwen3_weather.json"));
    return json::parse(in);
  }();
  return j;
}

// The test double at the engine boundary: each request admitted gets the next recorded reply, one
// token a step, then <|im_end|> with finish "stop" (as Engine ends a reply at a stop id), or
// "length" at its max_tokens. Keeps every prompt it was given.
class ScriptedEngine final : public ServingEngine {
 public:
  ScriptedEngine(const std::vector<std::string>& replies, int64_t context) : context_(context) {
    for (const std::string& r : replies) {
      replies_.push_back(qwen3().encode(r));
      replies_.back().push_back(qwen3().special_ids().im_end);
    }
  }
  void add(EngineRequest r) override {
    std::lock_guard lk(mu_);
    if (next_ >= replies_.size()) throw UserError("ScriptedEngine: no recorded reply left");
    prompts_.push_back(r.prompt);
    live_.push_back({r.id, replies_[next_++], 0, r.sampling.max_tokens});
  }
  EngineStep step() override {
    EngineStep s;
    s.sim_time_s = 1e-3;
    for (auto it = live_.begin(); it != live_.end();) {
      const int32_t token = it->reply[it->pos++];
      std::string finish;
      if (it->pos == it->reply.size()) finish = "stop";
      else if (static_cast<int64_t>(it->pos) == it->max_tokens) finish = "length";
      s.events.push_back({it->id, token, finish});
      it = finish.empty() ? it + 1 : live_.erase(it);
    }
    return s;
  }
  void cancel(uint64_t id) override { std::erase_if(live_, [&](const Live& l) { return l.id == id; }); }
  bool idle() const override { return live_.empty(); }
  int64_t running() const override { return static_cast<int64_t>(live_.size()); }
  int64_t waiting() const override { return 0; }
  int64_t max_model_len() const override { return context_; }
  int64_t kv_blocks_used() const override { return 0; }
  int64_t kv_blocks_total() const override { return 0; }
  int64_t max_batch() const override { return 4; }
  int64_t vocab_size() const override { return 151936; }  // Qwen3's

  std::vector<std::vector<int32_t>> prompts() const {
    std::lock_guard lk(mu_);
    return prompts_;
  }
  std::vector<int32_t> reply_tokens(size_t i) const { return replies_[i]; }

 private:
  struct Live {
    uint64_t id;
    std::vector<int32_t> reply;
    size_t pos;
    int64_t max_tokens;
  };
  const int64_t context_;
  std::vector<std::vector<int32_t>> replies_;
  size_t next_ = 0;
  std::vector<Live> live_;
  mutable std::mutex mu_;
  std::vector<std::vector<int32_t>> prompts_;
};

// One call the server made to a tool.
struct Call {
  std::string name;
  json arguments;
  std::string user;
};

// A live server over ScriptedEngine whose tools are the fixture's (or the names in `only`), each
// answering with the fixture's recorded result; `error_for` answers as a tool error instead.
struct AgentServer {
  ScriptedEngine engine;
  std::unique_ptr<Server> server;
  int port = 0;
  std::mutex mu;
  std::vector<Call> calls;

  AgentServer(const json& conversation, std::vector<std::string> replies, int max_rounds = 8,
              std::vector<std::string> only = {}, std::string error_for = "", std::string busy_for = "")
      : engine(replies, 8192) {
    ServerOptions so;
    so.port = 0;
    so.model_name = "qwen3";
    so.chip_name = "zhenwu-810e";
    so.max_tool_rounds = max_rounds;
    for (const json& t : weather()["tools"]) {
      const json& f = t["function"];
      if (!only.empty() && std::find(only.begin(), only.end(), f["name"]) == only.end()) continue;
      so.tools.definitions.push_back({f["name"], f["description"], nlohmann::ordered_json::parse(f["parameters"].dump())});
    }
    so.tools.call = [this, conversation, error_for, busy_for](std::string_view name, const json& args, std::string_view user) {
      {
        std::lock_guard lk(mu);
        calls.push_back({std::string(name), args, std::string(user)});
      }
      if (name == error_for) return ToolResult{fmt::format("error: {} is not available right now", name), true};
      if (name == busy_for) return ToolResult{"the sandbox pool is full", true, true};
      for (const json& r : conversation["tool_results"])
        if (r["name"] == name) return ToolResult{r["content"], false};
      return ToolResult{"error: unknown tool", true};
    };
    server = std::make_unique<Server>(engine, qwen3(), so);
    port = server->start();
  }
  httplib::Result post(const json& body) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60);
    return c.Post("/v1/chat/completions", body.dump(), "application/json");
  }
};

std::vector<std::string> replies_of(const json& conversation) {
  return conversation["replies"].get<std::vector<std::string>>();
}

// The request of the guide: the user's question, the two tools named only (the server fills in
// their descriptions and schemas).
json weather_request(const json& conversation) {
  return {{"model", "qwen3"},
          {"user", "alice"},
          {"messages", {{{"role", "user"}, {"content", weather()["user"]}}}},
          {"tools",
           {{{"type", "function"}, {"function", {{"name", "get_current_temperature"}}}},
            {{"type", "function"}, {"function", {{"name", "get_temperature_date"}}}}}},
          {"chat_template_kwargs", {{"enable_thinking", conversation["enable_thinking"]}}}};
}

// The prompt the model must be shown for `messages` with the fixture's tools, as the server completes
// weather_request's entries (sent with sorted keys: "function" before "type"): the name the request
// gave, then the server's description and schema.
std::string rendered(const std::vector<models::ChatMessage>& messages, bool thinking) {
  models::ChatOptions co;
  co.enable_thinking = thinking;
  for (const json& t : weather()["tools"]) {
    nlohmann::ordered_json fn;
    fn["name"] = t["function"]["name"];
    fn["description"] = t["function"]["description"];
    fn["parameters"] = nlohmann::ordered_json::parse(t["function"]["parameters"].dump());
    co.tools.push_back({{"function", fn}, {"type", "function"}});
  }
  return models::render_chat(messages, co);
}

models::ChatMessage message(models::ChatRole role, std::string content) {
  models::ChatMessage m;
  m.role = role;
  m.content = std::move(content);
  return m;
}

// The data payloads of a server-sent event stream.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  for (size_t at = 0; at < body.size();) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos) break;
    EXPECT_TRUE(body.compare(at, 6, "data: ") == 0) << body.substr(at, end - at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end + 2;
  }
  return out;
}

TEST(AgentLoop, RunsTheModelsToolCallsAndAnswersWithTheResults) {
  const json& conv = weather()["conversations"]["no_think"];
  AgentServer a(conv, replies_of(conv));
  const auto res = a.post(weather_request(conv));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  const json& choice = j["choices"][0];
  EXPECT_EQ(choice["message"]["content"], conv["answer"]);
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_FALSE(choice["message"].contains("tool_calls"));

  const json& agent = j["ppu_agent"];
  EXPECT_EQ(agent["rounds"], 2);
  EXPECT_EQ(agent["tool_rounds"], 1);
  EXPECT_TRUE(agent["stopped"].is_null());
  ASSERT_EQ(agent["steps"].size(), 2u);
  const json& step = agent["steps"][0];
  ASSERT_EQ(step["tool_calls"].size(), 2u);
  ASSERT_EQ(step["tool_results"].size(), 2u);
  const json want_args[] = {{{"location", "San Francisco, CA, USA"}},
                            {{"location", "San Francisco, CA, USA"}, {"date", "2024-10-01"}}};
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(step["tool_calls"][i]["name"], conv["tool_results"][i]["name"]);
    EXPECT_EQ(json::parse(step["tool_calls"][i]["arguments"].get<std::string>()), want_args[i]);
    EXPECT_EQ(step["tool_results"][i]["tool_call_id"], step["tool_calls"][i]["id"]);
    EXPECT_EQ(step["tool_results"][i]["content"], conv["tool_results"][i]["content"]);
    EXPECT_EQ(step["tool_results"][i]["is_error"], false);
  }
  EXPECT_EQ(agent["steps"][1]["content"], conv["answer"]);
  EXPECT_TRUE(agent["steps"][1]["tool_calls"].empty());

  // The tools ran in the model's order, with its arguments, for the request's user.
  ASSERT_EQ(a.calls.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(a.calls[i].name, conv["tool_results"][i]["name"]);
    EXPECT_EQ(a.calls[i].arguments, want_args[i]);
    EXPECT_EQ(a.calls[i].user, "alice");
  }

  // Round 2 was shown the conversation with the assistant's calls and one tool message per result,
  // exactly as the chat template renders it.
  const auto prompts = a.engine.prompts();
  ASSERT_EQ(prompts.size(), 2u);
  std::vector<models::ChatMessage> msgs = {message(models::ChatRole::kUser, weather()["user"])};
  EXPECT_EQ(qwen3().decode(prompts[0]), rendered(msgs, false));
  models::ChatMessage turn = message(models::ChatRole::kAssistant, "");
  for (size_t i = 0; i < 2; ++i)
    turn.tool_calls.push_back({step["tool_calls"][i]["id"], step["tool_calls"][i]["name"], step["tool_calls"][i]["arguments"]});
  msgs.push_back(turn);
  for (size_t i = 0; i < 2; ++i) msgs.push_back(message(models::ChatRole::kTool, conv["tool_results"][i]["content"]));
  const std::string second = qwen3().decode(prompts[1]);
  EXPECT_EQ(second, rendered(msgs, false));
  EXPECT_NE(second.find("<tool_response>\n" + conv["tool_results"][1]["content"].get<std::string>() + "\n</tool_response>"),
            std::string::npos);

  // Usage adds up both rounds.
  const size_t completion = a.engine.reply_tokens(0).size() + a.engine.reply_tokens(1).size();
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompts[0].size() + prompts[1].size());
  EXPECT_EQ(j["usage"]["completion_tokens"], completion);
}

TEST(AgentLoop, StreamsEveryRoundThinkingCallsResultsAndTheAnswer) {
  const json& conv = weather()["conversations"]["think"];
  AgentServer a(conv, replies_of(conv));
  json req = weather_request(conv);
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  const auto res = a.post(req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const std::vector<std::string> data = sse_data(res->body);
  ASSERT_GE(data.size(), 4u);
  EXPECT_EQ(data.back(), "[DONE]");
  std::string reasoning, content, id;
  std::vector<json> calls, results;
  json finish;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    const json c = json::parse(data[i]);
    if (id.empty()) id = c["id"];
    EXPECT_EQ(c["id"], id) << "every chunk of the response has its id";
    if (c.contains("ppu_tool_results")) results.push_back(c["ppu_tool_results"]);
    if (c["choices"].empty()) continue;  // the usage chunk
    const json& ch = c["choices"][0];
    if (i == 0) {
      EXPECT_EQ(ch["delta"]["role"], "assistant");
    }
    const json& d = ch["delta"];
    if (d.contains("reasoning_content")) reasoning += d["reasoning_content"].get<std::string>();
    if (d.contains("content")) content += d["content"].get<std::string>();
    if (d.contains("tool_calls"))
      for (const json& call : d["tool_calls"]) calls.push_back(call);
    if (!ch["finish_reason"].is_null()) finish = c;
  }
  EXPECT_EQ(reasoning, conv["reasoning"][0].get<std::string>() + conv["reasoning"][1].get<std::string>());
  EXPECT_EQ(content, conv["answer"]);
  ASSERT_EQ(calls.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(calls[i]["index"], i);
    EXPECT_EQ(calls[i]["function"]["name"], conv["tool_results"][i]["name"]);
  }
  ASSERT_EQ(results.size(), 1u) << "one chunk of results for the one round of calls";
  ASSERT_EQ(results[0].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(results[0][i]["tool_call_id"], calls[i]["id"]);
    EXPECT_EQ(results[0][i]["content"], conv["tool_results"][i]["content"]);
  }
  ASSERT_TRUE(finish.is_object());
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(finish["ppu_agent"]["rounds"], 2);

  // Round 2 saw round 1's thinking (Qwen3's template keeps it after the last user turn).
  const auto prompts = a.engine.prompts();
  ASSERT_EQ(prompts.size(), 2u);
  std::vector<models::ChatMessage> msgs = {message(models::ChatRole::kUser, weather()["user"])};
  models::ChatMessage turn = message(models::ChatRole::kAssistant, "");
  turn.reasoning_content = conv["reasoning"][0].get<std::string>();
  for (size_t i = 0; i < 2; ++i)
    turn.tool_calls.push_back({calls[i]["id"], calls[i]["function"]["name"], calls[i]["function"]["arguments"]});
  msgs.push_back(turn);
  for (size_t i = 0; i < 2; ++i) msgs.push_back(message(models::ChatRole::kTool, conv["tool_results"][i]["content"]));
  EXPECT_EQ(qwen3().decode(prompts[1]), rendered(msgs, true));
}

TEST(AgentLoop, AToolErrorIsAToolMessageAndTheConversationGoesOn) {
  const json& conv = weather()["conversations"]["no_think"];
  AgentServer a(conv, replies_of(conv), 8, {}, "get_temperature_date");
  const auto res = a.post(weather_request(conv));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  const json& results = j["ppu_agent"]["steps"][0]["tool_results"];
  EXPECT_EQ(results[0]["is_error"], false);
  EXPECT_EQ(results[1]["is_error"], true);
  EXPECT_EQ(results[1]["content"], "error: get_temperature_date is not available right now");
  const auto prompts = a.engine.prompts();
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_NE(qwen3().decode(prompts[1]).find("<tool_response>\nerror: get_temperature_date is not available right now\n"),
            std::string::npos);
  EXPECT_EQ(j["choices"][0]["message"]["content"], conv["answer"]);
}

TEST(AgentLoop, ABusyToolEndsTheRequestWith429) {
  const json& conv = weather()["conversations"]["no_think"];
  AgentServer a(conv, replies_of(conv), 8, {}, "", "get_temperature_date");
  const auto res = a.post(weather_request(conv));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429) << res->body;
  EXPECT_NE(res->body.find("the server's tools are busy (the sandbox pool is full); retry later"), std::string::npos)
      << res->body;
  EXPECT_EQ(a.engine.prompts().size(), 1u) << "no round after the busy answer";
}

TEST(AgentLoop, StopsAtTheRoundLimitWithTheCallsLeft) {
  const json& conv = weather()["conversations"]["no_think"];
  const std::string calls = conv["replies"][0];
  AgentServer a(conv, {calls, calls, calls}, /*max_rounds=*/2);
  const auto res = a.post(weather_request(conv));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["ppu_agent"]["rounds"], 3);
  EXPECT_EQ(j["ppu_agent"]["tool_rounds"], 2);
  EXPECT_NE(j["ppu_agent"]["stopped"].get<std::string>().find("after 2 rounds of tool calls"), std::string::npos);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(j["choices"][0]["message"]["tool_calls"].size(), 2u);
  EXPECT_EQ(a.calls.size(), 4u) << "two rounds of two calls ran; the third round's calls did not";
}

TEST(AgentLoop, ACallToTheClientsToolGoesBackToTheClient) {
  const json& conv = weather()["conversations"]["no_think"];
  AgentServer a(conv, replies_of(conv), 8, {"get_current_temperature"});  // the server has one of the two
  json req = weather_request(conv);
  req["tools"][1] = weather()["tools"][1];  // the client offers the other, in full
  const auto res = a.post(req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json j = json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(j["choices"][0]["message"]["tool_calls"].size(), 2u);
  EXPECT_EQ(j["ppu_agent"]["rounds"], 1);
  EXPECT_EQ(j["ppu_agent"]["tool_rounds"], 0);
  EXPECT_TRUE(a.calls.empty()) << "a reply calling a client's tool runs none of its calls";
}

TEST(AgentLoop, RequestsNotNamingServerToolsAreServedAsBefore) {
  const json& conv = weather()["conversations"]["no_think"];
  AgentServer a(conv, replies_of(conv));
  json req = weather_request(conv);
  req["tool_choice"] = "none";  // tools offered but not to be called: no loop
  auto res = a.post(req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json j = json::parse(res->body);
  EXPECT_FALSE(j.contains("ppu_agent"));
  EXPECT_TRUE(a.calls.empty());
  req.erase("tools");
  req.erase("tool_choice");
  res = a.post(req);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  j = json::parse(res->body);
  EXPECT_FALSE(j.contains("ppu_agent"));
  EXPECT_EQ(j["choices"][0]["message"]["content"], conv["answer"]);
  EXPECT_EQ(a.engine.prompts().size(), 2u);
}

TEST(AgentLoop, BadOptionsAreRefused) {
  ScriptedEngine e({}, 64);
  ServerOptions so;
  so.max_tool_rounds = 0;
  test::expect_error([&] { Server s(e, qwen3(), so); }, {"--max-tool-rounds 0; valid: 1 to 64"});
  so.max_tool_rounds = 65;
  test::expect_error([&] { Server s(e, qwen3(), so); }, {"--max-tool-rounds 65"});
  so.max_tool_rounds = 8;
  so.tools.definitions.push_back({"search", "d", nlohmann::ordered_json::object()});
  test::expect_error([&] { Server s(e, qwen3(), so); }, {"tools without a call function"});
}

// The real engine and model: a request naming a server tool is served (the tool's schema rendered
// into the prompt); the tiny random model makes no well-formed call, so one round answers.
TEST(AgentLoop, TheRealEngineServesARequestNamingAServerTool) {
  Device dev{load_chip("zhenwu-810e"), ExecMode::kFunctional, 1};
  Qwen3Options o;
  o.max_batch = 2;
  o.max_context = 511;
  o.kv_block_size = 16;
  o.kv_blocks = 2 * 32;
  Qwen3Model model(dev, load_model_config("tiny"), Qwen3Weights::random(0), o);
  Engine engine(model, EngineConfig{});
  ServerOptions so;
  so.port = 0;
  so.model_name = "tiny";
  so.tools.definitions.push_back({"search", "Search the knowledge base.",
                                  nlohmann::ordered_json::parse(R"({"type":"object","properties":{"query":{"type":"string"}},"required":["query"]})")});
  so.tools.call = [](std::string_view, const json&, std::string_view) { return ToolResult{"no results", false}; };
  Server server(engine, qwen3(), so);
  const int port = server.start();
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60);
  const auto listed = c.Get("/ppu/tools");
  ASSERT_TRUE(listed);
  EXPECT_EQ(json::parse(listed->body), json::parse(R"({"tools": [{"name": "search", "description": "Search the knowledge base."}]})"));
  const auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(page->body.find("<title>OpenPPU chat</title>"), std::string::npos);
  json req = {{"model", "tiny"},
              {"messages", {{{"role", "user"}, {"content", "Find the paged attention notes."}}}},
              {"max_tokens", 8},
              {"temperature", 0}};
  auto plain = c.Post("/v1/chat/completions", req.dump(), "application/json");
  ASSERT_TRUE(plain);
  ASSERT_EQ(plain->status, 200) << plain->body;
  req["tools"] = {{{"type", "function"}, {"function", {{"name", "search"}}}}};
  auto agent = c.Post("/v1/chat/completions", req.dump(), "application/json");
  ASSERT_TRUE(agent);
  ASSERT_EQ(agent->status, 200) << agent->body;
  const json a = json::parse(agent->body), p = json::parse(plain->body);
  EXPECT_GE(a["ppu_agent"]["rounds"], 1);
  EXPECT_GT(a["usage"]["prompt_tokens"].get<int64_t>(), p["usage"]["prompt_tokens"].get<int64_t>() + 20)
      << "the search tool's schema is in the prompt";
  server.stop();
}

}  // namespace
