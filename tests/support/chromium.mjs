// Headless Chromium for the page tests (tests/report/compare_page.mjs, tests/serve/chat_page.mjs):
// Debian's /usr/bin/chromium (or $PPU_CHROMIUM) driven by playwright-core, pinned in tools/report-page
// and installed by scripts/setup.sh. A missing package or browser ends the test with exit status 1 and
// what to run (never a skip).
//   const browser = await launchChromium();
//   const page = await browser.newPage();
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export async function launchChromium() {
  let chromium;
  try {
    ({ chromium } = createRequire(path.join(root, 'tools/report-page/package.json'))('playwright-core'));
  } catch (e) {
    console.error(`the playwright-core package is missing (${e.message}): run scripts/setup.sh, which installs it ` +
                  'with `npm ci --prefix tools/report-page`');
    process.exit(1);
  }
  const browserPath = process.env.PPU_CHROMIUM || '/usr/bin/chromium';
  if (!fs.existsSync(browserPath)) {
    console.error(`${browserPath} is missing: run scripts/setup.sh, which installs Debian's chromium package ` +
                  '(or set PPU_CHROMIUM to another Chromium)');
    process.exit(1);
  }
  return chromium.launch({ executablePath: browserPath, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
}
