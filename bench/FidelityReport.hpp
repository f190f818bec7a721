// How the fidelity benchmarks that compare one table with published figures print it: the method
// paragraph, the table (plain text, or markdown for docs/validation.md via scripts/validate.sh) and
// a line counting the cases within target.
#pragma once

#include <fmt/format.h>

#include <iostream>
#include <string>

#include "report/Table.hpp"

namespace ppu::bench {

// `worst`: the largest |relative error| (0.05 for 5%); `sim_s`: host seconds spent simulating.
inline void print_fidelity_table(bool markdown, const std::string& how, const Table& t, int pass, int total,
                                 double worst, double sim_s) {
  if (markdown) {
    std::cout << how << "\n\n"
              << t.render_markdown()
              << fmt::format("\n{} of {} cases within target; worst error {:.1f}%; {:.1f} s of simulation in all.\n",
                             pass, total, 100 * worst, sim_s);
  } else {
    std::cout << how << "\n\n"
              << t.render()
              << fmt::format("\n{} of {} cases within target; worst |error| {:.1f}%; {:.1f} s of simulation\n", pass,
                             total, 100 * worst, sim_s);
  }
}

}  // namespace ppu::bench
