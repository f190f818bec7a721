// Tests of report/LineChart: "nice" ticks cover the data with 1/2/5 x 10^k steps; the SVG holds the
// title, labels (escaped), one path per series with a point per finite value, gaps at non-finite
// values, and renders a frame with a note when there is no data.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "report/LineChart.hpp"

namespace ppu {
namespace {

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(LineChart, NiceTicksCoverTheRange) {
  EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  const std::vector<double> t = nice_ticks(3.7, 6.24);
  ASSERT_GE(t.size(), 2u);
  EXPECT_LE(t.front(), 3.7);
  EXPECT_GE(t.back(), 6.24);
  const double step = t[1] - t[0];
  const double mant = step / std::pow(10.0, std::floor(std::log10(step)));
  EXPECT_TRUE(std::abs(mant - 1) < 1e-9 || std::abs(mant - 2) < 1e-9 || std::abs(mant - 5) < 1e-9) << step;
  const std::vector<double> flat = nice_ticks(5, 5);  // one value: padded around it
  EXPECT_LT(flat.front(), 5);
  EXPECT_GT(flat.back(), 5);
  EXPECT_TRUE(nice_ticks(std::nan(""), 1).empty());
}

TEST(LineChart, SvgHasSeriesLabelsAndGaps) {
  LineChart c{"Loss <train & val>", "step", "loss (nats)", {}};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  c.series.push_back({"train", "#1f77b4", {{1, 6.2}, {2, 5.9}, {3, nan}, {4, 5.1}}});
  c.series.push_back({"validation", "#d62728", {{4, 5.4}}});
  const std::string s = c.svg();
  EXPECT_EQ(s.rfind("<svg", 0), 0u);
  EXPECT_NE(s.find("</svg>"), std::string::npos);
  EXPECT_NE(s.find("Loss &lt;train &amp; val&gt;"), std::string::npos) << "the title is escaped";
  EXPECT_NE(s.find("loss (nats)"), std::string::npos);
  EXPECT_EQ(count(s, "<path"), 2u);
  const size_t p = s.find("<path d=\"");
  const std::string d = s.substr(p, s.find('"', p + 9) - p);
  EXPECT_EQ(count(d, "M"), 2u) << "a gap at the NaN starts a new line: " << d;
  EXPECT_EQ(count(d, "L"), 1u) << d;
  EXPECT_NE(s.find("<circle"), std::string::npos) << "a one-point series is drawn as a dot";
  LineChart empty{"Nothing", "x", "y", {}};
  EXPECT_NE(empty.svg().find("no data"), std::string::npos);
}

}  // namespace
}  // namespace ppu
