// The official MCP SDK client (@modelcontextprotocol/sdk, pinned in tools/serve-client) against
// `ppu mcp` over stdio: it lists the tools, calls each one (the code tool runs a program in its
// bubblewrap sandbox), and gets an error case as a tool error (isError) with the session still usable. Usage: node mcp_client.mjs PATH/TO/ppu
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { check } from './serve_process.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let Client, StdioClientTransport;
try {
  const req = createRequire(path.join(root, 'tools/serve-client/package.json'));
  ({ Client } = req('@modelcontextprotocol/sdk/client/index.js'));
  ({ StdioClientTransport } = req('@modelcontextprotocol/sdk/client/stdio.js'));
} catch (e) {
  console.error(`the MCP SDK is missing (${e.message}): run scripts/setup.sh, which installs it with ` +
                '`npm ci --prefix tools/serve-client`');
  process.exit(1);
}

const ppu = process.argv[2];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ppu-mcp-'));
fs.mkdirSync(path.join(dir, 'docs'));
fs.writeFileSync(path.join(dir, 'docs', 'ppu.md'), 'The PPU has 96 GB of HBM2e and seven chip-to-chip links.');
fs.writeFileSync(path.join(dir, 'docs', 'gpu.md'), 'An H100 has 80 GB of HBM3.');
const kb = path.join(dir, 'kb.sqlite');
execFileSync(ppu, ['index', path.join(dir, 'docs'), '--out', kb]);

const transport = new StdioClientTransport({
  command: ppu, args: ['mcp', '--tools', `search=${kb},memory=${path.join(dir, 'mem.sqlite')},code`, '--user', 'alice'],
  stderr: 'pipe' });
const client = new Client({ name: 'openppu-test', version: '1.0.0' });
let passed = 0;
const step = async (name, fn) => { await fn(); passed += 1; console.log(`ok ${passed} - ${name}`); };
const text = (r) => r.content.map((c) => c.text).join('');
try {
  await client.connect(transport);
  await step('the server identifies itself', async () => {
    check(client.getServerVersion().name === 'openppu', JSON.stringify(client.getServerVersion()));
  });
  await step('tools/list gives every tool with its input schema', async () => {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    check(JSON.stringify(names) === JSON.stringify(['search', 'memory_save', 'memory_recall', 'memory_list', 'memory_forget',
                                                    'code']),
          JSON.stringify(names));
    check(tools[0].inputSchema.required[0] === 'query', JSON.stringify(tools[0].inputSchema));
  });
  await step('search finds the document', async () => {
    const r = await client.callTool({ name: 'search', arguments: { query: 'HBM2e links', limit: 2 } });
    check(!r.isError && text(r).startsWith('1. ppu.md'), text(r));
  });
  await step('memory: save, recall, list, forget', async () => {
    const saved = await client.callTool({ name: 'memory_save', arguments: { text: 'prefers answers in French' } });
    const id = Number(text(saved).match(/memory (\d+)/)[1]);
    const recalled = await client.callTool({ name: 'memory_recall', arguments: { query: 'French' } });
    check(text(recalled) === `[${id}] prefers answers in French`, text(recalled));
    const listed = await client.callTool({ name: 'memory_list', arguments: {} });
    check(text(listed) === `[${id}] prefers answers in French`, text(listed));
    const forgot = await client.callTool({ name: 'memory_forget', arguments: { id } });
    check(!forgot.isError && text(forgot) === `forgot memory ${id}`, text(forgot));
  });
  await step('code runs a program in the sandbox', async () => {
    const r = await client.callTool({ name: 'code', arguments: { code: 'import sys\nprint(6 * 7)\nsys.exit(3)' } });
    check(!r.isError && text(r) === 'exit status 3\nstdout:\n42\n', text(r));
  });
  await step('errors are tool errors and the session goes on', async () => {
    const unknown = await client.callTool({ name: 'browse', arguments: { url: 'x' } });
    check(unknown.isError && text(unknown).startsWith("no tool named 'browse'"), text(unknown));
    const bad = await client.callTool({ name: 'search', arguments: { query: 'x', limit: 99 } });
    check(bad.isError && text(bad) === "search: argument 'limit' is 99; valid: 1 to 20", text(bad));
    const again = await client.callTool({ name: 'search', arguments: { query: 'H100' } });
    check(!again.isError && text(again).startsWith('1. gpu.md'), text(again));
  });
} finally {
  await client.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(`ok - ${passed} steps against ppu mcp`);
