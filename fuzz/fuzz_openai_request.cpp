// Fuzzes what `ppu serve` does with a request body before the engine sees it: serve/OpenAi
// parse_chat_request and parse_completion_request (the input is the HTTP body), then for a chat the
// chat template with the request's tools (models/ChatTemplate render_chat), and for every message
// content the reply parser (models/ChatReply parse_reply) against its streaming form (ReplyStream fed
// the same text in two pieces, split where the input's length says), which must agree exactly.
// Finding: anything but a clean refusal - ApiError (the parser's 400s) or UserError (the template's)
// - including a stream that disagrees with parse_reply (reported by abort with the text). Seeds:
// chat and completion bodies of the server's tests, tool rounds, thinking replies.
#include <cstdio>
#include <cstdlib>

#include "FuzzInput.hpp"
#include "models/ChatReply.hpp"
#include "serve/OpenAi.hpp"

namespace {

using namespace ppu;
using namespace ppu::models;

// parse_reply and ReplyStream (two pieces) must give the same reasoning, content and calls.
void check_reply(const std::string& text, size_t split, const ReplyOptions& o) {
  const ParsedReply whole = parse_reply(text, o);
  ReplyStream s(o);
  ParsedReply streamed;
  const auto add = [&](const std::vector<ReplyDelta>& ds) {
    for (const ReplyDelta& d : ds) {
      if (d.kind == ReplyDelta::Kind::kReasoning) streamed.reasoning += d.text;
      else if (d.kind == ReplyDelta::Kind::kContent) streamed.content += d.text;
      else streamed.tool_calls.push_back(d.call);
    }
  };
  const size_t at = text.empty() ? 0 : split % (text.size() + 1);
  add(s.feed(std::string_view(text).substr(0, at)));
  add(s.feed(std::string_view(text).substr(at)));
  add(s.finish());
  bool same = whole.reasoning == streamed.reasoning && whole.content == streamed.content &&
              whole.tool_calls.size() == streamed.tool_calls.size();
  for (size_t i = 0; same && i < whole.tool_calls.size(); ++i)
    same = whole.tool_calls[i].name == streamed.tool_calls[i].name &&
           whole.tool_calls[i].arguments == streamed.tool_calls[i].arguments;
  if (!same) {
    std::fprintf(stderr, "ReplyStream (split at %zu, thinking %d, tools %d) disagrees with parse_reply on:\n%s\n", at,
                 o.thinking, o.tools, text.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body = fuzz::text(data, size);
  for (const bool chat : {true, false}) {
    try {
      const serve::ApiRequest r = chat ? serve::parse_chat_request(body) : serve::parse_completion_request(body);
      if (!chat) continue;
      ChatOptions co;
      co.enable_thinking = r.enable_thinking.value_or(true);
      co.tools = r.tools;
      fuzz::run([&] { (void)render_chat(r.messages, co); });
      for (const ChatMessage& m : r.messages)
        for (const bool thinking : {true, false})
          for (const bool tools : {true, false}) check_reply(m.content, size, {.thinking = thinking, .tools = tools});
    } catch (const serve::ApiError& e) {
      if (e.status() != 400) {
        std::fprintf(stderr, "the parser answered %d, not 400: %s\n", e.status(), e.what());
        std::abort();
      }
    }
  }
  return 0;
}
