#include "models/ChatTemplate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cmath>
#include <iterator>
#include <system_error>

#include "arch/Error.hpp"
#include "models/ChatText.hpp"

namespace ppu::models {
namespace {

using namespace chat_text;

constexpr std::string_view kToolResponseOpen = "<tool_response>";
constexpr std::string_view kToolResponseClose = "</tool_response>";
// The tool block's fixed text, from the template: before the tools and after them.
constexpr std::string_view kToolsSystemHead =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsSystemTail =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

// The text after the last occurrence of `sep` (all of `s` if there is none): Jinja's s.split(sep)[-1].
std::string_view after_last(std::string_view s, std::string_view sep) {
  const size_t at = s.rfind(sep);
  return at == std::string_view::npos ? s : s.substr(at + sep.size());
}
// The text before the first occurrence of `sep` (all of `s` if there is none): s.split(sep)[0].
std::string_view before_first(std::string_view s, std::string_view sep) { return s.substr(0, s.find(sep)); }

bool is_tool_response(std::string_view content) {
  return content.starts_with(kToolResponseOpen) && content.ends_with(kToolResponseClose);
}

// Python's repr(float), which json.dumps uses: the shortest digits that read back as `x`, written
// positionally with at least one digit after the point ("1.0", "0.0001", "1000000000000000.0") unless
// the decimal exponent is below -4 or above 15, then as d.ddde+XX with two exponent digits at least
// ("1e-05", "1e+16"). NaN and infinities as json.dumps writes them.
std::string python_float_repr(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  PPU_CHECK(ec == std::errc(), "python_float_repr: to_chars failed");
  const std::string_view sci(buf, end);  // "-1.2345e+20": shortest round-trip digits
  const size_t e_at = sci.find('e');
  const bool negative = sci.front() == '-';
  std::string digits;
  for (char ch : sci.substr(negative ? 1 : 0, e_at - (negative ? 1 : 0)))
    if (ch != '.') digits += ch;
  const int exponent = std::stoi(std::string(sci.substr(e_at + 1)));
  const int point = exponent + 1;  // digits d1 d2 ... mean 0.d1d2... * 10^point
  std::string out = negative ? "-" : "";
  if (point <= -4 || point > 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    return out + fmt::format("e{}{:02}", exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  const int n = static_cast<int>(digits.size());
  if (point <= 0) return out + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  if (point >= n) return out + digits + std::string(static_cast<size_t>(point - n), '0') + ".0";
  return out + digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
}

// A JSON string literal as json.dumps(ensure_ascii=False) writes it: '"', '\\' and bytes below 0x20
// escaped (\n, \r, \t, \b, \f by name, the rest as \u00xx in lower case), every other byte as it is.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20)
          fmt::format_to(std::back_inserter(out), "\\u{:04x}", static_cast<unsigned>(ch));
        else
          out += ch;
    }
  }
  out += '"';
}

void append_tojson(std::string& out, const nlohmann::ordered_json& v, int depth) {
  using Type = nlohmann::ordered_json::value_t;
  if ((v.is_array() || v.is_object()) && depth >= kTemplateJsonMaxDepth)
    throw UserError(fmt::format("tojson: arrays and objects nested more than {} levels deep; at most {} are written",
                                kTemplateJsonMaxDepth, kTemplateJsonMaxDepth));
  switch (v.type()) {
    case Type::null:
      out += "null";
      return;
    case Type::boolean:
      out += v.get<bool>() ? "true" : "false";
      return;
    case Type::number_integer:
      out += std::to_string(v.get<int64_t>());
      return;
    case Type::number_unsigned:
      out += std::to_string(v.get<uint64_t>());
      return;
    case Type::number_float:
      out += python_float_repr(v.get<double>());
      return;
    case Type::string:
      append_json_string(out, v.get_ref<const std::string&>());
      return;
    case Type::array: {
      out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) out += ", ";
        append_tojson(out, v[i], depth + 1);
      }
      out += ']';
      return;
    }
    case Type::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.items()) {
        if (!first) out += ", ";
        first = false;
        append_json_string(out, key);
        out += ": ";
        append_tojson(out, item, depth + 1);
      }
      out += '}';
      return;
    }
    case Type::binary:
    case Type::discarded:
      break;
  }
  PPU_CHECK(false, "template_tojson: a binary or discarded value is not JSON");
}

// The leading system turn that lists the tools; folds in messages[0] when it is a system message.
void append_tools_system(std::string& out, std::span<const ChatMessage> messages,
                         const std::vector<nlohmann::ordered_json>& tools) {
  out += "<|im_start|>system\n";
  if (messages[0].role == ChatRole::kSystem) out += messages[0].content + "\n\n";
  out += kToolsSystemHead;
  for (size_t i = 0; i < tools.size(); ++i) {
    out += '\n';
    try {
      append_tojson(out, tools[i], 0);
    } catch (const UserError& e) {
      throw UserError(fmt::format("render_chat: tools[{}]: {}", i, e.what()));
    }
  }
  out += kToolsSystemTail;
}

// An assistant turn's calls; `content` is the turn's content after the thinking split (before its
// leading newlines are removed), which decides the newline before the first call.
void append_tool_calls(std::string& out, const std::vector<ToolCall>& calls, std::string_view content) {
  for (size_t k = 0; k < calls.size(); ++k) {
    if (k > 0 || !content.empty()) out += '\n';
    fmt::format_to(std::back_inserter(out), "<tool_call>\n{{\"name\": \"{}\", \"arguments\": {}}}\n</tool_call>",
                   calls[k].name, calls[k].arguments);
  }
}

// One assistant turn; `after_query`: it follows the last real user query; `last`: it ends the list.
void append_assistant(std::string& out, const ChatMessage& m, bool after_query, bool last) {
  std::string_view content = m.content;
  std::string_view reasoning;
  if (m.reasoning_content) {
    reasoning = *m.reasoning_content;
  } else if (content.find(kThinkClose) != std::string_view::npos) {
    reasoning = lstrip_newlines(after_last(rstrip_newlines(before_first(content, kThinkClose)), kThinkOpen));
    content = lstrip_newlines(after_last(content, kThinkClose));
  }
  if (after_query && (last || !reasoning.empty())) {
    fmt::format_to(std::back_inserter(out), "<|im_start|>assistant\n<think>\n{}\n</think>\n\n{}",
                   strip_newlines(reasoning), lstrip_newlines(content));
  } else {
    fmt::format_to(std::back_inserter(out), "<|im_start|>assistant\n{}", content);
  }
  append_tool_calls(out, m.tool_calls, content);
  out += "<|im_end|>\n";
}

}  // namespace

std::string_view chat_role_name(ChatRole role) {
  const auto i = static_cast<size_t>(role);
  PPU_CHECK(i < kChatRoleNames.size(), "chat_role_name: not a role");
  return kChatRoleNames[i];
}

ChatRole parse_chat_role(std::string_view name) {
  for (size_t i = 0; i < kChatRoleNames.size(); ++i)
    if (kChatRoleNames[i] == name) return static_cast<ChatRole>(i);
  throw UserError(fmt::format("unknown chat role '{}'; valid roles: {}", name, fmt::join(kChatRoleNames, ", ")));
}

std::string render_chat(std::span<const ChatMessage> messages, const ChatOptions& options) {
  const size_t count = messages.size();
  if (count == 0) throw UserError("render_chat: no messages; Qwen3's chat template needs at least one");
  for (size_t i = 0; i < count; ++i)
    if (static_cast<size_t>(messages[i].role) >= kChatRoleNames.size())
      throw UserError(fmt::format("chat message {}: role is not one of {}", i, fmt::join(kChatRoleNames, ", ")));

  // The last real user query: the last user message that is not a wrapped tool response (the whole
  // list's last index if there is none). Thinking is rendered only for assistant turns after it.
  size_t last_query = count - 1;
  for (size_t k = count; k-- > 0;) {
    if (messages[k].role == ChatRole::kUser && !is_tool_response(messages[k].content)) {
      last_query = k;
      break;
    }
  }

  std::string out;
  if (!options.tools.empty()) append_tools_system(out, messages, options.tools);
  for (size_t i = 0; i < count; ++i) {
    const ChatMessage& m = messages[i];
    switch (m.role) {
      case ChatRole::kSystem:
        // With tools, a leading system message was folded into the tool block above.
        if (i == 0 && !options.tools.empty()) break;
        [[fallthrough]];
      case ChatRole::kUser:
        fmt::format_to(std::back_inserter(out), "<|im_start|>{}\n{}<|im_end|>\n", chat_role_name(m.role), m.content);
        break;
      case ChatRole::kAssistant:
        append_assistant(out, m, i > last_query, i + 1 == count);
        break;
      case ChatRole::kTool:
        if (i == 0 || messages[i - 1].role != ChatRole::kTool) out += "<|im_start|>user";
        fmt::format_to(std::back_inserter(out), "\n<tool_response>\n{}\n</tool_response>", m.content);
        if (i + 1 == count || messages[i + 1].role != ChatRole::kTool) out += "<|im_end|>\n";
        break;
      case ChatRole::kCount:
        break;  // rejected above
    }
  }
  if (options.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!options.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

std::string template_tojson(const nlohmann::ordered_json& value) {
  std::string out;
  append_tojson(out, value, 0);
  return out;
}

ThinkingSplit split_thinking(std::string_view generated) {
  ThinkingSplit s;
  if (generated.find(kThinkClose) != std::string_view::npos) {
    s.reasoning = strip_newlines(after_last(before_first(generated, kThinkClose), kThinkOpen));
    s.content = lstrip_newlines(after_last(generated, kThinkClose));
    return s;
  }
  const size_t open = generated.find(kThinkOpen);
  if (open != std::string_view::npos) {
    s.reasoning = lstrip_newlines(generated.substr(open + kThinkOpen.size()));
    s.content = generated.substr(0, open);
    s.in_thinking = true;
    return s;
  }
  s.content = generated;
  return s;
}

std::string format_reply(std::string_view generated, ThinkingDisplay display) {
  switch (display) {
    case ThinkingDisplay::kShow:
      return std::string(generated);
    case ThinkingDisplay::kStrip:
      return split_thinking(generated).content;
    case ThinkingDisplay::kCount:
      break;
  }
  PPU_CHECK(false, "format_reply: not a ThinkingDisplay");
  return {};
}

}  // namespace ppu::models
