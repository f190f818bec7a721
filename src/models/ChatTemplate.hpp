// ChatTemplate: Qwen3's chat format, written out in C++ (the rules of the Jinja template in Qwen3's
// tokenizer_config.json, without a Jinja engine), and splitting a reply's thinking from its answer.
//
//   std::vector<ChatMessage> chat = {{ChatRole::kSystem, "You are terse."}, {ChatRole::kUser, "2+2?"}};
//   std::string prompt = render_chat(chat, {.enable_thinking = false});
//   std::vector<int32_t> ids = tokenizer.encode(prompt);     // special tokens become their ids
//
// gives exactly this string:
//
//   "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
//   "<|im_start|>assistant\n<think>\n\n</think>\n\n"
//
// that is, line by line ("\n" after every line shown, including the blank ones):
//
//   <|im_start|>system
//   You are terse.<|im_end|>
//   <|im_start|>user
//   2+2?<|im_end|>
//   <|im_start|>assistant
//   <think>
//
//   </think>
//
// The rules, as the template applies them:
//  * Every turn is "<|im_start|>" + role + "\n" + content + "<|im_end|>\n", system messages
//    included (the template gives a leading system message a block of its own only to add tool
//    definitions, which are not supported here).
//  * Tool results (role tool) go inside the user turn: consecutive tool messages share one
//    "<|im_start|>user" ... "<|im_end|>\n" turn, each as "\n<tool_response>\n" + content +
//    "\n</tool_response>".
//  * An assistant message's thinking is its reasoning_content, or else the text between "<think>" and
//    "</think>" in its content (the rest, after "</think>" with leading newlines removed, is the
//    content). Thinking is only rendered for assistant turns after the last real user query (a user
//    message that is not a wrapped tool response), as "<think>\n" + thinking + "\n</think>\n\n" +
//    content; and among those only for the last message or when the thinking is non-empty. Earlier
//    turns keep only their content, so past reasoning does not fill the context.
//  * The generation prompt is "<|im_start|>assistant\n"; with thinking disabled (Qwen3's
//    enable_thinking=False) it is followed by an empty block "<think>\n\n</think>\n\n", which makes
//    the model answer directly. With thinking enabled the model opens "<think>\n" itself.
//
// Not here: the tool-definition system block and tool_calls rendering (the template's `tools`
// argument), a general Jinja engine, tokenization (Tokenizer.hpp).
#pragma once

#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace ppu::models {

enum class ChatRole { kSystem, kUser, kAssistant, kTool, kCount };
inline constexpr std::array<std::string_view, 4> kChatRoleNames = {"system", "user", "assistant", "tool"};
static_assert(kChatRoleNames.size() == static_cast<size_t>(ChatRole::kCount), "one name per ChatRole");

// The role's name as the template writes it ("assistant").
std::string_view chat_role_name(ChatRole role);
// The role named `name`; throws UserError listing the valid names if there is none.
ChatRole parse_chat_role(std::string_view name);

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
  // Assistant turns only (ignored on others): the turn's thinking, when kept apart from content.
  std::optional<std::string> reasoning_content;
};

struct ChatOptions {
  bool add_generation_prompt = true;  // end with the opening of the assistant's turn
  bool enable_thinking = true;        // false: the generation prompt carries an empty think block
};

// The prompt text for `messages` (rules above). Throws UserError for an empty list (Qwen3's template
// needs at least one message) or a message whose role is kCount.
std::string render_chat(std::span<const ChatMessage> messages, const ChatOptions& options = {});

// A generated reply taken apart: the text inside <think>...</think> and the answer after it.
struct ThinkingSplit {
  std::string reasoning;    // without the tags and surrounding newlines; empty if there was none
  std::string content;      // the answer, leading newlines removed
  bool in_thinking = false;  // the text stops inside an unclosed <think> (generation cut short)
};

// Splits `generated` (decoded model output, e.g. "<think>\nx\n</think>\n\nAnswer"). With a "</think>":
// reasoning is what lies between the last "<think>" before the first "</think>" and that "</think>",
// content what follows the last "</think>" (the template's own rule). With only "<think>": reasoning is
// everything after it, content what came before, in_thinking true. With neither: all is content.
ThinkingSplit split_thinking(std::string_view generated);

enum class ThinkingDisplay { kShow, kStrip, kCount };
inline constexpr std::array<std::string_view, 2> kThinkingDisplayNames = {"show", "strip"};
static_assert(kThinkingDisplayNames.size() == static_cast<size_t>(ThinkingDisplay::kCount),
              "one name per ThinkingDisplay");

// The reply as a user sees it: kShow returns `generated` unchanged (thinking and tags included);
// kStrip returns only split_thinking(generated).content.
std::string format_reply(std::string_view generated, ThinkingDisplay display);

}  // namespace ppu::models
