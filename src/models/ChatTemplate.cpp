#include "models/ChatTemplate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <iterator>

#include "arch/Error.hpp"

namespace ppu::models {
namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolResponseOpen = "<tool_response>";
constexpr std::string_view kToolResponseClose = "</tool_response>";

// Python's str.lstrip('\n'), rstrip('\n') and strip('\n'), which the template uses.
std::string_view lstrip_newlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view rstrip_newlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
std::string_view strip_newlines(std::string_view s) { return lstrip_newlines(rstrip_newlines(s)); }

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
  for (size_t i = 0; i < count; ++i) {
    const ChatMessage& m = messages[i];
    const std::string_view role = chat_role_name(m.role);
    switch (m.role) {
      case ChatRole::kSystem:
      case ChatRole::kUser:
        fmt::format_to(std::back_inserter(out), "<|im_start|>{}\n{}<|im_end|>\n", role, m.content);
        break;
      case ChatRole::kAssistant: {
        std::string_view content = m.content;
        std::string_view reasoning;
        if (m.reasoning_content) {
          reasoning = *m.reasoning_content;
        } else if (content.find(kThinkClose) != std::string_view::npos) {
          reasoning = lstrip_newlines(after_last(rstrip_newlines(before_first(content, kThinkClose)), kThinkOpen));
          content = lstrip_newlines(after_last(content, kThinkClose));
        }
        const bool after_query = i > last_query;
        if (after_query && (i + 1 == count || !reasoning.empty())) {
          fmt::format_to(std::back_inserter(out), "<|im_start|>{}\n<think>\n{}\n</think>\n\n{}", role,
                         strip_newlines(reasoning), lstrip_newlines(content));
        } else {
          fmt::format_to(std::back_inserter(out), "<|im_start|>{}\n{}", role, content);
        }
        out += "<|im_end|>\n";
        break;
      }
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
