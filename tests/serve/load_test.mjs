// A bounded loopback load test of `ppu serve`: N (default 256) concurrent streaming chat requests to
// 127.0.0.1, all at once. Every request must complete with status 200 and a well-formed SSE stream
// (the role chunk first, only "data: " events, one finish chunk, its usage, "data: [DONE]" last) whose
// text adds up to what its usage counts; none lost, none cut. Prints client-side TTFT and E2E
// percentiles. Usage: node load_test.mjs PATH/TO/ppu [requests]
import { startServer, check } from './serve_process.mjs';

const ppu = process.argv[2];
const total = Number(process.argv[3] ?? 256);
const maxTokens = 16;
const server = await startServer(ppu, ['--model', 'tiny', '--max-num-seqs', '64', '--max-model-len', '128',
                                       '--max-waiting', String(total)]);

function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function one(i) {
  const t0 = performance.now();
  const res = await fetch(`${server.baseURL}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      model: 'tiny', stream: true, stream_options: { include_usage: true }, temperature: 0.8, top_k: 40, max_tokens: maxTokens,
      seed: i, chat_template_kwargs: { enable_thinking: false },
      messages: [{ role: 'user', content: `Request ${i}: say something about the number ${i * 7}.` }] }),
  });
  if (res.status !== 200) throw new Error(`request ${i}: status ${res.status}: ${await res.text()}`);
  const decoder = new TextDecoder();
  let buf = '';
  let ttft = null;
  const events = [];
  for await (const part of res.body) {
    buf += decoder.decode(part, { stream: true });
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, end);
      buf = buf.slice(end + 2);
      check(ev.startsWith('data: '), `request ${i}: an event that is not data: ${JSON.stringify(ev)}`);
      events.push(ev.slice(6));
      if (ttft === null && events.length > 1) ttft = performance.now() - t0;  // the first chunk after the role
    }
  }
  const e2e = performance.now() - t0;
  check(buf === '', `request ${i}: the stream ends inside an event: ${JSON.stringify(buf)}`);
  check(events.at(-1) === '[DONE]', `request ${i}: no [DONE] at the end`);
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
  check(chunks[0].choices[0].delta.role === 'assistant', `request ${i}: the first chunk is not the role`);
  const finishes = chunks.filter((c) => c.choices[0]?.finish_reason);
  check(finishes.length === 1, `request ${i}: ${finishes.length} finish chunks`);
  const usage = chunks.at(-1).usage;
  check(usage && chunks.at(-1).choices.length === 0, `request ${i}: no usage chunk last`);
  const reason = finishes[0].choices[0].finish_reason;
  check(reason === 'length' ? usage.completion_tokens === maxTokens : reason === 'stop' && usage.completion_tokens <= maxTokens,
        `request ${i}: finish ${reason} with ${usage.completion_tokens} tokens`);
  check(new Set(chunks.map((c) => c.id)).size === 1, `request ${i}: chunks of several ids`);
  return { ttft, e2e, tokens: usage.completion_tokens };
}

let failed = false;
try {
  const t0 = performance.now();
  const results = await Promise.allSettled(Array.from({ length: total }, (_, i) => one(i)));
  const wall = (performance.now() - t0) / 1000;
  const bad = results.filter((r) => r.status === 'rejected');
  for (const r of bad.slice(0, 5)) console.error(String(r.reason));
  check(bad.length === 0, `${bad.length} of ${total} requests failed`);
  const ok = results.map((r) => r.value);
  const ttft = ok.map((r) => r.ttft);
  const e2e = ok.map((r) => r.e2e);
  const tokens = ok.reduce((a, r) => a + r.tokens, 0);
  console.log(`${total} concurrent streaming requests, all complete and well-formed, in ${wall.toFixed(1)} s ` +
              `(${(tokens / wall).toFixed(0)} tokens/s on this host)`);
  console.log(`TTFT p50 ${percentile(ttft, 50).toFixed(0)} ms, p99 ${percentile(ttft, 99).toFixed(0)} ms; ` +
              `E2E p50 ${percentile(e2e, 50).toFixed(0)} ms, p99 ${percentile(e2e, 99).toFixed(0)} ms`);
} catch (e) {
  console.error(String(e));
  failed = true;
} finally {
  const { code, stderr } = await server.stop();
  if (code !== 0) {
    console.error(`ppu serve exited with ${code}; stderr:\n${stderr}`);
    failed = true;
  }
}
process.exitCode = failed ? 1 : 0;
