// LineChart: a self-contained SVG line chart (no scripts, no fonts to fetch: opens from disk in any
// browser or image viewer), e.g. a training run's loss curve.
//
//   LineChart c{"Training loss", "step", "loss (nats)"};
//   c.series.push_back({"train", "#1f77b4", {{1, 6.2}, {2, 5.9}}});
//   c.series.push_back({"validation", "#d62728", {{50, 4.1}}});
//   write_text_file("loss.svg", c.svg());
//
// Axes are linear, from the data's range padded to "nice" tick steps (1, 2, 5 x 10^k); non-finite
// points are left out (a gap in the line). Not here: log axes, legends outside the plot, HTML.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace ppu {

struct LineSeries {
  std::string name;
  std::string color;  // any SVG colour ("#1f77b4")
  std::vector<std::pair<double, double>> points;  // (x, y)
};

struct LineChart {
  std::string title, x_label, y_label;
  std::vector<LineSeries> series;
  int width = 720, height = 420;  // pixels
  // The SVG document. An empty chart (no finite points) still renders its frame and a note.
  std::string svg() const;
};

// "Nice" tick values covering [lo, hi] with about `target` ticks (1, 2 or 5 times a power of ten).
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace ppu
