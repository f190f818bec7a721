// Progress of a long command on stderr, with an estimate of the time left: silent for the first 2 s
// (quick commands print nothing), then a line at most every 5 s.
//
//   Progress p("throughput", cases.size());
//   for (...) { ...; p.done("h100 128/2048"); }
//   // after 2 s: "throughput: 3 of 6 done (h100 128/2048), about 12 s left"
//
// Not a bar: one plain line per report, so logs and pipes stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace ppu {

class Progress {
 public:
  Progress(std::string what, int64_t total);
  // One more item finished (`item` names it in the line).
  void done(const std::string& item = "");

 private:
  std::string what_;
  int64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace ppu
