// Tests of report/Table: alignment is decided per column (numeric columns right-aligned with their
// header, text columns left-aligned even where a cell starts with a digit, placeholders following
// their column), long cells wrap within their column onto continuation lines, and what counts as a
// number.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "report/Table.hpp"

namespace ppu {
namespace {

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t nl = s.find('\n'); nl != std::string::npos; start = nl + 1, nl = s.find('\n', start))
    out.push_back(s.substr(start, nl - start));
  return out;
}

TEST(Table, WhatCountsAsANumber) {
  for (const char* yes : {"42", "-3.5", "+1", "1,024", "2.5e-3", "1E9", "71.2%", "2.5x", "195.2 us", "1.431 GB",
                          "12 tok/s", "1.65B", "1.01e+03B", "18 x 50", "18 x 50*", "989.4*", "4.2 µs", "inf", "-nan"})
    EXPECT_TRUE(table_cell_is_number(yes)) << yes;
  for (const char* no : {"", "-", "h100", "8 x a800-hgx", "128/2048", "256x128x128 tiles, 3 stages", "1.2.3",
                         "3 of 4", "x 12", "1,", ",5", "7 /s", "TP 8", "2 GB ", "**"})
    EXPECT_FALSE(table_cell_is_number(no)) << no;
}

TEST(Table, AlignmentIsDecidedPerColumn) {
  Table t({"chip", "nodes", "layout", "time", "share"});
  t.add_row({"h100", "8 x a800-hgx", "128/2048", "195.2 us", "71.2%"});
  t.add_row({"zhenwu-810e", "-", "tp 8", "12.5 ms", "-"});
  t.add_row({"b200", "16 x h100-dgx", "-", "-", "5.0%"});
  const auto l = lines_of(t.render());
  ASSERT_EQ(l.size(), 5u);
  EXPECT_EQ(l[0], "chip         nodes          layout        time  share");
  EXPECT_EQ(l[1], std::string(53, '-'));
  // Text columns (names, "8 x a800-hgx", "128/2048") start at the column's left edge, numbers end
  // at its right edge; a "-" sits where its column's values sit.
  EXPECT_EQ(l[2], "h100         8 x a800-hgx   128/2048  195.2 us  71.2%");
  EXPECT_EQ(l[3], "zhenwu-810e  -              tp 8       12.5 ms      -");
  EXPECT_EQ(l[4], "b200         16 x h100-dgx  -                -   5.0%");
}

TEST(Table, ColumnsOfOnlyPlaceholdersAreTextAndShortRowsArePadded) {
  Table t({"a", "b", "c"});
  t.add_row({"-", "1"});
  t.add_row({"", "22", "x"});
  const auto l = lines_of(t.render());
  ASSERT_EQ(l.size(), 4u);
  EXPECT_EQ(l[0], "a   b  c");
  EXPECT_EQ(l[2], "-   1");  // no trailing blanks
  EXPECT_EQ(l[3], "   22  x");
}

TEST(Table, LongCellsWrapWithinTheirColumn) {
  Table t({"field", "value", "source"});
  t.set_max_width(2, 20);
  t.add_row({"hbm_size", "96 GB", "vendor datasheet, table 3 (HBM2e stacks of 16 GB each)"});
  t.add_row({"cores", "64", "short"});
  const auto l = lines_of(t.render());
  ASSERT_EQ(l.size(), 7u);
  EXPECT_EQ(l[0], "field     value  source");
  EXPECT_EQ(l[2], "hbm_size  96 GB  vendor datasheet,");
  EXPECT_EQ(l[3], "                 table 3 (HBM2e");
  EXPECT_EQ(l[4], "                 stacks of 16 GB");
  EXPECT_EQ(l[5], "                 each)");
  EXPECT_EQ(l[6], "cores        64  short");
  for (const auto& line : l) EXPECT_LE(line.size(), 17u + 20u) << line;
  // The markdown rendering keeps every cell on one line.
  EXPECT_NE(t.render_markdown().find("| vendor datasheet, table 3 (HBM2e stacks of 16 GB each) |"), std::string::npos);
}

TEST(Table, WrappingCutsOverlongWordsAndKeepsTheHeaderWidth) {
  EXPECT_EQ(wrap_words("abcdefghij xy", 4), (std::vector<std::string>{"abcd", "efgh", "ij", "xy"}));
  EXPECT_EQ(wrap_words("µµµµµ", 2), (std::vector<std::string>{"µµ", "µµ", "µ"}));  // code points, not bytes
  EXPECT_EQ(wrap_words("", 5), (std::vector<std::string>{""}));
  EXPECT_EQ(wrap_words("a  b\nc", 10), (std::vector<std::string>{"a b", "c"}));
  EXPECT_EQ(wrap_words("one two", 0), (std::vector<std::string>{"one two"}));
  Table t({"a long header"});
  t.set_max_width(0, 4);  // narrower than the header: the header's width wins
  t.add_row({"one two three four"});
  const auto l = lines_of(t.render());
  ASSERT_EQ(l.size(), 4u);
  EXPECT_EQ(l[2], "one two three");
  EXPECT_EQ(l[3], "four");
  t.set_max_width(7, 10);  // no such column: ignored
  EXPECT_EQ(lines_of(t.render()).size(), 4u);
}

}  // namespace
}  // namespace ppu
