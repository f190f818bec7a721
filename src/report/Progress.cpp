#include "report/Progress.hpp"

#include <fmt/format.h>

#include <iostream>

namespace ppu {

Progress::Progress(std::string what, int64_t total)
    : what_(std::move(what)), total_(total), start_(std::chrono::steady_clock::now()), last_(start_) {}

void Progress::done(const std::string& item) {
  ++done_;
  const auto now = std::chrono::steady_clock::now();
  if (done_ >= total_ || now - start_ < std::chrono::seconds(2) || now - last_ < std::chrono::seconds(5)) return;
  last_ = now;
  const double spent = std::chrono::duration<double>(now - start_).count();
  const double left = spent / static_cast<double>(done_) * static_cast<double>(total_ - done_);
  std::cerr << fmt::format("{}: {} of {} done{}, about {:.0f} s left\n", what_, done_, total_,
                           item.empty() ? "" : fmt::format(" ({})", item), left);
}

}  // namespace ppu
