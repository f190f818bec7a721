// `ppu nodes` and `ppu bench <collective>`: node presets and collective benchmarks (see Commands.hpp).
#include <fmt/format.h>

#include <iostream>

#include "cli/Commands.hpp"

namespace ppu::cli {}  // namespace ppu::cli
