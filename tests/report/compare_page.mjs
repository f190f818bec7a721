// The `ppu compare` page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core
// pinned in tools/report-page): the page made from tests/data/compare/report.json opens from file://
// with no request leaving the file, no console error and no page error; every chart drew marks, as many
// bars, points and cells as the document has values; the verdicts, the errors, the hostile note (as
// text) and units people read are on the page. Saves a full-page screenshot beside the page.
// Usage: node compare_page.mjs PATH/TO/write_compare_page REPORT.json OUT_DIR
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { launchChromium } from '../support/chromium.mjs';

const started = Date.now();
const [writer, fixture, outDir] = process.argv.slice(2);
if (!writer || !fixture || !outDir) {
  console.error('usage: node compare_page.mjs PATH/TO/write_compare_page REPORT.json OUT_DIR');
  process.exit(2);
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}
let passed = 0;
async function step(name, fn) {
  await fn();
  passed += 1;
  console.log(`ok ${passed} - ${name}`);
}

fs.mkdirSync(outDir, { recursive: true });
const pagePath = path.resolve(outDir, 'index.html');
const shotPath = path.resolve(outDir, 'compare_page.png');
execFileSync(writer, [fixture, pagePath], { stdio: 'inherit' });
const doc = JSON.parse(fs.readFileSync(fixture, 'utf8'));

// What the document says should be drawn, counted here from the JSON (not from the page).
const present = (v) => typeof v === 'number' && Number.isFinite(v);
const groups = [...new Set(doc.results.map((r) => r.group))];
const others = doc.chips.map((c) => c.chip).filter((c) => c !== doc.baseline);
const expected = {};  // container id prefix -> marks
groups.forEach((g, gi) => {
  const rs = doc.results.filter((r) => r.group === g);
  expected[`bars-${gi}-`] = rs.flatMap((r) => r.chips).filter((c) => present(c.value)).length;
  expected[`relative-${gi}`] = rs.flatMap((r) => r.relative_performance).filter((c) => present(c.value)).length;
});
doc.chips.forEach((chip, ci) => {
  const n = doc.results.flatMap((r) => r.chips).filter((c) => c.chip === chip.chip && c.flops > 0 && c.bytes > 0 &&
                                                         c.time_s > 0).length;
  if (n > 0) expected[`roofline-${ci}`] = n;
});
doc.claims.forEach((claim, k) => {
  expected[`sweep-${k}`] = doc.sweep.cells.filter((cell) => cell.claims.some((c) => c.claim === claim.claim &&
                                                                              present(c.geomean))).length;
});

const browser = await launchChromium();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(pathToFileURL(pagePath).href, { waitUntil: 'load' });
  await page.waitForSelector('body[data-drawn="true"]', { timeout: 10000 });

  await step('opens from file:// with no console error, no page error and no request elsewhere', async () => {
    check(problems.length === 0, problems.join('\n'));
    const elsewhere = requests.filter((u) => !u.startsWith('file:'));
    check(elsewhere.length === 0, `requests: ${elsewhere.join(', ')}`);
  });

  // Each chart's marks: the SVG elements ECharts tags with the datum they draw (series and data index),
  // less the silent ones (the roof, the "equal" line), each datum once.
  const marks = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('.chart')].map((c) => {
    const drawn = c.querySelectorAll('svg [ecmeta_ssr_type="chart"]:not([ecmeta_silent])');
    const data = new Set([...drawn].map((e) => e.getAttribute('ecmeta_series_index') + '/' + e.getAttribute('ecmeta_data_index')));
    return [c.id, data.size];
  })));
  await step('every chart drew marks, as many as the document has values', async () => {
    const ids = Object.keys(marks);
    for (const [id, n] of Object.entries(marks)) check(n > 0, `${id} drew no marks`);
    for (const [prefix, want] of Object.entries(expected)) {
      const mine = ids.filter((id) => id === prefix || (prefix.endsWith('-') && id.startsWith(prefix)));
      check(mine.length > 0, `no chart ${prefix}`);
      const got = mine.reduce((s, id) => s + marks[id], 0);
      check(got === want, `${prefix}: ${got} marks drawn, the document has ${want} values`);
    }
    // A chart of values per unit in each group (the training group has tokens/s and s), one of
    // relative performance per group, a roofline per chip with kernels, a sweep chart per claim.
    const charts = groups.reduce((n, g) => n + new Set(doc.results.filter((r) => r.group === g).map((r) => r.unit)).size +
                                 (others.length ? 1 : 0), 0) +
                   Object.keys(expected).filter((p) => /^(roofline|sweep)/.test(p)).length;
    check(ids.length === charts, `${ids.length} charts for ${charts}: ${ids.join(', ')}`);
  });

  await step('the verdicts are shown', async () => {
    const words = { holds: 'holds', does_not_hold: 'does not hold', not_tested: 'not tested' };
    for (const c of doc.claims) {
      const cell = page.locator(`td.verdict-cell[data-claim="${c.claim}"]`);
      check(await cell.isVisible(), `no verdict for ${c.claim}`);
      const text = (await cell.innerText()).trim();
      check(text === words[c.verdict], `${c.claim}: shows "${text}", the document says ${c.verdict}`);
    }
  });

  await step('errors, notes and hostile strings appear as text', async () => {
    const text = await page.locator('body').innerText();
    for (const r of doc.results) {
      for (const c of r.chips) {
        if (c.error) check(text.includes(`${r.workload} on ${c.chip} did not run: ${c.error}`), `error of ${r.workload} on ${c.chip}`);
        if (c.note) check(text.includes(c.note), `note of ${r.workload} on ${c.chip}`);
      }
    }
    check(await page.evaluate(() => window.ppuInjected === undefined), 'a note ran as script');
  });

  await step('values in units people read; every source in the table', async () => {
    const header = await page.locator('#header').innerText();
    check(header.includes('120 TFLOPS') && header.includes('2.6 TB/s'), header);
    const numbers = await page.locator('#numbers').innerText();
    // Qwen3-Max training on the PPU: 5.3e6 s = 61.3 days; 7.1e-3 s = 7.1 ms; 2.1e4 tokens/s with a
    // thousands separator; the PPU's triad 2.21e12 B/s = 2.21 TB/s, its all-reduce 2.9e11 B/s = 290 GB/s.
    for (const want of ['61.3 days', '7.1 ms', '5120 tokens/s', '21,000 tokens/s', '2.21 TB/s', '290 GB/s']) {
      check(numbers.includes(want), `numbers lack "${want}"`);
    }
    const rows = await page.locator('#sources tbody tr').count();
    check(rows === doc.sources.length, `${rows} source rows for ${doc.sources.length} sources`);
    const assumed = await page.locator('#sources td.assumed').count();
    check(assumed === doc.sources.filter((s) => s.basis === 'assumed').length, `${assumed} assumed`);
  });

  await page.screenshot({ path: shotPath, fullPage: true });
  console.log(`screenshot: ${shotPath}`);

  // Two variants of the document: a one-axis sweep (a line per claim, a point per cell) and a report
  // with no sweep and no claims (notes in place of the charts).
  async function variant(name, edit) {
    const d = JSON.parse(JSON.stringify(doc));
    edit(d);
    const json = path.resolve(outDir, `${name}.json`), html = path.resolve(outDir, `${name}.html`);
    fs.writeFileSync(json, JSON.stringify(d));
    execFileSync(writer, [json, html], { stdio: 'inherit' });
    const p = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    p.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') errors.push(`console ${m.type()}: ${m.text()}`); });
    p.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    await p.goto(pathToFileURL(html).href, { waitUntil: 'load' });
    await p.waitForSelector('body[data-drawn="true"]', { timeout: 10000 });
    check(errors.length === 0, `${name}: ${errors.join('\n')}`);
    return p;
  }
  await step('a one-axis sweep draws a line per claim with a point per cell', async () => {
    const p = await variant('one_axis', (d) => {
      d.sweep.axes.splice(1, 1);
      d.sweep.cells = d.sweep.cells.filter((c) => c.values[1] === d.sweep.cells[0].values[1]);
      for (const c of d.sweep.cells) c.values.splice(1, 1);
    });
    const points = await p.evaluate(() => [0, 1].map((k) => document.querySelectorAll(
      `#sweep-${k} svg [ecmeta_ssr_type="chart"]:not([ecmeta_silent])`).length));
    const cells = doc.sweep.axes[0].values.length;
    check(points.every((n) => n === cells), `points per claim: ${points}, cells: ${cells}`);
  });
  await step('no sweep and no claims: notes instead of charts, no error', async () => {
    const p = await variant('no_claims', (d) => { d.sweep = null; d.claims = []; });
    const text = await p.locator('#claims').innerText();
    check(text.includes('No claim tested'), text);
    check(await p.locator('#sweep .chart').count() === 0, 'a sweep chart without a sweep');
  });
} finally {
  await browser.close();
}
console.log(`${passed} passed, 0 failed (${((Date.now() - started) / 1000).toFixed(1)} s)`);
