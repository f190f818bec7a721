// Server: the OpenAI-compatible HTTP server of `ppu serve` - many clients' requests served at once by
// one Engine (continuous batching on the emulated chip, real numbers), each answer carrying the
// simulated chip's timing of that request.
//
//   Server server(engine, tokenizer, {.port = 8000, .model_name = "tiny", .chip_name = "zhenwu-810e"});
//   server.start();                  // serves on background threads; returns the bound port
//   ...                               // SIGTERM: server.drain()
//
// Endpoints (cpp-httplib; docs/serving.md has the details and examples):
//   POST /v1/chat/completions, /v1/completions   OpenAI's bodies (serve/OpenAi); "stream": true answers
//        with server-sent events in OpenAI's chunk format ending "data: [DONE]", with a usage chunk
//        when stream_options.include_usage; every response carries "ppu_timing" (below)
//   GET  /v1/models, /v1/models/{id}             the one model served
//   GET  /, /index.html                          the chat page (src/serve/web/chat.html)
//   GET  /ppu/tools                              the server's tools: {"tools": [{"name", "description"}]}
//   GET  /health                                 200 {"status": "ok"}; 503 while draining
//   GET  /metrics                                Prometheus text: requests by endpoint and status,
//        prompt and generated tokens, running and waiting requests, KV blocks, engine steps, the
//        simulated clock, and TTFT / TPOT histograms on the host and on the simulated chip
//
// "ppu_timing": the request on the simulated chip. The engine's simulated clock advances by each
// step's simulated time (the step's forward on the chip); a request's times are read on that clock
// from the step boundary at which it joined the engine: time_to_first_token_s, time_per_output_token_s
// (mean between its tokens), e2e_s; the host's wall times beside them (host_*). The clock does not
// run while the engine is idle, so a request arriving to an idle server starts at once.
//
// Errors are OpenAI's error object with the status: 400 malformed JSON, wrong types, values out of
// range, a prompt longer than the context (with the numbers, at admission, never a hang); 401 a
// missing or wrong API key (--api-key: "Authorization: Bearer KEY", compared in constant time; on
// /v1/ only); 404 an unknown model or path; 413 a body over the limit; 429 the queue is full
// (max_waiting requests already wait beyond the running batch); 503 draining.
//
// The agent loop: a chat request whose `tools` name one of the server's tools (ServerOptions::tools;
// {"type": "function", "function": {"name": "search"}} is enough - the server fills in the description
// and schema) is run server-side: each round the model's reply is parsed; when every call it makes is
// to a server tool, the calls run (in order, for the request's `user`), the assistant turn and one
// `tool` message per result are appended to the conversation and the model generates again, up to
// max_tool_rounds rounds. A tool's error is the tool message's text (the model reads it; never an
// HTTP error); a busy tool (the code sandbox's pool and queue full) ends the request with 429. A reply calling a tool the client offered (not the server's) ends the loop: its calls
// go back to the client as usual (finish_reason "tool_calls"; server tools in the same reply are not
// run). The response carries "ppu_agent": {"rounds" (replies), "tool_rounds", "stopped" (null, or why it ended early:
// the round limit, the context), "steps": [{"round", "content", "reasoning_content", "tool_calls",
// "tool_results": [{"tool_call_id", "name", "content", "is_error"}], "ppu_timing"}]} with usage summed
// over the rounds; streamed, every round's deltas go out as they come, each round's results as a
// chunk with an empty delta and "ppu_tool_results", and one finish chunk at the end.
//
// Threads: cpp-httplib's pool runs the handlers (one per connection, enough for every running and
// waiting request); one engine thread owns the Engine and runs its steps, taking new requests and
// cancellations between steps. A streaming client that disconnects cancels its request (its KV slot
// is freed at the next step boundary); a stop string found in the text cancels it too.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/Tokenizer.hpp"
#include "serve/Engine.hpp"
#include "serve/Tools.hpp"

namespace ppu::serve {

// Tools run by the server for the model: their definitions (JSON Schemas) and the call. `ppu serve
// --tools` fills it from a ToolSet; tests put their own here.
struct ServerTools {
  std::vector<ToolDef> definitions;
  std::function<ToolResult(std::string_view name, const nlohmann::json& arguments, std::string_view user)> call;
  bool empty() const { return definitions.empty(); }
};

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback only unless asked
  int port = 8000;                 // 0: any free port (start() returns it)
  std::string api_key;             // empty: no authentication
  std::string model_name = "tiny"; // the id requests name and /v1/models lists
  std::string chip_name;           // the simulated chip, named in ppu_timing
  int64_t max_waiting = 256;       // requests waiting beyond the running batch; more get 429
  int64_t max_body_bytes = 8 << 20;
  double drain_timeout_s = 30;     // drain(): the longest wait for in-flight requests
  std::function<void(const std::string&)> log;  // one line per finished request; empty: none
  // The tools the server runs for the model (the agent loop, below); empty: none.
  ServerTools tools;
  int max_tool_rounds = 8;         // rounds of tool calls one request may make (1 .. 64)
};

class Server {
 public:
  // `engine` and `tokenizer` must outlive the server; from start() on, the server's engine thread is
  // the only one driving the engine. UserError for options out of range.
  Server(ServingEngine& engine, const models::Tokenizer& tokenizer, ServerOptions options);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and serves on background threads; returns the bound port. UserError when the
  // address cannot be bound (in use, no permission), naming it.
  int start();
  // Graceful shutdown: new requests get 503, in-flight ones run to their end (at most
  // drain_timeout_s, then they are cancelled), then stop(). Returns the requests still running when
  // the timeout cut them (0 normally).
  int64_t drain();
  // Stops at once: open streams end, the threads are joined. Idempotent.
  void stop();
  // Blocks until the server has stopped (drain() or stop() from another thread).
  void wait();

  // The /metrics text.
  std::string metrics() const;

  struct Impl;  // internal (Server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ppu::serve
