// How the fidelity benchmarks that compare one table with published figures count and print it: the
// method paragraph, the table (plain text, or markdown for docs/validation.md via
// scripts/validate.sh) and a line counting the cases within target.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>

#include "report/Table.hpp"

namespace ppu::bench {

// The cases' outcome so far: how many within target, the largest |relative error| (0.05 for 5%),
// and the host seconds spent simulating.
struct FidelityTally {
  int pass = 0, total = 0;
  double worst = 0, sim_s = 0;
  // Counts a case with relative error `err` against `tolerance`; returns whether it is within.
  bool add(double err, double tolerance) {
    const bool ok = std::fabs(err) <= tolerance;
    pass += ok;
    ++total;
    worst = std::max(worst, std::fabs(err));
    return ok;
  }
};

inline void print_fidelity_table(bool markdown, const std::string& how, const Table& t, const FidelityTally& n) {
  if (markdown) {
    std::cout << how << "\n\n"
              << t.render_markdown()
              << fmt::format("\n{} of {} cases within target; worst error {:.1f}%; {:.1f} s of simulation in all.\n",
                             n.pass, n.total, 100 * n.worst, n.sim_s);
  } else {
    std::cout << how << "\n\n"
              << t.render()
              << fmt::format("\n{} of {} cases within target; worst |error| {:.1f}%; {:.1f} s of simulation\n", n.pass,
                             n.total, 100 * n.worst, n.sim_s);
  }
}

}  // namespace ppu::bench
