#include "serve/Server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <algorithm>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "arch/Error.hpp"
#include "models/ChatReply.hpp"
#include "serve/OpenAi.hpp"
#include "serve/Metrics.hpp"
#include "serve/StreamText.hpp"

namespace ppu::serve {

namespace {

using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string dump(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  res.set_content(error_body(e), "application/json");
}

// Equal strings, in time that depends only on the expected string's length (an API key check that
// does not tell an attacker how many leading characters were right).
bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  return diff == 0;
}

// One request between its HTTP handler and the engine thread. The engine thread fills it under `mu`
// and notifies; the handler reads it.
struct Ticket {
  uint64_t id = 0;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;  // generated so far
  std::string finish;           // "" while running; "stop", "length", or "cancelled" (server stopping)
  bool admitted = false;
  std::string refused;          // why the request was not admitted (Engine::add's message)
  int refused_status = 400;     // 503 when the server was stopping
  bool done = false;            // refused, finished or cancelled: nothing more will come
  double sim_joined_s = 0, sim_first_s = -1, sim_last_s = 0;  // the engine's simulated clock
  Clock::time_point host_first;
};

}  // namespace

struct Server::Impl {
  Impl(ServingEngine& e, const models::Tokenizer& t, ServerOptions o)
      : engine(e), tok(t), opt(std::move(o)), max_batch(e.max_batch()), started_at(std::time(nullptr)) {}

  ServingEngine& engine;
  const models::Tokenizer& tok;
  const ServerOptions opt;
  const int64_t max_batch;
  const std::time_t started_at;
  httplib::Server http;
  std::thread listen_thread, engine_thread;
  int port = 0;

  // Engine thread inbox, under mu.
  std::mutex mu;
  std::condition_variable cv;
  struct Pending {
    EngineRequest req;
    std::shared_ptr<Ticket> ticket;
  };
  std::vector<Pending> pending;
  std::vector<uint64_t> cancels;
  bool stopping = false;
  // Engine thread only.
  std::unordered_map<uint64_t, std::shared_ptr<Ticket>> tickets;
  double sim_clock_s = 0;

  std::atomic<uint64_t> next_id{1};
  std::atomic<int64_t> in_flight{0};
  std::atomic<bool> draining{false};
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  bool stopping_started = false, stopped = false;

  // What /metrics shows, under stats_mu (the engine thread's gauges are copied at each step).
  mutable std::mutex stats_mu;
  Metrics stats;

  // ---- engine thread ----
  void engine_loop();
  void finish_all(const std::string& why);
  // ---- handlers ----
  void install_routes();
  void handle_generate(const httplib::Request& req, httplib::Response& res, bool chat);
  // The prompt of a request's conversation (chat: the template with its tools) or text. ApiError 400.
  std::vector<int32_t> prompt_of(const ApiRequest& r, bool thinking) const;
  // The tokens a request may generate: its max_tokens, or the room its prompt leaves. ApiError 400
  // for ids outside the vocabulary and a prompt or request beyond the context, with the numbers.
  int64_t tokens_to_generate(const ApiRequest& r, const std::vector<int32_t>& prompt) const;
  // Queues a generation and waits for the engine to admit it. ApiError when refused or stopping.
  std::shared_ptr<Ticket> admit(const ApiRequest& r, const std::vector<int32_t>& prompt, int64_t max_tokens);
  // The server's tools `r` names (each entry completed with the tool's description and schema).
  std::vector<std::string> name_server_tools(ApiRequest& r) const;
  // Queues `r` for the engine thread; false when the server is stopping.
  bool submit(const EngineRequest& r, const std::shared_ptr<Ticket>& t);
  void cancel(uint64_t id);
  template <class G>
  void record(const G& g) {
    std::lock_guard lk(stats_mu);
    stats.observe_request({.prompt_tokens = g.prompt_tokens(),
                           .generated_tokens = g.generated(),
                           .host_ttft_s = g.generated() ? g.host_ttft_s() : -1,
                           .host_tpot_s = g.host_tpot_s(),
                           .sim_ttft_s = g.sim_ttft_s(),
                           .sim_tpot_s = g.sim_tpot_s()});
    if (opt.log)
      opt.log(fmt::format("request {:x}: {} prompt tokens, {} generated ({}), host {:.3f} s, simulated TTFT {}", g.id(),
                          g.prompt_tokens(), g.generated(), g.finish_reason(), g.host_e2e_s(),
                          g.sim_ttft_s() >= 0 ? fmt::format("{:.4f} s", g.sim_ttft_s()) : std::string("-")));
  }
  void count(const std::string& endpoint, int status) {
    std::lock_guard lk(stats_mu);
    stats.count_request(endpoint, status);
  }
};

bool Server::Impl::submit(const EngineRequest& r, const std::shared_ptr<Ticket>& t) {
  {
    std::lock_guard lk(mu);
    if (stopping) return false;
    pending.push_back({r, t});
  }
  cv.notify_one();
  return true;
}

void Server::Impl::cancel(uint64_t id) {
  {
    std::lock_guard lk(mu);
    cancels.push_back(id);
  }
  cv.notify_one();
}

void Server::Impl::finish_all(const std::string& why) {
  for (auto& [id, t] : tickets) {
    std::lock_guard lk(t->mu);
    t->finish = why;
    t->done = true;
    t->cv.notify_all();
  }
  tickets.clear();
}

void Server::Impl::engine_loop() {
  for (;;) {
    std::vector<Pending> adds;
    std::vector<uint64_t> cuts;
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return stopping || !pending.empty() || !cancels.empty() || !engine.idle(); });
      if (stopping) break;
      adds.swap(pending);
      cuts.swap(cancels);
    }
    for (Pending& p : adds) {
      std::lock_guard lk(p.ticket->mu);
      try {
        engine.add(p.req);
        p.ticket->admitted = true;
        p.ticket->sim_joined_s = sim_clock_s;
        tickets.emplace(p.req.id, p.ticket);
      } catch (const UserError& e) {
        p.ticket->refused = e.what();
        p.ticket->done = true;
      }
      p.ticket->cv.notify_all();
    }
    for (const uint64_t id : cuts) {
      engine.cancel(id);
      tickets.erase(id);  // its handler asked; it no longer waits
    }
    if (!engine.idle()) {
      EngineStep step;
      try {
        step = engine.step();
      } catch (const std::exception& e) {
        // A simulated event on the chip (out of memory) or a bug: every running request ends with it.
        for (auto& [id, t] : tickets) engine.cancel(id);
        finish_all(fmt::format("error: {}", e.what()));
        continue;
      }
      sim_clock_s += step.sim_time_s;
      for (const TokenEvent& ev : step.events) {
        const auto it = tickets.find(ev.id);
        if (it == tickets.end()) continue;
        Ticket& t = *it->second;
        {
          std::lock_guard lk(t.mu);
          if (t.tokens.empty()) {
            t.sim_first_s = sim_clock_s;
            t.host_first = Clock::now();
          }
          t.tokens.push_back(ev.token);
          t.sim_last_s = sim_clock_s;
          if (!ev.finish_reason.empty()) {
            t.finish = ev.finish_reason;
            t.done = true;
          }
        }
        t.cv.notify_all();
        if (!ev.finish_reason.empty()) tickets.erase(it);
      }
      std::lock_guard lk(stats_mu);
      stats.steps += 1;
      stats.sim_clock_s = sim_clock_s;
    }
    std::lock_guard lk(stats_mu);
    stats.running = engine.running();
    stats.waiting = engine.waiting();
    stats.kv_blocks_used = engine.kv_blocks_used();
  }
  finish_all("cancelled");
  std::lock_guard lk(mu);  // requests queued after the last step: never admitted
  for (Pending& p : pending) {
    std::lock_guard tl(p.ticket->mu);
    p.ticket->refused = "the server is shutting down";
    p.ticket->refused_status = 503;
    p.ticket->done = true;
    p.ticket->cv.notify_all();
  }
  pending.clear();
}

namespace {

// A later round of an agent run continues the first round's response: its id, the usage so far, the
// tool calls streamed so far.
struct RoundContext {
  std::string id;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  size_t calls = 0;
};

// What one generation does with its tokens: decode them into text as it becomes final, stop at a
// stop string, and write the OpenAI response - whole, or chunk by chunk.
class Generation {
 public:
  // `arrived`: when the request reached the server (its host times count from there). `cont`: the
  // round this one continues (null for a request's first generation).
  Generation(Server::Impl& s, const ApiRequest& r, std::vector<int32_t> prompt, std::shared_ptr<Ticket> t, bool thinking,
             Clock::time_point arrived, const RoundContext* cont = nullptr)
      : s_(s),
        r_(r),
        prompt_(std::move(prompt)),
        t_(std::move(t)),
        text_(s.tok, r_.stop),
        reply_opts_{.thinking = thinking, .tools = !r_.tools.empty() && r_.tool_choice != "none"},
        start_(arrived),
        created_(std::time(nullptr)),
        id_(cont ? cont->id : fmt::format("{}-{:x}", r_.chat ? "chatcmpl" : "cmpl", t_->id)),
        base_(cont ? *cont : RoundContext{}),
        calls_(base_.calls),
        started_(cont != nullptr) {}

  // Waits (at most `wait`) for new tokens; decodes them. True when the generation is over.
  bool advance(std::chrono::milliseconds wait) {
    std::vector<int32_t> fresh;
    bool done = false;
    {
      std::unique_lock lk(t_->mu);
      t_->cv.wait_for(lk, wait, [&] { return t_->tokens.size() > used_ || t_->done; });
      fresh.assign(t_->tokens.begin() + static_cast<std::ptrdiff_t>(used_), t_->tokens.end());
      done = t_->done;
      if (done) finish_ = t_->finish;
      if (!fresh.empty()) sim_last_s_ = t_->sim_last_s;
      if (used_ == 0 && !fresh.empty()) {
        sim_first_s_ = t_->sim_first_s;
        host_ttft_s_ = std::chrono::duration<double>(t_->host_first - start_).count();
      }
      sim_joined_s_ = t_->sim_joined_s;
    }
    for (const int32_t id : fresh) {
      if (text_.stopped()) break;
      ++used_;
      pending_text_ += text_.add(id);
    }
    if (text_.stopped() && !over_) {
      s_.cancel(t_->id);
      finish_ = "stop";
      done = true;
    }
    if (done && !over_) {
      over_ = true;
      pending_text_ += text_.finish();
      host_e2e_s_ = seconds_since(start_);
    }
    return over_;
  }

  // The reply taken apart (chat): thinking, answer, tool calls.
  models::ParsedReply reply() const { return models::parse_reply(text_.text(), reply_opts_); }
  // The reason this generation's response ends with.
  std::string finish_for_client() const { return round_calls() > 0 || has_calls_ ? "tool_calls" : finish_; }

  // The whole non-streaming response body.
  ojson response() {
    ojson choice = {{"index", 0}};
    std::string reason = finish_;
    if (r_.chat) {
      const models::ParsedReply p = reply();
      ojson msg = {{"role", "assistant"}, {"content", p.content.empty() && !p.tool_calls.empty() ? ojson() : ojson(p.content)}};
      if (!p.reasoning.empty()) msg["reasoning_content"] = p.reasoning;
      if (!p.tool_calls.empty()) {
        msg["tool_calls"] = ojson::array();
        for (size_t i = 0; i < p.tool_calls.size(); ++i) msg["tool_calls"].push_back(tool_call_json(p.tool_calls[i], i));
        reason = "tool_calls";
      }
      choice["message"] = msg;
    } else {
      choice["text"] = (r_.echo ? prompt_text() : "") + text_.text();
      choice["logprobs"] = nullptr;
    }
    choice["finish_reason"] = reason;
    ojson j = head(r_.chat ? "chat.completion" : "text_completion");
    j["choices"] = ojson::array({choice});
    j["usage"] = usage();
    j["ppu_timing"] = timing();
    return j;
  }

  // The SSE events for what advance() decoded since the last call: the role chunk first (a first
  // round), then the text as deltas; once over (and not failed), what the reply parser still held.
  std::string deltas() {
    std::string out;
    if (!started_) {
      started_ = true;
      if (r_.chat) out += chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
      else if (r_.echo) out += chunk_text(prompt_text());
    }
    if (!pending_text_.empty()) {
      const std::string piece = std::move(pending_text_);
      pending_text_.clear();
      if (r_.chat) out += chat_deltas(stream_.feed(piece));
      else out += chunk_text(piece);
    }
    if (over_ && !flushed_ && !failed()) {
      flushed_ = true;
      if (r_.chat) out += chat_deltas(stream_.finish());
    }
    return out;
  }

  // The closing events once over: the finish chunk (with ppu_timing and `extra`'s keys), the usage
  // chunk when asked for, [DONE]; or the error event when the generation failed.
  std::string closing(const ojson& extra = ojson::object()) {
    closed_ = true;
    if (failed()) return "data: " + error_body(ApiError(503, failure())) + "\n\ndata: [DONE]\n\n";
    std::string out;
    ojson last = head(r_.chat ? "chat.completion.chunk" : "text_completion");
    ojson choice = {{"index", 0}};
    if (r_.chat) choice["delta"] = ojson::object();
    else choice["text"] = "";
    choice["finish_reason"] = finish_for_client();
    last["choices"] = ojson::array({choice});
    last["ppu_timing"] = timing();
    for (const auto& [k, v] : extra.items()) last[k] = v;
    out += sse(last);
    if (r_.include_usage) {
      ojson u = head(r_.chat ? "chat.completion.chunk" : "text_completion");
      u["choices"] = ojson::array();
      u["usage"] = usage();
      out += sse(u);
    }
    return out + "data: [DONE]\n\n";
  }

  // A chunk with an empty delta and `key`: `value` beside the choices (an agent round's results).
  std::string side_chunk(const char* key, const ojson& value) const {
    ojson j = head("chat.completion.chunk");
    j["choices"] = ojson::array({{{"index", 0}, {"delta", ojson::object()}, {"finish_reason", nullptr}}});
    j[key] = value;
    return sse(j);
  }

  // Marks the reply as ending in tool calls (an agent run stopped with calls left to make).
  void set_has_calls() { has_calls_ = true; }
  bool over() const { return over_; }
  bool closed() const { return closed_; }
  bool streaming() const { return r_.stream; }
  bool started() const { return started_; }
  // Over without a finish of its own: the server stopped, or the chip's step failed.
  bool failed() const { return over_ && finish_ != "stop" && finish_ != "length"; }
  std::string failure() const {
    return finish_ == "cancelled" ? "the server stopped before the request finished" : finish_;
  }
  const std::string& finish_reason() const { return finish_; }
  int64_t generated() const { return static_cast<int64_t>(used_); }
  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt_.size()); }
  double host_ttft_s() const { return host_ttft_s_; }
  double host_e2e_s() const { return host_e2e_s_; }
  double sim_ttft_s() const { return used_ ? sim_first_s_ - sim_joined_s_ : -1; }
  double sim_tpot_s() const { return used_ > 1 ? (sim_last_s_ - sim_first_s_) / static_cast<double>(used_ - 1) : -1; }
  double host_tpot_s() const {
    return used_ > 1 ? (host_e2e_s_ - host_ttft_s_) / static_cast<double>(used_ - 1) : -1;
  }
  uint64_t id() const { return t_->id; }
  // What a round after this one continues from.
  RoundContext next_context() const {
    return {id_, base_.prompt_tokens + prompt_tokens(), base_.completion_tokens + generated(), calls_};
  }
  ojson timing() const {
    const auto or_null = [](double v) { return v < 0 ? ojson() : ojson(v); };
    return {{"chip", s_.opt.chip_name},
            {"time_to_first_token_s", or_null(sim_ttft_s())},
            {"time_per_output_token_s", or_null(sim_tpot_s())},
            {"e2e_s", used_ ? ojson(sim_last_s_ - sim_joined_s_) : ojson()},
            {"host_time_to_first_token_s", used_ ? ojson(host_ttft_s_) : ojson()},
            {"host_e2e_s", host_e2e_s_}};
  }
  // The call id of this generation's `i`-th tool call (the same whole and streamed).
  std::string call_id(size_t i) const { return fmt::format("call_{:x}_{}", t_->id, i); }

 private:
  size_t round_calls() const { return calls_ - base_.calls; }
  std::string prompt_text() const { return r_.prompt_text.empty() ? s_.tok.decode(prompt_) : r_.prompt_text; }

  ojson head(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", s_.opt.model_name}};
  }
  ojson usage() const {
    const int64_t p = base_.prompt_tokens + prompt_tokens(), c = base_.completion_tokens + generated();
    return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
  }
  ojson tool_call_json(const models::ParsedToolCall& c, size_t i) const {
    return {{"id", call_id(i)}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
  }
  static std::string sse(const ojson& j) { return "data: " + dump(j) + "\n\n"; }
  std::string chunk(ojson delta, ojson finish) const {
    ojson j = head("chat.completion.chunk");
    j["choices"] = ojson::array({{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", std::move(finish)}}});
    return sse(j);
  }
  std::string chunk_text(const std::string& text) const {
    ojson j = head("text_completion");
    j["choices"] = ojson::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
    return sse(j);
  }
  std::string chat_deltas(const std::vector<models::ReplyDelta>& deltas) {
    std::string out;
    for (const models::ReplyDelta& d : deltas) {
      switch (d.kind) {
        case models::ReplyDelta::Kind::kReasoning:
          out += chunk({{"reasoning_content", d.text}}, nullptr);
          break;
        case models::ReplyDelta::Kind::kContent:
          out += chunk({{"content", d.text}}, nullptr);
          break;
        case models::ReplyDelta::Kind::kToolCall: {
          ojson call = tool_call_json(d.call, round_calls());
          call["index"] = calls_++;
          out += chunk({{"tool_calls", ojson::array({call})}}, nullptr);
          break;
        }
      }
    }
    return out;
  }

  Server::Impl& s_;
  const ApiRequest& r_;  // the run's request (AgentRun owns it)
  std::vector<int32_t> prompt_;
  std::shared_ptr<Ticket> t_;
  StreamText text_;
  models::ReplyOptions reply_opts_;
  models::ReplyStream stream_{reply_opts_};
  Clock::time_point start_;
  std::time_t created_;
  std::string id_;
  RoundContext base_;
  size_t used_ = 0;   // tokens taken from the ticket
  size_t calls_ = 0;  // tool calls streamed (this response's, over its rounds)
  std::string pending_text_;
  std::string finish_;
  bool over_ = false, started_ = false, flushed_ = false, closed_ = false, has_calls_ = false;
  double sim_joined_s_ = 0, sim_first_s_ = 0, sim_last_s_ = 0, host_ttft_s_ = 0, host_e2e_s_ = 0;
};

// One request from its admission to its response: one generation, or - when the request names
// server tools - the agent loop's rounds (Server.hpp).
class AgentRun {
 public:
  AgentRun(Server::Impl& s, ApiRequest r, bool thinking, Clock::time_point arrived, std::vector<std::string> server_tools)
      : s_(s), r_(std::move(r)), thinking_(thinking), arrived_(arrived), server_tools_(std::move(server_tools)) {}

  // Starts the first round (ApiError when it cannot be admitted).
  void start(std::vector<int32_t> prompt, int64_t max_tokens) {
    gen_ = std::make_shared<Generation>(s_, r_, prompt, s_.admit(r_, prompt, max_tokens), thinking_, arrived_);
  }
  bool agent() const { return !server_tools_.empty(); }
  Generation& gen() { return *gen_; }

  // The whole response (not streaming): every round, then the last one's body.
  ojson response() {
    for (;;) {
      while (!gen_->advance(std::chrono::milliseconds(250))) {
      }
      if (gen_->failed()) throw ApiError(503, gen_->failure());
      s_.record(*gen_);
      if (!next_round()) break;
    }
    ojson j = gen_->response();
    if (agent()) j["ppu_agent"] = agent_json();
    return j;
  }

  // Streaming: waits briefly for tokens and returns the events since the last call.
  std::string events() {
    if (gen_->started()) gen_->advance(std::chrono::milliseconds(200));
    std::string out = gen_->deltas();
    if (!gen_->over() || gen_->closed()) return out;
    if (gen_->failed()) return out + gen_->closing();
    s_.record(*gen_);
    if (next_round()) return out + gen_->side_chunk("ppu_tool_results", steps_.back()["tool_results"]);
    return out + gen_->closing(agent() ? ojson{{"ppu_agent", agent_json()}} : ojson::object());
  }
  bool closed() const { return gen_->closed(); }
  uint64_t id() const { return gen_->id(); }

 private:
  bool is_server_tool(const std::string& name) const {
    return std::find(server_tools_.begin(), server_tools_.end(), name) != server_tools_.end();
  }

  // After a round: when its reply calls server tools only (and rounds are left), runs them, extends
  // the conversation and starts the next round. False when the run is over.
  bool next_round() {
    if (!agent()) return false;
    const models::ParsedReply p = gen_->reply();
    ojson step = {{"round", generations_},
                  {"content", p.content},
                  {"reasoning_content", p.reasoning.empty() ? ojson() : ojson(p.reasoning)},
                  {"tool_calls", ojson::array()},
                  {"tool_results", ojson::array()},
                  {"ppu_timing", gen_->timing()}};
    models::ChatMessage turn;
    turn.role = models::ChatRole::kAssistant;
    turn.content = p.content;
    if (!p.reasoning.empty()) turn.reasoning_content = p.reasoning;
    bool all_server = true;
    for (size_t i = 0; i < p.tool_calls.size(); ++i) {
      const models::ParsedToolCall& c = p.tool_calls[i];
      step["tool_calls"].push_back({{"id", gen_->call_id(i)}, {"name", c.name}, {"arguments", c.arguments}});
      turn.tool_calls.push_back({gen_->call_id(i), c.name, c.arguments});
      all_server = all_server && is_server_tool(c.name);
    }
    const bool go_on = !p.tool_calls.empty() && all_server;
    if (go_on && tool_rounds_ >= s_.opt.max_tool_rounds)
      stopped_ = fmt::format("the model called tools again after {} rounds of tool calls (max_tool_rounds)", tool_rounds_);
    if (!go_on || !stopped_.empty()) {
      if (!p.tool_calls.empty()) gen_->set_has_calls();
      steps_.push_back(std::move(step));
      return false;
    }
    std::vector<models::ChatMessage> results;
    for (const models::ToolCall& c : turn.tool_calls) {
      ToolResult res;
      try {
        res = s_.opt.tools.call(c.name, nlohmann::json::parse(c.arguments), r_.user.empty() ? "default" : r_.user);
      } catch (const std::exception& e) {  // arguments the parser passed are JSON; a tool that threw is its error
        res = {fmt::format("error: the tool '{}' failed: {}", c.name, e.what()), true};
      }
      // A full sandbox pool is the server's capacity, not the model's mistake: the client retries.
      if (res.busy) throw ApiError(429, fmt::format("the server's tools are busy ({}); retry later", res.text));
      step["tool_results"].push_back({{"tool_call_id", c.id}, {"name", c.name}, {"content", res.text}, {"is_error", res.is_error}});
      models::ChatMessage& m = results.emplace_back();
      m.role = models::ChatRole::kTool;
      m.content = res.text;
    }
    steps_.push_back(std::move(step));
    r_.messages.push_back(std::move(turn));
    r_.messages.insert(r_.messages.end(), results.begin(), results.end());
    // The next round: the conversation so far, in the room the context has left.
    std::vector<int32_t> prompt = s_.prompt_of(r_, thinking_);
    const int64_t room = s_.engine.max_model_len() - static_cast<int64_t>(prompt.size());
    if (room < 1) {
      stopped_ = fmt::format("the conversation reached the model's context ({} tokens) after {} rounds of tool calls",
                             s_.engine.max_model_len(), tool_rounds_ + 1);
      gen_->set_has_calls();
      return false;
    }
    const RoundContext cont = gen_->next_context();
    const int64_t max_tokens = std::min(room, r_.max_tokens.value_or(room));
    gen_ = std::make_shared<Generation>(s_, r_, prompt, s_.admit(r_, prompt, max_tokens), thinking_, Clock::now(), &cont);
    ++tool_rounds_;
    ++generations_;
    return true;
  }

  ojson agent_json() const {
    return {{"rounds", generations_}, {"tool_rounds", tool_rounds_}, {"stopped", stopped_.empty() ? ojson() : ojson(stopped_)}, {"steps", steps_}};
  }

  Server::Impl& s_;
  ApiRequest r_;
  const bool thinking_;
  const Clock::time_point arrived_;
  const std::vector<std::string> server_tools_;  // the server's tools this request named
  std::shared_ptr<Generation> gen_;
  int generations_ = 1;  // the model's replies so far
  int tool_rounds_ = 0;  // rounds of tool calls run
  std::string stopped_;
  ojson steps_ = ojson::array();
};

// The in-flight count of one admitted request, given back when its response is finished.
struct InFlight {
  explicit InFlight(std::atomic<int64_t>& count) : n(count) {}
  InFlight(const InFlight&) = delete;
  std::atomic<int64_t>& n;
  ~InFlight() { n.fetch_sub(1); }
};

}  // namespace

std::vector<int32_t> Server::Impl::prompt_of(const ApiRequest& r, bool thinking) const {
  if (!r.chat) return r.prompt_text.empty() ? r.prompt_ids : tok.encode(r.prompt_text);
  models::ChatOptions co;
  co.enable_thinking = thinking;
  if (r.tool_choice != "none") co.tools = r.tools;
  try {
    return tok.encode(models::render_chat(r.messages, co));
  } catch (const UserError& e) {
    throw ApiError(400, e.what(), "messages");
  }
}

int64_t Server::Impl::tokens_to_generate(const ApiRequest& r, const std::vector<int32_t>& prompt) const {
  const int64_t vocab = engine.vocab_size();
  for (size_t i = 0; i < prompt.size(); ++i)
    if (prompt[i] >= vocab)
      throw ApiError(400, fmt::format("prompt token {} is id {}; the model's vocabulary is 0 .. {}", i, prompt[i], vocab - 1),
                     "prompt");
  const int64_t ctx = engine.max_model_len();
  const auto p = static_cast<int64_t>(prompt.size());
  if (p >= ctx)
    throw ApiError(400, fmt::format("this model's maximum context length is {} tokens; the prompt is {} tokens, leaving "
                                    "none to generate",
                                    ctx, p),
                   r.chat ? "messages" : "prompt", "context_length_exceeded");
  const int64_t max_tokens = r.max_tokens.value_or(ctx - p);
  if (p + max_tokens > ctx)
    throw ApiError(400, fmt::format("this model's maximum context length is {} tokens; you requested {} ({} in the "
                                    "prompt, {} to generate): lower max_tokens to {} or less",
                                    ctx, p + max_tokens, p, max_tokens, ctx - p),
                   "max_tokens", "context_length_exceeded");
  return max_tokens;
}

std::shared_ptr<Ticket> Server::Impl::admit(const ApiRequest& r, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  auto t = std::make_shared<Ticket>();
  t->id = next_id.fetch_add(1);
  EngineRequest er{t->id, prompt, r.sampling};
  er.sampling.max_tokens = max_tokens;
  er.sampling.seed = r.seed.value_or(t->id);
  for (const int32_t s : {tok.special_ids().im_end, tok.special_ids().endoftext})
    if (s >= 0) er.sampling.stop_ids.push_back(s);
  if (!submit(er, t)) throw ApiError(503, "the server is shutting down; send the request to another replica");
  std::unique_lock lk(t->mu);
  t->cv.wait(lk, [&] { return t->admitted || t->done; });
  if (!t->refused.empty())
    throw ApiError(t->refused_status, t->refused, t->refused_status == 400 ? (r.chat ? "messages" : "prompt") : "");
  return t;
}

std::vector<std::string> Server::Impl::name_server_tools(ApiRequest& r) const {
  std::vector<std::string> named;
  if (!r.chat || r.tool_choice == "none") return named;
  for (ojson& t : r.tools) {
    ojson& fn = t["function"];
    const std::string name = fn.value("name", "");
    for (const ToolDef& d : opt.tools.definitions) {
      if (d.name != name) continue;
      named.push_back(name);
      if (!fn.contains("description")) fn["description"] = d.description;
      if (!fn.contains("parameters")) fn["parameters"] = d.parameters;
    }
  }
  return named;
}

void Server::Impl::handle_generate(const httplib::Request& req, httplib::Response& res, bool chat) {
  const std::string endpoint = chat ? "chat" : "completions";
  const Clock::time_point arrived = Clock::now();
  try {
    if (draining) throw ApiError(503, "the server is shutting down; send the request to another replica");
    ApiRequest r = chat ? parse_chat_request(req.body) : parse_completion_request(req.body);
    if (r.model != opt.model_name)
      throw ApiError(404, fmt::format("the model '{}' does not exist; this server serves '{}' (GET /v1/models)", r.model,
                                      opt.model_name),
                     "model", "model_not_found");
    const bool thinking = r.enable_thinking.value_or(true);
    std::vector<std::string> server_tools = name_server_tools(r);
    std::vector<int32_t> prompt = prompt_of(r, thinking);
    const int64_t max_tokens = tokens_to_generate(r, prompt);
    const int64_t capacity = max_batch + opt.max_waiting;
    if (in_flight.fetch_add(1) >= capacity) {
      in_flight.fetch_sub(1);
      throw ApiError(429, fmt::format("the server is full: {} requests are running or waiting ({} at once, --max-waiting "
                                      "{}); retry later",
                                      capacity, max_batch, opt.max_waiting));
    }
    const std::shared_ptr<InFlight> slot(new InFlight(in_flight));  // not make_shared: no temporary to destroy
    auto run = std::make_shared<AgentRun>(*this, std::move(r), thinking, arrived, std::move(server_tools));
    run->start(std::move(prompt), max_tokens);
    res.status = 200;
    if (!run->gen().streaming()) {
      res.set_content(dump(run->response()), "application/json");
    } else {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, run](size_t, httplib::DataSink& sink) {
            std::string ev;
            try {
              ev = run->events();
            } catch (const std::exception& e) {  // a bug of ours, or no room for a round: the stream ends with it
              cancel(run->id());
              const ApiError* api = dynamic_cast<const ApiError*>(&e);
              ev = "data: " + error_body(api ? *api : ApiError(500, fmt::format("internal error: {}", e.what()))) +
                   "\n\ndata: [DONE]\n\n";
              sink.write(ev.data(), ev.size());
              sink.done();
              return true;
            }
            if (!ev.empty() && !sink.write(ev.data(), ev.size())) {
              cancel(run->id());  // the client went away
              return false;
            }
            if (run->closed()) sink.done();
            return true;
          },
          [this, run, slot](bool) {
            if (!run->closed()) cancel(run->id());
          });
    }
    count(endpoint, 200);
  } catch (const ApiError& e) {
    count(endpoint, e.status());
    send_error(res, e);
  }
}

// The chat page (src/serve/web/chat.html, compiled in by cmake/EmbedText.cmake).
extern const std::string_view kChatPage;

void Server::Impl::install_routes() {
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& q, httplib::Response& r) { handle_generate(q, r, /*chat=*/true); });
  http.Post("/v1/completions",
            [this](const httplib::Request& q, httplib::Response& r) { handle_generate(q, r, /*chat=*/false); });
  const auto model_json = [this] {
    return ojson{{"id", opt.model_name}, {"object", "model"}, {"created", started_at}, {"owned_by", "openppu"},
                 {"max_model_len", engine.max_model_len()}};
  };
  http.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& r) {
    r.set_content(dump({{"object", "list"}, {"data", ojson::array({model_json()})}}), "application/json");
  });
  http.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& q, httplib::Response& r) {
    if (q.matches[1] != opt.model_name)
      return send_error(r, ApiError(404, fmt::format("the model '{}' does not exist; this server serves '{}'",
                                                     q.matches[1].str(), opt.model_name),
                                    "model", "model_not_found"));
    r.set_content(dump(model_json()), "application/json");
  });
  http.Get(R"(/(index\.html)?)", [](const httplib::Request&, httplib::Response& r) {
    r.set_content(kChatPage.data(), kChatPage.size(), "text/html; charset=utf-8");
  });
  http.Get("/ppu/tools", [this](const httplib::Request&, httplib::Response& r) {
    ojson list = ojson::array();
    for (const ToolDef& d : opt.tools.definitions) list.push_back({{"name", d.name}, {"description", d.description}});
    r.set_content(dump({{"tools", list}}), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
    if (draining) return send_error(r, ApiError(503, "the server is shutting down"));
    r.set_content(R"({"status":"ok"})", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
    std::lock_guard lk(stats_mu);
    r.set_content(stats.render(), "text/plain; version=0.0.4");
  });
  // API keys guard /v1/ (health and metrics stay open to probes and scrapers, as vLLM does).
  http.set_pre_routing_handler([this](const httplib::Request& q, httplib::Response& r) {
    if (opt.api_key.empty() || !q.path.starts_with("/v1/")) return httplib::Server::HandlerResponse::Unhandled;
    const std::string given = q.get_header_value("Authorization");
    if (given.starts_with("Bearer ") && constant_time_equal(std::string_view(given).substr(7), opt.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(r, ApiError(401, given.empty() ? "no API key: send the header 'Authorization: Bearer KEY'"
                                              : "the API key is not valid",
                           "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  // Statuses cpp-httplib answers itself (no route, body too long, a request it cannot read) get
  // OpenAI's error object too.
  http.set_error_handler([this](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return;
    std::string msg;
    if (r.status == 404)
      msg = fmt::format("no route {} {}; endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, "
                        "GET /health, GET /metrics",
                        q.method, q.path);
    else if (r.status == 413)
      msg = fmt::format("the request body is over this server's limit of {} bytes", opt.max_body_bytes);
    else if (r.status == 405)
      msg = fmt::format("method {} is not allowed on {}", q.method, q.path);
    else
      msg = fmt::format("the request could not be read (HTTP {})", r.status);
    r.set_content(error_body(ApiError(r.status, msg)), "application/json");
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& r, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(r, ApiError(500, fmt::format("internal error: {}", what)));
  });
}

Server::Server(ServingEngine& engine, const models::Tokenizer& tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(options))) {
  const ServerOptions& o = impl_->opt;
  if (o.port < 0 || o.port > 65535) throw UserError(fmt::format("--port {}; valid: 0 (any free port) to 65535", o.port));
  if (o.max_waiting < 0) throw UserError(fmt::format("--max-waiting {}; valid: 0 or more", o.max_waiting));
  if (o.max_body_bytes < 1024)
    throw UserError(fmt::format("--max-body {} bytes; valid: 1024 or more", o.max_body_bytes));
  if (!(o.drain_timeout_s >= 0)) throw UserError(fmt::format("--drain-timeout {}; valid: 0 or more seconds", o.drain_timeout_s));
  if (o.model_name.empty()) throw UserError("serve: the served model needs a name");
  if (o.max_tool_rounds < 1 || o.max_tool_rounds > 64)
    throw UserError(fmt::format("--max-tool-rounds {}; valid: 1 to 64", o.max_tool_rounds));
  if (!o.tools.empty() && !o.tools.call) throw UserError("serve: tools without a call function");
  impl_->stats.kv_blocks_total = engine.kv_blocks_total();
}

Server::~Server() { stop(); }

int Server::start() {
  Impl& s = *impl_;
  // One handler thread per connection: every running and waiting request, and a few more for
  // /health, /metrics and requests about to be refused.
  const auto threads = static_cast<size_t>(s.max_batch + s.opt.max_waiting + 16);
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.http.set_payload_max_length(static_cast<size_t>(s.opt.max_body_bytes));
  // SO_REUSEADDR only (a restart may bind while old connections sit in TIME_WAIT): cpp-httplib's
  // default adds SO_REUSEPORT, with which a second server on the same port starts silently and the
  // kernel splits the connections between the two.
  s.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  s.install_routes();
  s.port = s.opt.port == 0 ? s.http.bind_to_any_port(s.opt.host) : (s.http.bind_to_port(s.opt.host, s.opt.port) ? s.opt.port : -1);
  if (s.port < 0)
    throw UserError(fmt::format("serve: cannot listen on {}:{} (in use, not an address of this machine, or no "
                                "permission); choose another --host or --port",
                                s.opt.host, s.opt.port));
  s.engine_thread = std::thread([&s] { s.engine_loop(); });
  s.listen_thread = std::thread([&s] { s.http.listen_after_bind(); });
  return s.port;
}

int64_t Server::drain() {
  Impl& s = *impl_;
  s.draining = true;
  const auto deadline = Clock::now() + std::chrono::duration<double>(s.opt.drain_timeout_s);
  while (s.in_flight.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int64_t cut = s.in_flight.load();
  stop();
  return cut;
}

void Server::stop() {
  Impl& s = *impl_;
  {
    std::lock_guard lk(s.stop_mu);
    if (s.stopping_started) return;
    s.stopping_started = true;
  }
  {
    std::lock_guard lk(s.mu);
    s.stopping = true;
  }
  s.cv.notify_all();
  if (s.engine_thread.joinable()) s.engine_thread.join();  // every open ticket is now done ("cancelled")
  s.http.stop();
  if (s.listen_thread.joinable()) s.listen_thread.join();
  {
    std::lock_guard lk(s.stop_mu);
    s.stopped = true;
  }
  s.stop_cv.notify_all();
}

void Server::wait() {
  Impl& s = *impl_;
  std::unique_lock lk(s.stop_mu);
  s.stop_cv.wait(lk, [&] { return s.stopped; });
}

std::string Server::metrics() const {
  std::lock_guard lk(impl_->stats_mu);
  return impl_->stats.render();
}

}  // namespace ppu::serve
