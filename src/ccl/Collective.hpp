// Names shared by the collective library: the collectives, the algorithms that implement them, the
// reduction operators, and what a call returns. Every enum has a name table (kXNames) and a parser.
//
//   Algorithm a = *algorithm_from_name("ring");
//   algorithm_description(Algorithm::kNvls);   // "in-switch reduction and multicast (NVLS)"
//
// Not here: how algorithms are built (ccl/Algorithms) or chosen (ccl/Communicator).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ppu::ccl {

enum class Collective : uint8_t {
  kAllReduce, kReduceScatter, kAllGather, kBroadcast, kReduce, kAllToAll, kAllToAllV, kSendRecv, kCount
};
inline constexpr std::array<std::string_view, static_cast<size_t>(Collective::kCount)> kCollectiveNames = {
    "allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall", "alltoallv", "sendrecv"};
static_assert(kCollectiveNames.size() == static_cast<size_t>(Collective::kCount));

enum class Algorithm : uint8_t { kRing, kTree, kDirect, kHalvingDoubling, kNvls, kHierarchical, kPairwise, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Algorithm::kCount)> kAlgorithmNames = {
    "ring", "tree", "direct", "halving_doubling", "nvls", "hierarchical", "pairwise"};
static_assert(kAlgorithmNames.size() == static_cast<size_t>(Algorithm::kCount));
inline constexpr std::array<std::string_view, static_cast<size_t>(Algorithm::kCount)> kAlgorithmDescriptions = {
    "ring over all ranks, chunked and pipelined (bandwidth-optimal on any topology)",
    "double binary tree (two complementary trees, half the data each), pipelined",
    "every rank talks to every other at once (one hop on a full mesh or a switch)",
    "recursive halving then doubling (Rabenseifner), any rank count",
    "in-switch reduction and multicast (NVLS; nodes whose switch reduces)",
    "within groups (meshes, PCIe switches), then across them, then within again",
    "all-to-all in n-1 rounds, one partner per round"};
static_assert(kAlgorithmDescriptions.size() == static_cast<size_t>(Algorithm::kCount));

// Simple: bulk transfers at link_efficiency, synchronised per step (step_latency). Low latency ("ll"):
// flags travel inside the data, so a step costs little to synchronise (ll_step_latency) but the
// payload gets a smaller share of the wire (ll_efficiency) - NCCL's LL protocol.
enum class Protocol : uint8_t { kSimple, kLowLatency, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Protocol::kCount)> kProtocolNames = {"simple", "ll"};
static_assert(kProtocolNames.size() == static_cast<size_t>(Protocol::kCount));
constexpr std::string_view protocol_name(Protocol p) { return kProtocolNames[static_cast<size_t>(p)]; }
std::optional<Protocol> protocol_from_name(std::string_view s);

enum class ReductionOp : uint8_t { kSum, kMax, kMin, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(ReductionOp::kCount)> kReductionOpNames = {"sum", "max",
                                                                                                       "min"};
static_assert(kReductionOpNames.size() == static_cast<size_t>(ReductionOp::kCount));

constexpr std::string_view collective_name(Collective c) { return kCollectiveNames[static_cast<size_t>(c)]; }
constexpr std::string_view algorithm_name(Algorithm a) { return kAlgorithmNames[static_cast<size_t>(a)]; }
constexpr std::string_view algorithm_description(Algorithm a) { return kAlgorithmDescriptions[static_cast<size_t>(a)]; }
constexpr std::string_view reduction_op_name(ReductionOp o) { return kReductionOpNames[static_cast<size_t>(o)]; }

std::optional<Collective> collective_from_name(std::string_view s);
std::optional<Algorithm> algorithm_from_name(std::string_view s);
std::optional<ReductionOp> reduction_op_from_name(std::string_view s);
// "ring, tree, ..." for error messages.
std::string algorithm_valid_names();
std::string collective_valid_names();

// Past this many bytes per rank a collective is not simulated but extrapolated linearly from two
// simulations, at this size and half of it (the selector here, cluster/Network's node parts). Why this
// size: by 256 MiB every algorithm on every node preset is in its bandwidth-bound steady state - time
// linear in size to 0.3% - while the cost of simulating keeps growing with the size.
inline constexpr int64_t kSimulateUpToBytes = int64_t{256} << 20;

// nccl-tests' bus-bandwidth factor: busbw = algbw x factor (all-reduce 2(n-1)/n; reduce-scatter,
// all-gather, all-to-all (n-1)/n; broadcast, reduce, send/recv 1).
double bus_factor(Collective c, int ranks);

struct CollectiveOptions {
  std::optional<Algorithm> algorithm;  // nullopt: the selector decides
  std::optional<Protocol> protocol;    // nullopt: the selector decides
  ReductionOp op = ReductionOp::kSum;
  int root = 0;  // broadcast, reduce
};

// What one collective call did, in simulated time.
struct CollectiveResult {
  Collective collective = Collective::kAllReduce;
  Algorithm algorithm = Algorithm::kRing;
  Protocol protocol = Protocol::kSimple;
  std::string reason;         // why this algorithm (the selector's words, or "asked for")
  double start_s = 0;         // when every rank's stream was ready
  double end_s = 0;           // when the last rank finished
  double time_s = 0;          // end_s - start_s
  int64_t size_bytes = 0;     // nccl-tests "size": the per-rank buffer (all-gather: output, reduce-scatter: input)
  double algbw_bytes_per_s = 0, busbw_bytes_per_s = 0;
  int64_t ops = 0;            // transfers and local reductions in the schedule
};

}  // namespace ppu::ccl
