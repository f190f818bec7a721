#include "models/ChatReply.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>

#include "models/ChatTemplate.hpp"
#include "models/ChatText.hpp"

namespace ppu::models {
namespace {

using namespace chat_text;

constexpr std::string_view kToolCallOpen = "<tool_call>";
constexpr std::string_view kToolCallClose = "</tool_call>";
// ASCII whitespace (C's isspace), what the content loses before a tool call.
constexpr std::string_view kWhitespace = " \t\n\r\f\v";

std::string_view rstrip_whitespace(std::string_view s) { return s.substr(0, s.find_last_not_of(kWhitespace) + 1); }

// Length of the longest proper prefix of `tag` that `s` ends with: text that may still become `tag`.
size_t partial_tag_at_end(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
    if (s.ends_with(tag.substr(0, n))) return n;
  return 0;
}

// How much of `s` to hold back: a partial `tag` at its end and the characters of `strip` before it.
size_t held_back(std::string_view s, std::string_view tag, std::string_view strip) {
  const std::string_view before = s.substr(0, s.size() - partial_tag_at_end(s, tag));
  const size_t last = before.find_last_not_of(strip);
  return s.size() - (last == std::string_view::npos ? 0 : last + 1);
}

// One block's JSON as a call: an object with a string "name" and an object "arguments", nested at
// most kTemplateJsonMaxDepth deep; nullopt for anything else.
std::optional<ParsedToolCall> parse_tool_call_json(std::string_view text) {
  using Json = nlohmann::ordered_json;
  bool too_deep = false;
  const Json::parser_callback_t limit_depth = [&too_deep](int depth, Json::parse_event_t event, Json&) {
    const bool opens = event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start;
    if (opens && depth >= kTemplateJsonMaxDepth) too_deep = true;
    return !too_deep;
  };
  const Json j = Json::parse(text, limit_depth, /*allow_exceptions=*/false);
  if (too_deep || j.is_discarded() || !j.is_object()) return std::nullopt;
  const auto name = j.find("name");
  const auto arguments = j.find("arguments");
  if (name == j.end() || !name->is_string() || arguments == j.end() || !arguments->is_object()) return std::nullopt;
  return ParsedToolCall{name->get<std::string>(), arguments->dump(-1, ' ', false, Json::error_handler_t::replace)};
}

// `tail` (starting at the first "<tool_call>") read as call blocks; nullopt if any block is malformed
// or unclosed. Text between and after the blocks is ignored.
std::optional<std::vector<ParsedToolCall>> parse_tool_blocks(std::string_view tail) {
  std::vector<ParsedToolCall> calls;
  size_t open = tail.find(kToolCallOpen);
  while (open != std::string_view::npos) {
    const size_t body = open + kToolCallOpen.size();
    const size_t close = tail.find(kToolCallClose, body);
    if (close == std::string_view::npos) return std::nullopt;
    std::optional<ParsedToolCall> call = parse_tool_call_json(tail.substr(body, close - body));
    if (!call) return std::nullopt;
    calls.push_back(std::move(*call));
    open = tail.find(kToolCallOpen, close + kToolCallClose.size());
  }
  return calls;
}

// Content (leading newlines already removed) with its tool calls taken out, if they all parse.
void split_tool_calls(std::string_view content, ParsedReply& reply) {
  const size_t first = content.find(kToolCallOpen);
  if (first != std::string_view::npos) {
    if (auto calls = parse_tool_blocks(content.substr(first))) {
      reply.content = rstrip_whitespace(content.substr(0, first));
      reply.tool_calls = std::move(*calls);
      return;
    }
  }
  reply.content = content;
}

void emit(std::vector<ReplyDelta>& out, ReplyDelta::Kind kind, std::string_view text) {
  if (!text.empty()) out.push_back({kind, std::string(text), {}});
}

}  // namespace

ParsedReply parse_reply(std::string_view generated, const ReplyOptions& options) {
  ParsedReply reply;
  const std::string_view lead = lstrip_newlines(generated);
  std::string_view rest = generated;
  if (options.thinking) {
    const std::string_view body = lead.starts_with(kThinkOpen) ? lead.substr(kThinkOpen.size()) : generated;
    const size_t close = body.find(kThinkClose);
    reply.reasoning = strip_newlines(body.substr(0, close));
    if (close == std::string_view::npos) return reply;
    rest = body.substr(close + kThinkClose.size());
  } else if (lead.starts_with(kThinkOpen)) {
    const size_t close = lead.find(kThinkClose, kThinkOpen.size());
    if (close != std::string_view::npos) {
      reply.reasoning = strip_newlines(lead.substr(kThinkOpen.size(), close - kThinkOpen.size()));
      rest = lead.substr(close + kThinkClose.size());
    }
  }
  const std::string_view content = lstrip_newlines(rest);
  if (options.tools)
    split_tool_calls(content, reply);
  else
    reply.content = content;
  return reply;
}

ReplyStream::ReplyStream(ReplyOptions options) : options_(options) {}

std::vector<ReplyDelta> ReplyStream::feed(std::string_view text) {
  pending_ += text;
  std::vector<ReplyDelta> out;
  advance(false, out);
  return out;
}

std::vector<ReplyDelta> ReplyStream::finish() {
  std::vector<ReplyDelta> out;
  advance(true, out);
  *this = ReplyStream(options_);
  return out;
}

void ReplyStream::advance(bool at_end, std::vector<ReplyDelta>& out) {
  for (bool again = true; again;) {
    switch (phase_) {
      case Phase::kStart:
        again = step_start(at_end);
        break;
      case Phase::kReasoning:
        again = step_reasoning(at_end, out);
        break;
      case Phase::kLeadingThink:
        again = step_leading_think(at_end, out);
        break;
      case Phase::kContent:
        again = step_content(at_end, out);
        break;
      case Phase::kCalls:
        if (at_end) step_calls(out);
        again = false;
        break;
    }
  }
}

// Decides whether the reply opens with "<think>" (after newlines); waits while it still might.
bool ReplyStream::step_start(bool at_end) {
  const std::string_view lead = lstrip_newlines(pending_);
  if (lead.starts_with(kThinkOpen)) {
    const size_t newlines = pending_.size() - lead.size();
    // Thinking: drop the tag. Otherwise keep it: without a "</think>" it is content.
    pending_.erase(0, newlines + (options_.thinking ? kThinkOpen.size() : 0));
    phase_ = options_.thinking ? Phase::kReasoning : Phase::kLeadingThink;
    return true;
  }
  if (!at_end && kThinkOpen.starts_with(lead)) return false;
  phase_ = options_.thinking ? Phase::kReasoning : Phase::kContent;
  return true;
}

// Thinking mode: everything up to the first "</think>" is reasoning.
bool ReplyStream::step_reasoning(bool at_end, std::vector<ReplyDelta>& out) {
  if (!started_) {
    pending_.erase(0, pending_.size() - lstrip_newlines(pending_).size());
    started_ = !pending_.empty();
  }
  const size_t close = pending_.find(kThinkClose);
  if (close != std::string::npos) {
    emit(out, ReplyDelta::Kind::kReasoning, rstrip_newlines(std::string_view(pending_).substr(0, close)));
    pending_.erase(0, close + kThinkClose.size());
    phase_ = Phase::kContent;
    started_ = false;
    return true;
  }
  const size_t hold = at_end ? 0 : held_back(pending_, kThinkClose, "\n");
  const std::string_view ready(pending_.data(), pending_.size() - hold);
  emit(out, ReplyDelta::Kind::kReasoning, at_end ? rstrip_newlines(ready) : ready);
  pending_.erase(0, ready.size());
  return false;
}

// Non-thinking mode, the reply opened with "<think>" (still in pending_): reasoning only once the
// "</think>" arrives; without one the whole text is content.
bool ReplyStream::step_leading_think(bool at_end, std::vector<ReplyDelta>& out) {
  const size_t from = std::max(kThinkOpen.size(), scanned_ > kThinkClose.size() ? scanned_ - kThinkClose.size() : 0);
  const size_t close = pending_.find(kThinkClose, from);
  if (close != std::string::npos) {
    const size_t body = kThinkOpen.size();
    emit(out, ReplyDelta::Kind::kReasoning, strip_newlines(std::string_view(pending_).substr(body, close - body)));
    pending_.erase(0, close + kThinkClose.size());
    phase_ = Phase::kContent;
    return true;
  }
  scanned_ = pending_.size();
  if (!at_end) return false;
  phase_ = Phase::kContent;
  return true;
}

// The answer; with tools, stops at the first "<tool_call>" and holds the rest for finish().
bool ReplyStream::step_content(bool at_end, std::vector<ReplyDelta>& out) {
  if (!started_) {
    pending_.erase(0, pending_.size() - lstrip_newlines(pending_).size());
    started_ = !pending_.empty();
  }
  const size_t open = options_.tools ? pending_.find(kToolCallOpen) : std::string::npos;
  if (open != std::string::npos) {
    const size_t ready = rstrip_whitespace(std::string_view(pending_).substr(0, open)).size();
    emit(out, ReplyDelta::Kind::kContent, std::string_view(pending_).substr(0, ready));
    pending_.erase(0, ready);
    calls_at_ = open - ready;
    phase_ = Phase::kCalls;
    return true;
  }
  const size_t hold = options_.tools && !at_end ? held_back(pending_, kToolCallOpen, kWhitespace) : 0;
  emit(out, ReplyDelta::Kind::kContent, std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return false;
}

// At the end: the held blocks become every call, or (one malformed) content text as generated.
void ReplyStream::step_calls(std::vector<ReplyDelta>& out) {
  if (auto calls = parse_tool_blocks(std::string_view(pending_).substr(calls_at_))) {
    for (ParsedToolCall& call : *calls) out.push_back({ReplyDelta::Kind::kToolCall, {}, std::move(call)});
  } else {
    emit(out, ReplyDelta::Kind::kContent, pending_);
  }
  pending_.clear();
}

}  // namespace ppu::models
