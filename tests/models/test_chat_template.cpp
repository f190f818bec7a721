// Tests of models/ChatTemplate: each expected string is written out by hand from the Jinja chat
// template in Qwen3's tokenizer_config.json (the rules are quoted in ChatTemplate.hpp), one test per
// rule of the template: plain turns, the generation prompt with thinking on and off, thinking kept
// only after the last real user query, reasoning from reasoning_content or from <think> in the
// content, tool responses grouped into one user turn. Then splitting generated text.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "models/ChatTemplate.hpp"

namespace ppu::models {
namespace {

ChatMessage sys(std::string c) { return {ChatRole::kSystem, std::move(c), std::nullopt}; }
ChatMessage user(std::string c) { return {ChatRole::kUser, std::move(c), std::nullopt}; }
ChatMessage assistant(std::string c) { return {ChatRole::kAssistant, std::move(c), std::nullopt}; }
ChatMessage assistant(std::string c, std::string reasoning) {
  return {ChatRole::kAssistant, std::move(c), std::move(reasoning)};
}
ChatMessage tool(std::string c) { return {ChatRole::kTool, std::move(c), std::nullopt}; }

std::string render(const std::vector<ChatMessage>& m, bool generation_prompt = true, bool thinking = true) {
  return render_chat(m, ChatOptions{.add_generation_prompt = generation_prompt, .enable_thinking = thinking});
}

TEST(ChatTemplate, UserTurnThenGenerationPrompt) {
  EXPECT_EQ(render({user("Hi")}), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, HeaderExampleWithThinkingDisabled) {
  // The example in ChatTemplate.hpp: enable_thinking=False appends an empty think block.
  EXPECT_EQ(render({sys("You are terse."), user("2+2?")}, true, false),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplate, WithoutGenerationPrompt) {
  EXPECT_EQ(render({user("Hi")}, false), "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(render({user("Hi")}, false, false), "<|im_start|>user\nHi<|im_end|>\n")
      << "enable_thinking only changes the generation prompt";
}

TEST(ChatTemplate, LaterSystemMessageIsAnOrdinaryTurn) {
  EXPECT_EQ(render({user("x"), sys("late system")}),
            "<|im_start|>user\nx<|im_end|>\n<|im_start|>system\nlate system<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, ThinkingOfEarlierTurnsIsDropped) {
  // The assistant turn before the last user query keeps only the text after </think>.
  EXPECT_EQ(render({user("Q1"), assistant("<think>\nfoo\n</think>\n\nHello"), user("Q2")}),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
            "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, LastAssistantTurnAlwaysHasAThinkBlock) {
  EXPECT_EQ(render({user("Q"), assistant("A", "R")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n");
  // With no reasoning at all the last turn still gets an (empty) block.
  EXPECT_EQ(render({user("Q"), assistant("A")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n");
}

TEST(ChatTemplate, ReasoningTakenFromContentIsStrippedOfNewlines) {
  EXPECT_EQ(render({user("Q"), assistant("<think>\n\nR1\nR2\n\n</think>\n\n\nA")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR1\nR2\n</think>\n\nA<|im_end|>\n");
  // Several </think>: reasoning before the first, content after the last.
  EXPECT_EQ(render({user("Q"), assistant("<think>a</think>b</think>c")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\na\n</think>\n\nc<|im_end|>\n");
}

TEST(ChatTemplate, ReasoningContentLeavesContentAsWritten) {
  EXPECT_EQ(render({user("Q"), assistant("<think>ignored</think>shown", "kept")}, false),
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nkept\n</think>\n\n"
            "<think>ignored</think>shown<|im_end|>\n");
}

TEST(ChatTemplate, ToolResponsesShareOneUserTurn) {
  EXPECT_EQ(render({user("weather?"), assistant("<tool_call>x</tool_call>"), tool("r1"), tool("r2"),
                    assistant("<think>ok</think>It is sunny.")},
                   false),
            "<|im_start|>user\nweather?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\nok\n</think>\n\nIt is sunny.<|im_end|>\n");
}

TEST(ChatTemplate, AssistantTurnsAfterTheQueryWithoutReasoningStayPlainUnlessLast) {
  EXPECT_EQ(render({user("weather?"), assistant("calling"), tool("r1"), assistant("done")}, false),
            "<|im_start|>user\nweather?<|im_end|>\n<|im_start|>assistant\ncalling<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\ndone<|im_end|>\n");
}

TEST(ChatTemplate, WrappedToolResponseFromUserIsNotAQuery) {
  // The last real query is "real", so a1 (after it, with reasoning) keeps its thinking.
  EXPECT_EQ(render({user("real"), assistant("a1", "why"), user("<tool_response>\nr\n</tool_response>"),
                    assistant("a2")}),
            "<|im_start|>user\nreal<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\na1<|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nr\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, Errors) {
  test::expect_error([] { render({}); }, {"no messages"});
  test::expect_error([] { render({ChatMessage{ChatRole::kCount, "x", std::nullopt}}); },
                     {"message 0", "system, user, assistant, tool"});
  test::expect_error([] { parse_chat_role("robot"); }, {"'robot'", "system, user, assistant, tool"});
}

TEST(ChatTemplate, RoleNames) {
  for (size_t i = 0; i < kChatRoleNames.size(); ++i) {
    const auto role = static_cast<ChatRole>(i);
    EXPECT_EQ(parse_chat_role(chat_role_name(role)), role);
  }
}

TEST(ThinkingSplit, ClosedBlock) {
  const ThinkingSplit s = split_thinking("<think>\nLet me add.\n2+2=4\n</think>\n\nThe answer is 4.");
  EXPECT_EQ(s.reasoning, "Let me add.\n2+2=4");
  EXPECT_EQ(s.content, "The answer is 4.");
  EXPECT_FALSE(s.in_thinking);
}

TEST(ThinkingSplit, EmptyBlockFromThinkingDisabled) {
  const ThinkingSplit s = split_thinking("<think>\n\n</think>\n\nHi!");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.content, "Hi!");
}

TEST(ThinkingSplit, OnlyClosingTagWhenThePromptOpenedTheBlock) {
  const ThinkingSplit s = split_thinking("reasoning here\n</think>\n\nanswer");
  EXPECT_EQ(s.reasoning, "reasoning here");
  EXPECT_EQ(s.content, "answer");
}

TEST(ThinkingSplit, UnclosedBlock) {
  const ThinkingSplit s = split_thinking("<think>\nstill going");
  EXPECT_EQ(s.reasoning, "still going");
  EXPECT_EQ(s.content, "");
  EXPECT_TRUE(s.in_thinking);
}

TEST(ThinkingSplit, NoBlock) {
  const ThinkingSplit s = split_thinking("\nplain answer");
  EXPECT_EQ(s.reasoning, "");
  EXPECT_EQ(s.content, "\nplain answer") << "without a think block the text is left alone";
  EXPECT_FALSE(s.in_thinking);
}

TEST(ThinkingSplit, FormatReply) {
  const std::string g = "<think>\nhmm\n</think>\n\nYes.";
  EXPECT_EQ(format_reply(g, ThinkingDisplay::kShow), g);
  EXPECT_EQ(format_reply(g, ThinkingDisplay::kStrip), "Yes.");
  EXPECT_EQ(format_reply("<think>\nunfinished", ThinkingDisplay::kStrip), "");
}

}  // namespace
}  // namespace ppu::models
