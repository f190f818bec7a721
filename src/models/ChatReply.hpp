// ChatReply: a generated assistant reply taken apart the way Qwen3's chat format writes it - the
// thinking inside <think>...</think>, the answer, and the function calls inside
// <tool_call>{"name": ..., "arguments": {...}}</tool_call> - whole (parse_reply) or as the text
// streams in (ReplyStream), for an OpenAI-compatible server's reasoning_content, content and
// tool_calls.
//
//   ParsedReply r = parse_reply("<think>\nAdd.\n</think>\n\nIt is 4.", {.thinking = true});
//   // r.reasoning == "Add.", r.content == "It is 4.", r.tool_calls empty
//
//   ReplyStream stream({.thinking = true, .tools = true});
//   for (std::string_view piece : decoded_pieces)
//     for (const ReplyDelta& d : stream.feed(piece)) send(d);
//   for (const ReplyDelta& d : stream.finish()) send(d);
//
// The rules follow vLLM's qwen3 reasoning parser and hermes tool parser wherever those can be
// streamed exactly; where they cannot, the rule chosen is marked (*).
//
// Reasoning. Thinking mode (ReplyOptions::thinking, the prompt left the model thinking):
//  * The reasoning is the text before the first "</think>", less one "<think>" at its start (after
//    any newlines: Qwen3 writes "<think>\n" itself), newlines stripped at both ends. The content is
//    the text after that first "</think>" (a later "</think>" is content, as in vLLM).
//  * No "</think>" at all: everything is reasoning and the content is empty - generation stopped
//    while thinking (max_tokens). vLLM's Qwen3ReasoningParser does the same when thinking is
//    enabled (it returns (model_output, None)); its earlier versions returned everything as content
//    when either tag was missing.
// Non-thinking mode (the prompt carried the empty think block):
//  * (*) Only a block at the start is split: if the text, after leading newlines, begins with
//    "<think>" and has a "</think>" after it, the reasoning is what lies between (newlines stripped)
//    and the content what follows the first "</think>". Otherwise all of it is content, a "<think>"
//    included. split_thinking (ChatTemplate.hpp) differs on purpose: it keeps the text after the
//    last "</think>" (the template's rule for past turns), which no stream can know early.
// In both modes the content loses its leading newlines.
//
// Tool calls (ReplyOptions::tools), looked for in the content only (a <tool_call> while thinking is
// reasoning):
//  * From the first "<tool_call>" on, the content is read as blocks "<tool_call>" JSON
//    "</tool_call>" (each block ends at the first "</tool_call>" after its opening); text between
//    and after blocks is dropped, as vLLM's hermes parser drops it. Each block's JSON must be an
//    object with a string "name" and an object "arguments" (other keys are ignored), nested at most
//    kTemplateJsonMaxDepth deep. The calls come in order, arguments re-serialised compact (key order
//    kept; vLLM writes ", " and ": " separators, we write none).
//  * The content is then the text before the first block, trailing ASCII whitespace removed.
//  * All or nothing: if any block does not parse, or a "<tool_call>" is never closed, there are no
//    calls and the content is the whole content text as generated (nothing trimmed or dropped).
//
// Streaming (*): ReplyStream holds back only text that could still become a tag ("<think>" at the
// start, "</think>" while thinking, "<tool_call>" in the content) and the newlines or whitespace
// right before it that the tag would strip. Because calls are all or nothing, nothing from the
// first "<tool_call>" on is emitted before finish(): there it becomes either every call or, if a
// block is malformed, content text (with the whitespace held before it). So for any split of a text
// the deltas, joined by kind, equal parse_reply's fields exactly. The price: calls arrive at
// finish(), not as each block closes (the model stops right after its last call anyway). In
// non-thinking mode a leading "<think>" is held until its "</think>" (or finish()).
//
// Never throws and never fails on any input: malformed text is content. Not here: the reply
// formats of other models, Qwen3.5's <function=...> calls, a "</think>" implied by a <tool_call>.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ppu::models {

struct ReplyOptions {
  bool thinking = true;  // the prompt left the model in thinking mode (enable_thinking)
  bool tools = false;    // the request offered tools: <tool_call> blocks are parsed into calls
};

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // compact JSON text of the arguments object
};

struct ParsedReply {
  std::string reasoning;  // the thinking, without tags and surrounding newlines
  std::string content;    // the answer (tool-call blocks removed when they parsed)
  std::vector<ParsedToolCall> tool_calls;
};

// `generated` (the decoded reply, special tokens as text) taken apart by the rules above. Any bytes
// are accepted; never throws.
ParsedReply parse_reply(std::string_view generated, const ReplyOptions& options);

struct ReplyDelta {
  enum class Kind { kReasoning, kContent, kToolCall };
  Kind kind = Kind::kContent;
  std::string text;     // kReasoning, kContent: the new text
  ParsedToolCall call;  // kToolCall: one whole call
};

// Incremental parse_reply: feed() the text as it is generated, finish() at the end. The deltas of any
// split of the same text concatenate to parse_reply's result. Not thread-safe; one per reply.
class ReplyStream {
 public:
  explicit ReplyStream(ReplyOptions options);
  // Appends `text` (any bytes; a split inside a UTF-8 character or a tag is fine) and returns the
  // deltas it settles, in order, none with empty text; none while everything new is held back.
  std::vector<ReplyDelta> feed(std::string_view text);
  // Ends the reply: returns what was held back (the tool calls, if any). The stream then starts
  // over, as if newly constructed with the same options.
  std::vector<ReplyDelta> finish();

 private:
  enum class Phase { kStart, kReasoning, kLeadingThink, kContent, kCalls };
  bool step_start(bool at_end);
  bool step_reasoning(bool at_end, std::vector<ReplyDelta>& out);
  bool step_leading_think(bool at_end, std::vector<ReplyDelta>& out);
  bool step_content(bool at_end, std::vector<ReplyDelta>& out);
  void step_calls(std::vector<ReplyDelta>& out);
  void advance(bool at_end, std::vector<ReplyDelta>& out);

  ReplyOptions options_;
  std::string pending_;  // received, neither emitted nor dropped yet
  Phase phase_ = Phase::kStart;
  bool started_ = false;  // the phase's leading newlines are behind us
  size_t scanned_ = 0;    // kLeadingThink: pending_ searched up to here for "</think>"
  size_t calls_at_ = 0;   // kCalls: where the first "<tool_call>" starts in pending_
};

}  // namespace ppu::models
