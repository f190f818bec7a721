// serve/Server: a live server on a loopback port, driven with cpp-httplib's client. Responses carry
// exactly the engine's tokens (checked against an Engine run directly on the same weights), streams
// are well-formed server-sent events that add up to the whole response, every error has its status
// and OpenAI's error object, a full queue answers 429, a client that disconnects frees its KV blocks,
// and drain() lets running requests finish while refusing new ones.
#include <gtest/gtest.h>
#include <httplib.h>

#include <future>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "QwenTokenizer.hpp"
#include "TestUtil.hpp"
#include "arch/Presets.hpp"
#include "models/ChatTemplate.hpp"
#include "serve/Server.hpp"

using namespace ppu;
using namespace ppu::serve;
using nlohmann::json;

namespace {

using test::qwen3;

const std::vector<int32_t> kPrompt = {785, 6722, 315, 9625, 374};  // "The capital of France is"

// The tiny preset with random weights (Qwen3's vocabulary, so the real tokenizer's ids are valid),
// with the paged KV cache `ppu serve` gives it by default: blocks of 16, enough for `seqs` requests
// of `context` tokens.
struct Model {
  Device dev{load_chip("zhenwu-810e"), ExecMode::kFunctional, 1};
  std::unique_ptr<Qwen3Model> model;
  std::unique_ptr<Engine> engine;
  Model(int64_t seqs, int64_t context) {
    Qwen3Options o;
    o.max_batch = seqs;
    o.max_context = context - 1;
    o.kv_block_size = 16;
    o.kv_blocks = seqs * ((context - 1 + 15) / 16);
    model = std::make_unique<Qwen3Model>(dev, load_model_config("tiny"), Qwen3Weights::random(0), o);
    engine = std::make_unique<Engine>(*model, EngineConfig{});
  }
};

struct Live {
  Model m;
  std::unique_ptr<Server> server;
  int port = 0;
  explicit Live(ServerOptions so = {}, int64_t seqs = 4, int64_t context = 64) : m(seqs, context) {
    so.port = 0;
    so.model_name = "tiny";
    so.chip_name = "zhenwu-810e";
    server = std::make_unique<Server>(*m.engine, qwen3(), so);
    port = server->start();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body, const httplib::Headers& h = {}) const {
    return client().Post(path, h, body.dump(), "application/json");
  }
  // A gauge or counter of /metrics.
  double metric(const std::string& name) const {
    const auto r = client().Get("/metrics");
    const size_t at = r->body.find("\n" + name + " ");
    EXPECT_NE(at, std::string::npos) << name;
    return std::stod(r->body.substr(at + name.size() + 2));
  }
  // Waits (up to 20 s) until `name` reads `want`.
  bool metric_reaches(const std::string& name, double want) const {
    for (int i = 0; i < 2000; ++i) {
      if (metric(name) == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
};

// Greedy tokens of the engine alone for `prompt` (the server must send exactly these).
std::vector<int32_t> reference(const std::vector<int32_t>& prompt, int64_t n) {
  Model m(1, 64);
  SamplingParams sp{.temperature = 0, .max_tokens = n};
  sp.stop_ids = {qwen3().special_ids().im_end, qwen3().special_ids().endoftext};
  m.engine->add({.id = 1, .prompt = prompt, .sampling = sp});
  std::vector<int32_t> out;
  while (!m.engine->idle())
    for (const TokenEvent& e : m.engine->step().events) out.push_back(e.token);
  return out;
}

// A server-sent event stream's data payloads; fails the test on a line that is not "data: ...".
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    EXPECT_NE(end, std::string::npos) << "an event without its blank line: " << body.substr(at);
    if (end == std::string::npos) break;
    const std::string ev = body.substr(at, end - at);
    EXPECT_TRUE(ev.starts_with("data: ")) << ev;
    out.push_back(ev.substr(6));
    at = end + 2;
  }
  return out;
}

// Streams `body` to `path`; `on_chunk` sees each piece of the body as it comes and returns false to
// hang up.
httplib::Result stream(const Live& s, const std::string& path, const json& body,
                       const std::function<bool(const std::string&)>& on_chunk) {
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.headers = {{"Content-Type", "application/json"}};
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) { return on_chunk(std::string(data, n)); };
  return s.client().send(req);
}

json error_of(const httplib::Result& r) { return json::parse(r->body).at("error"); }

}  // namespace

TEST(Server, ModelsHealthMetrics) {
  Live s;
  auto c = s.client();
  const auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");
  const json models = json::parse(c.Get("/v1/models")->body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "tiny");
  EXPECT_EQ(models["data"][0]["max_model_len"], 64);
  EXPECT_EQ(c.Get("/v1/models/tiny")->status, 200);
  const auto other = c.Get("/v1/models/gpt-4");
  EXPECT_EQ(other->status, 404);
  EXPECT_EQ(error_of(other)["code"], "model_not_found");
  const auto m = c.Get("/metrics");
  EXPECT_EQ(m->status, 200);
  EXPECT_NE(m->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  EXPECT_EQ(s.metric("ppu_requests_running"), 0);
  EXPECT_EQ(s.metric("ppu_kv_blocks_total"), 4 * 4);  // the pool: 4 requests of 63 positions, in blocks of 16
}

TEST(Server, APortInUseIsRefused) {
  Live s;
  Model m(1, 64);
  ServerOptions so;
  so.port = s.port;
  Server second(*m.engine, qwen3(), so);
  try {
    second.start();
    ADD_FAILURE() << "a second server started on port " << s.port;
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("cannot listen on 127.0.0.1:{}", s.port)), std::string::npos)
        << e.what();
  }
}

TEST(Server, CompletionCarriesTheEnginesTokens) {
  Live s;
  const std::vector<int32_t> want = reference(kPrompt, 12);
  const auto r = s.post("/v1/completions", {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["text"], qwen3().decode(want, /*skip_special=*/true));
  EXPECT_EQ(j["choices"][0]["finish_reason"], want.size() == 12 ? "length" : "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], kPrompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], want.size());
  EXPECT_EQ(j["usage"]["total_tokens"], kPrompt.size() + want.size());
  const json& t = j["ppu_timing"];
  EXPECT_EQ(t["chip"], "zhenwu-810e");
  EXPECT_GT(t["time_to_first_token_s"].get<double>(), 0);
  EXPECT_GT(t["time_per_output_token_s"].get<double>(), 0);
  EXPECT_GE(t["e2e_s"].get<double>(), t["time_to_first_token_s"].get<double>());
  EXPECT_GT(t["host_e2e_s"].get<double>(), 0);
  // Echo puts the prompt's text first.
  const json e = json::parse(
      s.post("/v1/completions", {{"model", "tiny"}, {"prompt", "The capital of France is"}, {"max_tokens", 12},
                                 {"temperature", 0}, {"echo", true}})
          ->body);
  EXPECT_EQ(e["choices"][0]["text"], "The capital of France is" + qwen3().decode(want, true));
}

TEST(Server, StreamAddsUpToTheWholeResponse) {
  Live s;
  const json body = {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 10}, {"temperature", 0}};
  const json whole = json::parse(s.post("/v1/completions", body)->body);
  json sb = body;
  sb["stream"] = true;
  sb["stream_options"] = {{"include_usage", true}};
  std::string got;
  const auto r = stream(s, "/v1/completions", sb, [&](const std::string& piece) {
    got += piece;
    return true;
  });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<std::string> events = sse_data(got);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 3 < events.size(); ++i) {
    const json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
    text += c["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, whole["choices"][0]["text"]);
  const json last = json::parse(events[events.size() - 3]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], whole["choices"][0]["finish_reason"]);
  EXPECT_TRUE(last["ppu_timing"]["time_to_first_token_s"].is_number());
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], whole["usage"]);
}

TEST(Server, ChatStreamsRoleThenContent) {
  Live s;
  const json body = {{"model", "tiny"},
                     {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                     {"max_tokens", 8},
                     {"temperature", 0},
                     {"chat_template_kwargs", {{"enable_thinking", false}}}};
  const json whole = json::parse(s.post("/v1/chat/completions", body)->body);
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  // The prompt is the chat template's rendering, thinking off.
  const std::vector<models::ChatMessage> msgs = {{models::ChatRole::kUser, "Hi", std::nullopt}};
  EXPECT_EQ(whole["usage"]["prompt_tokens"], qwen3().encode(models::render_chat(msgs, {.enable_thinking = false})).size());
  json sb = body;
  sb["stream"] = true;
  std::string got;
  stream(s, "/v1/chat/completions", sb, [&](const std::string& p) {
    got += p;
    return true;
  });
  const std::vector<std::string> events = sse_data(got);
  ASSERT_GE(events.size(), 3u);
  const json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content, reasoning;
  for (size_t i = 1; i + 2 < events.size(); ++i) {
    const json d = json::parse(events[i])["choices"][0]["delta"];
    content += d.value("content", "");
    reasoning += d.value("reasoning_content", "");
  }
  const json& msg = whole["choices"][0]["message"];
  EXPECT_EQ(content, msg["content"].is_null() ? "" : msg["content"].get<std::string>());
  EXPECT_EQ(reasoning, msg.value("reasoning_content", ""));
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(Server, ToolsAreRenderedIntoThePrompt) {
  Live s({}, /*seqs=*/1, /*context=*/256);  // the tool block alone is over 100 tokens
  const json tool = {{"type", "function"},
                     {"function", {{"name", "get_weather"}, {"parameters", {{"type", "object"}}}}}};
  const json r = json::parse(s.post("/v1/chat/completions", {{"model", "tiny"},
                                                             {"messages", {{{"role", "user"}, {"content", "Paris?"}}}},
                                                             {"tools", json::array({tool})},
                                                             {"max_tokens", 1}})
                                 ->body);
  ASSERT_TRUE(r.contains("usage")) << r.dump();
  models::ChatOptions co;
  co.tools = {nlohmann::ordered_json::parse(tool.dump())};
  const std::vector<models::ChatMessage> msgs = {{models::ChatRole::kUser, "Paris?", std::nullopt}};
  EXPECT_EQ(r["usage"]["prompt_tokens"], qwen3().encode(models::render_chat(msgs, co)).size());
}

TEST(Server, StopStringEndsTheAnswer) {
  Live s;
  const std::string text = qwen3().decode(reference(kPrompt, 12), true);
  ASSERT_GE(text.size(), 6u);
  const std::string stop = text.substr(3, 2);
  const json r = json::parse(s.post("/v1/completions", {{"model", "tiny"},
                                                        {"prompt", kPrompt},
                                                        {"max_tokens", 12},
                                                        {"temperature", 0},
                                                        {"stop", stop}})
                                 ->body);
  EXPECT_EQ(r["choices"][0]["text"], text.substr(0, text.find(stop)));
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(s.metric_reaches("ppu_requests_running", 0));
}

TEST(Server, ErrorsHaveTheirStatusAndOpenAisObject) {
  ServerOptions so;
  so.max_body_bytes = 4096;
  Live s(so);
  const auto status_and_error = [](const httplib::Result& r) {
    EXPECT_TRUE(r);
    return std::pair{r->status, json::parse(r->body).at("error")};
  };
  auto c = s.client();
  auto [st, e] = status_and_error(c.Post("/v1/chat/completions", "{bad", "application/json"));
  EXPECT_EQ(st, 400);
  EXPECT_EQ(e["type"], "invalid_request_error");
  std::tie(st, e) = status_and_error(s.post("/v1/chat/completions", {{"model", "tiny"}, {"messages", "hi"}}));
  EXPECT_EQ(st, 400);
  EXPECT_EQ(e["param"], "messages");
  std::tie(st, e) = status_and_error(s.post("/v1/completions", {{"model", "llama"}, {"prompt", "x"}}));
  EXPECT_EQ(st, 404);
  EXPECT_EQ(e["code"], "model_not_found");
  EXPECT_NE(e["message"].get<std::string>().find("serves 'tiny'"), std::string::npos);
  std::tie(st, e) = status_and_error(c.Get("/v2/nothing"));
  EXPECT_EQ(st, 404);
  EXPECT_NE(e["message"].get<std::string>().find("/v2/nothing"), std::string::npos);
  std::tie(st, e) = status_and_error(c.Post("/v1/completions", std::string(5000, ' '), "application/json"));
  EXPECT_EQ(st, 413);
  EXPECT_NE(e["message"].get<std::string>().find("4096"), std::string::npos);
  // Longer than the context (64): refused at admission with the numbers.
  std::tie(st, e) = status_and_error(s.post("/v1/completions", {{"model", "tiny"}, {"prompt", std::vector<int>(64, 5)}}));
  EXPECT_EQ(st, 400);
  EXPECT_EQ(e["code"], "context_length_exceeded");
  EXPECT_NE(e["message"].get<std::string>().find("64"), std::string::npos);
  std::tie(st, e) = status_and_error(s.post("/v1/completions", {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 60}}));
  EXPECT_EQ(st, 400);
  EXPECT_EQ(e["param"], "max_tokens");
  EXPECT_NE(e["message"].get<std::string>().find("lower max_tokens to 59"), std::string::npos);
  std::tie(st, e) = status_and_error(s.post("/v1/completions", {{"model", "tiny"}, {"prompt", {1, 200000}}}));
  EXPECT_EQ(st, 400);
  EXPECT_NE(e["message"].get<std::string>().find("vocabulary"), std::string::npos);
  EXPECT_EQ(s.metric("ppu_requests_running"), 0);
}

TEST(Server, ApiKeyGuardsTheApi) {
  ServerOptions so;
  so.api_key = "s3cret";
  Live s(so);
  const json body = {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 1}};
  const auto none = s.post("/v1/completions", body);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(error_of(none)["code"], "invalid_api_key");
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer s3cre"}})->status, 401);
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer s3cret!"}})->status, 401);
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "s3cret"}})->status, 401);
  EXPECT_EQ(s.client().Get("/v1/models")->status, 401);
  EXPECT_EQ(s.post("/v1/completions", body, {{"Authorization", "Bearer s3cret"}})->status, 200);
  EXPECT_EQ(s.client().Get("/health")->status, 200);  // probes need no key
}

TEST(Server, FullQueueIs429AndHangingUpFreesTheBlocks) {
  ServerOptions so;
  so.max_waiting = 1;
  Live s(so, /*seqs=*/1, /*context=*/512);
  // Two long streams: one runs, one waits; each client holds on until told to hang up.
  std::promise<void> hang_up;
  std::shared_future<void> go = hang_up.get_future().share();
  // Chat streams: the role chunk comes at once, so even the waiting client hears from the server.
  const json body = {{"model", "tiny"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 500},
                     {"stream", true}, {"temperature", 0}};
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i)
    clients.emplace_back([&] {
      stream(s, "/v1/chat/completions", body, [&](const std::string&) {
        go.wait();
        return false;
      });
    });
  ASSERT_TRUE(s.metric_reaches("ppu_requests_waiting", 1));
  EXPECT_EQ(s.metric("ppu_requests_running"), 1);
  const auto full = s.post("/v1/completions", {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 1}});
  EXPECT_EQ(full->status, 429);
  EXPECT_EQ(error_of(full)["type"], "rate_limit_error");
  EXPECT_GT(s.metric("ppu_kv_blocks_used"), 0);
  hang_up.set_value();
  for (auto& t : clients) t.join();
  // Both cancelled long before their 500 tokens: nothing runs, no KV block is held.
  EXPECT_TRUE(s.metric_reaches("ppu_requests_running", 0));
  EXPECT_TRUE(s.metric_reaches("ppu_requests_waiting", 0));
  EXPECT_TRUE(s.metric_reaches("ppu_kv_blocks_used", 0));
  EXPECT_LT(s.metric("ppu_engine_steps_total"), 400);
  EXPECT_EQ(s.post("/v1/completions", {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 1}})->status, 200);
}

TEST(Server, DrainFinishesRunningRequestsAndRefusesNewOnes) {
  Live s;
  const json body = {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 40}, {"stream", true}, {"temperature", 0}};
  std::promise<void> first;
  bool told = false;
  std::string got;
  std::thread client([&] {
    stream(s, "/v1/completions", body, [&](const std::string& p) {
      got += p;
      if (!told) first.set_value();
      told = true;
      return true;
    });
  });
  first.get_future().wait();
  auto drained = std::async(std::launch::async, [&] { return s.server->drain(); });
  bool refusing = false;
  for (int i = 0; i < 500 && !refusing; ++i) {
    refusing = s.client().Get("/health")->status == 503;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(refusing);
  const auto late = s.post("/v1/completions", {{"model", "tiny"}, {"prompt", kPrompt}, {"max_tokens", 1}});
  if (late) {  // the listener may already be closed once the running request ended
    EXPECT_EQ(late->status, 503);
    EXPECT_EQ(error_of(late)["type"], "service_unavailable_error");
  }
  client.join();
  EXPECT_EQ(drained.get(), 0);
  const std::vector<std::string> events = sse_data(got);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
}
