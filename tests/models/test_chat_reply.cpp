// Tests of models/ChatReply: one test per rule of ChatReply.hpp for parse_reply (thinking mode,
// non-thinking mode, tool calls and every kind of malformed call), then ReplyStream: what it holds
// back and when, and the invariant that for any split of a text the deltas joined by kind equal
// parse_reply's fields exactly - over a corpus of replies (malformed ones included) in all four
// option combinations with seeded random splits, and over seeded garbage made of tag fragments, which
// must never throw either.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "models/ChatReply.hpp"
#include "models/ChatTemplate.hpp"

namespace ppu::models {
namespace {

constexpr ReplyOptions kThinking{.thinking = true, .tools = false};
constexpr ReplyOptions kPlain{.thinking = false, .tools = false};
constexpr ReplyOptions kThinkingTools{.thinking = true, .tools = true};
constexpr ReplyOptions kPlainTools{.thinking = false, .tools = true};

const char* const kWeatherCall =
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
const char* const kClockCall = "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";

void expect_reply(const ParsedReply& r, const std::string& reasoning, const std::string& content,
                  const std::vector<std::pair<std::string, std::string>>& calls = {}) {
  EXPECT_EQ(r.reasoning, reasoning);
  EXPECT_EQ(r.content, content);
  ASSERT_EQ(r.tool_calls.size(), calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(r.tool_calls[i].name, calls[i].first) << "call " << i;
    EXPECT_EQ(r.tool_calls[i].arguments, calls[i].second) << "call " << i;
  }
}

// --- thinking mode -------------------------------------------------------------------------------

TEST(ChatReplyThinking, BlockWithItsOwnOpeningTag) {
  expect_reply(parse_reply("<think>\nAdd.\n2+2=4\n</think>\n\nIt is 4.", kThinking), "Add.\n2+2=4", "It is 4.");
}

TEST(ChatReplyThinking, PromptOpenedTheBlock) {
  expect_reply(parse_reply("Add.\n</think>\n\nIt is 4.", kThinking), "Add.", "It is 4.");
}

TEST(ChatReplyThinking, NoClosingTagIsAllReasoning) {
  // Generation stopped while thinking: nothing is content (vLLM's qwen3 parser with thinking on).
  expect_reply(parse_reply("<think>\nStill thinking\n\n", kThinking), "Still thinking", "");
  expect_reply(parse_reply("no tags at all", kThinking), "no tags at all", "");
  expect_reply(parse_reply("", kThinking), "", "");
}

TEST(ChatReplyThinking, EmptyBlock) {
  expect_reply(parse_reply("<think>\n\n</think>\n\nHi!", kThinking), "", "Hi!");
}

TEST(ChatReplyThinking, OpeningTagAfterNewlinesIsStripped) {
  expect_reply(parse_reply("\n\n<think>\nr\n</think>a", kThinking), "r", "a");
}

TEST(ChatReplyThinking, OpeningTagElsewhereIsReasoningText) {
  expect_reply(parse_reply("x<think>y</think>z", kThinking), "x<think>y", "z");
  // Only one tag is stripped.
  expect_reply(parse_reply("<think><think>y</think>z", kThinking), "<think>y", "z");
}

TEST(ChatReplyThinking, OnlyTheFirstClosingTagEndsReasoning) {
  expect_reply(parse_reply("r</think>\n\na</think>b", kThinking), "r", "a</think>b");
}

TEST(ChatReplyThinking, ContentKeepsTrailingAndInnerNewlines) {
  expect_reply(parse_reply("r</think>\n\n\nline1\n\nline2\n", kThinking), "r", "line1\n\nline2\n");
}

TEST(ChatReplyThinking, ToolCallInsideReasoningIsReasoning) {
  expect_reply(parse_reply(std::string("<think>\nmaybe ") + kWeatherCall + "\n</think>\n\nNo call.", kThinkingTools),
               std::string("maybe ") + kWeatherCall, "No call.");
  // No </think>: all reasoning, even a call.
  expect_reply(parse_reply(std::string("<think>\n") + kWeatherCall, kThinkingTools), kWeatherCall, "");
}

// --- non-thinking mode ---------------------------------------------------------------------------

TEST(ChatReplyPlain, AllContentLeadingNewlinesRemoved) {
  expect_reply(parse_reply("\n\nHello\n", kPlain), "", "Hello\n");
  expect_reply(parse_reply("", kPlain), "", "");
}

TEST(ChatReplyPlain, LeadingBlockIsSplit) {
  expect_reply(parse_reply("\n<think>\nr\n</think>\n\nanswer", kPlain), "r", "answer");
  expect_reply(parse_reply("<think></think>a</think>b", kPlain), "", "a</think>b");
}

TEST(ChatReplyPlain, UnclosedLeadingBlockIsContent) {
  expect_reply(parse_reply("\n<think>\nno end", kPlain), "", "<think>\nno end");
}

TEST(ChatReplyPlain, BlockElsewhereOrLoneClosingTagIsContent) {
  expect_reply(parse_reply("a <think>r</think> b", kPlain), "", "a <think>r</think> b");
  expect_reply(parse_reply("r</think>a", kPlain), "", "r</think>a");
}

// --- tool calls ----------------------------------------------------------------------------------

TEST(ChatReplyTools, OneCall) {
  expect_reply(parse_reply(std::string("<think>\nNeed weather.\n</think>\n\n") + kWeatherCall, kThinkingTools),
               "Need weather.", "", {{"get_weather", R"({"city":"Paris"})"}});
}

TEST(ChatReplyTools, ContentBeforeTheCallLosesTrailingWhitespace) {
  expect_reply(parse_reply(std::string("Let me check. \t\r\n\n") + kWeatherCall, kPlainTools), "", "Let me check.",
               {{"get_weather", R"({"city":"Paris"})"}});
}

TEST(ChatReplyTools, SeveralCallsInOrder) {
  expect_reply(parse_reply(std::string(kWeatherCall) + "\n" + kClockCall, kPlainTools), "", "",
               {{"get_weather", R"({"city":"Paris"})"}, {"now", "{}"}});
}

TEST(ChatReplyTools, TextBetweenAndAfterBlocksIsDropped) {
  expect_reply(parse_reply(std::string("a\n") + kClockCall + " between " + kClockCall + " after", kPlainTools), "", "a",
               {{"now", "{}"}, {"now", "{}"}});
}

TEST(ChatReplyTools, ArgumentsReserialisedCompactInOrder) {
  expect_reply(parse_reply("<tool_call> {\"arguments\" : {\"z\": [1, 2.50, {}], \"a\": \"Zoë\\n\\u00e9\"},\n"
                           "\"name\":\"f\", \"id\": 7} </tool_call>",
                           kPlainTools),
               "", "", {{"f", "{\"z\":[1,2.5,{}],\"a\":\"Zoë\\né\"}"}});
}

TEST(ChatReplyTools, MalformedBlockLeavesTheWholeContent) {
  const std::vector<std::string> bad_blocks = {
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {}\n</tool_call>",         // JSON cut short
      "<tool_call>\nnot json\n</tool_call>",                                   // not JSON
      "<tool_call>\n[\"f\", {}]\n</tool_call>",                                // not an object
      "<tool_call>\n{\"arguments\": {}}\n</tool_call>",                        // no name
      "<tool_call>\n{\"name\": 3, \"arguments\": {}}\n</tool_call>",           // name not a string
      "<tool_call>\n{\"name\": \"f\"}\n</tool_call>",                          // no arguments
      "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{}\"}\n</tool_call>",   // arguments a string
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {}} trailing\n</tool_call>",
      "<tool_call>\n\n</tool_call>",                                           // empty
      "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}",                     // never closed
      "<tool_call>",                                                           // bare tag at the end
  };
  for (const std::string& bad : bad_blocks) {
    // Before it a good call and content with trailing spaces: all of it stays as generated.
    const std::string content = std::string("Text  \n") + kClockCall + "\n" + bad;
    expect_reply(parse_reply("r</think>\n" + content, kThinkingTools), "r", content);
    expect_reply(parse_reply(content + "\n" + kClockCall, kPlainTools), "", content + "\n" + kClockCall);
  }
}

TEST(ChatReplyTools, NestingDepthLimit) {
  // The call object and its arguments object are two levels; `arrays` more nest inside.
  auto call = [](int arrays) {
    return "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": " + std::string(arrays, '[') +
           std::string(arrays, ']') + "}}</tool_call>";
  };
  EXPECT_EQ(parse_reply(call(kTemplateJsonMaxDepth - 2), kPlainTools).tool_calls.size(), 1u);
  const std::string too_deep = call(kTemplateJsonMaxDepth - 1);
  expect_reply(parse_reply(too_deep, kPlainTools), "", too_deep);
  const std::string huge = call(200000);  // no recursion that deep anywhere
  expect_reply(parse_reply(huge, kPlainTools), "", huge);
}

TEST(ChatReplyTools, ToolsOffLeavesBlocksAsContent) {
  expect_reply(parse_reply(std::string("a\n") + kClockCall, kPlain), "", std::string("a\n") + kClockCall);
}

TEST(ChatReplyTools, NoBlockKeepsTrailingWhitespace) {
  expect_reply(parse_reply("answer \n", kPlainTools), "", "answer \n");
  expect_reply(parse_reply("a <tool_cal", kPlainTools), "", "a <tool_cal");
}

// --- streaming -----------------------------------------------------------------------------------

ParsedReply join(const std::vector<ReplyDelta>& deltas) {
  ParsedReply r;
  for (const ReplyDelta& d : deltas) {
    EXPECT_TRUE(d.kind == ReplyDelta::Kind::kToolCall || !d.text.empty()) << "empty text delta";
    switch (d.kind) {
      case ReplyDelta::Kind::kReasoning: r.reasoning += d.text; break;
      case ReplyDelta::Kind::kContent: r.content += d.text; break;
      case ReplyDelta::Kind::kToolCall: r.tool_calls.push_back(d.call); break;
    }
  }
  return r;
}

void append(std::vector<ReplyDelta>& to, std::vector<ReplyDelta> from) {
  for (ReplyDelta& d : from) to.push_back(std::move(d));
}

// All deltas for `text` cut at `cuts` (ascending offsets), finish() included.
std::vector<ReplyDelta> stream(const std::string& text, const std::vector<size_t>& cuts, ReplyOptions options) {
  ReplyStream s(options);
  std::vector<ReplyDelta> deltas;
  size_t from = 0;
  for (size_t cut : cuts) {
    append(deltas, s.feed(std::string_view(text).substr(from, cut - from)));
    from = cut;
  }
  append(deltas, s.feed(std::string_view(text).substr(from)));
  append(deltas, s.finish());
  return deltas;
}

void expect_same(const ParsedReply& got, const ParsedReply& want, const std::string& what) {
  EXPECT_EQ(got.reasoning, want.reasoning) << what;
  EXPECT_EQ(got.content, want.content) << what;
  ASSERT_EQ(got.tool_calls.size(), want.tool_calls.size()) << what;
  for (size_t i = 0; i < want.tool_calls.size(); ++i) {
    EXPECT_EQ(got.tool_calls[i].name, want.tool_calls[i].name) << what;
    EXPECT_EQ(got.tool_calls[i].arguments, want.tool_calls[i].arguments) << what;
  }
}

std::string options_name(ReplyOptions o) {
  return std::string(o.thinking ? "thinking" : "plain") + (o.tools ? "+tools" : "");
}

TEST(ChatReplyStream, ReasoningAndContentArriveEarly) {
  ReplyStream s(kThinking);
  expect_same(join(s.feed("<think>\nHel")), {"Hel", "", {}}, "first piece");
  expect_same(join(s.feed("lo\n")), {"lo", "", {}}, "trailing newline held");
  expect_same(join(s.feed("\n</think>\n\nAns")), {"", "Ans", {}}, "newlines before </think> dropped");
  expect_same(join(s.feed("wer\n")), {"", "wer\n", {}}, "content is not held without tools");
  EXPECT_TRUE(s.finish().empty());
}

TEST(ChatReplyStream, HoldsOnlyWhatMayBecomeATag) {
  ReplyStream s(kThinking);
  expect_same(join(s.feed("\n<thi")), {}, "could be <think>");
  expect_same(join(s.feed("nk>abc</thi")), {"abc", "", {}}, "could be </think>");
  expect_same(join(s.feed("s is not it")), {"</this is not it", "", {}}, "released");
  expect_same(join(s.finish()), {}, "nothing left");

  ReplyStream t(kPlainTools);
  expect_same(join(t.feed("Sure. <tool_")), {"", "Sure.", {}}, "whitespace before a partial tag held");
  expect_same(join(t.feed("box> ok")), {"", " <tool_box> ok", {}}, "released");
}

TEST(ChatReplyStream, CallsComeAtFinish) {
  ReplyStream s(kPlainTools);
  expect_same(join(s.feed("Checking.\n")), {"", "Checking.", {}}, "");
  expect_same(join(s.feed(kClockCall)), {}, "a closed block is held: a later one may be malformed");
  expect_same(join(s.feed("\n")), {}, "");
  expect_same(join(s.finish()), {"", "", {{"now", "{}"}}}, "");
}

TEST(ChatReplyStream, MalformedCallBecomesContentAtFinish) {
  ReplyStream s(kPlainTools);
  expect_same(join(s.feed("Checking.\n<tool_call>\n{oops}\n</tool_call>")), {"", "Checking.", {}}, "");
  expect_same(join(s.finish()), {"", "\n<tool_call>\n{oops}\n</tool_call>", {}}, "held whitespace comes back");
}

TEST(ChatReplyStream, PlainModeHoldsALeadingThinkUntilItCloses) {
  ReplyStream s(kPlain);
  expect_same(join(s.feed("<think>\nr")), {}, "");
  expect_same(join(s.feed("\n</think>\n\na")), {"r", "a", {}}, "");
  ReplyStream t(kPlain);
  expect_same(join(t.feed("<think>\nr")), {}, "");
  expect_same(join(t.finish()), {"", "<think>\nr", {}}, "never closed: content");
}

TEST(ChatReplyStream, FinishStartsOver) {
  ReplyStream s(kThinking);
  s.feed("<think>\nfirst</think>answer");
  s.finish();
  expect_same(join(s.feed("<think>\nsecond</think>again")), {"second", "again", {}}, "second reply");
}

std::vector<std::string> reply_corpus() {
  const std::string weather = kWeatherCall;
  const std::string clock = kClockCall;
  return {
      "",
      "\n",
      "Hello world",
      "\n\nHello\n\n",
      "<think>\nAdd.\n2+2=4\n</think>\n\nIt is 4.",
      "<think>\n\n</think>\n\nHi!",
      "Reasoning only\n</think>\n\nanswer\n",
      "<think>\nstill thinking\n\n",
      "\n\n<think>\nr\n\n</think>\n\n\na</think>b\n",
      "x<think>y</think>z",
      "<think><think>y</think></think>",
      "<thin",
      "\n<think",
      "</think",
      "a <think>r</think> b",
      "<think>\nNeed it.\n</think>\n\n" + weather,
      "<think>\nNeed it.\n</think>\n\nLet me check.  \n\n" + weather + "\n" + clock + "\n",
      "Sure: " + clock + " between " + weather + " after",
      "<think>\nmaybe " + weather + "\n</think>\n\nNo call.",
      "<think>\n" + weather,
      "Text  \n" + clock + "\n<tool_call>\nnot json\n</tool_call>",
      "Text\n" + clock + "\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}",
      "Text\n<tool_call>",
      "Text <tool_cal",
      "Text <tool_call",
      "<tool_call>{\"name\": \"f\", \"arguments\": \"x\"}</tool_call>",
      "<tool_call></tool_call></tool_call>",
      "Zoë 東京 🌦 <tool_call>{\"name\": \"é\", \"arguments\": {\"k\": \"ü\"}}</tool_call>",
      "\xff\xfe<think>\xc3</think>\x80",
      "   \t\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>   ",
  };
}

const ReplyOptions kAllOptions[] = {kThinking, kPlain, kThinkingTools, kPlainTools};

TEST(ChatReplyStream, AnySplitJoinsToParseReply) {
  std::mt19937 rng(1234);
  for (const std::string& text : reply_corpus()) {
    for (ReplyOptions options : kAllOptions) {
      const ParsedReply want = parse_reply(text, options);
      const std::string what = options_name(options) + " on \"" + text + "\"";
      expect_same(join(stream(text, {}, options)), want, what + ", one piece");
      std::vector<size_t> every;
      for (size_t i = 1; i < text.size(); ++i) every.push_back(i);
      expect_same(join(stream(text, every, options)), want, what + ", byte by byte");
      for (int trial = 0; trial < 50; ++trial) {
        std::vector<size_t> cuts;
        for (size_t i = 1; i < text.size(); ++i)
          if (rng() % 4 == 0) cuts.push_back(i);
        expect_same(join(stream(text, cuts, options)), want, what + ", trial " + std::to_string(trial));
      }
    }
  }
}

// Seeded garbage from tag fragments and JSON bits: parse_reply and the stream never throw and agree.
TEST(ChatReplyStream, GarbageNeverThrowsAndStillAgrees) {
  const std::vector<std::string> pieces = {
      "<think>", "</think>", "<tool_call>", "</tool_call>", "<", "</", ">", "think", "tool_call", "\n", " ", "\t",
      "{", "}", "[", "]", ":", ",", "\"name\"", "\"arguments\"", "\"f\"", "{}", "x", "é", "\xff", "\\", "\"",
      kClockCall};
  std::mt19937 rng(42);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text;
    const size_t n = rng() % 40;
    for (size_t i = 0; i < n; ++i) text += pieces[rng() % pieces.size()];
    for (ReplyOptions options : kAllOptions) {
      ParsedReply want;
      ASSERT_NO_THROW(want = parse_reply(text, options)) << text;
      std::vector<size_t> cuts;
      for (size_t i = 1; i < text.size(); ++i)
        if (rng() % 3 == 0) cuts.push_back(i);
      std::vector<ReplyDelta> deltas;
      ASSERT_NO_THROW(deltas = stream(text, cuts, options)) << text;
      expect_same(join(deltas), want, options_name(options) + " on \"" + text + "\"");
    }
  }
}

}  // namespace
}  // namespace ppu::models
