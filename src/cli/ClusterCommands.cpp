// `ppu clusters` and `ppu simulate train` (being written).
#include "cli/Commands.hpp"
