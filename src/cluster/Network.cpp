// Placeholder: network models are being written (see Network.hpp).
#include "cluster/Network.hpp"

#include "arch/Error.hpp"

namespace ppu::cluster {
const char* coll_kind_name(CollKind k) {
  static const char* names[] = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all", "send_recv"};
  return names[static_cast<int>(k)];
}
std::unique_ptr<NetworkModel> make_network(const ClusterSpec&, NetworkKind) {
  throw UserError("network models are not available yet");
}
}  // namespace ppu::cluster
