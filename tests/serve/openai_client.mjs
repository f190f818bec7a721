// The official `openai` npm client (pinned in tools/serve-client) against a live `ppu serve`: the
// model list, chat and completions streaming and not, a tool schema round trip, errors, the API key,
// and SIGTERM draining to a clean exit. Usage: node openai_client.mjs PATH/TO/ppu
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, check } from './serve_process.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let OpenAI;
try {
  ({ OpenAI } = createRequire(path.join(root, 'tools/serve-client/package.json'))('openai'));
} catch (e) {
  console.error(`the openai package is missing (${e.message}): run scripts/setup.sh, which installs it with ` +
                '`npm ci --prefix tools/serve-client`');
  process.exit(1);
}

const ppu = process.argv[2];
const server = await startServer(ppu, ['--model', 'tiny', '--max-num-seqs', '4', '--max-model-len', '512',
                                       '--api-key', 'test-key']);
const client = new OpenAI({ baseURL: server.baseURL, apiKey: 'test-key', maxRetries: 0 });
const greedy = { temperature: 0, max_tokens: 12, chat_template_kwargs: { enable_thinking: false } };
let passed = 0;
async function step(name, fn) {
  await fn();
  passed += 1;
  console.log(`ok ${passed} - ${name}`);
}

try {
  await step('models.list names the served model', async () => {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    check(ids.length === 1 && ids[0] === 'tiny', `models: ${JSON.stringify(ids)}`);
    const m = await client.models.retrieve('tiny');
    check(m.id === 'tiny' && m.object === 'model', JSON.stringify(m));
  });

  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is a PPU?' }];
  let whole;
  await step('chat.completions.create, not streaming', async () => {
    whole = await client.chat.completions.create({ model: 'tiny', messages, ...greedy });
    check(whole.object === 'chat.completion', whole.object);
    const c = whole.choices[0];
    check(c.message.role === 'assistant', c.message.role);
    check(typeof c.message.content === 'string', 'content is a string');
    check(['length', 'stop'].includes(c.finish_reason), c.finish_reason);
    check(whole.usage.completion_tokens >= 1 && whole.usage.prompt_tokens > 5, JSON.stringify(whole.usage));
    check(whole.ppu_timing.time_to_first_token_s > 0, JSON.stringify(whole.ppu_timing));
  });

  await step('chat.completions.create, streaming with usage, adds up to the same answer', async () => {
    const stream = await client.chat.completions.create({
      model: 'tiny', messages, ...greedy, stream: true, stream_options: { include_usage: true } });
    let content = '';
    let finish = null;
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        content += ch.delta?.content ?? '';
        if (ch.finish_reason) finish = ch.finish_reason;
      }
    }
    check(content === whole.choices[0].message.content, `streamed ${JSON.stringify(content)} vs ${JSON.stringify(whole.choices[0].message.content)}`);
    check(finish === whole.choices[0].finish_reason, `finish ${finish}`);
    check(usage && usage.completion_tokens === whole.usage.completion_tokens, JSON.stringify(usage));
  });

  await step('completions.create, streaming and not', async () => {
    const c = await client.completions.create({ model: 'tiny', prompt: 'The capital of France is', temperature: 0, max_tokens: 8 });
    check(c.object === 'text_completion' && typeof c.choices[0].text === 'string', JSON.stringify(c));
    let text = '';
    const s = await client.completions.create({ model: 'tiny', prompt: 'The capital of France is', temperature: 0, max_tokens: 8, stream: true });
    for await (const chunk of s) text += chunk.choices[0]?.text ?? '';
    check(text === c.choices[0].text, `streamed ${JSON.stringify(text)} vs ${JSON.stringify(c.choices[0].text)}`);
  });

  await step('a tool schema round trip: tools, an assistant tool call and its result', async () => {
    const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather of a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
    const convo = [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null,
        tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 18}' },
    ];
    const r = await client.chat.completions.create({ model: 'tiny', messages: convo, tools, tool_choice: 'auto', ...greedy });
    const plain = await client.chat.completions.create({ model: 'tiny', messages: convo, ...greedy });
    check(r.usage.prompt_tokens > plain.usage.prompt_tokens + 40, `the tool definitions are in the prompt: ${r.usage.prompt_tokens} vs ${plain.usage.prompt_tokens}`);
    check(['length', 'stop', 'tool_calls'].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
  });

  await step('errors arrive as the client\'s typed errors', async () => {
    const expectError = async (fn, status, what) => {
      try {
        await fn();
      } catch (e) {
        check(e instanceof OpenAI.APIError, `${what}: ${e}`);
        check(e.status === status, `${what}: status ${e.status}, want ${status}: ${e.message}`);
        return e;
      }
      throw new Error(`${what}: no error`);
    };
    const nf = await expectError(() => client.chat.completions.create({ model: 'gpt-4o', messages }), 404, 'unknown model');
    check(nf instanceof OpenAI.NotFoundError && nf.code === 'model_not_found', `${nf.code}`);
    const br = await expectError(() => client.chat.completions.create({ model: 'tiny', messages, temperature: 7 }), 400, 'temperature 7');
    check(br instanceof OpenAI.BadRequestError && br.param === 'temperature', `${br.param}`);
    await expectError(() => client.completions.create({ model: 'tiny', prompt: 'x'.repeat(5000), max_tokens: 4 }), 400, 'prompt over the context');
    const wrong = new OpenAI({ baseURL: server.baseURL, apiKey: 'wrong', maxRetries: 0 });
    const au = await expectError(() => wrong.models.list(), 401, 'wrong API key');
    check(au instanceof OpenAI.AuthenticationError, `${au.constructor.name}`);
  });
} finally {
  const { code, signal, stderr } = await server.stop();
  if (code !== 0) {
    console.error(`ppu serve exited with ${code ?? signal} after SIGTERM; stderr:\n${stderr}`);
    process.exitCode = 1;
  } else if (!stderr.includes('draining') || !stderr.includes('stopped')) {
    console.error(`SIGTERM did not drain; stderr:\n${stderr}`);
    process.exitCode = 1;
  }
}
console.log(`ok - ${passed} steps, ppu serve drained and exited 0 on SIGTERM`);
