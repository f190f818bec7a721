// Tests of report/CompareHtml on tests/data/compare/report.json (three chips, 14 workloads in eight
// groups, one that a chip could not run, two claims, a 3x3 sweep, sources): the page is self-contained
// (no script, style, font or image from elsewhere), carries the document so that it parses back equal,
// keeps hostile strings inside their string (no "</script>" or "<!--" gets out), carries the charting
// library byte for byte, and a document without a key the page reads is a UserError naming the key and
// the record. tests/report/compare_page.mjs opens the same page in Chromium and counts the marks drawn.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "TestUtil.hpp"
#include "report/CompareHtml.hpp"

namespace ppu {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

json fixture() { return json::parse(read_file(std::string(PPU_TEST_SOURCE_DIR) + "/tests/data/compare/report.json")); }

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// The text of the page's JSON script element.
std::string embedded_json(const std::string& page) {
  const std::string open = "<script type=\"application/json\" id=\"ppu-report\">";
  const size_t b = page.find(open);
  EXPECT_NE(b, std::string::npos);
  if (b == std::string::npos) return "";
  const size_t e = page.find("</script>", b);
  return page.substr(b + open.size(), e - b - open.size());
}

TEST(CompareHtml, PageIsSelfContained) {
  const std::string page = report::compare_report_html(fixture());
  EXPECT_EQ(page.rfind("<!doctype html>", 0), 0u);
  EXPECT_NE(page.find("<meta charset=\"utf-8\">"), std::string::npos);
  for (const char* external : {"src=\"http", "href=\"http", "src=\"//", "href=\"//", "<link"}) {
    EXPECT_EQ(page.find(external), std::string::npos) << external;
  }
  // The page less the library (whose code holds such words for features the page does not use) loads
  // nothing either: no style import, no url(), no image, no request.
  std::string own = page;
  const std::string library(report::compare_report_chart_library());
  ASSERT_NE(own.find(library), std::string::npos);
  own.erase(own.find(library), library.size());
  for (const char* external : {"@import", "url(", "<img", "<iframe", "fetch(", "XMLHttpRequest", "http"}) {
    EXPECT_EQ(own.find(external), std::string::npos) << external;
  }
  // The three script elements (document, ECharts, page script), each closed once, none with a src.
  EXPECT_EQ(count(page, "<script"), 3u);
  EXPECT_EQ(count(page, "</script>"), 3u);
  EXPECT_EQ(page.find("<script src"), std::string::npos);
  // One container per section the page script fills.
  for (const char* id : {"id=\"header\"", "id=\"claims\"", "id=\"workloads\"", "id=\"rooflines\"", "id=\"sweep\"",
                         "id=\"numbers\"", "id=\"sources\""}) {
    EXPECT_EQ(count(page, id), 1u) << id;
  }
}

TEST(CompareHtml, DocumentRoundTrips) {
  const json doc = fixture();
  ASSERT_EQ(doc.at("results").size(), 14u);
  const std::string page = report::compare_report_html(doc);
  EXPECT_EQ(json::parse(embedded_json(page)), doc);
}

TEST(CompareHtml, CarriesTheChartingLibraryByteForByte) {
  const std::string on_disk =
      read_file(std::string(PPU_TEST_SOURCE_DIR) + "/tools/report-page/node_modules/echarts/dist/echarts.min.js");
  ASSERT_GT(on_disk.size(), 500'000u);
  EXPECT_EQ(std::string(report::compare_report_chart_library()), on_disk);
  EXPECT_NE(report::compare_report_html(fixture()).find(on_disk), std::string::npos);
}

TEST(CompareHtml, HostileStringsStayInTheirString) {
  json doc = fixture();
  const std::string hostile = "</script><script>window.injected = 1</script><!-- & </SCRIPT >";
  doc["results"][0]["chips"][1]["note"] = hostile;
  doc["sources"][0]["source"] = "<!--";
  doc["claims"][0]["text"] = "</script";
  const std::string page = report::compare_report_html(doc);
  // Only the page's own three script elements close, and no comment opens anywhere.
  EXPECT_EQ(count(page, "</script>"), 3u);
  EXPECT_EQ(count(page, "</script"), 3u);
  EXPECT_EQ(count(page, "</SCRIPT"), 0u);
  EXPECT_EQ(page.find("<!--"), std::string::npos);
  const std::string text = embedded_json(page);
  EXPECT_EQ(text.find('<'), std::string::npos);
  EXPECT_EQ(text.find('>'), std::string::npos);
  EXPECT_EQ(text.find('&'), std::string::npos);
  EXPECT_NE(text.find("\\u003c/script\\u003e\\u003cscript\\u003ewindow.injected"), std::string::npos);
  const json back = json::parse(text);
  EXPECT_EQ(back, doc);
  EXPECT_EQ(back["results"][0]["chips"][1]["note"], hostile);
}

TEST(CompareHtml, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  json doc = fixture();
  doc["sources"][1]["source"] = std::string("bad \xff byte");
  const json back = json::parse(embedded_json(report::compare_report_html(doc)));
  EXPECT_EQ(back["sources"][1]["source"], "bad \xEF\xBF\xBD byte");  // U+FFFD
}

TEST(CompareHtml, NoSweepAndNoClaimsStillMakeAPage) {
  json doc = fixture();
  doc["sweep"] = nullptr;
  doc["claims"] = json::array();
  const std::string page = report::compare_report_html(doc);
  EXPECT_EQ(json::parse(embedded_json(page)), doc);
  json one_axis = fixture();  // a one-axis sweep (the page draws it as a line)
  one_axis["sweep"]["axes"].erase(1);
  for (auto& cell : one_axis["sweep"]["cells"]) cell["values"].erase(1);
  EXPECT_NO_THROW(report::compare_report_html(one_axis));
}

TEST(CompareHtml, MissingKeyIsAUserErrorNamingIt) {
  const auto without = [](const std::string& pointer, const std::string& key) {
    json doc = fixture();
    doc[json::json_pointer(pointer)].erase(key);
    return doc;
  };
  struct Case {
    std::string pointer, key, where;
  };
  for (const Case& c : std::initializer_list<Case>{{"", "results", "the document"},
                                                   {"", "sweep", "the document"},
                                                   {"/chips/0", "matrix_peak_flops_per_s", "chips[0]"},
                                                   {"/results/2", "group", "results[2]"},
                                                   {"/results/9/chips/1", "value", "results[9].chips[1]"},
                                                   {"/results/4/relative_performance/0", "chip",
                                                    "results[4].relative_performance[0]"},
                                                   {"/claims/1", "verdict", "claims[1]"},
                                                   {"/sweep", "cells", "sweep"},
                                                   {"/sweep/axes/1", "values", "sweep.axes[1]"},
                                                   {"/sweep/cells/4/claims/1", "geomean", "sweep.cells[4].claims[1]"},
                                                   {"/sources/3", "basis", "sources[3]"}}) {
    SCOPED_TRACE(c.pointer + " " + c.key);
    const json doc = without(c.pointer, c.key);
    test::expect_error([&] { report::compare_report_html(doc); }, {c.where + " has no key \"" + c.key + "\"", "needs"});
  }
}

TEST(CompareHtml, WrongShapesAreUserErrors) {
  json doc = fixture();
  doc["results"] = json::object();
  test::expect_error([&] { report::compare_report_html(doc); }, {"compare report: results is a record, not a list"});
  doc = fixture();
  doc["claims"][0] = "above_a800";
  test::expect_error([&] { report::compare_report_html(doc); }, {"claims[0] is a string, not a record"});
  doc = fixture();
  doc["sweep"]["cells"][2]["values"] = json::array({90});
  test::expect_error([&] { report::compare_report_html(doc); }, {"sweep.cells[2].values has 1 values for 2 sweep axes"});
  doc = fixture();
  doc["sweep"]["axes"].push_back(doc["sweep"]["axes"][0]);
  test::expect_error([&] { report::compare_report_html(doc); }, {"sweep.axes has 3 axes; the page draws 1 or 2"});
  test::expect_error([] { report::compare_report_html(json::array()); }, {"the document is a list, not a record"});
}

}  // namespace
}  // namespace ppu
