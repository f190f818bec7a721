// Fuzzes the chat template (models/ChatTemplate render_chat, split_thinking, format_reply). The input
// is a JSON chat request:
//   {"messages": [{"role": "user", "content": "...", "reasoning_content": "..."}, ...],
//    "tools": [<any JSON>, ...], "add_generation_prompt": true, "enable_thinking": false}
// Roles go through parse_chat_role. render_chat has no tool-definition block (ChatTemplate.hpp, "Not
// here"), so each "tools" entry becomes a tool round as a conversation carries one: an assistant turn
// with "<tool_call>\n<entry>\n</tool_call>" and a tool turn whose content is the entry. The rendered
// prompt and every content go through split_thinking and format_reply.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp). Input that is not JSON of this shape is
// skipped (the harness's own parsing, not the library's). Seeds: chats with thinking and tool rounds.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "FuzzInput.hpp"
#include "models/ChatTemplate.hpp"

namespace {

using json = nlohmann::json;
using namespace ppu::models;

void take_apart(const std::string& text) {
  (void)split_thinking(text);
  (void)format_reply(text, ThinkingDisplay::kShow);
  (void)format_reply(text, ThinkingDisplay::kStrip);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const json request = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (!request.is_object()) return 0;
  std::vector<ChatMessage> messages;
  ChatOptions options;
  try {
    for (const json& m : request.value("messages", json::array())) {
      ChatMessage msg;
      msg.role = parse_chat_role(m.at("role").get<std::string>());
      msg.content = m.value("content", "");
      if (m.contains("reasoning_content")) msg.reasoning_content = m.at("reasoning_content").get<std::string>();
      messages.push_back(std::move(msg));
    }
    for (const json& tool : request.value("tools", json::array())) {
      const std::string entry = tool.dump();
      messages.push_back({ChatRole::kAssistant, "<tool_call>\n" + entry + "\n</tool_call>", std::nullopt});
      messages.push_back({ChatRole::kTool, entry, std::nullopt});
    }
    options.add_generation_prompt = request.value("add_generation_prompt", true);
    options.enable_thinking = request.value("enable_thinking", true);
  } catch (const json::exception&) {
    return 0;  // not the request shape: the harness's parsing, not the library's
  } catch (const ppu::UserError&) {
    return 0;  // an unknown role: parse_chat_role's clean refusal
  }
  return ppu::fuzz::run([&] {
    const std::string prompt = render_chat(messages, options);
    take_apart(prompt);
    for (const ChatMessage& m : messages) take_apart(m.content);
  });
}
