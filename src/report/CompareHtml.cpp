// CompareHtml: the `ppu compare` page (see the header). The page is four pieces in order: the HTML
// skeleton and its style (kHead), the document as JSON, ECharts, and the script that draws the page
// from the document (kPageScript). Everything a person reads is computed in kPageScript from the
// document, so the page and report.json cannot disagree; the script puts document strings into the
// page only as text nodes, never as HTML.
#include "report/CompareHtml.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <string_view>

#include "arch/Error.hpp"

// ECharts' dist/echarts.min.js, included by the assembler from the path CMake gives
// (cmake/ReportPage.cmake: tools/report-page/node_modules, installed by scripts/setup.sh). It costs the
// build nothing measurable: g++ 12 -O3 spends 3.0 s of CPU on this file with the 1.1 MB library or an
// empty one (the time is the headers'). A C++ string literal that long would break -Wpedantic's limit
// of 65,536 characters. ccache does not cache files with .incbin, so this one always compiles.
#ifndef PPU_ECHARTS_JS
#error "PPU_ECHARTS_JS (the path of echarts.min.js) is set by cmake/ReportPage.cmake"
#endif
__asm__(".pushsection .rodata.ppu_echarts_js,\"a\",@progbits\n"
        ".globl ppu_echarts_js_begin\n.hidden ppu_echarts_js_begin\n"
        ".globl ppu_echarts_js_end\n.hidden ppu_echarts_js_end\n"
        "ppu_echarts_js_begin:\n"
        ".incbin \"" PPU_ECHARTS_JS "\"\n"
        "ppu_echarts_js_end:\n"
        ".byte 0\n"
        ".popsection\n");
extern "C" __attribute__((visibility("hidden"))) const char ppu_echarts_js_begin[];
extern "C" __attribute__((visibility("hidden"))) const char ppu_echarts_js_end[];

namespace ppu::report {
namespace {

constexpr std::string_view kHead = R"PPU_PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OpenPPU compare</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d2430; margin: 0; background: #f6f7f9; }
main, header { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
.sub { color: #566070; margin: 0 0 10px; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 10px; width: 100%; }
th, td { border: 1px solid #dde1e7; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; color: #fff; white-space: nowrap; }
.verdict.holds { background: #2e8540; }
.verdict.does_not_hold { background: #c23b22; }
.verdict.not_tested { background: #8a929e; }
.assumed { color: #a0520d; font-weight: 600; }
.chart { background: #fff; border: 1px solid #dde1e7; height: 330px; margin: 4px 0; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
.note { color: #566070; font-size: 13px; margin: 2px 0; }
.error { color: #b0281a; font-size: 13px; margin: 2px 0; }
.failed { color: #b0281a; font-weight: 600; }
</style>
</head>
<body>
<header id="header"><h1>OpenPPU compare</h1></header>
<main>
<noscript><p class="failed">This report draws its tables and charts with JavaScript; the numbers are also in report.json beside it.</p></noscript>
<section id="claims"><h2>Claims</h2></section>
<section id="workloads"><h2>Workloads</h2></section>
<section id="rooflines"><h2>Rooflines</h2></section>
<section id="sweep"><h2>Sensitivity</h2></section>
<section id="numbers"><h2>All numbers</h2></section>
<section id="sources"><h2>Sources</h2></section>
</main>
)PPU_PAGE";

constexpr std::string_view kPageScript = R"PPU_PAGE("use strict";
(function () {
  const doc = JSON.parse(document.getElementById("ppu-report").textContent);
  const palette = ["#5470c6", "#ee6666", "#3ba272", "#fac858", "#73c0de", "#9a60b4", "#fc8452", "#ea7ccc"];
  const verdictColor = { holds: "#2e8540", does_not_hold: "#c23b22", not_tested: "#8a929e" };
  const verdictText = { holds: "holds", does_not_hold: "does not hold", not_tested: "not tested" };

  // ECharts writes its data-index attributes (ecmeta_series_index, ecmeta_data_index) into the SVG
  // marks only once an instance in server-side mode has registered its getter: one throwaway instance
  // does it, so that each drawn bar, point and cell says which datum it is (tests/report counts them).
  echarts.init(document.createElement("div"), null, { renderer: "svg", ssr: true, width: 1, height: 1 }).dispose();

  // ---- numbers with units humans read --------------------------------------------------------
  function num(v) {  // three significant digits; what is not a finite number is written as it is
    if (typeof v !== "number" || !Number.isFinite(v)) return v === null || v === undefined ? "\u2014" : String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e4) return Math.round(v).toLocaleString("en-US");
    if (a >= 1e-3) return String(Number(v.toPrecision(3)));
    return v.toExponential(2);
  }
  // The units a document's SI unit is shown in: [divisor, label, from], largest first; a value is
  // written in the first whose `from` (the divisor unless given) it reaches, else in the last.
  const unitSteps = {
    "s": [[86400, "days", 2 * 86400], [3600, "h", 2 * 3600], [60, "min", 120], [1, "s"], [1e-3, "ms"], [1e-6, "\u00b5s"],
          [1e-9, "ns"]],
    "flop/s": [[1e15, "PFLOPS"], [1e12, "TFLOPS"], [1e9, "GFLOPS"], [1, "FLOPS"]],
    "B/s": [[1e12, "TB/s"], [1e9, "GB/s"], [1e6, "MB/s"], [1, "B/s"]],
    "B": [[1e12, "TB"], [1e9, "GB"], [1e6, "MB"], [1e3, "kB"], [1, "B"]],
    "W": [[1e6, "MW"], [1e3, "kW"], [1, "W"]],
    "J": [[3.6e9, "MWh"], [3.6e6, "kWh"], [1, "J"]],
  };
  const unitAlias = { "FLOP/s": "flop/s", "flops/s": "flop/s", "bytes/s": "B/s", "bytes": "B" };
  // The [divisor, label] to write v of `unit` in (divisor 1 and the unit itself for units not above).
  function displayUnit(v, unit) {
    const steps = unitSteps[unitAlias[unit] || unit];
    if (!steps) return [1, unit || ""];
    for (const [f, label, from] of steps) {
      if (Math.abs(v) >= (from === undefined ? f : from)) return [f, label];
    }
    const last = steps[steps.length - 1];
    return [last[0], last[1]];
  }
  function human(v, unit) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "\u2014";
    if (v === 0) return "0";
    const [f, label] = displayUnit(v, unit);
    return num(v / f) + (label ? " " + label : "");
  }
  const ratio = (v) => (v === null || v === undefined || !Number.isFinite(v) ? "\u2014" : v.toFixed(2) + "\u00d7");

  // ---- DOM helpers: text only goes in as text (no innerHTML of document strings) ---------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }
  function table(head, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
              el("tbody", {}, rows.map((r) => el("tr", {}, r))));
  }
  const td = (text, cls, title) => el("td", { class: cls, title: title }, text);
  const verdictBadge = (v) => el("span", { class: "verdict " + v }, verdictText[v] || String(v));

  // Each section draws on its own: one that fails says so in the page and reports the error to the
  // console (a page error the browser test catches) without blanking the others.
  function section(id, draw) {
    const s = document.getElementById(id);
    try {
      draw(s);
    } catch (e) {
      s.appendChild(el("p", { class: "failed" }, "This section failed to draw: " + e));
      setTimeout(() => { throw e; });
    }
  }
  const charts = [];
  function chart(parent, id, option, cls) {
    const div = el("div", { class: "chart " + (cls || ""), id: id });
    parent.appendChild(div);
    const c = echarts.init(div, null, { renderer: "svg" });
    c.setOption(Object.assign({ animation: false, color: palette }, option));
    charts.push(c);
    return c;
  }
  window.addEventListener("resize", () => charts.forEach((c) => c.resize()));

  const chipIds = doc.chips.map((c) => c.chip);
  const others = chipIds.filter((c) => c !== doc.baseline);
  const chipColor = (id) => palette[chipIds.indexOf(id) % palette.length];
  const source = (chip, field) => doc.sources.find((s) => s.chip === chip && s.field === field);

  // ---- header ----------------------------------------------------------------------------------
  section("header", (h) => {
    h.querySelector("h1").textContent = "OpenPPU compare: " + doc.baseline + " against " + (others.join(", ") || "nothing");
    document.title = h.querySelector("h1").textContent;
    const dtypes = doc.chips.map((c) => c.chip + " " + c.dtype).join(", ");
    h.appendChild(el("p", { class: "sub" }, "Suite " + doc.suite + " \u00b7 dtypes " + dtypes + " \u00b7 " +
                     human(doc.host_s, "s") + " of host time \u00b7 relative performance = the baseline's performance / " +
                     "the other chip's (above 1: " + doc.baseline + " is better)"));
    h.appendChild(table(["chip", "name", "dtype", "matrix peak", "HBM bandwidth", "TDP", "assumed fields"],
      doc.chips.map((c) => [td(c.chip), td(c.display_name || ""), td(c.dtype), td(human(c.matrix_peak_flops_per_s, "flop/s"), "num"),
                            td(human(c.hbm_bandwidth_bytes_per_s, "B/s"), "num"), td(human(c.tdp_w, "W"), "num"),
                            td((c.assumed_fields || []).join(", ") || "none", (c.assumed_fields || []).length ? "assumed" : null)])));
  });

  // ---- claims ----------------------------------------------------------------------------------
  section("claims", (s) => {
    if (doc.claims.length === 0) {
      s.appendChild(el("p", { class: "note" }, "No claim tested: a claim is checked only when the baseline is the PPU and the chip it names is compared."));
      return;
    }
    s.appendChild(table(["claim", "against", "test", "geometric mean", "wins / losses of workloads", "verdict"],
      doc.claims.map((c) => [td(c.text), td(c.chip), td(c.test), td(ratio(c.geomean), "num"),
                             td(c.wins + " / " + c.losses + " of " + c.workloads, "num"),
                             el("td", { class: "verdict-cell", "data-claim": c.claim }, verdictBadge(c.verdict))])));
  });

  // ---- bar charts per workload group -----------------------------------------------------------
  const groups = [];
  for (const r of doc.results) {
    let g = groups.find((x) => x.name === r.group);
    if (!g) groups.push(g = { name: r.group, results: [] });
    g.results.push(r);
  }
  const valueOf = (r, chip) => { const c = r.chips.find((x) => x.chip === chip); return c ? c.value : null; };
  const relOf = (r, chip) => { const c = r.relative_performance.find((x) => x.chip === chip); return c ? c.value : null; };
  const catAxis = (names) => ({ type: "category", data: names, axisLabel: { interval: 0, rotate: names.length > 3 ? 15 : 0, fontSize: 11 } });

  section("workloads", (s) => {
    groups.forEach((g, gi) => {
      s.appendChild(el("h3", {}, g.name));
      const pair = el("div", { class: "pair" });
      s.appendChild(pair);
      // One chart of values per unit in the group (a group normally has one).
      const units = [...new Set(g.results.map((r) => r.unit))];
      units.forEach((unit, ui) => {
        const rs = g.results.filter((r) => r.unit === unit);
        const vals = rs.flatMap((r) => chipIds.map((c) => valueOf(r, c))).filter((v) => Number.isFinite(v) && v > 0);
        // A log axis where the values span more than 30x. ECharts stands bars on 1 on a log axis, so
        // there the bars show value / base (all >= 1), base the power of ten below the least value,
        // and the ticks and tooltips multiply it back.
        // A linear axis is in one display unit (that of the largest value), so that its ticks are round
        // numbers of ms or days.
        const log = vals.length > 0 && Math.max(...vals) / Math.min(...vals) > 30;
        const base = log ? Math.pow(10, Math.floor(Math.log10(Math.min(...vals)))) : 1;
        const [div, label] = log || vals.length === 0 ? [1, null] : displayUnit(Math.max(...vals), unit);
        const tick = (v) => (log || label === null ? human(v * base, unit) : num(v) + (label ? " " + label : ""));
        const better = [...new Set(rs.map((r) => r.better))].join("/");
        chart(pair, "bars-" + gi + "-" + ui, {
          title: { text: rs[0].metric + " (" + better + " is better)", left: "center", textStyle: { fontSize: 13 } },
          legend: { top: 26 },
          grid: { left: 80, right: 16, top: 62, bottom: 50 },
          tooltip: { trigger: "axis", valueFormatter: (v) => human(v * base * div, unit) },
          xAxis: catAxis(rs.map((r) => r.workload)),
          yAxis: { type: log ? "log" : "value", min: log ? 1 : undefined, axisLabel: { formatter: tick } },
          series: chipIds.map((c) => ({
            name: c, type: "bar",
            data: rs.map((r) => { const v = valueOf(r, c); return Number.isFinite(v) ? v / base / div : null; }) })),
        }, "bars");
      });
      if (others.length) {
        chart(pair, "relative-" + gi, {
          title: { text: "relative performance, " + doc.baseline + " / other", left: "center", textStyle: { fontSize: 13 } },
          legend: { top: 26 },
          grid: { left: 60, right: 16, top: 62, bottom: 50 },
          tooltip: { trigger: "axis", valueFormatter: ratio },
          xAxis: catAxis(g.results.map((r) => r.workload)),
          yAxis: { type: "value", axisLabel: { formatter: (v) => v + "\u00d7" } },
          series: others.map((c, i) => ({
            name: c, type: "bar", itemStyle: { color: chipColor(c) },
            data: g.results.map((r) => relOf(r, c)),
            markLine: i === 0 ? { silent: true, symbol: "none", lineStyle: { color: "#333", type: "dashed" },
                                  label: { formatter: "equal", position: "insideEndTop" }, data: [{ yAxis: 1 }] } : undefined,
          })),
        }, "relative");
      }
      for (const r of g.results) {
        for (const c of r.chips) {
          if (c.error) s.appendChild(el("p", { class: "error" }, r.workload + " on " + c.chip + " did not run: " + c.error));
          if (c.note) s.appendChild(el("p", { class: "note" }, r.workload + " on " + c.chip + ": " + c.note));
        }
      }
    });
  });

  // ---- rooflines -------------------------------------------------------------------------------
  section("rooflines", (s) => {
    const grid = el("div", { class: "grid3" });
    s.appendChild(grid);
    let drawn = 0;
    doc.chips.forEach((chip, ci) => {
      const pts = [];
      for (const r of doc.results) {
        const c = r.chips.find((x) => x.chip === chip.chip);
        if (c && c.flops > 0 && c.bytes > 0 && c.time_s > 0) {
          pts.push({ name: r.workload, value: [c.flops / c.bytes, c.flops / c.time_s / 1e12] });
        }
      }
      const peak = chip.matrix_peak_flops_per_s / 1e12, bw = chip.hbm_bandwidth_bytes_per_s / 1e12;
      if (pts.length === 0 || !(peak > 0) || !(bw > 0)) return;
      drawn++;
      const ridge = peak / bw;
      const xs = pts.map((p) => p.value[0]).concat([ridge]);
      const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...xs) / 2)));
      const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...xs) * 2)));
      chart(grid, "roofline-" + ci, {
        title: { text: chip.chip + " (" + chip.dtype + ")", left: "center", textStyle: { fontSize: 13 } },
        grid: { left: 80, right: 34, top: 40, bottom: 50 },
        tooltip: { trigger: "item", formatter: (p) => p.seriesName === "roof" ? "roof" :
                   p.name + ": " + num(p.value[0]) + " FLOP/B, " + human(p.value[1] * 1e12, "flop/s") },
        xAxis: { type: "log", name: "FLOP per HBM byte", nameLocation: "middle", nameGap: 28, min: lo, max: hi },
        yAxis: { type: "log", name: "achieved", nameLocation: "middle", nameGap: 66, axisLabel: { formatter: (v) => human(v * 1e12, "flop/s") } },
        series: [
          { name: "roof", type: "line", symbol: "none", silent: true, lineStyle: { color: "#444", width: 2 },
            data: [[lo, bw * lo], [ridge, peak], [hi, peak]] },
          { name: "kernels", type: "scatter", symbolSize: 9, itemStyle: { color: chipColor(chip.chip) },
            label: { show: true, position: "bottom", formatter: (p) => p.name, fontSize: 10 },
            labelLayout: { hideOverlap: true }, data: pts },
        ],
      }, "roofline");
    });
    if (!drawn) s.appendChild(el("p", { class: "note" }, "No kernel in this suite reports FLOPs and bytes."));
  });

  // ---- sensitivity sweep -----------------------------------------------------------------------
  section("sweep", (s) => {
    const sw = doc.sweep;
    if (!sw || doc.claims.length === 0) {
      s.appendChild(el("p", { class: "note" }, sw ? "No claim to sweep." : "No sweep in this report (ppu compare --sweep)."));
      return;
    }
    const axisName = (a) => {
      const src = source(a.chip, a.field);
      const notes = [a.unit, src ? "preset " + num(src.value) : null].filter((x) => x);
      return a.chip + " " + a.field + (notes.length ? " (" + notes.join("; ") + ")" : "");
    };
    s.appendChild(el("p", { class: "note" }, "The " + sw.suite + " suite re-run with the parameters below varied; each cell is the " +
                     "claim's geometric mean there, coloured by its verdict."));
    const grid = el("div", { class: "pair" });
    s.appendChild(grid);
    const two = sw.axes.length === 2;
    // The index of the axis value a cell's value is (the nearest: both are the same doubles, printed
    // and parsed back).
    const nearest = (values, v) => values.reduce((best, x, i) => (Math.abs(x - v) < Math.abs(values[best] - v) ? i : best), 0);
    doc.claims.forEach((claim, k) => {
      const pts = [];
      for (const cell of sw.cells) {
        const c = (cell.claims || []).find((x) => x.claim === claim.claim);
        if (c && Number.isFinite(c.geomean)) pts.push({ cell: cell, c: c });
      }
      const title = { text: claim.text, left: "center", textStyle: { fontSize: 13 } };
      const codes = Object.keys(verdictColor);  // the heat map's fourth dimension: the verdict's index here
      const pieces = codes.map((v, i) => ({ value: i, label: verdictText[v], color: verdictColor[v] }));
      if (two) {
        const [ax, ay] = sw.axes;
        chart(grid, "sweep-" + k, {
          title: title,
          grid: { left: 90, right: 20, top: 40, bottom: 80 },
          tooltip: { formatter: (p) => axisName(ax) + " " + ax.values[p.value[0]] + ", " + axisName(ay) + " " + ay.values[p.value[1]] +
                     ": " + ratio(p.value[2]) + ", " + verdictText[codes[p.value[3]]] },
          xAxis: { type: "category", data: ax.values.map(num), name: axisName(ax), nameLocation: "middle", nameGap: 26 },
          yAxis: { type: "category", data: ay.values.map(num), name: axisName(ay), nameLocation: "middle", nameGap: 50 },
          visualMap: { type: "piecewise", dimension: 3, pieces: pieces,
                       orient: "horizontal", left: "center", bottom: 4 },
          series: [{ type: "heatmap", label: { show: true, formatter: (p) => p.value[2].toFixed(2) },
                     itemStyle: { borderColor: "#fff", borderWidth: 1 },
                     data: pts.map(({ cell, c }) => [nearest(ax.values, cell.values[0]), nearest(ay.values, cell.values[1]), c.geomean,
                                                     codes.indexOf(c.verdict)]) }],
        }, "sweep");
      } else {
        const [ax] = sw.axes;
        // The verdict boundary: the stretches of the axis where the claim holds are shaded, each from
        // half-way to the neighbouring cell on either side.
        const line = pts.map(({ cell, c }) => ({ x: cell.values[0], c: c })).sort((a, b) => a.x - b.x);
        const holds = [];
        line.forEach((q, i) => {
          if (q.c.verdict !== "holds") return;
          const lo = i > 0 ? (line[i - 1].x + q.x) / 2 : q.x, hi = i + 1 < line.length ? (q.x + line[i + 1].x) / 2 : q.x;
          const last = holds[holds.length - 1];
          if (last && last[1].xAxis === lo) last[1].xAxis = hi;
          else holds.push([{ xAxis: lo }, { xAxis: hi }]);
        });
        chart(grid, "sweep-" + k, {
          title: title,
          grid: { left: 70, right: 20, top: 40, bottom: 50 },
          tooltip: { trigger: "item", formatter: (p) => num(p.value[0]) + " " + ax.unit + ": " + ratio(p.value[1]) + ", " + verdictText[p.data.verdict] },
          xAxis: { type: "value", name: axisName(ax), nameLocation: "middle", nameGap: 26, scale: true },
          yAxis: { type: "value", name: "geometric mean", nameLocation: "middle", nameGap: 45, scale: true },
          series: [{ type: "line", symbol: "circle", symbolSize: 10, lineStyle: { color: "#888" },
                     itemStyle: { color: (p) => verdictColor[p.data.verdict] || "#888" },
                     data: line.map((q) => ({ value: [q.x, q.c.geomean], verdict: q.c.verdict })),
                     markArea: { silent: true, itemStyle: { color: "rgba(46, 133, 64, 0.12)" }, data: holds } }],
        }, "sweep");
      }
    });
  });

  // ---- every number, and every source -----------------------------------------------------------
  section("numbers", (s) => {
    const head = ["group", "workload", "metric"].concat(chipIds, others.map((c) => doc.baseline + " / " + c));
    s.appendChild(table(head, doc.results.map((r) => [td(r.group), td(r.title, null, r.workload), td(r.metric + " (" + r.better + " is better)")]
      .concat(chipIds.map((id) => {
        const c = r.chips.find((x) => x.chip === id);
        if (!c) return td("\u2014", "num");
        if (c.error) return td("did not run", "num failed", c.error);
        return td(human(c.value, r.unit), "num", c.bound ? c.bound + "-bound" : null);
      }), others.map((id) => td(ratio(relOf(r, id)), "num"))))));
  });
  section("sources", (s) => {
    s.appendChild(table(["chip", "field", "value", "basis", "source or reasoning"],
      doc.sources.map((x) => [td(x.chip), td(x.field), td(num(x.value) + " " + (x.unit || ""), "num"),
                              td(x.basis, x.basis === "assumed" ? "assumed" : null), td(x.source || "")])));
  });
  document.body.setAttribute("data-drawn", "true");
})();
)PPU_PAGE";

// ---- the document's shape: the keys the page reads ----------------------------------------------

const char* type_name(const nlohmann::json& v) {
  return v.is_null() ? "null" : v.is_array() ? "list" : v.is_object() ? "record" : v.type_name();
}

// `obj` is a record (JSON object) with every key of `keys`; `where` names it ("results[3]").
void require_keys(const nlohmann::json& obj, const std::string& where, std::initializer_list<const char*> keys) {
  if (!obj.is_object()) {
    throw UserError(fmt::format("compare report: {} is a {}, not a record", where, type_name(obj)));
  }
  for (const char* k : keys) {
    if (!obj.contains(k)) {
      std::string all;
      for (const char* n : keys) all += (all.empty() ? "" : ", ") + std::string(n);
      throw UserError(fmt::format("compare report: {} has no key \"{}\" (a record there needs {})", where, k, all));
    }
  }
}

// obj[key] is a list; returns it. `where` names obj ("results[3]"; empty for the document).
const nlohmann::json& require_list(const nlohmann::json& obj, const std::string& where, const char* key) {
  const nlohmann::json& v = obj.at(key);
  if (!v.is_array()) {
    throw UserError(fmt::format("compare report: {}{}{} is a {}, not a list", where, where.empty() ? "" : ".", key,
                                type_name(v)));
  }
  return v;
}

void check_document(const nlohmann::json& doc) {
  require_keys(doc, "the document",
               {"schema_version", "command", "suite", "baseline", "chips", "results", "claims", "sweep", "sources", "host_s"});
  const auto each = [](const nlohmann::json& list, const std::string& name, auto&& fn) {
    for (size_t i = 0; i < list.size(); ++i) fn(list[i], fmt::format("{}[{}]", name, i));
  };
  each(require_list(doc, "", "chips"), "chips", [](const nlohmann::json& c, const std::string& w) {
    require_keys(c, w, {"chip", "dtype", "matrix_peak_flops_per_s", "hbm_bandwidth_bytes_per_s"});
  });
  each(require_list(doc, "", "results"), "results", [&](const nlohmann::json& r, const std::string& w) {
    require_keys(r, w, {"workload", "group", "title", "metric", "unit", "better", "chips", "relative_performance"});
    each(require_list(r, w, "chips"), w + ".chips",
         [](const nlohmann::json& c, const std::string& cw) { require_keys(c, cw, {"chip", "value"}); });
    each(require_list(r, w, "relative_performance"), w + ".relative_performance",
         [](const nlohmann::json& c, const std::string& cw) { require_keys(c, cw, {"chip", "value"}); });
  });
  each(require_list(doc, "", "claims"), "claims", [](const nlohmann::json& c, const std::string& w) {
    require_keys(c, w, {"claim", "text", "chip", "test", "geomean", "wins", "losses", "workloads", "verdict"});
  });
  const nlohmann::json& sweep = doc.at("sweep");
  if (!sweep.is_null()) {
    require_keys(sweep, "sweep", {"suite", "axes", "cells"});
    const nlohmann::json& axes = require_list(sweep, "sweep", "axes");
    if (axes.empty() || axes.size() > 2) {
      throw UserError(fmt::format("compare report: sweep.axes has {} axes; the page draws 1 or 2", axes.size()));
    }
    each(axes, "sweep.axes", [&](const nlohmann::json& a, const std::string& w) {
      require_keys(a, w, {"key", "field", "chip", "unit", "values"});
      require_list(a, w, "values");
    });
    each(require_list(sweep, "sweep", "cells"), "sweep.cells", [&](const nlohmann::json& c, const std::string& w) {
      require_keys(c, w, {"values", "claims"});
      if (require_list(c, w, "values").size() != axes.size()) {
        throw UserError(fmt::format("compare report: {}.values has {} values for {} sweep axes", w, c.at("values").size(),
                                    axes.size()));
      }
      each(require_list(c, w, "claims"), w + ".claims", [](const nlohmann::json& k, const std::string& kw) {
        require_keys(k, kw, {"claim", "geomean", "verdict"});
      });
    });
  }
  each(require_list(doc, "", "sources"), "sources", [](const nlohmann::json& s, const std::string& w) {
    require_keys(s, w, {"chip", "field", "value", "unit", "basis", "source"});
  });
}

// The JSON text with <, > and & as \u escapes: they occur only inside strings, where the escape
// means the same character, so the text parses to the same document and cannot end the script
// element ("</script>") or open a comment ("<!--").
std::string json_for_script(const nlohmann::json& doc) {
  const std::string text = doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(text.size() + text.size() / 16);
  for (char c : text) {
    switch (c) {
      case '<': out += "\\u003c"; break;
      case '>': out += "\\u003e"; break;
      case '&': out += "\\u0026"; break;
      default: out += c;
    }
  }
  return out;
}

bool contains_ignoring_case(std::string_view text, std::string_view what) {
  return std::search(text.begin(), text.end(), what.begin(), what.end(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
         }) != text.end();
}

}  // namespace

std::string_view compare_report_chart_library() {
  return {ppu_echarts_js_begin, static_cast<size_t>(ppu_echarts_js_end - ppu_echarts_js_begin)};
}

std::string compare_report_html(const nlohmann::json& doc) {
  check_document(doc);
  const std::string_view library = compare_report_chart_library();
  // The library goes into a script element as it is: it must not end it early (checked per call, a
  // millisecond, so that a new ECharts version that breaks this fails every page test at once).
  PPU_CHECK(!library.empty() && !contains_ignoring_case(library, "</script") && !contains_ignoring_case(library, "<!--"),
            "the embedded echarts.min.js is empty or holds </script or <!--");
  std::string page;
  page.reserve(kHead.size() + library.size() + kPageScript.size() + 64 * 1024);
  page += kHead;
  page += "<script type=\"application/json\" id=\"ppu-report\">";
  page += json_for_script(doc);
  page += "</script>\n<script>\n";
  page += library;
  page += "\n</script>\n<script>\n";
  page += kPageScript;
  page += "</script>\n</body>\n</html>\n";
  return page;
}

}  // namespace ppu::report
