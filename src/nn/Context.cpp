#include "nn/Context.hpp"

#include "ccl/Communicator.hpp"

namespace ppu::nn {

bool Context::log_collective(const std::string& kind, const char* group, ccl::Collective c, double bytes) {
  if (!groups_.capture) return false;
  groups_.capture->collectives.push_back(CapturedCollective{kind, group, c, bytes});
  return true;
}

void Context::tp_all_reduce(const Buffer& b) {
  if (groups_.degrees.tp == 1) return;
  if (log_collective("tp all-reduce", "tp", ccl::Collective::kAllReduce, static_cast<double>(b.bytes))) return;
  op("tp all-reduce", [&] { groups_.tp_comm->all_reduce(groups_.tp_rank, b, b); });
}

}  // namespace ppu::nn
