// CompareHtml: the page of `ppu compare` (report/index.html), one self-contained HTML file made from
// the command's JSON document (docs/schemas/compare.schema.json):
//
//   nlohmann::json doc = ...;  // the `ppu compare --json` document
//   std::ofstream(out / "index.html") << ppu::report::compare_report_html(doc);
//
// The page shows a header (chips, dtypes, suite, host time), the claims' verdicts, bar charts per
// workload group (each chip's value and the baseline's relative performance), a roofline per chip
// (the kernels that report FLOPs and bytes), the sensitivity sweep (a heat map per claim, or a line for
// a one-axis sweep), every number in a table and every preset field's source or "assumed". It draws
// with ECharts (Apache-2.0; tools/report-page pins the version, scripts/setup.sh installs it and the
// build compiles dist/echarts.min.js into this library), in SVG, and formats values with units people
// read (ms, tokens/s, TFLOPS, TB/s, days) in the page itself. Nothing is fetched: no external script,
// style, font or image, so the page opens from disk with no network.
//
// Not here: running the suite or computing the verdicts (src/cli/CompareCommands.cpp), writing files.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace ppu::report {

// The HTML page for a `ppu compare` document. The document travels inside the page as JSON with `<`,
// `>` and `&` written as \u003c, \u003e and \u0026, so no string in it can close the script element or
// open a comment; strings that are not valid UTF-8 have the bad bytes replaced by U+FFFD.
// Throws UserError naming the key and the record (e.g. `results[3]`) when a key the page reads is
// missing or a list or record has another type; values may be null where the schema allows it.
// Thread-safe; about 1.2 MB, most of it the charting library.
std::string compare_report_html(const nlohmann::json& doc);

// The bytes of the charting library compiled in (ECharts' dist/echarts.min.js), for tests.
std::string_view compare_report_chart_library();

}  // namespace ppu::report
