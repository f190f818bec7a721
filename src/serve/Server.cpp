#include "serve/Server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
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
  Impl(Engine& e, const models::Tokenizer& t, ServerOptions o)
      : engine(e), tok(t), opt(std::move(o)), max_batch(e.model().max_batch()), started_at(std::time(nullptr)) {}

  Engine& engine;
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

// What one generation request does with its tokens: decode them into text as it becomes final,
// stop at a stop string, and write the OpenAI response - whole, or chunk by chunk.
class Generation {
 public:
  // `arrived`: when the request reached the server (its host times count from there).
  Generation(Server::Impl& s, ApiRequest r, std::vector<int32_t> prompt, std::shared_ptr<Ticket> t, bool thinking,
             Clock::time_point arrived)
      : s_(s),
        r_(std::move(r)),
        prompt_(std::move(prompt)),
        t_(std::move(t)),
        text_(s.tok, r_.stop),
        reply_opts_{.thinking = thinking, .tools = !r_.tools.empty() && r_.tool_choice != "none"},
        start_(arrived),
        created_(std::time(nullptr)),
        id_(fmt::format("{}-{:x}", r_.chat ? "chatcmpl" : "cmpl", t_->id)) {}

  // Waits (at most `wait`) for new tokens; decodes them. True when the request is over.
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

  // The whole non-streaming response body.
  ojson response() {
    ojson choice = {{"index", 0}};
    std::string reason = finish_;
    if (r_.chat) {
      const models::ParsedReply p = models::parse_reply(text_.text(), reply_opts_);
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

  // The SSE events for what advance() decoded since the last call; the closing ones when it is over.
  std::string events() {
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
    if (over_ && !closed_ && failed()) {
      closed_ = true;
      return out + "data: " + error_body(ApiError(503, failure())) + "\n\ndata: [DONE]\n\n";
    }
    if (over_ && !closed_) {
      closed_ = true;
      if (r_.chat) out += chat_deltas(stream_.finish());
      const std::string reason = calls_ > 0 ? "tool_calls" : finish_;
      ojson last = head(r_.chat ? "chat.completion.chunk" : "text_completion");
      ojson choice = {{"index", 0}};
      if (r_.chat) choice["delta"] = ojson::object();
      else choice["text"] = "";
      choice["finish_reason"] = reason;
      last["choices"] = ojson::array({choice});
      last["ppu_timing"] = timing();
      out += sse(last);
      if (r_.include_usage) {
        ojson u = head(r_.chat ? "chat.completion.chunk" : "text_completion");
        u["choices"] = ojson::array();
        u["usage"] = usage();
        out += sse(u);
      }
      out += "data: [DONE]\n\n";
    }
    return out;
  }

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

 private:
  std::string prompt_text() const { return r_.prompt_text.empty() ? s_.tok.decode(prompt_) : r_.prompt_text; }

  ojson head(const char* object) const {
    return {{"id", id_}, {"object", object}, {"created", created_}, {"model", s_.opt.model_name}};
  }
  ojson usage() const {
    return {{"prompt_tokens", prompt_.size()}, {"completion_tokens", used_}, {"total_tokens", prompt_.size() + used_}};
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
  ojson tool_call_json(const models::ParsedToolCall& c, size_t i) const {
    return {{"id", fmt::format("call_{:x}_{}", t_->id, i)},
            {"type", "function"},
            {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
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
          ojson call = tool_call_json(d.call, calls_);
          call["index"] = calls_++;
          out += chunk({{"tool_calls", ojson::array({call})}}, nullptr);
          break;
        }
      }
    }
    return out;
  }

  Server::Impl& s_;
  ApiRequest r_;
  std::vector<int32_t> prompt_;
  std::shared_ptr<Ticket> t_;
  StreamText text_;
  models::ReplyOptions reply_opts_;
  models::ReplyStream stream_{reply_opts_};
  Clock::time_point start_;
  std::time_t created_;
  std::string id_;
  size_t used_ = 0;  // tokens taken from the ticket
  size_t calls_ = 0;  // tool calls streamed
  std::string pending_text_;
  std::string finish_;
  bool over_ = false, started_ = false, closed_ = false;
  double sim_joined_s_ = 0, sim_first_s_ = 0, sim_last_s_ = 0, host_ttft_s_ = 0, host_e2e_s_ = 0;
};

}  // namespace

namespace {

// The in-flight count of one admitted request, given back when its response is finished.
struct InFlight {
  explicit InFlight(std::atomic<int64_t>& count) : n(count) {}
  InFlight(const InFlight&) = delete;
  std::atomic<int64_t>& n;
  ~InFlight() { n.fetch_sub(1); }
};

}  // namespace

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
    std::vector<int32_t> prompt;
    if (chat) {
      models::ChatOptions co;
      co.enable_thinking = thinking;
      if (r.tool_choice != "none") co.tools = r.tools;
      try {
        prompt = tok.encode(models::render_chat(r.messages, co));
      } catch (const UserError& e) {
        throw ApiError(400, e.what(), "messages");
      }
    } else {
      prompt = r.prompt_text.empty() ? r.prompt_ids : tok.encode(r.prompt_text);
    }
    const int64_t vocab = engine.model().config().vocab_size;
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
                     chat ? "messages" : "prompt", "context_length_exceeded");
    const int64_t max_tokens = r.max_tokens.value_or(ctx - p);
    if (p + max_tokens > ctx)
      throw ApiError(400, fmt::format("this model's maximum context length is {} tokens; you requested {} ({} in the "
                                      "prompt, {} to generate): lower max_tokens to {} or less",
                                      ctx, p + max_tokens, p, max_tokens, ctx - p),
                     "max_tokens", "context_length_exceeded");
    const int64_t capacity = max_batch + opt.max_waiting;
    if (in_flight.fetch_add(1) >= capacity) {
      in_flight.fetch_sub(1);
      throw ApiError(429, fmt::format("the server is full: {} requests are running or waiting ({} at once, --max-waiting "
                                      "{}); retry later",
                                      capacity, max_batch, opt.max_waiting));
    }
    const std::shared_ptr<InFlight> slot(new InFlight(in_flight));  // not make_shared: no temporary to destroy
    auto t = std::make_shared<Ticket>();
    t->id = next_id.fetch_add(1);
    EngineRequest er{t->id, prompt, r.sampling};
    er.sampling.max_tokens = max_tokens;
    er.sampling.seed = r.seed.value_or(t->id);
    for (const int32_t s : {tok.special_ids().im_end, tok.special_ids().endoftext})
      if (s >= 0) er.sampling.stop_ids.push_back(s);
    if (!submit(er, t)) throw ApiError(503, "the server is shutting down; send the request to another replica");
    {
      std::unique_lock lk(t->mu);
      t->cv.wait(lk, [&] { return t->admitted || t->done; });
      if (!t->refused.empty())
        throw ApiError(t->refused_status, t->refused, t->refused_status == 400 ? (chat ? "messages" : "prompt") : "");
    }
    auto gen = std::make_shared<Generation>(*this, std::move(r), std::move(prompt), t, thinking, arrived);
    res.status = 200;
    if (!gen->streaming()) {
      while (!gen->advance(std::chrono::milliseconds(250))) {
      }
      if (gen->failed()) throw ApiError(503, gen->failure());
      res.set_content(dump(gen->response()), "application/json");
      record(*gen);
    } else {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, gen](size_t, httplib::DataSink& sink) {
            std::string ev;
            try {
              if (gen->started()) gen->advance(std::chrono::milliseconds(200));
              ev = gen->events();
            } catch (const std::exception& e) {  // a bug of ours: the stream ends with it, the server goes on
              cancel(gen->id());
              ev = "data: " + error_body(ApiError(500, fmt::format("internal error: {}", e.what()))) + "\n\ndata: [DONE]\n\n";
              sink.write(ev.data(), ev.size());
              sink.done();
              return true;
            }
            if (!ev.empty() && !sink.write(ev.data(), ev.size())) {
              cancel(gen->id());  // the client went away
              return false;
            }
            if (gen->closed()) sink.done();
            return true;
          },
          [this, gen, slot](bool) {
            if (!gen->closed()) cancel(gen->id());
            else record(*gen);
          });
    }
    count(endpoint, 200);
  } catch (const ApiError& e) {
    count(endpoint, e.status());
    send_error(res, e);
  }
}

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

Server::Server(Engine& engine, const models::Tokenizer& tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, std::move(options))) {
  const ServerOptions& o = impl_->opt;
  if (o.port < 0 || o.port > 65535) throw UserError(fmt::format("--port {}; valid: 0 (any free port) to 65535", o.port));
  if (o.max_waiting < 0) throw UserError(fmt::format("--max-waiting {}; valid: 0 or more", o.max_waiting));
  if (o.max_body_bytes < 1024)
    throw UserError(fmt::format("--max-body {} bytes; valid: 1024 or more", o.max_body_bytes));
  if (!(o.drain_timeout_s >= 0)) throw UserError(fmt::format("--drain-timeout {}; valid: 0 or more seconds", o.drain_timeout_s));
  if (o.model_name.empty()) throw UserError("serve: the served model needs a name");
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
