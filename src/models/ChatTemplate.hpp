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
// With tools (ChatOptions::tools, OpenAI's tools[i] objects), the same call renders the leading
// system block that lists them, and an assistant turn's tool_calls:
//
//   std::vector<ChatMessage> chat = {{ChatRole::kUser, "Weather?"}, {ChatRole::kAssistant, ""},
//                                    {ChatRole::kTool, "18C"}};
//   chat[1].tool_calls = {{"call_1", "get_weather", R"({"city": "Paris"})"}};
//   render_chat(chat, {.tools = {nlohmann::ordered_json::parse(R"({"type": "function", ...})")}});
//
// gives "<|im_start|>system\n# Tools\n\n...<tools>\n{\"type\": \"function\", ...}\n</tools>...",
// then the turns, the assistant's as "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\",
// \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n".
//
// The rules, as the template applies them:
//  * Every turn is "<|im_start|>" + role + "\n" + content + "<|im_end|>\n", system messages
//    included.
//  * With tools, the prompt opens with a system turn of its own: "<|im_start|>system\n", then the
//    first message's content + "\n\n" if that message is a system message (it is then not rendered
//    again), then "# Tools ... <tools>", each tool as "\n" + template_tojson(tool), and "\n</tools>"
//    with the instruction to answer in <tool_call></tool_call> tags (kToolsSystemTail in the .cpp),
//    closed by "<|im_end|>\n".
//  * Tool results (role tool) go inside the user turn: consecutive tool messages share one
//    "<|im_start|>user" ... "<|im_end|>\n" turn, each as "\n<tool_response>\n" + content +
//    "\n</tool_response>".
//  * An assistant message's thinking is its reasoning_content, or else the text between "<think>" and
//    "</think>" in its content (the rest, after "</think>" with leading newlines removed, is the
//    content). Thinking is only rendered for assistant turns after the last real user query (a user
//    message that is not a wrapped tool response), as "<think>\n" + thinking + "\n</think>\n\n" +
//    content; and among those only for the last message or when the thinking is non-empty. Earlier
//    turns keep only their content, so past reasoning does not fill the context.
//  * An assistant message's tool_calls follow its content, each as "<tool_call>\n{\"name\": \"" +
//    name + "\", \"arguments\": " + arguments + "}\n</tool_call>", name and arguments verbatim. A
//    "\n" goes before every call except the first of a turn whose content (after the thinking split,
//    before its leading newlines are removed) is empty.
//  * The generation prompt is "<|im_start|>assistant\n"; with thinking disabled (Qwen3's
//    enable_thinking=False) it is followed by an empty block "<think>\n\n</think>\n\n", which makes
//    the model answer directly. With thinking enabled the model opens "<think>\n" itself.
//
// tojson: the template's filter as Hugging Face transformers defines it (json.dumps(x,
// ensure_ascii=False)), the engine Qwen3 was trained with: separators ", " and ": ", keys in the
// order given, non-ASCII characters written as they are, only '"', '\\' and bytes below 0x20
// escaped. @huggingface/jinja (0.5.13, the engine of transformers.js and of the fixtures in
// tests/data/chat_template_expected.json, which Python's jinja2 renders identically) agrees on
// strings, nesting and empty containers but not on numbers and some key orders; we follow Python:
//  * floats are Python's repr: 1.0 -> "1.0", 1e20 -> "1e+20", 1e15 -> "1000000000000000.0", 1e16 ->
//    "1e+16", 1e-5 -> "1e-05", 1e-7 -> "1e-07", -0.0 -> "-0.0". JavaScript has no integral floats:
//    it writes 1.0 as "1", 1e20 as "100000000000000000000", -0.0 as "0" (every integral value below
//    1e21 as an integer), and 1e-5 as "0.00001", 1e-7 as "1e-7". A JSON integer ("3") is one in both;
//  * an object's integer-like keys ("2") keep their place; JavaScript objects move them first.
// Left different from Python: integers beyond 64 bits (nlohmann's parser makes them floats).
//
// Not here: a general Jinja engine, tokenization (Tokenizer.hpp), parsing a generated reply's
// tool calls (ChatReply.hpp).
#pragma once

#include <array>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace ppu::models {

enum class ChatRole { kSystem, kUser, kAssistant, kTool, kCount };
inline constexpr std::array<std::string_view, 4> kChatRoleNames = {"system", "user", "assistant", "tool"};
static_assert(kChatRoleNames.size() == static_cast<size_t>(ChatRole::kCount), "one name per ChatRole");

// The role's name as the template writes it ("assistant").
std::string_view chat_role_name(ChatRole role);
// The role named `name`; throws UserError listing the valid names if there is none.
ChatRole parse_chat_role(std::string_view name);

// A function call an assistant turn made (OpenAI's tool_calls[i]).
struct ToolCall {
  std::string id;         // OpenAI's call id ("call_..."); the template does not render it
  std::string name;       // function name
  std::string arguments;  // JSON text of the arguments, rendered verbatim (OpenAI sends a string)
};

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
  // Assistant turns only (ignored on others): the turn's thinking, when kept apart from content.
  std::optional<std::string> reasoning_content;
  // Assistant turns only (ignored on others): the calls the turn made.
  std::vector<ToolCall> tool_calls = {};
};

struct ChatOptions {
  bool add_generation_prompt = true;  // end with the opening of the assistant's turn
  bool enable_thinking = true;        // false: the generation prompt carries an empty think block
  // Tool definitions as the request gave them (OpenAI's tools[i]: {"type": "function", "function":
  // {...}}), key order kept; rendered into the leading system block with the template's tojson.
  std::vector<nlohmann::ordered_json> tools = {};
};

// The prompt text for `messages` (rules above). Throws UserError for an empty list (Qwen3's template
// needs at least one message), a message whose role is kCount, or a tool nested deeper than
// kTemplateJsonMaxDepth.
std::string render_chat(std::span<const ChatMessage> messages, const ChatOptions& options = {});

// Deepest nesting of arrays and objects template_tojson writes. Far above any real tool schema;
// Python's json.dumps stops near 1000 levels (its recursion limit), and a bound keeps our recursion
// off the end of the stack.
inline constexpr int kTemplateJsonMaxDepth = 512;

// `value` as the template's tojson writes it (Python's json.dumps(value, ensure_ascii=False); the
// header comment lists where @huggingface/jinja differs), e.g. {"a": [1, 2.5, "é"], "b": {}}.
// Strings are written byte for byte apart from the escapes, so invalid UTF-8 passes through. NaN and
// infinities come out as Python writes them (NaN, Infinity, -Infinity). Throws UserError when arrays
// and objects nest deeper than kTemplateJsonMaxDepth; a binary value is a bug of ours (PPU_CHECK).
std::string template_tojson(const nlohmann::ordered_json& value);

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
