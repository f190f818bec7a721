// OpenAi: the OpenAI API's request and response bodies as `ppu serve` reads and writes them -
// parsing a chat or completion request into what the engine runs, checking every field's type and
// range, and OpenAI's error object. No networking here (serve/Server does the HTTP); everything is a
// pure function of its input, so each rule is tested directly and the parsers are fuzzed.
//
//   ApiRequest r = parse_chat_request(R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})");
//   r.messages[0].content;            // "hi"
//   parse_chat_request("{");          // throws ApiError: status 400, "malformed JSON: ..."
//
// Accepted as OpenAI documents them (fields it does not know are ignored, as OpenAI does; null is the
// same as absent): model, messages (system, developer = system, user, assistant with tool_calls and
// reasoning_content, tool; content a string or an array of text parts), tools, tool_choice ("auto",
// "none"), stream, stream_options.include_usage, max_tokens / max_completion_tokens, temperature
// [0, 2], top_p (0, 1], seed, stop (a string or up to 4), presence_penalty / frequency_penalty [-2, 2],
// n (1), user; vLLM's top_k (-1 or 0: off) and chat_template_kwargs.enable_thinking. Completions: a
// prompt string, or token ids, and echo.
//
// Refused with a 400 naming the field (a serious client should learn at once that it gets less than
// it asked for): n above 1, logprobs, tool_choice "required" or a named function (they need guided
// decoding, which the engine does not have), image or audio content parts, several prompts.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/ChatTemplate.hpp"
#include "serve/SamplingParams.hpp"

namespace ppu::serve {

// A request the server answers with an HTTP error status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}.
class ApiError : public std::runtime_error {
 public:
  // `param`: the offending field ("messages[2].role"), empty when none; `code`: OpenAI's machine-
  // readable code ("model_not_found", "context_length_exceeded"), empty when none.
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  // OpenAI's error type for the status: invalid_request_error (400, 404, 413), authentication_error
  // (401), rate_limit_error (429), service_unavailable_error (503), server_error (others).
  std::string type() const;

 private:
  int status_;
  std::string param_, code_;
};

// The error object's JSON text.
std::string error_body(const ApiError& e);

struct ApiRequest {
  bool chat = true;  // /v1/chat/completions; false: /v1/completions
  std::string model;
  // Chat: the conversation, the tools offered (as given, key order kept) and the choice among them.
  std::vector<models::ChatMessage> messages;
  std::vector<nlohmann::ordered_json> tools;
  std::string tool_choice = "auto";  // "auto" or "none"
  std::optional<bool> enable_thinking;  // chat_template_kwargs.enable_thinking; absent: the template's default (on)
  // Completions: the prompt as text, or as token ids (then prompt_text is empty).
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;
  bool echo = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  std::optional<int64_t> max_tokens;  // absent: up to the context's end
  std::vector<std::string> stop;      // stop strings (not included in the output)
  // Sampling as OpenAI defaults it (temperature 1, top_p 1); seed absent: the server picks one.
  SamplingParams sampling{.temperature = 1.0};
  std::optional<uint64_t> seed;
  std::string user;
};

// Parse a POST body. Throws ApiError 400 naming the field for malformed JSON, a body that is not an
// object, a missing or mistyped field, a value out of range, or a refused feature (file comment).
ApiRequest parse_chat_request(std::string_view body);
ApiRequest parse_completion_request(std::string_view body);

}  // namespace ppu::serve
