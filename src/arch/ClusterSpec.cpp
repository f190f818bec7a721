// Placeholder: the loader is being written (see ClusterSpec.hpp).
#include "arch/ClusterSpec.hpp"

#include "arch/Error.hpp"

namespace ppu {
std::vector<std::string> cluster_preset_names() { return {}; }
ClusterSpec load_cluster(std::string_view name_or_path) {
  throw UserError("unknown cluster '" + std::string(name_or_path) + "'");
}
ClusterSpec parse_cluster(std::string_view, std::string_view origin) {
  throw UserError(std::string(origin) + ": cluster files are not read yet");
}
}  // namespace ppu
