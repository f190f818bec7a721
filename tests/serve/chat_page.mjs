// The chat page of `ppu serve` (GET /) in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core pinned in tools/report-page): it loads with no console error and no page error, names
// the served model, lists the server's tools, a question typed and sent streams an answer in (the
// answer's element changes more than once before it is done), the answer ends with the simulated
// chip's timing, and the thinking is folded. Saves a screenshot as the test's artefact.
// Chromium: tests/support/chromium.mjs.
// Usage: node chat_page.mjs PATH/TO/ppu OUT_DIR
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { check, startServer } from './serve_process.mjs';
import { launchChromium } from '../support/chromium.mjs';

const [ppu, outDir] = process.argv.slice(2);
if (!ppu || !outDir) {
  console.error('usage: node chat_page.mjs PATH/TO/ppu OUT_DIR');
  process.exit(2);
}

// A search index of one small folder, so that the page has a server tool to list.
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ppu-chat-page-'));
fs.writeFileSync(path.join(work, 'notes.md'), 'The paged attention kernel reads K and V through block tables.\n');
execFileSync(ppu, ['index', work, '--out', path.join(work, 'kb.sqlite')], { stdio: 'ignore' });

const server = await startServer(ppu, ['--model', 'tiny', '--max-model-len', '512',
                                       '--tools', `search=${path.join(work, 'kb.sqlite')}`]);
const base = server.baseURL.replace(/\/v1$/, '');
const browser = await launchChromium();
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

  await page.goto(base + '/');
  await page.waitForFunction(() => document.getElementById('model').textContent !== 'model: ?');
  check((await page.textContent('#model')) === 'model: tiny', 'the page names the served model');
  await page.waitForSelector('#tools input[data-tool="search"]');
  console.log('ok 1 - the page loads, names the model and lists the search tool');

  // Count the answer's changes while it streams in.
  await page.evaluate(() => {
    window.seen = 0;
    new MutationObserver(() => { window.seen += 1; })
      .observe(document.getElementById('log'), { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await page.fill('#max-tokens', '24');
  await page.fill('#prompt', 'Why is the sky blue?');
  await page.click('#send');
  await page.waitForSelector('.msg.assistant[data-state="done"], .msg.assistant[data-state="error"]', { timeout: 120000 });
  const state = await page.getAttribute('.msg.assistant', 'data-state');
  check(state === 'done', `the answer finished (state ${state}: ${await page.textContent('.msg.assistant')})`);
  const updates = Number(await page.getAttribute('.msg.assistant', 'data-updates'));
  check(updates > 1, `the answer streamed in over several chunks (${updates})`);
  check((await page.evaluate(() => window.seen)) > 2, 'the page changed while the answer streamed');
  const timing = await page.textContent('.msg.assistant .timing');
  check(/^simulated zhenwu-810e: first token [\d.]+ (ms|s)/.test(timing), `the simulated timing is shown: ${timing}`);
  check(/24 tokens/.test(timing), `the token count is shown: ${timing}`);
  const folded = await page.evaluate(() => {
    const d = document.querySelector('.msg.assistant details.thinking');
    return d && !d.open;
  });
  check(folded, 'the thinking block is folded');
  check((await page.textContent('.msg.user')) === 'Why is the sky blue?', 'the question is shown as sent');
  console.log(`ok 2 - a message streams in (${updates} chunks) with its simulated timing`);

  fs.mkdirSync(outDir, { recursive: true });
  const shot = path.resolve(outDir, 'chat_page.png');
  await page.screenshot({ path: shot, fullPage: true });
  check(problems.length === 0, `no console or page errors:\n${problems.join('\n')}`);
  console.log(`ok 3 - no console or page errors; screenshot ${shot}`);
} catch (e) {
  failed = e;
} finally {
  await browser.close();
  const { code } = await server.stop();
  fs.rmSync(work, { recursive: true, force: true });
  if (!failed && code !== 0) failed = new Error(`ppu serve exited with ${code} after SIGTERM`);
}
if (failed) {
  console.error(failed.message);
  process.exit(1);
}
