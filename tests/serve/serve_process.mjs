// Starts `ppu serve` on a free loopback port for a test and stops it with SIGTERM (which drains).
//   const s = await startServer(ppuPath, ['--model', 'tiny']);   // s.baseURL: http://127.0.0.1:PORT/v1
//   ...
//   const { code, stderr } = await s.stop();                      // exit code after the drain
import { spawn } from 'node:child_process';

export async function startServer(ppu, args) {
  const proc = spawn(ppu, ['serve', '--port', '0', '--quiet', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const baseURL = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`ppu serve did not start in 120 s; stderr:\n${stderr}`)), 120000);
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = stdout.match(/listening on (http:\/\/127\.0\.0\.1:\d+\/v1)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then(({ code }) => reject(new Error(`ppu serve exited (${code}) before listening; stderr:\n${stderr}`)));
  });
  return {
    baseURL,
    proc,
    async stop() {
      proc.kill('SIGTERM');
      const { code, signal } = await exited;
      return { code, signal, stderr };
    },
  };
}

// Fails the test with `message` unless `cond` holds.
export function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}
