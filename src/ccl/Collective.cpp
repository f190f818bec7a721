#include "ccl/Collective.hpp"

#include <fmt/format.h>

#include "arch/NameTable.hpp"

namespace ppu::ccl {

std::optional<Collective> collective_from_name(std::string_view s) { return find_name<Collective>(kCollectiveNames, s); }
std::optional<Algorithm> algorithm_from_name(std::string_view s) { return find_name<Algorithm>(kAlgorithmNames, s); }
std::optional<Protocol> protocol_from_name(std::string_view s) { return find_name<Protocol>(kProtocolNames, s); }
std::optional<ReductionOp> reduction_op_from_name(std::string_view s) { return find_name<ReductionOp>(kReductionOpNames, s); }
std::string algorithm_valid_names() { return join_names(kAlgorithmNames); }
std::string collective_valid_names() { return join_names(kCollectiveNames); }

double bus_factor(Collective c, int ranks) {
  const double n = ranks;
  switch (c) {
    case Collective::kAllReduce: return 2.0 * (n - 1) / n;
    case Collective::kReduceScatter:
    case Collective::kAllGather:
    case Collective::kAllToAll:
    case Collective::kAllToAllV: return (n - 1) / n;
    default: return 1.0;
  }
}

}  // namespace ppu::ccl
