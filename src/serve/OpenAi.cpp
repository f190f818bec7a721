#include "serve/OpenAi.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace ppu::serve {

using ojson = nlohmann::ordered_json;

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code)
    : std::runtime_error(message), status_(status), param_(std::move(param)), code_(std::move(code)) {}

std::string ApiError::type() const {
  switch (status_) {
    case 400:
    case 404:
    case 413:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "service_unavailable_error";
    default:
      return "server_error";
  }
}

std::string error_body(const ApiError& e) {
  const auto or_null = [](const std::string& s) { return s.empty() ? ojson() : ojson(s); };
  const ojson j = {{"error", {{"message", e.what()}, {"type", e.type()}, {"param", or_null(e.param())},
                              {"code", or_null(e.code())}}}};
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

namespace {

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, param); }

// The optional fields of one JSON object, each read with its type and range checked and named by its
// path in the request ("messages[2].role") in any error. Absent and null are the same.
class Fields {
 public:
  Fields(const ojson& j, std::string path) : j_(j), path_(std::move(path)) {
    if (!j_.is_object()) throw bad(path_, fmt::format("'{}' must be an object, not {}", where(), j_.type_name()));
  }
  std::string name(std::string_view key) const { return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key); }
  const ojson* get(std::string_view key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<std::string> string(std::string_view key) const {
    const ojson* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }
  std::optional<bool> boolean(std::string_view key) const {
    const ojson* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(key, "a boolean", *v);
    return v->get<bool>();
  }
  // A number in [lo, hi] (above lo when lo_open).
  std::optional<double> number(std::string_view key, double lo, double hi, bool lo_open = false) const {
    const ojson* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw wrong_type(key, "a number", *v);
    const double x = v->get<double>();
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
      throw bad(name(key), fmt::format("'{}' is {}; valid: {} {} to {}", name(key), v->dump(), lo_open ? "above" : "from",
                                       lo, hi));
    return x;
  }
  // A whole number in [lo, hi] (a float with no fraction counts, as in JSON Schema).
  std::optional<int64_t> integer(std::string_view key, int64_t lo, int64_t hi) const {
    const ojson* v = get(key);
    if (!v) return std::nullopt;
    if (v->is_number_float()) {
      const double x = v->get<double>();
      if (!(std::trunc(x) == x && x >= static_cast<double>(lo) && x <= static_cast<double>(hi)))
        throw bad(name(key), fmt::format("'{}' is {}; valid: a whole number from {} to {}", name(key), v->dump(), lo, hi));
      return static_cast<int64_t>(x);
    }
    if (!v->is_number_integer()) throw wrong_type(key, "an integer", *v);
    const bool in_range = v->is_number_unsigned()
                              ? v->get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                    (lo <= 0 || v->get<uint64_t>() >= static_cast<uint64_t>(lo))
                              : v->get<int64_t>() >= lo && v->get<int64_t>() <= hi;
    if (!in_range) throw bad(name(key), fmt::format("'{}' is {}; valid: {} to {}", name(key), v->dump(), lo, hi));
    return v->get<int64_t>();
  }
  ApiError wrong_type(std::string_view key, std::string_view want, const ojson& v) const {
    return bad(name(key), fmt::format("'{}' must be {}, not {}", name(key), want, v.type_name()));
  }

 private:
  std::string where() const { return path_.empty() ? "the request body" : path_; }
  const ojson& j_;
  std::string path_;
};

ojson parse_body(std::string_view body) {
  try {
    return ojson::parse(body);
  } catch (const ojson::exception& e) {
    throw bad("", fmt::format("malformed JSON in the request body: {}", e.what()));
  }
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts joined by
// newlines (as vLLM joins them). `required`: null or absent is an error.
std::string parse_content(const Fields& f, bool required) {
  const ojson* c = f.get("content");
  const std::string key = f.name("content");
  if (!c) {
    if (required) throw bad(key, fmt::format("'{}' is missing; this role needs a content string", key));
    return "";
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) throw f.wrong_type("content", "a string or an array of text parts", *c);
  std::string out;
  for (size_t i = 0; i < c->size(); ++i) {
    const Fields part((*c)[i], fmt::format("{}[{}]", key, i));
    const std::string type = part.string("type").value_or("");
    if (type != "text")
      throw bad(part.name("type"), fmt::format("'{}' is '{}'; this server takes text parts only (type 'text')",
                                               part.name("type"), type));
    const auto text = part.string("text");
    if (!text) throw bad(part.name("text"), fmt::format("'{}' is missing", part.name("text")));
    out += (i ? "\n" : "") + *text;
  }
  return out;
}

std::vector<models::ToolCall> parse_tool_calls(const Fields& f) {
  std::vector<models::ToolCall> out;
  const ojson* calls = f.get("tool_calls");
  if (!calls) return out;
  if (!calls->is_array()) throw f.wrong_type("tool_calls", "an array", *calls);
  for (size_t i = 0; i < calls->size(); ++i) {
    const Fields call((*calls)[i], fmt::format("{}[{}]", f.name("tool_calls"), i));
    const ojson* fn = call.get("function");
    if (!fn) throw bad(call.name("function"), fmt::format("'{}' is missing", call.name("function")));
    const Fields func(*fn, call.name("function"));
    models::ToolCall tc;
    tc.id = call.string("id").value_or("");
    tc.name = func.string("name").value_or("");
    if (tc.name.empty()) throw bad(func.name("name"), fmt::format("'{}' is missing or empty", func.name("name")));
    const ojson* args = func.get("arguments");
    if (!args) tc.arguments = "{}";
    else if (args->is_string()) tc.arguments = args->get<std::string>();
    else if (args->is_object()) tc.arguments = args->dump();
    else throw func.wrong_type("arguments", "a JSON string (or an object)", *args);
    out.push_back(std::move(tc));
  }
  return out;
}

std::vector<models::ChatMessage> parse_messages(const Fields& top) {
  const ojson* ms = top.get("messages");
  if (!ms) throw bad("messages", "'messages' is missing; give the conversation as an array of messages");
  if (!ms->is_array()) throw top.wrong_type("messages", "an array", *ms);
  if (ms->empty()) throw bad("messages", "'messages' is empty; give at least one message");
  std::vector<models::ChatMessage> out;
  for (size_t i = 0; i < ms->size(); ++i) {
    const Fields m((*ms)[i], fmt::format("messages[{}]", i));
    const auto role = m.string("role");
    if (!role) throw bad(m.name("role"), fmt::format("'{}' is missing", m.name("role")));
    models::ChatMessage msg;
    if (*role == "developer") msg.role = models::ChatRole::kSystem;  // OpenAI's newer name for system
    else if (*role == "system") msg.role = models::ChatRole::kSystem;
    else if (*role == "user") msg.role = models::ChatRole::kUser;
    else if (*role == "assistant") msg.role = models::ChatRole::kAssistant;
    else if (*role == "tool") msg.role = models::ChatRole::kTool;
    else
      throw bad(m.name("role"), fmt::format("'{}' is '{}'; valid: system, developer, user, assistant, tool",
                                            m.name("role"), *role));
    const bool assistant = msg.role == models::ChatRole::kAssistant;
    msg.content = parse_content(m, !assistant);
    if (assistant) {
      msg.reasoning_content = m.string("reasoning_content");
      msg.tool_calls = parse_tool_calls(m);
    }
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<ojson> parse_tools(const Fields& top) {
  std::vector<ojson> out;
  const ojson* tools = top.get("tools");
  if (!tools) return out;
  if (!tools->is_array()) throw top.wrong_type("tools", "an array", *tools);
  for (size_t i = 0; i < tools->size(); ++i) {
    const Fields t((*tools)[i], fmt::format("tools[{}]", i));
    const std::string type = t.string("type").value_or("function");
    if (type != "function")
      throw bad(t.name("type"), fmt::format("'{}' is '{}'; valid: function", t.name("type"), type));
    const ojson* fn = t.get("function");
    if (!fn) throw bad(t.name("function"), fmt::format("'{}' is missing", t.name("function")));
    const Fields func(*fn, t.name("function"));
    if (func.string("name").value_or("").empty())
      throw bad(func.name("name"), fmt::format("'{}' is missing or empty", func.name("name")));
    if (const ojson* p = func.get("parameters"); p && !p->is_object())
      throw func.wrong_type("parameters", "an object (a JSON Schema)", *p);
    out.push_back((*tools)[i]);
  }
  return out;
}

std::string parse_tool_choice(const Fields& top) {
  const ojson* c = top.get("tool_choice");
  if (!c) return "auto";
  if (c->is_object())
    throw bad("tool_choice", "'tool_choice' names a function; forcing a call needs guided decoding, which this server "
                             "does not have; valid: \"auto\", \"none\"");
  if (!c->is_string()) throw top.wrong_type("tool_choice", "a string", *c);
  const auto s = c->get<std::string>();
  if (s == "auto" || s == "none") return s;
  if (s == "required")
    throw bad("tool_choice", "'tool_choice' is \"required\"; forcing a call needs guided decoding, which this server does "
                             "not have; valid: \"auto\", \"none\"");
  throw bad("tool_choice", fmt::format("'tool_choice' is '{}'; valid: \"auto\", \"none\"", s));
}

std::vector<std::string> parse_stop(const Fields& top) {
  const ojson* s = top.get("stop");
  if (!s) return {};
  std::vector<std::string> out;
  if (s->is_string()) out.push_back(s->get<std::string>());
  else if (s->is_array()) {
    for (size_t i = 0; i < s->size(); ++i) {
      if (!(*s)[i].is_string())
        throw bad(fmt::format("stop[{}]", i), fmt::format("'stop[{}]' must be a string, not {}", i, (*s)[i].type_name()));
      out.push_back((*s)[i].get<std::string>());
    }
  } else {
    throw top.wrong_type("stop", "a string or an array of strings", *s);
  }
  if (out.size() > 4) throw bad("stop", fmt::format("'stop' has {} strings; valid: up to 4", out.size()));
  for (const auto& x : out)
    if (x.empty()) throw bad("stop", "'stop' has an empty string; each stop string needs at least one character");
  return out;
}

// The fields both endpoints share.
ApiRequest parse_common(const Fields& f, bool chat) {
  ApiRequest r;
  r.chat = chat;
  r.model = f.string("model").value_or("");
  if (r.model.empty()) throw bad("model", "'model' is missing; GET /v1/models lists the model this server serves");
  r.stream = f.boolean("stream").value_or(false);
  if (const ojson* so = f.get("stream_options")) {
    if (!r.stream) throw bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    r.include_usage = Fields(*so, "stream_options").boolean("include_usage").value_or(false);
  }
  constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
  r.max_tokens = f.integer("max_tokens", 1, kMaxInt);
  if (const auto m = f.integer("max_completion_tokens", 1, kMaxInt)) r.max_tokens = m;
  if (const auto n = f.integer("n", 1, kMaxInt); n && *n != 1)
    throw bad("n", fmt::format("'n' is {}; this server returns one choice per request: valid: 1", *n));
  if (const ojson* lp = f.get("logprobs"); lp && !(lp->is_boolean() && !lp->get<bool>()))
    throw bad("logprobs", "'logprobs' is not supported by this server; leave it out or false");
  if (f.get("top_logprobs")) throw bad("top_logprobs", "'top_logprobs' is not supported by this server");
  if (const auto t = f.number("temperature", 0, 2)) r.sampling.temperature = *t;
  if (const auto p = f.number("top_p", 0, 1, /*lo_open=*/true)) r.sampling.top_p = *p;
  if (const auto k = f.integer("top_k", -1, kMaxInt)) r.sampling.top_k = std::max<int64_t>(0, *k);
  if (const auto p = f.number("presence_penalty", -2, 2)) r.sampling.presence_penalty = *p;
  if (const auto p = f.number("frequency_penalty", -2, 2)) r.sampling.frequency_penalty = *p;
  if (const ojson* s = f.get("seed")) {
    if (!s->is_number_integer()) throw f.wrong_type("seed", "an integer", *s);
    r.seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  }
  r.stop = parse_stop(f);
  r.user = f.string("user").value_or("");
  return r;
}

// A completion prompt: a string, token ids, or a one-element array of either.
void parse_prompt(const Fields& f, ApiRequest& r) {
  const ojson* p = f.get("prompt");
  if (!p) throw bad("prompt", "'prompt' is missing");
  const ojson* one = p;
  if (p->is_array() && !p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
    if (p->size() != 1)
      throw bad("prompt", fmt::format("'prompt' holds {} prompts; this server takes one per request", p->size()));
    one = &(*p)[0];
  }
  if (one->is_string()) {
    r.prompt_text = one->get<std::string>();
    if (r.prompt_text.empty()) throw bad("prompt", "'prompt' is empty; give at least one character");
    return;
  }
  if (!one->is_array()) throw f.wrong_type("prompt", "a string or an array of token ids", *one);
  if (one->empty()) throw bad("prompt", "'prompt' is an empty array; give a string or at least one token id");
  for (size_t i = 0; i < one->size(); ++i) {
    const ojson& id = (*one)[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max())
      throw bad("prompt", fmt::format("'prompt' token {} is {}; token ids are whole numbers from 0", i, id.dump()));
    r.prompt_ids.push_back(id.get<int32_t>());
  }
}

}  // namespace

ApiRequest parse_chat_request(std::string_view body) {
  const ojson j = parse_body(body);
  const Fields f(j, "");
  ApiRequest r = parse_common(f, /*chat=*/true);
  r.messages = parse_messages(f);
  r.tools = parse_tools(f);
  r.tool_choice = parse_tool_choice(f);
  if (const ojson* kw = f.get("chat_template_kwargs"))
    r.enable_thinking = Fields(*kw, "chat_template_kwargs").boolean("enable_thinking");
  return r;
}

ApiRequest parse_completion_request(std::string_view body) {
  const ojson j = parse_body(body);
  const Fields f(j, "");
  ApiRequest r = parse_common(f, /*chat=*/false);
  parse_prompt(f, r);
  r.echo = f.boolean("echo").value_or(false);
  return r;
}

}  // namespace ppu::serve
